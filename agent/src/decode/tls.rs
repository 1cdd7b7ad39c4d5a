//! TLS `ClientHello` parser for a possibly truncated record head: extracts the SNI host name
//! and the offered protocol version. Reads stay inside the first TLS record and inside the
//! captured bytes; whatever was cut off is simply absent from the result.

/// What a `ClientHello` head revealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// Version in the record header (often 0x0301 for compatibility).
    pub record_version: u16,
    /// `legacy_version` of the `ClientHello` body, if captured.
    pub client_version: Option<u16>,
    /// Highest non-GREASE version in the `supported_versions` extension, if captured.
    pub supported_version_max: Option<u16>,
    /// First `host_name` entry of the `server_name` extension, if captured and valid.
    pub sni: Option<&'a str>,
    /// The extensions block was read to its end.
    pub complete: bool,
}

impl ClientHello<'_> {
    /// The version the client is really offering: TLS 1.3 clients announce it only in
    /// `supported_versions`, the body says 1.2.
    pub fn version(&self) -> u16 {
        self.supported_version_max
            .or(self.client_version)
            .unwrap_or(self.record_version)
    }
}

/// Human-readable protocol version, e.g. `TLS1.3`; unknown values as hex.
pub fn version_name(v: u16) -> String {
    match v {
        0x0300 => "SSL3.0".to_owned(),
        0x0301 => "TLS1.0".to_owned(),
        0x0302 => "TLS1.1".to_owned(),
        0x0303 => "TLS1.2".to_owned(),
        0x0304 => "TLS1.3".to_owned(),
        other => format!("0x{other:04x}"),
    }
}

/// GREASE values (RFC 8701) look like 0x?a?a with equal bytes.
fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// Bounds-checked big-endian reader.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_be_bytes([s[0], s[1]]))
    }
    /// Up to `n` bytes: the rest of the input when it is shorter (a cut block).
    fn take_upto(&mut self, n: usize) -> (&'a [u8], bool) {
        let avail = self.data.len().saturating_sub(self.pos);
        let got = n.min(avail);
        let s = self.data.get(self.pos..self.pos + got).unwrap_or_default();
        self.pos += got;
        (s, got == n)
    }
}

/// Parses a `ClientHello` at the start of a TCP payload. `None` when the payload does not
/// start with a handshake record carrying a `ClientHello`.
pub fn parse_client_hello(payload: &[u8]) -> Option<ClientHello<'_>> {
    let [0x16, 0x03, minor, len_hi, len_lo, 0x01, ..] = *payload else {
        return None;
    };
    if minor > 0x04 {
        return None;
    }
    let mut hello = ClientHello {
        record_version: u16::from_be_bytes([0x03, minor]),
        client_version: None,
        supported_version_max: None,
        sni: None,
        complete: false,
    };
    let record_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    let record = payload.get(5..).unwrap_or_default();
    let record = record.get(..record_len).unwrap_or(record);
    // Errors below just stop parsing: what was found so far is the answer.
    let _ = parse_body(record, &mut hello);
    Some(hello)
}

fn parse_body<'a>(record: &'a [u8], hello: &mut ClientHello<'a>) -> Option<()> {
    let mut c = Cursor {
        data: record,
        pos: 0,
    };
    let _handshake_type = c.u8()?;
    let _handshake_len = c.take(3)?;
    hello.client_version = Some(c.u16()?);
    let _random = c.take(32)?;
    let session_id_len = usize::from(c.u8()?);
    c.take(session_id_len)?;
    let suites_len = usize::from(c.u16()?);
    c.take(suites_len)?;
    let compression_len = usize::from(c.u8()?);
    c.take(compression_len)?;
    let extensions_len = usize::from(c.u16()?);
    let (extensions, whole) = c.take_upto(extensions_len);
    let mut ext = Cursor {
        data: extensions,
        pos: 0,
    };
    while ext.pos < extensions.len() {
        let ext_type = ext.u16()?;
        let ext_len = usize::from(ext.u16()?);
        let (body, body_whole) = ext.take_upto(ext_len);
        match ext_type {
            0x0000 if body_whole => hello.sni = server_name(body),
            0x002b => hello.supported_version_max = max_supported_version(body),
            _ => {}
        }
    }
    hello.complete = whole;
    Some(())
}

fn server_name(body: &[u8]) -> Option<&str> {
    let mut c = Cursor { data: body, pos: 0 };
    let list_len = usize::from(c.u16()?);
    let list = c.take(list_len)?;
    let mut entries = Cursor { data: list, pos: 0 };
    while entries.pos < list.len() {
        let name_type = entries.u8()?;
        let name_len = usize::from(entries.u16()?);
        let name = entries.take(name_len)?;
        if name_type == 0 {
            let valid = !name.is_empty()
                && name
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            return if valid {
                std::str::from_utf8(name).ok()
            } else {
                None
            };
        }
    }
    None
}

fn max_supported_version(body: &[u8]) -> Option<u16> {
    let mut c = Cursor { data: body, pos: 0 };
    let list_len = usize::from(c.u8()?);
    let (list, _) = c.take_upto(list_len);
    let (pairs, _) = list.as_chunks::<2>();
    pairs
        .iter()
        .map(|&p| u16::from_be_bytes(p))
        .filter(|v| !is_grease(*v))
        .max()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a `ClientHello` record with the given SNI and supported versions.
    pub(crate) fn client_hello(sni: &str, versions: &[u16]) -> Vec<u8> {
        let mut exts = Vec::new();
        // GREASE extension first, as browsers do.
        exts.extend_from_slice(&[0x0a, 0x0a, 0x00, 0x00]);
        let name = sni.as_bytes();
        let mut sn = Vec::new();
        sn.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sn.push(0);
        sn.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sn.extend_from_slice(name);
        exts.extend_from_slice(&[0x00, 0x00]);
        exts.extend_from_slice(&(sn.len() as u16).to_be_bytes());
        exts.extend_from_slice(&sn);
        if !versions.is_empty() {
            exts.extend_from_slice(&[0x00, 0x2b]);
            exts.extend_from_slice(&((versions.len() * 2 + 1) as u16).to_be_bytes());
            exts.push((versions.len() * 2) as u8);
            for v in versions {
                exts.extend_from_slice(&v.to_be_bytes());
            }
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.push(32);
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[0x01, 0x00]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![0x01];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn sni_and_tls13() {
        let rec = client_hello("api.example.com", &[0x1a1a, 0x0304, 0x0303]);
        let h = parse_client_hello(&rec).expect("client hello");
        assert_eq!(h.sni, Some("api.example.com"));
        assert_eq!(h.version(), 0x0304);
        assert_eq!(version_name(h.version()), "TLS1.3");
        assert!(h.complete);
    }

    #[test]
    fn without_supported_versions_uses_body_version() {
        let rec = client_hello("a.b", &[]);
        let h = parse_client_hello(&rec).expect("client hello");
        assert_eq!(h.version(), 0x0303);
    }

    #[test]
    fn every_truncation_is_consistent() {
        let rec = client_hello("shop.example.net", &[0x0304, 0x0303]);
        for cut in 0..=rec.len() {
            match parse_client_hello(&rec[..cut]) {
                None => assert!(cut < 6, "cut {cut}"),
                Some(h) => {
                    if let Some(sni) = h.sni {
                        assert_eq!(sni, "shop.example.net", "cut {cut}");
                    }
                    assert!(h.complete == (cut == rec.len()), "cut {cut}");
                }
            }
        }
    }

    #[test]
    fn not_a_client_hello() {
        assert!(parse_client_hello(&[0x16, 0x03, 0x03, 0, 4, 0x02, 0, 0, 0]).is_none());
        assert!(parse_client_hello(&[0x17, 0x03, 0x03, 0, 4, 0x01]).is_none());
        assert!(parse_client_hello(&[0x16, 0x03, 0x05, 0, 4, 0x01]).is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = parse_client_hello(&bytes);
        }

        #[test]
        fn arbitrary_bodies_after_a_valid_header_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            len in any::<u16>(),
        ) {
            let mut rec = vec![0x16, 0x03, 0x01];
            rec.extend_from_slice(&len.to_be_bytes());
            rec.push(0x01);
            rec.extend_from_slice(&body);
            prop_assert!(parse_client_hello(&rec).is_some());
        }
    }
}
