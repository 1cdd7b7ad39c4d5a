//! Backend instance processes: started from a command template in their own process group
//! (so a stop reaches every process of the instance, e.g. nginx's master and workers, and so
//! they outlive a crashed provisioner, which reconciles them on restart), identified by pid and
//! kernel start time (so a recycled pid is never mistaken for an instance), health-checked with
//! a plain HTTP GET.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{Error, Result, exec::shell_quote, io_context};

/// Fills `{name}`, `{port}` and `{addr}` (shell-quoted) in `template`.
pub fn render(template: &str, name: &str, addr: &str, port: u16) -> String {
    template
        .replace("{name}", &shell_quote(name))
        .replace("{port}", &shell_quote(&port.to_string()))
        .replace("{addr}", &shell_quote(addr))
}

/// Starts `sh -c command` in a new process group, output appended to `log`. Returns the pid and
/// its start time. The child is not awaited here: [`stop`] and the reconciliation find it by
/// pid, whether or not this process is its parent.
pub fn spawn(command: &str, marker: &str, log: &Path) -> Result<(u32, u64)> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_context(format!("opening {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io_context(format!("duplicating {}", log.display())))?;
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .env(MARKER, marker)
        .process_group(0);
    let child = cmd
        .spawn()
        .map_err(io_context(format!("starting `{command}`")))?;
    let pid = child.id();
    // Reap it in the background so that an instance that exits is not left a zombie (which
    // would still look alive in /proc).
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    let start =
        start_time(pid).ok_or_else(|| Error::Instance(format!("`{command}` exited at once")))?;
    Ok((pid, start))
}

/// Environment variable naming the instance in all its processes: a provisioner killed
/// between starting an instance and recording its pid finds it by this on restart.
pub const MARKER: &str = "SHADOWTAP_INSTANCE";

/// Pids of live processes whose environment carries `marker`.
pub fn find_by_marker(marker: &str) -> Vec<u32> {
    let needle = format!("{MARKER}={marker}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

/// SIGKILLs every process carrying `marker` in [`MARKER`].
pub fn kill_by_marker(marker: &str) {
    for pid in find_by_marker(marker) {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The kernel start time (clock ticks since boot) of `pid`, `None` if gone or a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// True while the process started at `start` still runs as `pid`.
pub fn alive(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

fn signal_group(pid: u32, signal: i32) {
    if let Ok(pgid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names the group.
        unsafe { libc::kill(-pgid, signal) };
    }
}

/// SIGTERM to the instance's process group, SIGKILL after `grace`; waits until it is gone.
pub async fn stop(pid: u32, start: u64, grace: Duration) {
    if !alive(pid, start) {
        // Its group may still hold workers whose leader died; they share the pgid.
        signal_group(pid, libc::SIGKILL);
        return;
    }
    signal_group(pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while alive(pid, start) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal_group(pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid, start) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET path` on `addr:port`; Ok when the status is 2xx within `timeout`.
pub async fn health_check(addr: &str, port: u16, path: &str, timeout: Duration) -> Result<()> {
    let target = format!("{addr}:{port}");
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(&target)
            .await
            .map_err(io_context(format!("connecting to {target}")))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(io_context(format!("sending the health check to {target}")))?;
        let mut head = [0u8; 64];
        let mut got = 0;
        while got < 12 {
            let n = stream
                .read(&mut head[got..])
                .await
                .map_err(io_context(format!("reading the health check of {target}")))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let line = String::from_utf8_lossy(&head[..got]).into_owned();
        match line.split_whitespace().nth(1) {
            Some(code) if code.starts_with('2') => Ok(()),
            _ => Err(Error::Instance(format!(
                "health check of {target}{path} answered {:?}",
                line.lines().next().unwrap_or("")
            ))),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| Error::Instance(format!("health check of {target}{path} timed out")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_quoted() {
        assert_eq!(
            render("nginx {name} {addr}:{port}", "a'b", "127.0.0.1", 9000),
            r"nginx 'a'\''b' '127.0.0.1':'9000'"
        );
    }

    #[test]
    fn own_start_time_is_read() {
        let me = std::process::id();
        let start = start_time(me).expect("own stat");
        assert!(alive(me, start));
        assert!(!alive(me, start + 1));
    }
}
