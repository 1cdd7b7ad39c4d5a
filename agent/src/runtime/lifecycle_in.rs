//! `--lifecycle-in FILE`: the in-process collector follows the provisioner's lifecycle events
//! (`shadowtap-provisioner --lifecycle-out FILE`), so its decisions start from the instances
//! that really serve. The file is read from the start (the fleet drops repeated ids and stale
//! reports), then followed as it grows; it may appear after the agent starts, and a file that
//! shrinks (rotated or truncated) is read again from its start.

use std::{
    fs::File,
    io::{self, Read as _, Seek as _, SeekFrom},
    path::PathBuf,
};

use shadowtap_core::lifecycle::{LifecycleEvent, parse_lifecycle};

/// Lines longer than this are not lifecycle events: they are skipped and counted.
const MAX_LINE: usize = 64 * 1024;

pub struct LifecycleTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    /// Complete lines that were not lifecycle events.
    pub invalid_lines: u64,
}

impl LifecycleTail {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: Vec::new(),
            invalid_lines: 0,
        }
    }

    /// Events appended since the last call (none while the file does not exist).
    pub fn read_new(&mut self) -> io::Result<Vec<LifecycleEvent>> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len < self.offset {
            self.offset = 0;
            self.partial.clear();
        }
        if len == self.offset {
            return Ok(Vec::new());
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::with_capacity(usize::try_from(len - self.offset).unwrap_or(0));
        file.take(len - self.offset).read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.partial[start..].iter().position(|&b| b == b'\n') {
            let line = &self.partial[start..start + nl];
            start += nl + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_lifecycle(line) {
                Some(e) => events.push(e),
                None => self.invalid_lines += 1,
            }
        }
        self.partial.drain(..start);
        if self.partial.len() > MAX_LINE {
            self.partial.clear();
            self.invalid_lines += 1;
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use shadowtap_core::{
        decision::LifecycleStage,
        lifecycle::{LIFECYCLE_DATA_VERSION, LifecycleData},
    };

    use super::*;

    fn line(healthy: u32) -> String {
        let e = LifecycleEvent::new(
            "test",
            LifecycleData {
                schema_version: LIFECYCLE_DATA_VERSION,
                resource: "api".into(),
                scale_event_id: format!("e{healthy}"),
                instance: "stp-1".into(),
                stage: LifecycleStage::ShiftTraffic,
                attempt: 1,
                ok: true,
                error: None,
                started_at: String::new(),
                finished_at: String::new(),
                started_at_ms: 1,
                finished_at_ms: 2,
                duration_ms: 1,
                healthy_instances: healthy,
                target_instances: healthy,
                warm: None,
            },
        );
        serde_json::to_string(&e).expect("json")
    }

    #[test]
    fn follows_appends_split_lines_and_truncation() {
        let dir = std::env::temp_dir().join(format!("stap-lctail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("lifecycle.jsonl");
        let _ = std::fs::remove_file(&path);
        let mut tail = LifecycleTail::new(path.clone());
        assert!(tail.read_new().expect("missing file is fine").is_empty());

        let mut f = std::fs::File::create(&path).expect("create");
        let two = line(2);
        let (head, rest) = two.split_at(10);
        write!(f, "{}\nnot json\n{{\"type\":\"other\"}}\n{head}", line(1)).expect("write");
        let got = tail.read_new().expect("read");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data.healthy_instances, 1);
        assert_eq!(tail.invalid_lines, 2);
        writeln!(f, "{rest}").expect("write");
        let got = tail.read_new().expect("read");
        assert_eq!(got.len(), 1, "the split line is joined");
        assert_eq!(got[0].data.healthy_instances, 2);
        assert!(tail.read_new().expect("read").is_empty());

        drop(f);
        std::fs::write(&path, format!("{}\n", line(3))).expect("truncate");
        let got = tail.read_new().expect("read");
        assert_eq!(got.len(), 1, "a shorter file is read from its start");
        assert_eq!(got[0].data.healthy_instances, 3);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
