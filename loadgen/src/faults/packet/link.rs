//! The AF_PACKET channel (pnet datalink) our TCP runs over, with just enough ARP to reach the
//! target and to be reachable.

use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use pnet::datalink::{self, Channel, DataLinkReceiver, DataLinkSender, NetworkInterface};
use pnet::packet::arp::ArpOperations;
use pnet::util::MacAddr;

use super::PacketOptions;
use super::wire::{self, Incoming, TcpIn};
use crate::faults::FaultError;

/// How long one receive call may block: the granularity of every timer in the state machine.
const POLL: Duration = Duration::from_millis(10);
/// Large enough for a GSO frame handed up unsegmented over veth.
const READ_BUFFER: usize = 128 * 1024;

pub(super) struct Link {
    tx: Box<dyn DataLinkSender>,
    rx: Box<dyn DataLinkReceiver>,
    pub our_mac: MacAddr,
    pub our_ip: Ipv4Addr,
    interface: String,
}

impl Link {
    /// Opens the channel on `opts.interface` of the calling thread's network namespace.
    pub(super) fn open(opts: &PacketOptions) -> Result<Self, FaultError> {
        let interfaces = datalink::interfaces();
        let iface: NetworkInterface = interfaces
            .iter()
            .find(|i| i.name == opts.interface)
            .cloned()
            .ok_or_else(|| FaultError::NoSuchInterface(opts.interface.clone()))?;
        // If the host owned the source address, its own stack would answer the target's
        // SYN-ACK with a RST and ARP for it would get two answers.
        if let Some(owner) = interfaces
            .iter()
            .find(|i| i.ips.iter().any(|n| n.ip() == opts.source))
        {
            return Err(FaultError::SourceAddressInUse {
                address: opts.source,
                interface: owner.name.clone(),
            });
        }
        let our_mac = MacAddr::from(opts.source_mac());
        if iface.mac == Some(our_mac) {
            return Err(FaultError::InvalidRequest {
                what: "source MAC",
                value: our_mac.to_string(),
                reason: "must differ from the interface's own MAC (see PacketOptions)",
            });
        }
        let config = datalink::Config {
            read_buffer_size: READ_BUFFER,
            write_buffer_size: READ_BUFFER,
            read_timeout: Some(POLL),
            write_timeout: Some(Duration::from_secs(1)),
            // Frames for our MAC are not the interface's: on a real NIC only promiscuous mode
            // delivers them (veth delivers everything anyway).
            promiscuous: true,
            ..datalink::Config::default()
        };
        let channel = datalink::channel(&iface, config).map_err(FaultError::io(format!(
            "opening an AF_PACKET channel on {} (needs CAP_NET_RAW)",
            iface.name
        )))?;
        let Channel::Ethernet(tx, rx) = channel else {
            return Err(FaultError::Io {
                context: format!("opening a channel on {}", iface.name),
                source: io::Error::other("not an Ethernet channel"),
            });
        };
        Ok(Self {
            tx,
            rx,
            our_mac,
            our_ip: opts.source,
            interface: iface.name,
        })
    }

    pub(super) fn send(&mut self, frame: &[u8]) -> Result<(), FaultError> {
        match self.tx.send_to(frame, None) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(FaultError::Io {
                context: format!("sending a {}-byte frame on {}", frame.len(), self.interface),
                source: e,
            }),
            None => Err(FaultError::Io {
                context: format!("sending on {}", self.interface),
                source: io::Error::other("frame larger than the write buffer"),
            }),
        }
    }

    /// The next frame addressed to us before `until`, or `None`. ARP requests for our address
    /// are answered here, so the target can always reach us.
    pub(super) fn recv(&mut self, until: Instant) -> Result<Option<Incoming>, FaultError> {
        while Instant::now() < until {
            let parsed = match self.rx.next() {
                Ok(frame) => wire::parse(frame),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    return Err(FaultError::Io {
                        context: format!("receiving on {}", self.interface),
                        source: e,
                    });
                }
            };
            let Some((src, dst, incoming)) = parsed else {
                continue;
            };
            // The socket also sees what we (and the host) transmit on the interface.
            if src == self.our_mac || (dst != self.our_mac && !dst.is_broadcast()) {
                continue;
            }
            match incoming {
                Incoming::ArpRequest { sender, target } if target == self.our_ip => {
                    let reply = wire::arp_frame(
                        ArpOperations::Reply,
                        sender.0,
                        (self.our_mac, self.our_ip),
                        sender,
                    );
                    self.send(&reply)?;
                }
                Incoming::ArpRequest { .. } => {}
                other => return Ok(Some(other)),
            }
        }
        Ok(None)
    }

    /// The MAC address of `ip`, by ARP. Our request also makes the target learn our address.
    pub(super) fn resolve(
        &mut self,
        ip: Ipv4Addr,
        retry: Duration,
        deadline: Instant,
    ) -> Result<MacAddr, FaultError> {
        let started = Instant::now();
        let request = wire::arp_frame(
            ArpOperations::Request,
            MacAddr::broadcast(),
            (self.our_mac, self.our_ip),
            (MacAddr::zero(), ip),
        );
        while Instant::now() < deadline {
            self.send(&request)?;
            let until = deadline.min(Instant::now() + retry);
            while let Some(incoming) = self.recv(until)? {
                if let Incoming::ArpReply { sender } = incoming
                    && sender.1 == ip
                {
                    return Ok(sender.0);
                }
            }
        }
        Err(FaultError::NoArpReply(ip, started.elapsed()))
    }

    /// The next TCP segment of the connection `(peer, peer_port) -> (us, our_port)`.
    pub(super) fn recv_tcp(
        &mut self,
        peer: (Ipv4Addr, u16),
        our_port: u16,
        until: Instant,
    ) -> Result<Option<TcpIn>, FaultError> {
        while let Some(incoming) = self.recv(until)? {
            if let Incoming::Tcp(seg) = incoming
                && seg.src == peer.0
                && seg.sport == peer.1
                && seg.dst == self.our_ip
                && seg.dport == our_port
            {
                return Ok(Some(seg));
            }
        }
        Ok(None)
    }
}
