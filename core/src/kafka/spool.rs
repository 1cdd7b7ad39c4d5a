//! A bounded on-disk FIFO of records waiting for the broker.
//!
//! Every observation is appended here first and removed only once Kafka acknowledged it, so a
//! broker outage (or an agent restart) loses nothing until the spool is full; then the oldest
//! records are dropped and counted. Layout: numbered segment files `NNNNNNNNNNNNNNNNNNNN.seg` of
//! records framed as `len u32 LE | crc32 u32 LE | key_len u32 LE | key | value`, and a `cursor`
//! file (`segment offset`) naming the first unacknowledged record.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{BufReader, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

const HEADER: u64 = 8;

/// Spool failures.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("record of {0} bytes is larger than a spool segment")]
    TooLarge(usize),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Position just after a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpoolPos {
    pub segment: u64,
    pub offset: u64,
}

/// A record read back.
#[derive(Debug, Clone)]
pub struct SpoolRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Where the next record starts; commit this once the record is delivered.
    pub next: SpoolPos,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    id: u64,
    bytes: u64,
    records: u64,
}

/// Counters and gauges of the spool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records waiting.
    pub depth_records: u64,
    /// Bytes waiting (framing included).
    pub depth_bytes: u64,
    /// Records dropped because the spool was full.
    pub dropped_records: u64,
    /// Torn or corrupt records found when opening (lost in a crash mid-write).
    pub corrupt_records: u64,
    /// Records appended since open.
    pub appended: u64,
}

/// The spool.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    writer: Option<File>,
    cursor: SpoolPos,
    /// Records and bytes of the cursor's segment already consumed.
    consumed_records: u64,
    stats: SpoolStats,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

impl Spool {
    /// Open (or create) the spool in `dir`, holding at most `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let segment_bytes = (max_bytes / 8).clamp(64 << 10, 64 << 20);
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut ids: Vec<u64> = fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let cursor_path = dir.join("cursor");
        let cursor = fs::read_to_string(&cursor_path)
            .ok()
            .and_then(|t| {
                let mut it = t.split_whitespace().map(str::parse::<u64>);
                Some(SpoolPos {
                    segment: it.next()?.ok()?,
                    offset: it.next()?.ok()?,
                })
            })
            .unwrap_or(SpoolPos {
                segment: ids.first().copied().unwrap_or(0),
                offset: 0,
            });
        let mut spool = Self {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes,
            segments: VecDeque::new(),
            writer: None,
            cursor,
            consumed_records: 0,
            stats: SpoolStats::default(),
        };
        for id in ids {
            let path = segment_path(dir, id);
            if id < cursor.segment {
                fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            let (records, bytes, consumed, corrupt) =
                scan_segment(&path, (id == cursor.segment).then_some(cursor.offset))?;
            spool.stats.corrupt_records += corrupt;
            if id == cursor.segment {
                spool.consumed_records = consumed;
            }
            spool.segments.push_back(Segment { id, bytes, records });
        }
        if spool
            .segments
            .front()
            .is_none_or(|s| s.id != spool.cursor.segment)
        {
            spool.cursor = SpoolPos {
                segment: spool
                    .segments
                    .front()
                    .map_or(spool.cursor.segment, |s| s.id),
                offset: 0,
            };
            spool.consumed_records = 0;
        }
        spool.recount();
        Ok(spool)
    }

    fn recount(&mut self) {
        let records: u64 = self.segments.iter().map(|s| s.records).sum();
        let bytes: u64 = self.segments.iter().map(|s| s.bytes).sum();
        let consumed_bytes = if self
            .segments
            .front()
            .is_some_and(|s| s.id == self.cursor.segment)
        {
            self.cursor.offset
        } else {
            0
        };
        self.stats.depth_records = records.saturating_sub(self.consumed_records);
        self.stats.depth_bytes = bytes.saturating_sub(consumed_bytes);
    }

    pub fn stats(&self) -> SpoolStats {
        self.stats
    }

    pub fn is_empty(&self) -> bool {
        self.stats.depth_records == 0
    }

    /// Append a record; when full, drop the oldest segment (counted) to make room.
    pub fn append(&mut self, key: &[u8], value: &[u8]) -> Result<(), SpoolError> {
        let body_len = 4 + key.len() + value.len();
        let framed = HEADER + body_len as u64;
        if framed > self.segment_bytes {
            return Err(SpoolError::TooLarge(body_len));
        }
        while self.stats.depth_bytes + framed > self.max_bytes && self.segments.len() > 1 {
            self.drop_oldest_segment()?;
        }
        let back_has_room = self
            .segments
            .back()
            .is_some_and(|s| s.bytes + framed <= self.segment_bytes);
        if self.writer.is_none() || !back_has_room {
            // After a restart the last segment is reopened for appending when it has room.
            let reuse = self.writer.is_none() && back_has_room;
            let id = match self.segments.back() {
                Some(s) if reuse => s.id,
                Some(s) => s.id + 1,
                None => self.cursor.segment,
            };
            let path = segment_path(&self.dir, id);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            if !reuse {
                self.segments.push_back(Segment {
                    id,
                    bytes: 0,
                    records: 0,
                });
            }
            self.writer = Some(file);
        }
        let mut buf = Vec::with_capacity(framed as usize);
        let mut body = Vec::with_capacity(body_len);
        body.extend_from_slice(&(key.len() as u32).to_le_bytes());
        body.extend_from_slice(key);
        body.extend_from_slice(value);
        buf.extend_from_slice(&(body_len as u32).to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        buf.extend_from_slice(&body);
        let seg = self
            .segments
            .back_mut()
            .expect("a segment was just ensured");
        let path = segment_path(&self.dir, seg.id);
        self.writer
            .as_mut()
            .expect("a writer was just ensured")
            .write_all(&buf)
            .map_err(io(&path))?;
        seg.bytes += framed;
        seg.records += 1;
        self.stats.appended += 1;
        self.recount();
        Ok(())
    }

    fn drop_oldest_segment(&mut self) -> Result<(), SpoolError> {
        let Some(old) = self.segments.pop_front() else {
            return Ok(());
        };
        let lost = if old.id == self.cursor.segment {
            old.records.saturating_sub(self.consumed_records)
        } else {
            old.records
        };
        self.stats.dropped_records += lost;
        tracing::warn!(
            segment = old.id,
            records = lost,
            "spool full: dropped oldest records"
        );
        let path = segment_path(&self.dir, old.id);
        fs::remove_file(&path).map_err(io(&path))?;
        let next = self.segments.front().map_or(old.id + 1, |s| s.id);
        self.cursor = SpoolPos {
            segment: next,
            offset: 0,
        };
        self.consumed_records = 0;
        self.persist_cursor()?;
        self.recount();
        Ok(())
    }

    /// Up to `max` records from the first unacknowledged one, without consuming them.
    pub fn peek(&self, max: usize) -> Result<Vec<SpoolRecord>, SpoolError> {
        let mut out = Vec::new();
        let mut pos = self.cursor;
        for seg in &self.segments {
            if seg.id < pos.segment {
                continue;
            }
            if seg.id > pos.segment {
                pos = SpoolPos {
                    segment: seg.id,
                    offset: 0,
                };
            }
            if pos.offset >= seg.bytes {
                continue;
            }
            let path = segment_path(&self.dir, seg.id);
            let mut file = File::open(&path).map_err(io(&path))?;
            file.seek(SeekFrom::Start(pos.offset)).map_err(io(&path))?;
            let mut reader = BufReader::new(file);
            while pos.offset < seg.bytes && out.len() < max {
                let Some((key, value, len)) = read_record(&mut reader).map_err(io(&path))? else {
                    break;
                };
                pos.offset += len;
                out.push(SpoolRecord {
                    key,
                    value,
                    next: pos,
                });
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Acknowledge every record before `pos`.
    pub fn commit(&mut self, pos: SpoolPos, records: u64) -> Result<(), SpoolError> {
        if pos <= self.cursor {
            return Ok(());
        }
        // Segments wholly before `pos` are done.
        while let Some(front) = self.segments.front().copied() {
            if front.id >= pos.segment {
                break;
            }
            self.segments.pop_front();
            let path = segment_path(&self.dir, front.id);
            fs::remove_file(&path).map_err(io(&path))?;
        }
        if self.cursor.segment == pos.segment {
            self.consumed_records += records;
        } else {
            // The caller counts records across segments; recompute for the new segment.
            self.consumed_records = self.count_before(pos)?;
        }
        self.cursor = pos;
        self.persist_cursor()?;
        self.recount();
        Ok(())
    }

    fn count_before(&self, pos: SpoolPos) -> Result<u64, SpoolError> {
        let path = segment_path(&self.dir, pos.segment);
        let file = File::open(&path).map_err(io(&path))?;
        let mut reader = BufReader::new(file);
        let mut offset = 0;
        let mut n = 0;
        while offset < pos.offset {
            match read_record(&mut reader).map_err(io(&path))? {
                Some((_, _, len)) => {
                    offset += len;
                    n += 1;
                }
                None => break,
            }
        }
        Ok(n)
    }

    fn persist_cursor(&self) -> Result<(), SpoolError> {
        let tmp = self.dir.join("cursor.tmp");
        let dst = self.dir.join("cursor");
        fs::write(
            &tmp,
            format!("{} {}\n", self.cursor.segment, self.cursor.offset),
        )
        .map_err(io(&tmp))?;
        fs::rename(&tmp, &dst).map_err(io(&dst))
    }

    /// Flush appended records to stable storage.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if let Some(w) = self.writer.as_mut() {
            w.sync_data().map_err(io(&self.dir))?;
        }
        Ok(())
    }
}

/// (key, value, framed length).
type RawRecord = (Vec<u8>, Vec<u8>, u64);

/// One record: `Ok(None)` at a clean end or a torn/corrupt tail.
fn read_record(r: &mut impl Read) -> std::io::Result<Option<RawRecord>> {
    let mut head = [0u8; 8];
    if let Err(e) = r.read_exact(&mut head) {
        return if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if !(4..=(64 << 20)).contains(&len) {
        return Ok(None);
    }
    let mut body = vec![0u8; len];
    if let Err(e) = r.read_exact(&mut body) {
        return if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(e)
        };
    }
    if crc32fast::hash(&body) != crc {
        return Ok(None);
    }
    let key_len = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
    if 4 + key_len > len {
        return Ok(None);
    }
    let key = body[4..4 + key_len].to_vec();
    let value = body[4 + key_len..].to_vec();
    Ok(Some((key, value, HEADER + len as u64)))
}

/// (records, valid bytes, records before `cursor_offset`, corrupt records truncated).
fn scan_segment(
    path: &Path,
    cursor_offset: Option<u64>,
) -> Result<(u64, u64, u64, u64), SpoolError> {
    let file = File::open(path).map_err(io(path))?;
    let total = file.metadata().map_err(io(path))?.len();
    let mut reader = BufReader::new(file);
    let (mut records, mut offset, mut consumed) = (0, 0, 0);
    while let Some((_, _, len)) = read_record(&mut reader).map_err(io(path))? {
        if cursor_offset.is_some_and(|c| offset < c) {
            consumed += 1;
        }
        offset += len;
        records += 1;
    }
    let mut corrupt = 0;
    if offset < total {
        // A torn write from a crash: cut it off so appends continue on a clean boundary.
        corrupt = 1;
        tracing::warn!(path = %path.display(), valid = offset, total, "spool segment has a torn tail; truncating");
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        f.set_len(offset).map_err(io(path))?;
    }
    Ok((records, offset, consumed, corrupt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_commit_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
        for i in 0..100u32 {
            s.append(b"k", &i.to_le_bytes()).expect("append");
        }
        assert_eq!(s.stats().depth_records, 100);
        let batch = s.peek(30).expect("peek");
        assert_eq!(batch.len(), 30);
        assert_eq!(batch[29].value, 29u32.to_le_bytes());
        s.commit(batch[29].next, 30).expect("commit");
        assert_eq!(s.stats().depth_records, 70);
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(s.stats().depth_records, 70);
        let batch = s.peek(1000).expect("peek");
        assert_eq!(batch.len(), 70);
        assert_eq!(batch[0].value, 30u32.to_le_bytes());
        s.append(b"k", &100u32.to_le_bytes()).expect("append");
        let batch = s.peek(1000).expect("peek");
        assert_eq!(batch.len(), 71);
        assert_eq!(batch[70].value, 100u32.to_le_bytes());
    }

    #[test]
    fn full_spool_drops_oldest_and_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 64 KiB segments, 256 KiB total.
        let mut s = Spool::open(dir.path(), 256 << 10).expect("open");
        let value = vec![7u8; 1000];
        for _ in 0..1000 {
            s.append(b"key", &value).expect("append");
        }
        let st = s.stats();
        assert!(st.depth_bytes <= 256 << 10, "{st:?}");
        assert!(st.dropped_records > 0);
        assert_eq!(st.dropped_records + st.depth_records, 1000);
        let all = s.peek(usize::MAX).expect("peek");
        assert_eq!(all.len() as u64, st.depth_records);
        // Commit across segments.
        let last = all.last().expect("records").next;
        s.commit(last, all.len() as u64).expect("commit");
        assert_eq!(s.stats().depth_records, 0);
        assert!(s.is_empty());
    }

    #[test]
    fn torn_tail_is_cut_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
        s.append(b"a", b"one").expect("append");
        s.append(b"a", b"two").expect("append");
        drop(s);
        let seg = fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .find(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .expect("segment")
            .path();
        let mut f = OpenOptions::new()
            .append(true)
            .open(&seg)
            .expect("open seg");
        f.write_all(&[50, 0, 0, 0, 1, 2]).expect("write");
        drop(f);
        let mut s = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(s.stats().corrupt_records, 1);
        assert_eq!(s.stats().depth_records, 2);
        s.append(b"a", b"three").expect("append");
        let vals: Vec<Vec<u8>> = s
            .peek(10)
            .expect("peek")
            .into_iter()
            .map(|r| r.value)
            .collect();
        assert_eq!(
            vals,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
    }
}
