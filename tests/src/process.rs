//! Processes run by the tests.
//!
//! Background processes write stdout/stderr to files rather than pipes, so a chatty process can
//! never stall on a full pipe that nobody reads, and a test can read what it printed after it
//! exited. The guard kills the process (by its own pid, SIGKILL) when dropped, so a panicking
//! test never leaves it running.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result, io_context};

/// Renders a command line for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs a short command to completion and fails unless it exited 0.
pub fn run_checked(cmd: &mut Command) -> Result<Output> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_context(format!("spawning `{}`", describe(cmd))))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(Error::CommandFailed {
            command: describe(cmd),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// A running child process whose output goes to `<log_dir>/<label>.{stdout,stderr}`.
pub struct BackgroundProcess {
    child: Child,
    label: String,
    command: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl BackgroundProcess {
    pub fn spawn(mut cmd: Command, label: &str, log_dir: &Path) -> Result<Self> {
        let stdout_path = log_dir.join(format!("{label}.stdout"));
        let stderr_path = log_dir.join(format!("{label}.stderr"));
        let stdout = File::create(&stdout_path)
            .map_err(io_context(format!("creating {}", stdout_path.display())))?;
        let stderr = File::create(&stderr_path)
            .map_err(io_context(format!("creating {}", stderr_path.display())))?;
        let command = describe(&cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(io_context(format!("spawning `{command}`")))?;
        Ok(Self {
            child,
            label: label.to_owned(),
            command,
            stdout_path,
            stderr_path,
            exit: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn command(&self) -> &str {
        &self.command
    }

    /// Sends `signal` to the child. Refused once the child has been reaped, because its pid may
    /// then belong to another process; before that the pid stays reserved (at worst a zombie).
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Err(Error::Precondition(format!(
                "{} already exited, not sending signal {signal}",
                self.label
            )));
        }
        let pid = libc::pid_t::try_from(self.child.id())
            .map_err(|_| Error::Precondition(format!("pid of {} out of range", self.label)))?;
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::Io {
                context: format!("kill({pid}, {signal}) for {}", self.label),
                source: std::io::Error::last_os_error(),
            })
        }
    }

    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(status) = self.exit {
            return Ok(Some(status));
        }
        let status = self
            .child
            .try_wait()
            .map_err(io_context(format!("waiting for {}", self.label)))?;
        self.exit = status;
        Ok(status)
    }

    /// Waits for the child to exit by itself, at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("exit of {} (`{}`)", self.label, self.command),
                    timeout,
                    detail: self.stderr_tail(),
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal`, then waits at most `timeout` for the exit.
    pub fn stop(&mut self, signal: i32, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(signal)?;
        self.wait_timeout(timeout)
    }

    pub fn stdout(&self) -> Result<String> {
        read_lossy(&self.stdout_path)
    }

    pub fn stderr(&self) -> Result<String> {
        read_lossy(&self.stderr_path)
    }

    /// The last lines of stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        match self.stderr() {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let start = lines.len().saturating_sub(20);
                format!("stderr of {}: {}", self.label, lines[start..].join("\n"))
            }
            Err(e) => format!("stderr of {} unreadable: {e}", self.label),
        }
    }
}

impl Drop for BackgroundProcess {
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        // Not reaped yet, so the pid is still ours.
        if let Err(e) = self.child.kill() {
            eprintln!("killing {} (pid {}): {e}", self.label, self.child.id());
        }
        if let Err(e) = self.child.wait() {
            eprintln!("reaping {} (pid {}): {e}", self.label, self.child.id());
        }
    }
}

fn read_lossy(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(io_context(format!("reading {}", path.display())))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Finds `program` in `PATH`.
pub fn find_in_path(program: impl AsRef<OsStr>) -> Option<PathBuf> {
    let program = program.as_ref();
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
