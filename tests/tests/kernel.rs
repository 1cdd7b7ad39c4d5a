//! Kernel program tests through BPF_PROG_TEST_RUN: crafted frames go through the real,
//! verifier-accepted XDP and tc programs; we assert verdicts, ring-buffer records and counters.
//! Needs root (CAP_BPF + CAP_NET_ADMIN) and the eBPF object (`cargo xtask build-ebpf`).

use aya::{
    maps::{MapData, RingBuf},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use shadowtap_agent::{
    capture::{
        CounterSnapshot, KernelMaps, Mode, TC_PROGRAM, Tap, TapOptions, XDP_PROGRAM, XdpMode,
        default_wakeup_bytes, merge_stats,
    },
    decode::{self, LinkType},
};
use shadowtap_common::{
    Counter, DIR_EGRESS, DIR_INGRESS, FlowKey, FlowRecord, FlowSlot, FlowStats, MAX_CAPTURE,
    RECORD_HEADER_LEN, Record, RecordHeader, RecordKind, SMALL_CAPTURE, SmallRecord, TLS_HEAD_LEN,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "kernel tests load eBPF programs and need root (CAP_BPF + CAP_NET_ADMIN); run them via `cargo xtask test`"
    );
}

fn options(mode: Mode) -> TapOptions {
    TapOptions {
        mode,
        xdp_mode: XdpMode::Skb,
        snaplen: 128,
        sample_n: 1,
        ports: Vec::new(),
        ringbuf_bytes: 1 << 20,
        wakeup_bytes: default_wakeup_bytes(1 << 20),
        flow_entries: 1024,
        kernel_log_level: 0,
    }
}

struct Harness {
    tap: Tap,
    ring: RingBuf<MapData>,
    maps: KernelMaps,
}

#[derive(Debug)]
struct Rec {
    header: RecordHeader,
    data: Vec<u8>,
    /// Bytes the kernel reserved for the record (the ring item's length).
    reserved: usize,
}

struct Outcome {
    verdict: u32,
    /// Frame records (every kind but `FlowEvicted`).
    records: Vec<Rec>,
    /// Flow-cache slots the kernel flushed (`FlowEvicted` records).
    evicted: Vec<FlowSlot>,
    delta: CounterSnapshot,
}

/// Keeps the calling test thread (each test has its own) on the CPU it is on now.
/// `BPF_PROG_TEST_RUN` runs the program on the caller's CPU, and the flow cache and counters
/// are per CPU: a thread the scheduler moves mid-test (on a busy machine) would split one
/// flow over two CPUs' slots, and the tests' exact slot and insert counts assume one.
fn pin_to_current_cpu() {
    // SAFETY: plain syscalls on this thread with a zeroed, then filled, cpu_set_t.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(
            cpu >= 0,
            "sched_getcpu: {}",
            std::io::Error::last_os_error()
        );
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Harness {
    /// Runs the XDP program `repeat` times on `frame` without reading the ring in between;
    /// returns the counter deltas (the records stay in the ring).
    fn run_repeated_undrained(&mut self, frame: &[u8], repeat: u32) -> CounterSnapshot {
        let before = self.maps.counters().expect("counters");
        self.test_run(frame, false, repeat);
        self.counters_since(&before)
    }

    /// BPF_PROG_TEST_RUN of the tc (egress) or XDP program, `repeat` times; the verdict.
    fn test_run(&mut self, frame: &[u8], egress: bool, repeat: u32) -> u32 {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        let ebpf = self.tap.ebpf_mut();
        if egress {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(TC_PROGRAM)
                .expect("tc program")
                .try_into()
                .expect("tc type");
            prog.test_run(opts)
                .expect("BPF_PROG_TEST_RUN tc")
                .return_value
        } else {
            let prog: &mut Xdp = ebpf
                .program_mut(XDP_PROGRAM)
                .expect("xdp program")
                .try_into()
                .expect("xdp type");
            prog.test_run(opts)
                .expect("BPF_PROG_TEST_RUN xdp")
                .return_value
        }
    }

    /// How far every counter moved since `before`.
    fn counters_since(&self, before: &CounterSnapshot) -> CounterSnapshot {
        let after = self.maps.counters().expect("counters");
        let mut delta = CounterSnapshot::default();
        for i in 0..delta.ingress.len() {
            delta.ingress[i] = after.ingress[i] - before.ingress[i];
            delta.egress[i] = after.egress[i] - before.egress[i];
        }
        delta
    }

    fn drain(&mut self) -> usize {
        let mut n = 0;
        while self.ring.next().is_some() {
            n += 1;
        }
        n
    }

    fn new(opts: &TapOptions) -> Self {
        require_root();
        pin_to_current_cpu();
        let mut tap = Tap::load(opts).expect("load the eBPF programs (is the object built?)");
        let ring = tap.take_events().expect("ring buffer");
        let maps = tap.take_maps().expect("maps");
        Self { tap, ring, maps }
    }

    fn run(&mut self, frame: &[u8], egress: bool) -> Outcome {
        let before = self.maps.counters().expect("counters");
        let verdict = self.test_run(frame, egress, 1);
        let mut records = Vec::new();
        let mut evicted = Vec::new();
        while let Some(item) = self.ring.next() {
            assert!(item.len() >= RECORD_HEADER_LEN);
            // SAFETY: the record starts with a RecordHeader written by the kernel.
            let header: RecordHeader = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            if header.kind == RecordKind::FlowEvicted as u8 {
                assert_eq!(item.len(), std::mem::size_of::<FlowRecord>());
                // SAFETY: a FlowEvicted record is a FlowRecord, its size checked just above.
                let rec: FlowRecord = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                evicted.push(rec.slot);
                continue;
            }
            let data =
                item[RECORD_HEADER_LEN..RECORD_HEADER_LEN + usize::from(header.cap_len)].to_vec();
            records.push(Rec {
                header,
                data,
                reserved: item.len(),
            });
        }
        let delta = self.counters_since(&before);
        Outcome {
            verdict,
            records,
            evicted,
            delta,
        }
    }
}

// ---- frame builders -------------------------------------------------------------------------

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

fn tcp_v4(payload: &[u8], syn: bool, fin: bool) -> Vec<u8> {
    let mut b = etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([10, 1, 0, 1], [10, 1, 0, 2], 64)
        .tcp(40000, 80, 1000, 65535);
    if syn {
        b = b.syn();
    }
    if fin {
        b = b.fin();
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build frame");
    out
}

fn tcp_v6(payload: &[u8]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .tcp(40001, 8080, 1, 65535);
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build frame");
    out
}

/// Inserts VLAN tags after the MAC addresses: `tpids` outermost first.
fn with_vlans(frame: &[u8], tpids: &[u16]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for (i, tpid) in tpids.iter().enumerate() {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

/// Builds an IPv6 frame whose extension chain is `exts` (next-header values, each a minimal
/// 8-byte header) followed by TCP carrying `payload`.
fn tcp_v6_with_exts(exts: &[u8], payload: &[u8], fragment_offset: u16) -> Vec<u8> {
    let plain = tcp_v6(payload);
    let tcp = &plain[14 + 40..];
    let mut chain = Vec::new();
    for (i, &h) in exts.iter().enumerate() {
        let next = exts.get(i + 1).copied().unwrap_or(6);
        chain.push(next);
        chain.push(0); // fragment: reserved; others: (0 + 1) * 8 bytes
        if h == 44 {
            chain.extend_from_slice(&(fragment_offset << 3).to_be_bytes());
            chain.extend_from_slice(&[0, 0, 0, 1]);
        } else {
            chain.extend_from_slice(&[1, 4, 0, 0, 0, 0]); // PadN option
        }
    }
    let mut out = plain[..14 + 40].to_vec();
    let plen = (chain.len() + tcp.len()) as u16;
    out[14 + 4..14 + 6].copy_from_slice(&plen.to_be_bytes());
    out[14 + 6] = exts.first().copied().unwrap_or(6);
    out.extend_from_slice(&chain);
    out.extend_from_slice(tcp);
    out
}

const GET: &[u8] =
    b"GET /api/v1/items/42?x=1 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: t\r\n\r\n";

fn only_record(o: &Outcome) -> &Rec {
    assert_eq!(o.records.len(), 1, "expected exactly one record");
    &o.records[0]
}

// ---- tests ----------------------------------------------------------------------------------

#[test]
fn http_request_head_is_recorded_with_headers_and_snaplen_payload() {
    let mut h = Harness::new(&options(Mode::Host));
    let mut payload = GET.to_vec();
    payload.extend(std::iter::repeat_n(b'x', 400)); // a body the kernel must not copy
    let frame = tcp_v4(&payload, false, false);
    let o = h.run(&frame, false);
    assert_eq!(o.verdict, XDP_PASS);
    let rec = only_record(&o);
    assert_eq!(rec.header.kind, RecordKind::HttpHead as u8);
    assert_eq!(rec.header.direction, DIR_INGRESS);
    assert_eq!(rec.header.wire_len as usize, frame.len());
    // Ethernet 14 + IPv4 20 + TCP 20 + snaplen 128.
    assert_eq!(rec.data.len(), 14 + 20 + 20 + 128);
    assert_eq!(rec.data[..], frame[..rec.data.len()]);
    assert_eq!(o.delta.get(DIR_INGRESS, Counter::Packets), 1);
    assert_eq!(o.delta.get(DIR_INGRESS, Counter::Bytes), frame.len() as u64);
    assert_eq!(o.delta.get(DIR_INGRESS, Counter::Events), 1);
    assert_eq!(o.delta.get(DIR_INGRESS, Counter::Malformed), 0);
    // The shared userspace decoder reads the record as the original frame.
    let meta = decode::decode_frame(LinkType::Ethernet, &rec.data, rec.header.wire_len)
        .expect("decode record");
    assert_eq!(meta.src_port, 40000);
    assert_eq!(meta.dst_port, 80);
    assert_eq!(meta.payload_len as usize, payload.len());
}

#[test]
fn every_method_token_and_status_line_is_recorded_and_others_are_not() {
    let mut h = Harness::new(&options(Mode::Host));
    for m in [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ] {
        let frame = tcp_v4(
            format!("{m} / HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
            false,
            false,
        );
        let o = h.run(&frame, false);
        assert_eq!(
            only_record(&o).header.kind,
            RecordKind::HttpHead as u8,
            "{m}"
        );
    }
    let o = h.run(
        &tcp_v4(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
        ),
        true,
    );
    assert_eq!(only_record(&o).header.kind, RecordKind::HttpHead as u8);
    assert_eq!(only_record(&o).header.direction, DIR_EGRESS);
    for body in [
        &b"GETX / HTTP/1.1\r\n\r\n"[..],
        b"get / HTTP/1.1\r\n\r\n",
        b"HTTP/2.0 200\r\n\r\n",
        b"\x00\x01\x02binary-data",
    ] {
        let o = h.run(&tcp_v4(body, false, false), false);
        assert!(
            o.records.is_empty(),
            "{:?} must not be recorded",
            String::from_utf8_lossy(body)
        );
        assert_eq!(o.delta.get(DIR_INGRESS, Counter::Events), 0);
        assert_eq!(o.delta.get(DIR_INGRESS, Counter::Packets), 1);
    }
}

#[test]
fn tcp_control_segments_and_tls_client_hello() {
    let mut h = Harness::new(&options(Mode::Host));
    let syn = h.run(&tcp_v4(b"", true, false), false);
    let rec = only_record(&syn);
    assert_eq!(rec.header.kind, RecordKind::TcpControl as u8);
    assert_eq!(
        rec.data.len(),
        14 + 20 + 20,
        "control records carry headers only"
    );
    let fin = h.run(&tcp_v4(b"", false, true), false);
    assert_eq!(only_record(&fin).header.kind, RecordKind::TcpControl as u8);
    // A pure ACK mid-stream only updates counters.
    let ack = h.run(&tcp_v4(b"", false, false), false);
    assert!(ack.records.is_empty());

    let mut hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    hello.extend(std::iter::repeat_n(0xab, 1200));
    let frame = tcp_v4(&hello, false, false);
    let o = h.run(&frame, false);
    let rec = only_record(&o);
    assert_eq!(rec.header.kind, RecordKind::TlsClientHello as u8);
    assert_eq!(
        rec.data.len(),
        (14 + 20 + 20 + usize::from(TLS_HEAD_LEN)).min(MAX_CAPTURE)
    );
    assert_eq!(
        rec.reserved,
        size_of::<Record>(),
        "a ClientHello head needs the full record"
    );
    assert_eq!(
        only_record(&syn).reserved,
        size_of::<SmallRecord>(),
        "control records take the small reservation"
    );
}

/// Heads up to `SMALL_CAPTURE` bytes take the small reservation, longer ones the full record,
/// and the bytes userspace reads are the same either way.
#[test]
fn record_size_classes_follow_the_captured_length() {
    let mut h = Harness::new(&options(Mode::Host));
    // 54 bytes of headers: payloads up to SMALL_CAPTURE - 54 fit the small record.
    let fits = SMALL_CAPTURE - 54;
    let mut o = TapOptions {
        snaplen: 256,
        ..options(Mode::Host)
    };
    o.ringbuf_bytes = 1 << 20;
    let mut wide = Harness::new(&o);
    for (use_wide, payload, small) in [
        (false, 300, true),
        (true, fits, true),
        (true, fits + 1, false),
        (true, 400, false),
    ] {
        let harness = if use_wide { &mut wide } else { &mut h };
        let mut body = b"GET /x HTTP/1.1\r\n".to_vec();
        body.resize(payload, b'a');
        let frame = tcp_v4(&body, false, false);
        let out = harness.run(&frame, false);
        let rec = only_record(&out);
        let expected = if small {
            size_of::<SmallRecord>()
        } else {
            size_of::<Record>()
        };
        assert_eq!(rec.reserved, expected, "payload {payload}");
        assert_eq!(rec.data, frame[..rec.data.len()], "payload {payload}");
    }
}

/// Records are submitted without waking the consumer, except once each time the unread bytes
/// cross the mark: a consumer that is behind gets one wakeup, not one per record. A mark of 0
/// wakes on every record.
#[test]
fn consumer_is_woken_once_per_crossing_of_the_mark() {
    let frame = tcp_v4(b"GET /wake HTTP/1.1\r\nHost: a\r\n\r\n", false, false);
    let record = size_of::<SmallRecord>() + 8;
    let mut o = options(Mode::Host);
    o.wakeup_bytes = 16 * record as u32;
    let mut h = Harness::new(&o);
    for round in 0..3 {
        let d = h.run_repeated_undrained(&frame, 100);
        assert_eq!(d.get(DIR_INGRESS, Counter::Events), 100, "round {round}");
        assert_eq!(
            d.get(DIR_INGRESS, Counter::RingbufWakeups),
            1,
            "round {round}: one wakeup when the 16th record crosses the mark"
        );
        assert_eq!(h.drain(), 100, "round {round}");
    }
    // Below the mark: no wakeup at all.
    let d = h.run_repeated_undrained(&frame, 15);
    assert_eq!(d.get(DIR_INGRESS, Counter::RingbufWakeups), 0);
    assert_eq!(h.drain(), 15);

    o.wakeup_bytes = 0;
    let mut every = Harness::new(&o);
    let d = every.run_repeated_undrained(&frame, 50);
    assert_eq!(d.get(DIR_INGRESS, Counter::RingbufWakeups), 50);
    assert_eq!(every.drain(), 50);
}

#[test]
fn vlan_and_qinq_frames_are_parsed() {
    let mut h = Harness::new(&options(Mode::Host));
    let base = tcp_v4(GET, false, false);
    for tags in [&[0x8100u16][..], &[0x88a8, 0x8100], &[0x8100, 0x8100]] {
        let frame = with_vlans(&base, tags);
        let o = h.run(&frame, false);
        let rec = only_record(&o);
        assert_eq!(
            rec.header.kind,
            RecordKind::HttpHead as u8,
            "tags {tags:x?}"
        );
        let meta = decode::decode_frame(LinkType::Ethernet, &rec.data, rec.header.wire_len)
            .expect("decode");
        assert_eq!(meta.dst_port, 80);
    }
    // Three tags is more than we walk: the third TPID is not IP, so the frame is non-IP.
    let o = h.run(&with_vlans(&base, &[0x88a8, 0x8100, 0x8100]), false);
    assert!(o.records.is_empty());
    assert_eq!(o.delta.get(DIR_INGRESS, Counter::NonIp), 1);
}

#[test]
fn ipv6_extension_chains() {
    let mut h = Harness::new(&options(Mode::Host));
    for exts in [&[][..], &[0], &[0, 60], &[0, 43, 60], &[60, 44]] {
        let frame = tcp_v6_with_exts(exts, GET, 0);
        let o = h.run(&frame, false);
        let rec = only_record(&o);
        assert_eq!(
            rec.header.kind,
            RecordKind::HttpHead as u8,
            "chain {exts:?}"
        );
        let meta = decode::decode_frame(LinkType::Ethernet, &rec.data, rec.header.wire_len)
            .expect("decode");
        assert_eq!(
            (meta.src_port, meta.dst_port),
            (40001, 8080),
            "chain {exts:?}"
        );
    }
    // A non-first fragment has no transport header: counted, no record, not malformed.
    let o = h.run(&tcp_v6_with_exts(&[44], GET, 100), false);
    assert!(o.records.is_empty());
    assert_eq!(o.delta.get(DIR_INGRESS, Counter::Malformed), 0);
    // A chain longer than the bounded walk (6 headers) is counted as malformed.
    let o = h.run(
        &tcp_v6_with_exts(&[0, 60, 60, 60, 60, 60, 60], GET, 0),
        false,
    );
    assert!(o.records.is_empty());
    assert_eq!(o.delta.get(DIR_INGRESS, Counter::Malformed), 1);
}

#[test]
fn bad_ihl_and_lengths_are_malformed() {
    let mut h = Harness::new(&options(Mode::Host));
    let good = tcp_v4(GET, false, false);
    for ihl in [0u8, 1, 4] {
        let mut f = good.clone();
        f[14] = 0x40 | ihl;
        let o = h.run(&f, false);
        assert_eq!(o.verdict, XDP_PASS);
        assert!(o.records.is_empty(), "ihl {ihl}");
        assert_eq!(o.delta.get(DIR_INGRESS, Counter::Malformed), 1, "ihl {ihl}");
    }
    // IHL pointing past the IP total length.
    let mut f = good.clone();
    f[14] = 0x4f;
    f[16..18].copy_from_slice(&40u16.to_be_bytes());
    assert_eq!(
        h.run(&f, false).delta.get(DIR_INGRESS, Counter::Malformed),
        1
    );
    // TCP data offset below 5 words.
    let mut f = good.clone();
    f[14 + 20 + 12] = 0x40;
    let o = h.run(&f, false);
    assert!(o.records.is_empty());
    assert_eq!(o.delta.get(DIR_INGRESS, Counter::Malformed), 1);
    // Wrong IP version nibble.
    let mut f = good;
    f[14] = 0x65;
    assert_eq!(
        h.run(&f, false).delta.get(DIR_INGRESS, Counter::Malformed),
        1
    );
}

#[test]
fn every_truncation_of_real_frames_is_counted_never_recorded() {
    let mut h = Harness::new(&options(Mode::Host));
    let frames = [
        tcp_v4(GET, false, false),
        tcp_v6(GET),
        with_vlans(&tcp_v4(GET, false, false), &[0x88a8, 0x8100]),
        tcp_v6_with_exts(&[0, 43, 60], GET, 0),
    ];
    for frame in &frames {
        // BPF_PROG_TEST_RUN needs at least an Ethernet header.
        for len in 14..frame.len() {
            let o = h.run(&frame[..len], false);
            assert_eq!(o.verdict, XDP_PASS, "len {len}");
            assert!(
                o.records.is_empty(),
                "a frame cut at {len} of {} must not be recorded",
                frame.len()
            );
            assert_eq!(
                o.delta.get(DIR_INGRESS, Counter::Malformed),
                1,
                "len {len} of {}",
                frame.len()
            );
            assert_eq!(o.delta.get(DIR_INGRESS, Counter::Packets), 1);
        }
        let o = h.run(frame, false);
        assert_eq!(o.records.len(), 1);
    }
}

#[test]
fn non_ip_frames_are_counted() {
    let mut h = Harness::new(&options(Mode::Host));
    let mut arp = Vec::new();
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&MAC_A);
    arp.extend_from_slice(&0x0806u16.to_be_bytes());
    arp.extend_from_slice(&[0u8; 28]);
    let o = h.run(&arp, false);
    assert_eq!(o.verdict, XDP_PASS);
    assert!(o.records.is_empty());
    assert_eq!(o.delta.get(DIR_INGRESS, Counter::NonIp), 1);
    assert_eq!(o.delta.get(DIR_INGRESS, Counter::Malformed), 0);
}

#[test]
fn tap_mode_drops_after_accounting() {
    let mut h = Harness::new(&options(Mode::Tap));
    let o = h.run(&tcp_v4(GET, false, false), false);
    assert_eq!(o.verdict, XDP_DROP);
    assert_eq!(o.records.len(), 1);
    assert_eq!(o.delta.get(DIR_INGRESS, Counter::Packets), 1);
}

#[test]
#[allow(clippy::many_single_char_names)] // f/g frames, a/b outcomes of one exchange
fn sampling_keeps_request_and_response_of_a_connection_together() {
    let mut opts = options(Mode::Host);
    opts.sample_n = 4;
    let mut h = Harness::new(&opts);
    let (mut kept, mut sampled) = (0u64, 0u64);
    for port in 20000..20200u16 {
        let req = etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 1, 0, 1], [10, 1, 0, 2], 64)
            .tcp(port, 80, 1, 100);
        let mut f = Vec::new();
        req.write(&mut f, GET).expect("frame");
        let resp = etherparse::PacketBuilder::ethernet2(MAC_B, MAC_A)
            .ipv4([10, 1, 0, 2], [10, 1, 0, 1], 64)
            .tcp(80, port, 1, 100);
        let mut g = Vec::new();
        resp.write(&mut g, b"HTTP/1.1 200 OK\r\n\r\n")
            .expect("frame");
        let a = h.run(&f, false);
        let b = h.run(&g, true);
        assert_eq!(
            a.records.len(),
            b.records.len(),
            "port {port}: request and response sampled apart"
        );
        kept += a.records.len() as u64;
        sampled += a.delta.get(DIR_INGRESS, Counter::SampledOut);
        assert_eq!(
            a.records.len() as u64 + a.delta.get(DIR_INGRESS, Counter::SampledOut),
            1
        );
    }
    assert_eq!(kept + sampled, 200);
    // 1 in 4 with a decent hash: far from 0 and from 200.
    assert!((20..=80).contains(&kept), "kept {kept} of 200 at 1-in-4");
    // Control segments are never sampled.
    let o = h.run(&tcp_v4(b"", true, false), false);
    assert_eq!(o.records.len(), 1);
}

#[test]
fn port_filter_limits_tracking() {
    let mut opts = options(Mode::Host);
    opts.ports = vec![8080];
    let mut h = Harness::new(&opts);
    let o = h.run(&tcp_v4(GET, false, false), false); // port 80
    assert!(o.records.is_empty());
    assert_eq!(o.delta.get(DIR_INGRESS, Counter::Filtered), 1);
    let o = h.run(&tcp_v6(GET), false); // port 8080
    assert_eq!(o.records.len(), 1);
    assert_eq!(o.delta.get(DIR_INGRESS, Counter::Filtered), 0);
}

#[test]
fn flows_accumulate_per_direction() {
    let mut h = Harness::new(&options(Mode::Host));
    let frame = tcp_v4(b"0123456789", false, false);
    for _ in 0..5 {
        h.run(&frame, false);
    }
    h.run(&frame, true);
    let flows = h.maps.flows();
    let ingress: Vec<_> = flows
        .iter()
        .filter(|f| f.key.direction == DIR_INGRESS)
        .collect();
    let egress: Vec<_> = flows
        .iter()
        .filter(|f| f.key.direction == DIR_EGRESS)
        .collect();
    assert_eq!(ingress.len(), 1);
    assert_eq!(egress.len(), 1);
    assert_eq!(ingress[0].stats.packets, 5);
    assert_eq!(ingress[0].stats.bytes, 5 * frame.len() as u64);
    assert_eq!(ingress[0].stats.payload_bytes, 50);
    assert!(ingress[0].stats.first_ns > 0 && ingress[0].stats.last_ns >= ingress[0].stats.first_ns);
    assert_eq!(egress[0].stats.packets, 1);
    assert_eq!(
        h.maps
            .counters()
            .expect("counters")
            .total(Counter::FlowInserts),
        2
    );
}

/// A TCP segment of the flow 10.2.0.1:`port` -> 10.2.0.2:80 with `payload`.
fn tcp_flow(port: u16, payload: &[u8]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([10, 2, 0, 1], [10, 2, 0, 2], 64)
        .tcp(port, 80, 1000, 65535);
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build frame");
    out
}

/// Per flow: what the flow cache still holds plus every slot the kernel flushed.
fn totals(
    maps: &KernelMaps,
    flushed: &[FlowSlot],
) -> std::collections::HashMap<FlowKey, FlowStats> {
    let mut out = std::collections::HashMap::new();
    for f in maps.flows() {
        merge_stats(out.entry(f.key).or_default(), &f.stats);
    }
    for slot in flushed {
        merge_stats(out.entry(slot.key).or_default(), &slot.stats);
    }
    out
}

#[test]
fn a_flood_of_new_flows_evicts_and_flushes_every_counter() {
    // 8 slots, 300 flows, 3 rounds of 1..=3 packets each: most slots change hands many times.
    let mut opts = options(Mode::Host);
    opts.flow_entries = 8;
    let mut h = Harness::new(&opts);
    let mut flushed = Vec::new();
    let mut sent: std::collections::HashMap<u16, (u64, u64, u64)> =
        std::collections::HashMap::new();
    let mut evictions = 0;
    let mut inserts = 0;
    for round in 0..3u16 {
        for port in 30000..30300u16 {
            let payload = vec![b'x'; usize::from(port % 7 + round)];
            let frame = tcp_flow(port, &payload);
            for _ in 0..=(port + round) % 3 {
                let o = h.run(&frame, false);
                assert!(o.records.is_empty());
                assert_eq!(o.delta.get(DIR_INGRESS, Counter::FlowUpdateFailed), 0);
                assert_eq!(
                    o.delta.get(DIR_INGRESS, Counter::FlowEvictions),
                    o.evicted.len() as u64
                );
                evictions += o.evicted.len();
                inserts += o.delta.get(DIR_INGRESS, Counter::FlowInserts);
                flushed.extend(o.evicted);
                let e = sent.entry(port).or_default();
                e.0 += 1;
                e.1 += frame.len() as u64;
                e.2 += payload.len() as u64;
            }
        }
    }
    assert!(evictions > 500, "only {evictions} evictions with 8 slots");
    let live = h.maps.flows();
    assert!(live.len() <= 8 && !live.is_empty());
    // Every insert either still holds its slot or was flushed.
    assert_eq!(inserts, evictions as u64 + live.len() as u64);
    let totals = totals(&h.maps, &flushed);
    assert_eq!(totals.len(), sent.len());
    for (key, stats) in &totals {
        let (packets, bytes, payload) = sent[&key.src_port];
        assert_eq!(
            (stats.packets, stats.bytes, stats.payload_bytes),
            (packets, bytes, payload),
            "flow from port {}",
            key.src_port
        );
        assert!(stats.first_ns > 0 && stats.last_ns >= stats.first_ns);
    }
}

#[test]
fn a_full_ring_keeps_the_old_flow_and_counts_the_packet() {
    // One slot and a ring too small for anything: the second flow cannot flush the first.
    let mut opts = options(Mode::Host);
    opts.flow_entries = 1;
    opts.ringbuf_bytes = 4096;
    opts.wakeup_bytes = default_wakeup_bytes(4096);
    let mut h = Harness::new(&opts);
    let a = tcp_flow(40001, b"aaaa");
    let b = tcp_flow(40002, b"bbbb");
    let first = h.run(&a, false);
    assert_eq!(first.delta.get(DIR_INGRESS, Counter::FlowInserts), 1);
    // Fill the ring with flushes of the two flows taking turns, without reading it.
    let mut turns = 0u64;
    loop {
        let before = h.maps.counters().expect("counters");
        h.test_run(if turns.is_multiple_of(2) { &b } else { &a }, false, 1);
        let d = h.counters_since(&before);
        turns += 1;
        if d.get(DIR_INGRESS, Counter::FlowUpdateFailed) == 1 {
            assert_eq!(d.get(DIR_INGRESS, Counter::RingbufReserveFailed), 1);
            assert_eq!(d.get(DIR_INGRESS, Counter::FlowEvictions), 0);
            break;
        }
        assert_eq!(d.get(DIR_INGRESS, Counter::FlowEvictions), 1);
        assert!(turns < 100, "the 4 KiB ring never filled");
    }
    // The flow that held the slot still does, with its packet; the failed packet is counted.
    let flows = h.maps.flows();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].stats.packets, 1);
    let c = h.maps.counters().expect("counters");
    assert_eq!(
        c.get(DIR_INGRESS, Counter::FlowInserts),
        1 + c.get(DIR_INGRESS, Counter::FlowEvictions)
    );
    assert_eq!(c.get(DIR_INGRESS, Counter::FlowUpdateFailed), 1);
}

#[test]
fn flows_are_read_whole_across_batches_of_slots() {
    // 4096 slots are read in several batches; 300 flows land all over them.
    let mut opts = options(Mode::Host);
    opts.flow_entries = 4096;
    let mut h = Harness::new(&opts);
    let mut flushed = Vec::new();
    for port in 31000..31300u16 {
        let frame = tcp_flow(port, &[b'y'; 10]);
        for _ in 0..2 {
            flushed.extend(h.run(&frame, false).evicted);
        }
    }
    let totals = totals(&h.maps, &flushed);
    assert_eq!(totals.len(), 300);
    assert!(
        totals
            .values()
            .all(|s| (s.packets, s.payload_bytes) == (2, 20)),
        "a flow's counters went missing"
    );
    let occupied = h.maps.flows().len();
    assert!(
        occupied >= 300 - flushed.len(),
        "{occupied} flows in the slots"
    );
}
