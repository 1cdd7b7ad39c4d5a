//! Work inside another network namespace without moving the caller.
//!
//! setns(2) changes the namespace of the calling *thread* only, and everything that thread
//! later creates (sockets, child threads) inherits it. Doing it on a tokio worker or a
//! `spawn_blocking` thread would silently move unrelated tasks that the pool later runs there,
//! so the work runs on a fresh thread that exits afterwards. Sockets keep the namespace they
//! were created in, so a socket made there is usable from any thread.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use super::FaultError;

/// Runs `work` on a new thread, inside the namespace at `netns` when given, and awaits its
/// result without blocking the runtime.
pub(super) async fn run_in<T, F>(netns: Option<&Path>, work: F) -> Result<T, FaultError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, FaultError> + Send + 'static,
{
    let netns: Option<PathBuf> = netns.map(Path::to_path_buf);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("shadowtap-fault".to_owned())
        .spawn(move || {
            let result = match netns.as_deref().map(enter).transpose() {
                Ok(_) => work(),
                Err(e) => Err(e),
            };
            // The receiver is gone only if the caller's future was dropped: nobody to tell.
            let _ = tx.send(result);
        })
        .map_err(FaultError::io("spawning the fault worker thread"))?;
    rx.await.map_err(|_| FaultError::WorkerPanicked)?
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &Path) -> Result<(), FaultError> {
    let file =
        File::open(path).map_err(FaultError::io(format!("opening netns {}", path.display())))?;
    // SAFETY: setns(2) on a file descriptor we own; it affects only this thread, which
    // `run_in` created for this purpose and which exits after its work.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(FaultError::Io {
            context: format!("setns into {}", path.display()),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
