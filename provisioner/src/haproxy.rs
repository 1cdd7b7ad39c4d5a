//! HAProxy's runtime API on its admin socket (`stats socket ... level admin`).
//!
//! One connection per command (non-interactive mode: HAProxy answers and closes), so a
//! half-read answer can never be mistaken for the next one.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

use crate::{Error, Result, io_context};

/// A server of a backend as `show servers state` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub name: String,
    pub addr: String,
    pub port: u16,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u8,
    /// `srv_admin_state` bit field: 0x01/0x02/0x20 maintenance, 0x08 drain.
    pub admin_state: u8,
    /// `srv_uweight`.
    pub weight: u32,
}

/// The runtime API of one HAProxy.
#[derive(Debug, Clone)]
pub struct HaProxy {
    socket: PathBuf,
    timeout: Duration,
}

impl HaProxy {
    pub fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            timeout: Duration::from_secs(5),
        }
    }

    /// Sends one command and returns the whole answer.
    pub async fn command(&self, command: &str) -> Result<String> {
        let exchange = async {
            let mut stream =
                UnixStream::connect(&self.socket)
                    .await
                    .map_err(io_context(format!(
                        "connecting to {}",
                        self.socket.display()
                    )))?;
            stream
                .write_all(format!("{command}\n").as_bytes())
                .await
                .map_err(io_context(format!("sending `{command}`")))?;
            let mut out = String::new();
            stream
                .read_to_string(&mut out)
                .await
                .map_err(io_context(format!("reading the answer to `{command}`")))?;
            Ok(out)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Error::HaProxy {
                command: command.to_owned(),
                response: format!("no answer within {:?}", self.timeout),
            })?
    }

    /// Sends a command whose success answer is empty or one of `ok` (prefixes).
    async fn expect(&self, command: &str, ok: &[&str]) -> Result<()> {
        let out = self.command(command).await?;
        let text = out.trim();
        if text.is_empty() || ok.iter().any(|p| text.starts_with(p)) {
            Ok(())
        } else {
            Err(Error::HaProxy {
                command: command.to_owned(),
                response: text.to_owned(),
            })
        }
    }

    /// `add server` with weight 0 (dynamic servers start in maintenance), then `enable server`:
    /// the server is in the pool but takes no traffic until its weight is raised.
    pub async fn add_server(&self, backend: &str, name: &str, addr: &str, port: u16) -> Result<()> {
        self.expect(
            &format!("add server {backend}/{name} {addr}:{port} weight 0"),
            &["New server registered"],
        )
        .await?;
        self.expect(&format!("enable server {backend}/{name}"), &[])
            .await
    }

    pub async fn set_weight(&self, backend: &str, name: &str, weight: u32) -> Result<()> {
        self.expect(&format!("set server {backend}/{name} weight {weight}"), &[])
            .await
    }

    /// `state` is `ready`, `drain` or `maint`.
    pub async fn set_state(&self, backend: &str, name: &str, state: &str) -> Result<()> {
        self.expect(&format!("set server {backend}/{name} state {state}"), &[])
            .await
    }

    /// Puts the server in maintenance, cuts what is left of its sessions and deletes it.
    pub async fn remove_server(&self, backend: &str, name: &str) -> Result<()> {
        self.set_state(backend, name, "maint").await?;
        // A drain that timed out leaves sessions, and `del server` refuses while any remain.
        self.expect(&format!("shutdown sessions server {backend}/{name}"), &[])
            .await?;
        let mut last = None;
        for _ in 0..50 {
            match self
                .expect(&format!("del server {backend}/{name}"), &["Server deleted"])
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or_else(|| Error::Instance(format!("deleting {backend}/{name}"))))
    }

    /// The servers of `backend`.
    pub async fn servers(&self, backend: &str) -> Result<Vec<ServerState>> {
        let command = format!("show servers state {backend}");
        let out = self.command(&command).await?;
        parse_servers_state(&out).ok_or(Error::HaProxy {
            command,
            response: out,
        })
    }

    /// Current sessions (`scur` of `show stat`) of `backend/name`; `None` if not listed.
    pub async fn current_sessions(&self, backend: &str, name: &str) -> Result<Option<u64>> {
        let out = self.command("show stat").await?;
        Ok(parse_scur(&out, backend, name))
    }
}

/// Parses `show servers state` (format version 1); `None` if it is something else (an error).
pub fn parse_servers_state(text: &str) -> Option<Vec<ServerState>> {
    let mut lines = text.lines();
    if lines.next()?.trim() != "1" {
        return None;
    }
    let mut out = Vec::new();
    for line in lines {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 19 {
            continue;
        }
        out.push(ServerState {
            name: f[3].to_owned(),
            addr: f[4].to_owned(),
            op_state: f[5].parse().ok()?,
            admin_state: f[6].parse().ok()?,
            weight: f[7].parse().ok()?,
            port: f[18].parse().ok()?,
        });
    }
    Some(out)
}

/// `scur` of `backend/server` in `show stat` CSV.
pub fn parse_scur(csv: &str, backend: &str, server: &str) -> Option<u64> {
    csv.lines().find_map(|line| {
        let f: Vec<&str> = line.split(',').collect();
        (f.len() > 4 && f[0] == backend && f[1] == server)
            .then(|| f[4].parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_state_and_stat_parse() {
        let text = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state \
                    srv_uweight srv_iweight srv_time_since_last_change srv_check_status \
                    srv_check_result srv_check_health srv_check_state srv_agent_state \
                    bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord\n\
                    3 app 1 stp-1 127.0.0.1 2 0 100 1 12 1 0 0 0 0 0 0 - 9001 -\n\n";
        let s = parse_servers_state(text).expect("parses");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "stp-1");
        assert_eq!((s[0].port, s[0].op_state, s[0].weight), (9001, 2, 100));
        assert!(parse_servers_state("Can't find backend.\n").is_none());
        let csv = "# pxname,svname,qcur,qmax,scur,smax\napp,stp-1,0,0,3,4\napp,BACKEND,0,0,3,4\n";
        assert_eq!(parse_scur(csv, "app", "stp-1"), Some(3));
        assert_eq!(parse_scur(csv, "app", "stp-2"), None);
    }
}
