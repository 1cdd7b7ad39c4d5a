//! A real Kafka-compatible broker (nisshi) per test, on 127.0.0.1 and a free port, killed on
//! every exit path (the test harness's [`LoopbackBroker`](shadowtap_tests::broker::LoopbackBroker)).

use std::process::Child;

pub use shadowtap_tests::broker::LoopbackBroker as Broker;

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL now.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
