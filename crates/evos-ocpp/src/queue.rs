//! The persistent queue of transaction-related messages (OCPP 1.6 §4.10
//! "Transaction-related messages" and §3 offline behaviour; the same rules
//! hold for 2.0.1's TransactionEvent, so nothing here is version-specific).
//!
//! StartTransaction, StopTransaction and transaction MeterValues are pushed
//! here before they are sent, and delivered in order, at least once. A
//! message leaves the queue only when the CSMS confirmed it ([`Queue::ack`])
//! or after `TransactionMessageAttempts` failures ([`Queue::discard`], which
//! keeps an audit copy in `discarded.jsonl`).
//!
//! # On disk
//!
//! `<dir>/journal.jsonl` is an append-only journal, one JSON record per line:
//! `push`, `ack`, `attempt` (the new count), `discard`, `bind`, `forget`, and
//! `next` (the next sequence number, written last by a compaction). Every
//! append is followed by `fdatasync` before the call returns, and the
//! in-memory state changes only after that, so whatever a call reported as
//! done survives `kill -9` and power cuts. A record counts once its newline
//! is on disk.
//!
//! [`Queue::open`] replays the journal. A power cut mid-append leaves a torn
//! last line (no newline) or, on some file systems, a garbage last line; that
//! one record is dropped (with a warning) and truncated away. Anything wrong
//! before the last line is a [`QueueError::Corrupt`] naming the file and
//! line: it is not a crash artefact, and guessing would risk losing or
//! re-ordering transaction messages.
//!
//! When the journal has grown past [`COMPACT_MIN_BYTES`] and is more than
//! [`COMPACT_RATIO`] times the live state, it is rewritten with only the live
//! state (temp file, fsync, rename, fsync of the directory), so either the
//! old or the new journal is found after a crash, never a mix.
//!
//! A `lock` file in the directory is held with an exclusive lock while the
//! queue is open, so two processes never append to the same journal. After
//! an I/O error whose effect on disk is unknown (a failed fsync), the queue
//! refuses further changes ([`QueueError::Poisoned`]); open it again to
//! continue from what is on disk.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

const JOURNAL: &str = "journal.jsonl";
const DISCARDED: &str = "discarded.jsonl";
const LOCK: &str = "lock";

/// The journal is compacted only once it is at least this large, so a
/// short queue is not rewritten after every acknowledgement.
pub const COMPACT_MIN_BYTES: u64 = 1 << 20;
/// … and only when it is this many times larger than the live state.
pub const COMPACT_RATIO: u64 = 4;

/// One queued message.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Position in the queue; increases with every push, never reused.
    pub seq: u64,
    /// The OCPP action, e.g. `StopTransaction`.
    pub action: String,
    /// The request payload as pushed (the CSMS transactionId is patched in
    /// when sending, from [`Queue::transaction_id`]).
    pub payload: Value,
    /// The station-side session this message belongs to.
    pub tx_ref: Option<String>,
    /// Failed delivery attempts so far.
    pub attempts: u32,
    /// When it was pushed (Unix ms).
    pub queued_ms: i64,
}

#[derive(thiserror::Error, Debug)]
pub enum QueueError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: line {line}: corrupt record: {why}", path.display())]
    Corrupt {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("{}: the queue is open in another process", path.display())]
    Locked { path: PathBuf },
    #[error(
        "{}: an earlier write failed in a way that leaves the disk state unknown; open the queue again",
        path.display()
    )]
    Poisoned { path: PathBuf },
    #[error("message {seq} is not the front of the queue (front: {front:?})")]
    NotFront { seq: u64, front: Option<u64> },
    #[error("message {0} is not queued")]
    NotQueued(u64),
    #[error("transaction {tx_ref} is still referred to by queued message {seq}")]
    StillQueued { tx_ref: String, seq: u64 },
    /// Not expected: a `serde_json::Value` always encodes.
    #[error("encoding a record: {0}")]
    Encode(#[source] serde_json::Error),
}

/// One journal line. Borrowed when written, owned when replayed.
#[derive(Serialize, Deserialize, Debug)]
// Unknown fields are ignored so that a journal written by a newer version
// still replays after a rollback to this one.
#[serde(tag = "op", rename_all = "lowercase")]
enum Record<'a> {
    Push {
        seq: u64,
        action: Cow<'a, str>,
        payload: Cow<'a, Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tx: Option<Cow<'a, str>>,
        t: i64,
        /// Only written by a compaction, for entries that already failed.
        #[serde(default, skip_serializing_if = "is_zero")]
        attempts: u32,
    },
    Ack {
        seq: u64,
    },
    Attempt {
        seq: u64,
        n: u32,
    },
    Discard {
        seq: u64,
    },
    Bind {
        tx: Cow<'a, str>,
        id: i64,
    },
    Forget {
        tx: Cow<'a, str>,
    },
    Next {
        seq: u64,
    },
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn encode(record: &Record<'_>) -> Result<Vec<u8>, QueueError> {
    let mut line = serde_json::to_vec(record).map_err(QueueError::Encode)?;
    line.push(b'\n');
    Ok(line)
}

struct Slot {
    entry: Entry,
    /// Size of its `push` line: the live-state estimate for compaction.
    bytes: u64,
}

/// The replayable state: what the journal means.
#[derive(Default)]
struct State {
    slots: VecDeque<Slot>,
    bindings: BTreeMap<String, i64>,
    next_seq: u64,
    /// Sum of the slots' `bytes`.
    slot_bytes: u64,
}

impl State {
    fn position(&self, seq: u64) -> Option<usize> {
        self.slots.binary_search_by_key(&seq, |s| s.entry.seq).ok()
    }

    /// Applies one record; on error nothing changed. The live operations
    /// check their preconditions first, so for them this never fails.
    fn apply(&mut self, record: Record<'_>, bytes: u64) -> Result<(), String> {
        match record {
            Record::Push {
                seq,
                action,
                payload,
                tx,
                t,
                attempts,
            } => {
                if seq < self.next_seq {
                    return Err(format!(
                        "push of message {seq} after message {}",
                        self.next_seq - 1
                    ));
                }
                self.next_seq = seq.saturating_add(1);
                self.slot_bytes += bytes;
                self.slots.push_back(Slot {
                    entry: Entry {
                        seq,
                        action: action.into_owned(),
                        payload: payload.into_owned(),
                        tx_ref: tx.map(Cow::into_owned),
                        attempts,
                        queued_ms: t,
                    },
                    bytes,
                });
            }
            Record::Ack { seq } => {
                let front = self.slots.front().map(|s| s.entry.seq);
                if front != Some(seq) {
                    return Err(format!("ack of message {seq}, front is {front:?}"));
                }
                if let Some(slot) = self.slots.pop_front() {
                    self.slot_bytes -= slot.bytes;
                }
            }
            Record::Attempt { seq, n } => {
                let i = self
                    .position(seq)
                    .ok_or_else(|| format!("attempt on message {seq}, which is not queued"))?;
                self.slots[i].entry.attempts = n;
            }
            Record::Discard { seq } => {
                let i = self
                    .position(seq)
                    .ok_or_else(|| format!("discard of message {seq}, which is not queued"))?;
                if let Some(slot) = self.slots.remove(i) {
                    self.slot_bytes -= slot.bytes;
                }
            }
            Record::Bind { tx, id } => {
                self.bindings.insert(tx.into_owned(), id);
            }
            Record::Forget { tx } => {
                self.bindings.remove(tx.as_ref());
            }
            Record::Next { seq } => self.next_seq = self.next_seq.max(seq),
        }
        Ok(())
    }

    fn live_bytes(&self) -> u64 {
        // Bindings are few (one per session with queued messages): a rough
        // per-line size is enough.
        self.slot_bytes + 64 * self.bindings.len() as u64
    }

    /// The journal that recreates this state, for compaction.
    fn snapshot(&self) -> Result<Vec<u8>, QueueError> {
        let mut out = Vec::new();
        for slot in &self.slots {
            let e = &slot.entry;
            out.extend(encode(&Record::Push {
                seq: e.seq,
                action: Cow::Borrowed(&e.action),
                payload: Cow::Borrowed(&e.payload),
                tx: e.tx_ref.as_deref().map(Cow::Borrowed),
                t: e.queued_ms,
                attempts: e.attempts,
            })?);
        }
        for (tx, id) in &self.bindings {
            out.extend(encode(&Record::Bind {
                tx: Cow::Borrowed(tx),
                id: *id,
            })?);
        }
        // Last, as pushes raise the next seq themselves; this keeps it when
        // the acknowledged tail is gone.
        out.extend(encode(&Record::Next { seq: self.next_seq })?);
        Ok(out)
    }
}

/// Replays `bytes` (the journal at `path`): the state and the length of the
/// valid prefix, which is shorter than `bytes` when the last record is torn.
fn replay(path: &Path, bytes: &[u8]) -> Result<(State, u64), QueueError> {
    let mut state = State {
        next_seq: 1,
        ..State::default()
    };
    let mut pos = 0;
    let mut line = 0;
    while pos < bytes.len() {
        line += 1;
        let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            tracing::warn!(
                "{}: line {line}: dropping a torn last record ({} bytes)",
                path.display(),
                bytes.len() - pos
            );
            break;
        };
        let end = pos + nl + 1;
        let applied = serde_json::from_slice::<Record<'_>>(&bytes[pos..end - 1])
            .map_err(|e| e.to_string())
            .and_then(|record| state.apply(record, (end - pos) as u64));
        if let Err(why) = applied {
            if end == bytes.len() {
                tracing::warn!(
                    "{}: line {line}: dropping a garbled last record: {why}",
                    path.display()
                );
                break;
            }
            return Err(QueueError::Corrupt {
                path: path.to_owned(),
                line,
                why,
            });
        }
        pos = end;
    }
    Ok((state, pos as u64))
}

/// The persistent, ordered queue of transaction-related messages.
pub struct Queue {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Length of the journal: what a failed append is truncated back to.
    file_len: u64,
    state: State,
    poisoned: bool,
    compact_min_bytes: u64,
    /// Held for its lock; released when the queue is dropped.
    _lock: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> QueueError + '_ {
    move |source| QueueError::Io {
        path: path.to_owned(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl Queue {
    /// Opens (creating `dir` and the journal if needed) and replays the
    /// journal, dropping a torn last record left by a crash.
    pub fn open(dir: &Path) -> Result<Queue, QueueError> {
        Self::open_with(dir, COMPACT_MIN_BYTES)
    }

    fn open_with(dir: &Path, compact_min_bytes: u64) -> Result<Queue, QueueError> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            // The new directory's own entry must be durable too.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(QueueError::Locked { path: lock_path });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        remove_stale_temps(dir)?;

        let path = dir.join(JOURNAL);
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io(&path))?;
        if created {
            sync_dir(dir)?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(&path))?;
        let (state, valid) = replay(&path, &bytes)?;
        if valid < bytes.len() as u64 {
            file.set_len(valid).map_err(io(&path))?;
            file.sync_data().map_err(io(&path))?;
        }
        let mut queue = Queue {
            dir: dir.to_owned(),
            path,
            file,
            file_len: valid,
            state,
            poisoned: false,
            compact_min_bytes,
            _lock: lock,
        };
        queue.maybe_compact();
        Ok(queue)
    }

    /// Appends `record` durably. On failure the journal is left as it was
    /// when that can be ensured, otherwise the queue is poisoned.
    fn append(&mut self, record: &Record<'_>) -> Result<u64, QueueError> {
        if self.poisoned {
            return Err(QueueError::Poisoned {
                path: self.path.clone(),
            });
        }
        let line = encode(record)?;
        if let Err(e) = self.file.write_all(&line) {
            // A partial line would sit before the next record and turn into
            // mid-file corruption, so cut it off.
            if self
                .file
                .set_len(self.file_len)
                .and_then(|()| self.file.sync_data())
                .is_err()
            {
                self.poisoned = true;
            }
            return Err(io(&self.path)(e));
        }
        if let Err(e) = self.file.sync_data() {
            // After a failed fsync the kernel may have dropped the dirty
            // pages: what is on disk is unknown.
            self.poisoned = true;
            return Err(io(&self.path)(e));
        }
        self.file_len += line.len() as u64;
        Ok(line.len() as u64)
    }

    /// Appends and applies a record whose preconditions were checked.
    fn commit(&mut self, record: Record<'_>) -> Result<(), QueueError> {
        let bytes = self.append(&record)?;
        let applied = self.state.apply(record, bytes);
        debug_assert!(applied.is_ok(), "{applied:?}");
        Ok(())
    }

    /// Appends a message; it is durable (fsync'd) when this returns.
    /// `tx_ref` names the station-side session the message belongs to.
    pub fn push(
        &mut self,
        action: &str,
        payload: Value,
        tx_ref: Option<&str>,
        now_ms: i64,
    ) -> Result<u64, QueueError> {
        let seq = self.state.next_seq;
        self.commit(Record::Push {
            seq,
            action: Cow::Borrowed(action),
            payload: Cow::Owned(payload),
            tx: tx_ref.map(Cow::Borrowed),
            t: now_ms,
            attempts: 0,
        })?;
        Ok(seq)
    }

    /// The oldest message: the next one to send.
    pub fn front(&self) -> Option<&Entry> {
        self.state.slots.front().map(|s| &s.entry)
    }

    pub fn len(&self) -> usize {
        self.state.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.slots.is_empty()
    }

    /// The queued messages, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.state.slots.iter().map(|s| &s.entry)
    }

    /// The CSMS confirmed `seq`, which must be the front: removes it durably.
    pub fn ack(&mut self, seq: u64) -> Result<(), QueueError> {
        let front = self.front().map(|e| e.seq);
        if front != Some(seq) {
            return Err(QueueError::NotFront { seq, front });
        }
        self.commit(Record::Ack { seq })?;
        self.maybe_compact();
        Ok(())
    }

    /// Counts a failed delivery attempt (CALLERROR, no answer) durably and
    /// returns the new count.
    pub fn record_attempt(&mut self, seq: u64) -> Result<u32, QueueError> {
        let i = self.state.position(seq).ok_or(QueueError::NotQueued(seq))?;
        let n = self.state.slots[i].entry.attempts.saturating_add(1);
        self.commit(Record::Attempt { seq, n })?;
        Ok(n)
    }

    /// Gives up on `seq`: appends it with `reason` to `discarded.jsonl` (an
    /// audit trail), then removes it from the queue, both durably. A crash
    /// between the two may leave it in the audit file twice, never lost.
    pub fn discard(&mut self, seq: u64, reason: &str) -> Result<(), QueueError> {
        let i = self.state.position(seq).ok_or(QueueError::NotQueued(seq))?;
        if self.poisoned {
            return Err(QueueError::Poisoned {
                path: self.path.clone(),
            });
        }
        self.write_audit(&self.state.slots[i].entry, reason)?;
        self.commit(Record::Discard { seq })?;
        self.maybe_compact();
        Ok(())
    }

    fn write_audit(&self, entry: &Entry, reason: &str) -> Result<(), QueueError> {
        #[derive(Serialize)]
        struct Audit<'a> {
            seq: u64,
            action: &'a str,
            payload: &'a Value,
            #[serde(skip_serializing_if = "Option::is_none")]
            tx_ref: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            transaction_id: Option<i64>,
            attempts: u32,
            queued_ms: i64,
            reason: &'a str,
        }
        let path = self.dir.join(DISCARDED);
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut line = Vec::new();
        // A line torn by an earlier crash must not swallow this one.
        if file.seek(SeekFrom::End(0)).map_err(io(&path))? > 0 {
            let mut last = [0u8];
            file.seek(SeekFrom::End(-1)).map_err(io(&path))?;
            file.read_exact(&mut last).map_err(io(&path))?;
            if last[0] != b'\n' {
                line.push(b'\n');
            }
        }
        let audit = Audit {
            seq: entry.seq,
            action: &entry.action,
            payload: &entry.payload,
            tx_ref: entry.tx_ref.as_deref(),
            transaction_id: entry
                .tx_ref
                .as_deref()
                .and_then(|tx| self.transaction_id(tx)),
            attempts: entry.attempts,
            queued_ms: entry.queued_ms,
            reason,
        };
        line.extend(serde_json::to_vec(&audit).map_err(QueueError::Encode)?);
        line.push(b'\n');
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(io(&path))?;
        if created {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The CSMS assigned `transaction_id` to session `tx_ref`
    /// (StartTransaction.conf); durable. A later binding replaces it.
    pub fn bind_transaction(
        &mut self,
        tx_ref: &str,
        transaction_id: i64,
    ) -> Result<(), QueueError> {
        self.commit(Record::Bind {
            tx: Cow::Borrowed(tx_ref),
            id: transaction_id,
        })
    }

    /// The CSMS transactionId of session `tx_ref`, once bound.
    pub fn transaction_id(&self, tx_ref: &str) -> Option<i64> {
        self.state.bindings.get(tx_ref).copied()
    }

    /// Forgets the binding of `tx_ref`, durably; an error while a queued
    /// message still refers to it (it would be sent without its id).
    pub fn forget_transaction(&mut self, tx_ref: &str) -> Result<(), QueueError> {
        if let Some(e) = self.iter().find(|e| e.tx_ref.as_deref() == Some(tx_ref)) {
            return Err(QueueError::StillQueued {
                tx_ref: tx_ref.to_owned(),
                seq: e.seq,
            });
        }
        if !self.state.bindings.contains_key(tx_ref) {
            return Ok(());
        }
        self.commit(Record::Forget {
            tx: Cow::Borrowed(tx_ref),
        })?;
        self.maybe_compact();
        Ok(())
    }

    /// Compacts when the journal is mostly dead records. A failure leaves the
    /// old journal in use (or poisons the queue) and is only logged: the
    /// operation that triggered it has already succeeded.
    fn maybe_compact(&mut self) {
        if self.poisoned
            || self.file_len < self.compact_min_bytes
            || self.file_len < COMPACT_RATIO.saturating_mul(self.state.live_bytes())
        {
            return;
        }
        if let Err(e) = self.compact() {
            tracing::warn!("compacting the transaction queue: {e}");
        }
    }

    fn compact(&mut self) -> Result<(), QueueError> {
        if self.poisoned {
            return Err(QueueError::Poisoned {
                path: self.path.clone(),
            });
        }
        let snapshot = self.state.snapshot()?;
        if let Err(e) = evos_service::persist::write_atomic(&self.path, &snapshot) {
            // The rename may or may not have happened (and be durable):
            // only a replay knows which journal is current.
            self.poisoned = true;
            return Err(io(&self.path)(e));
        }
        match OpenOptions::new().append(true).open(&self.path) {
            Ok(file) => {
                self.file = file;
                self.file_len = snapshot.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.poisoned = true;
                Err(io(&self.path)(e))
            }
        }
    }
}

/// Removes temp files a crash during compaction left behind.
fn remove_stale_temps(dir: &Path) -> Result<(), QueueError> {
    let prefix = format!("{JOURNAL}.tmp-");
    for item in std::fs::read_dir(dir).map_err(io(dir))? {
        let item = item.map_err(io(dir))?;
        if item.file_name().to_string_lossy().starts_with(&prefix) {
            let path = item.path();
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::io::BufRead;

    type Live = (Vec<Entry>, BTreeMap<String, i64>, u64);

    fn live(q: &Queue) -> Live {
        let sum: u64 = q.state.slots.iter().map(|s| s.bytes).sum();
        assert_eq!(q.state.slot_bytes, sum);
        (
            q.iter().cloned().collect(),
            q.state.bindings.clone(),
            q.state.next_seq,
        )
    }

    fn journal_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join(JOURNAL)).unwrap().len()
    }

    #[test]
    fn order_and_state_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        assert!(q.is_empty());
        for n in 1..=5 {
            let seq = q
                .push("MeterValues", json!({ "n": n }), Some("s1"), 1000 + n)
                .unwrap();
            assert_eq!(seq, n as u64);
        }
        q.ack(1).unwrap();
        assert_eq!(q.record_attempt(2).unwrap(), 1);
        assert_eq!(q.record_attempt(2).unwrap(), 2);
        assert_eq!(q.record_attempt(4).unwrap(), 1);
        q.bind_transaction("s1", 77).unwrap();
        let before = live(&q);
        drop(q);

        let mut q = Queue::open(dir.path()).unwrap();
        assert_eq!(live(&q), before);
        let seqs: Vec<u64> = q.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 3, 4, 5]);
        let front = q.front().unwrap();
        assert_eq!(
            (front.action.as_str(), &front.payload, front.attempts),
            ("MeterValues", &json!({ "n": 2 }), 2)
        );
        assert_eq!(front.tx_ref.as_deref(), Some("s1"));
        assert_eq!(front.queued_ms, 1002);
        assert_eq!(q.transaction_id("s1"), Some(77));
        assert_eq!(q.transaction_id("s2"), None);
        // Sequence numbers are never reused.
        assert_eq!(q.push("StopTransaction", json!({}), None, 0).unwrap(), 6);
    }

    #[test]
    fn ack_must_name_the_front() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        assert!(matches!(
            q.ack(1),
            Err(QueueError::NotFront {
                seq: 1,
                front: None
            })
        ));
        q.push("StartTransaction", json!({}), None, 0).unwrap();
        q.push("StopTransaction", json!({}), None, 0).unwrap();
        assert!(matches!(
            q.ack(2),
            Err(QueueError::NotFront {
                seq: 2,
                front: Some(1)
            })
        ));
        assert!(matches!(q.record_attempt(9), Err(QueueError::NotQueued(9))));
        assert!(matches!(q.discard(9, "x"), Err(QueueError::NotQueued(9))));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn binding_outlives_its_messages_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        let start = q
            .push(
                "StartTransaction",
                json!({ "connectorId": 1 }),
                Some("s1"),
                0,
            )
            .unwrap();
        let stop = q
            .push("StopTransaction", json!({ "meterStop": 5 }), Some("s1"), 0)
            .unwrap();
        q.bind_transaction("s1", 41).unwrap();
        q.ack(start).unwrap();
        match q.forget_transaction("s1") {
            Err(QueueError::StillQueued { tx_ref, seq }) => {
                assert_eq!((tx_ref.as_str(), seq), ("s1", stop));
            }
            other => panic!("{other:?}"),
        }
        drop(q);
        let mut q = Queue::open(dir.path()).unwrap();
        assert_eq!(q.transaction_id("s1"), Some(41));
        q.ack(stop).unwrap();
        q.forget_transaction("s1").unwrap();
        q.forget_transaction("never-bound").unwrap();
        drop(q);
        let q = Queue::open(dir.path()).unwrap();
        assert_eq!(q.transaction_id("s1"), None);
        assert!(q.is_empty());
    }

    #[test]
    fn discard_writes_the_audit_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        let a = q
            .push("StopTransaction", json!({ "meterStop": 9 }), Some("s1"), 5)
            .unwrap();
        q.push("MeterValues", json!({}), None, 6).unwrap();
        q.bind_transaction("s1", 3).unwrap();
        for _ in 0..3 {
            q.record_attempt(a).unwrap();
        }
        q.discard(a, "TransactionMessageAttempts exhausted")
            .unwrap();
        assert_eq!(q.front().unwrap().seq, a + 1);

        // A line torn by a crash in an earlier discard does not swallow the
        // next one.
        let audit = dir.path().join(DISCARDED);
        OpenOptions::new()
            .append(true)
            .open(&audit)
            .unwrap()
            .write_all(b"{\"seq\":")
            .unwrap();
        q.discard(a + 1, "second").unwrap();
        drop(q);

        let text = std::fs::read_to_string(&audit).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let first: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(
            first,
            json!({
                "seq": a, "action": "StopTransaction", "payload": { "meterStop": 9 },
                "tx_ref": "s1", "transaction_id": 3, "attempts": 3, "queued_ms": 5,
                "reason": "TransactionMessageAttempts exhausted",
            })
        );
        let third: Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(third["reason"], "second");
        assert!(Queue::open(dir.path()).unwrap().is_empty());
    }

    /// A power cut while appending leaves any prefix of the last record on
    /// disk: each loses that record and nothing before it, and the queue
    /// goes on working.
    #[test]
    fn torn_last_record_loses_only_that_record() {
        type Step = fn(&mut Queue);
        let steps: [(&str, Step); 6] = [
            ("push", |q| {
                q.push("MeterValues", json!({ "last": true }), Some("s2"), 9)
                    .map(drop)
                    .unwrap()
            }),
            ("ack", |q| q.ack(1).unwrap()),
            ("attempt", |q| q.record_attempt(2).map(drop).unwrap()),
            ("discard", |q| q.discard(3, "gone").unwrap()),
            ("bind", |q| q.bind_transaction("s2", 12345).unwrap()),
            ("forget", |q| q.forget_transaction("old").unwrap()),
        ];
        for (name, step) in steps {
            let dir = tempfile::tempdir().unwrap();
            let mut q = Queue::open(dir.path()).unwrap();
            for n in 1..=3 {
                q.push("StartTransaction", json!({ "n": n }), Some("s1"), n)
                    .unwrap();
            }
            q.bind_transaction("old", 1).unwrap();
            let before = live(&q);
            let before_len = journal_len(dir.path());
            step(&mut q);
            let after = live(&q);
            assert_ne!(before, after, "{name}");
            drop(q);
            let full = std::fs::read(dir.path().join(JOURNAL)).unwrap();
            assert!(full.len() as u64 > before_len);

            for cut in before_len as usize..full.len() {
                let copy = tempfile::tempdir().unwrap();
                std::fs::write(copy.path().join(JOURNAL), &full[..cut]).unwrap();
                let mut q = Queue::open(copy.path()).unwrap();
                assert_eq!(live(&q), before, "{name} cut at {cut}");
                assert_eq!(journal_len(copy.path()), before_len, "{name} cut at {cut}");
                let seq = q.push("MeterValues", json!({}), None, 0).unwrap();
                drop(q);
                let q = Queue::open(copy.path()).unwrap();
                assert_eq!(q.iter().last().unwrap().seq, seq, "{name} cut at {cut}");
                assert_eq!(q.len(), before.0.len() + 1, "{name} cut at {cut}");
            }
            let q = Queue::open(dir.path()).unwrap();
            assert_eq!(live(&q), after, "{name}");
        }
    }

    #[test]
    fn garbled_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        q.push("StartTransaction", json!({}), None, 0).unwrap();
        let before = live(&q);
        let good = journal_len(dir.path());
        drop(q);
        // Blocks of zeros or stale data after a power cut, newline included.
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL))
            .unwrap();
        file.write_all(b"\0\0\0\0{\"op\":\"ack\"\n").unwrap();
        drop(file);
        let q = Queue::open(dir.path()).unwrap();
        assert_eq!(live(&q), before);
        assert_eq!(journal_len(dir.path()), good);
    }

    #[test]
    fn corruption_before_the_last_line_is_an_error_naming_file_and_line() {
        for bad in [
            &b"not json"[..],
            b"{\"op\":\"ack\",\"seq\":2}",
            b"{\"op\":\"nope\"}",
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut q = Queue::open(dir.path()).unwrap();
            for _ in 0..3 {
                q.push("StartTransaction", json!({}), None, 0).unwrap();
            }
            drop(q);
            let path = dir.path().join(JOURNAL);
            let text = std::fs::read(&path).unwrap();
            let first = text.iter().position(|&b| b == b'\n').unwrap() + 1;
            let mut broken = text[..first].to_vec();
            broken.extend(bad);
            broken.push(b'\n');
            broken.extend(&text[first..]);
            std::fs::write(&path, &broken).unwrap();

            let err = Queue::open(dir.path()).err().unwrap();
            assert!(
                matches!(&err, QueueError::Corrupt { line: 2, path: p, .. } if *p == path),
                "{err:?}"
            );
            let message = err.to_string();
            assert!(message.contains("journal.jsonl: line 2"), "{message}");
            // Nothing was cut off.
            assert_eq!(std::fs::read(&path).unwrap(), broken);
        }
    }

    #[test]
    fn compaction_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path()).unwrap();
        for n in 0..60 {
            let tx = format!("s{}", n % 7);
            q.push(
                "MeterValues",
                json!({ "n": n, "v": [1.5, "x"] }),
                Some(&tx),
                n,
            )
            .unwrap();
        }
        for seq in 1..=45 {
            q.ack(seq).unwrap();
        }
        q.record_attempt(50).unwrap();
        q.record_attempt(50).unwrap();
        q.bind_transaction("s3", 303).unwrap();
        q.bind_transaction("gone", 1).unwrap();
        q.forget_transaction("gone").unwrap();
        let before = live(&q);
        let old_len = journal_len(dir.path());
        q.compact().unwrap();
        assert!(journal_len(dir.path()) < old_len / 2);
        assert_eq!(live(&q), before);
        // Appends after a compaction go to the new journal.
        q.ack(46).unwrap();
        let before = live(&q);
        drop(q);
        let mut q = Queue::open(dir.path()).unwrap();
        assert_eq!(live(&q), before);
        assert_eq!(q.iter().find(|e| e.seq == 50).unwrap().attempts, 2);

        // An emptied queue still continues the sequence.
        for seq in 47..=60 {
            q.ack(seq).unwrap();
        }
        q.compact().unwrap();
        drop(q);
        let mut q = Queue::open(dir.path()).unwrap();
        assert!(q.is_empty());
        assert_eq!(q.push("StartTransaction", json!({}), None, 0).unwrap(), 61);
    }

    #[test]
    fn journal_stays_small_under_steady_traffic() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open_with(dir.path(), 4096).unwrap();
        for n in 0..400 {
            let seq = q.push("MeterValues", json!({ "n": n }), None, n).unwrap();
            if n % 10 == 0 {
                q.record_attempt(seq).unwrap();
            }
            // Keep a short backlog.
            while q.len() > 3 {
                let front = q.front().unwrap().seq;
                q.ack(front).unwrap();
            }
        }
        assert!(
            journal_len(dir.path()) < 3 * 4096,
            "{}",
            journal_len(dir.path())
        );
        let before = live(&q);
        drop(q);
        assert_eq!(live(&Queue::open(dir.path()).unwrap()), before);
    }

    #[test]
    fn stale_compaction_temps_are_removed_and_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(format!("{JOURNAL}.tmp-4242"));
        std::fs::write(&stale, b"half a snapshot").unwrap();
        let q = Queue::open(dir.path()).unwrap();
        assert!(!stale.exists());
        assert!(matches!(
            Queue::open(dir.path()),
            Err(QueueError::Locked { .. })
        ));
        drop(q);
        Queue::open(dir.path()).unwrap();
    }

    #[test]
    fn open_names_the_path_on_io_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let err = Queue::open(&file.join("queue")).err().unwrap();
        assert!(matches!(err, QueueError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }

    /// Run as a child process by `killed_mid_write_keeps_every_reported_record`:
    /// pushes (and acks some) until killed, reporting each durable step.
    #[test]
    fn crash_child() {
        let Some(dir) = std::env::var_os("EVOS_QUEUE_CRASH_DIR") else {
            return;
        };
        let mut q = Queue::open_with(Path::new(&dir), 2048).unwrap();
        let mut acked = 0;
        // Bounded, in case the parent died.
        for n in 0..100_000u64 {
            let pushed = q
                .push("MeterValues", json!({ "n": n + 1 }), None, 0)
                .unwrap();
            if n % 3 == 2 {
                acked = q.front().unwrap().seq;
                q.ack(acked).unwrap();
            }
            println!("durable pushed={pushed} acked={acked}");
        }
    }

    #[test]
    fn killed_mid_write_keeps_every_reported_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "queue::tests::crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("EVOS_QUEUE_CRASH_DIR", dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (mut pushed, mut acked) = (0u64, 0u64);
        for line in stdout.lines() {
            let line = line.unwrap();
            let Some(rest) = line.strip_prefix("durable ") else {
                continue;
            };
            let (p, a) = rest.split_once(' ').unwrap();
            pushed = p.strip_prefix("pushed=").unwrap().parse().unwrap();
            acked = a.strip_prefix("acked=").unwrap().parse().unwrap();
            if pushed >= 600 {
                break;
            }
        }
        assert!(pushed >= 600, "the child stopped early");
        child.kill().unwrap(); // SIGKILL, somewhere in a later write
        child.wait().unwrap();

        let q = Queue::open(dir.path()).unwrap();
        let seqs: Vec<u64> = q.iter().map(|e| e.seq).collect();
        // Every reported push is there unless acknowledged, every reported
        // ack is applied, and what is left is a gap-free run.
        let first = *seqs.first().unwrap();
        let last = *seqs.last().unwrap();
        assert!(first > acked, "ack of {acked} lost: front is {first}");
        assert!(last >= pushed, "push of {pushed} lost: last is {last}");
        assert_eq!(seqs, (first..=last).collect::<Vec<_>>());
        for e in q.iter() {
            assert_eq!(e.payload, json!({ "n": e.seq }));
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push { action: u8, n: u32, tx: Option<u8> },
        Ack,
        AckWrong,
        Attempt(usize),
        Discard(usize),
        Bind(u8, i64),
        Forget(u8),
        Reopen,
        Compact,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..3, any::<u32>(), proptest::option::of(0u8..3))
                .prop_map(|(action, n, tx)| Op::Push { action, n, tx }),
            3 => Just(Op::Ack),
            1 => Just(Op::AckWrong),
            2 => any::<usize>().prop_map(Op::Attempt),
            1 => any::<usize>().prop_map(Op::Discard),
            2 => (0u8..3, any::<i64>()).prop_map(|(tx, id)| Op::Bind(tx, id)),
            1 => (0u8..3).prop_map(Op::Forget),
            1 => Just(Op::Reopen),
            1 => Just(Op::Compact),
        ]
    }

    #[derive(Default)]
    struct Model {
        entries: Vec<Entry>,
        bindings: BTreeMap<String, i64>,
        next: u64,
        discarded: usize,
    }

    const ACTIONS: [&str; 3] = ["StartTransaction", "MeterValues", "StopTransaction"];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]

        /// Any sequence of operations, with reopens and compactions in
        /// between, leaves the same live state as an in-memory model.
        #[test]
        fn matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            // Small, so that automatic compactions happen too.
            let open = || Queue::open_with(dir.path(), 600).unwrap();
            let mut q = open();
            let mut m = Model { next: 1, ..Model::default() };
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Push { action, n, tx } => {
                        let tx = tx.map(|t| format!("tx{t}"));
                        let payload = json!({ "n": n, "i": i });
                        let seq = q.push(ACTIONS[action as usize], payload.clone(), tx.as_deref(), i as i64).unwrap();
                        prop_assert_eq!(seq, m.next);
                        m.entries.push(Entry {
                            seq, action: ACTIONS[action as usize].into(), payload,
                            tx_ref: tx, attempts: 0, queued_ms: i as i64,
                        });
                        m.next += 1;
                    }
                    Op::Ack => match m.entries.first() {
                        Some(e) => {
                            q.ack(e.seq).unwrap();
                            m.entries.remove(0);
                        }
                        None => prop_assert!(q.ack(1).is_err()),
                    },
                    Op::AckWrong => {
                        let wrong = m.entries.first().map_or(m.next, |e| e.seq + 1);
                        let result = q.ack(wrong);
                        prop_assert!(matches!(result, Err(QueueError::NotFront { .. })), "{:?}", result);
                    }
                    Op::Attempt(k) => if m.entries.is_empty() {
                        prop_assert!(q.record_attempt(m.next).is_err());
                    } else {
                        let len = m.entries.len();
                        let e = &mut m.entries[k % len];
                        e.attempts += 1;
                        prop_assert_eq!(q.record_attempt(e.seq).unwrap(), e.attempts);
                    },
                    Op::Discard(k) => if m.entries.is_empty() {
                        prop_assert!(q.discard(m.next, "x").is_err());
                    } else {
                        let e = m.entries.remove(k % m.entries.len());
                        q.discard(e.seq, "x").unwrap();
                        m.discarded += 1;
                    },
                    Op::Bind(t, id) => {
                        q.bind_transaction(&format!("tx{t}"), id).unwrap();
                        m.bindings.insert(format!("tx{t}"), id);
                    }
                    Op::Forget(t) => {
                        let tx = format!("tx{t}");
                        let used = m.entries.iter().any(|e| e.tx_ref.as_deref() == Some(tx.as_str()));
                        let result = q.forget_transaction(&tx);
                        if used {
                            prop_assert!(matches!(result, Err(QueueError::StillQueued { .. })), "{:?}", result);
                        } else {
                            result.unwrap();
                            m.bindings.remove(&tx);
                        }
                    }
                    Op::Reopen => {
                        drop(q);
                        q = open();
                    }
                    Op::Compact => q.compact().unwrap(),
                }
                prop_assert_eq!(live(&q), (m.entries.clone(), m.bindings.clone(), m.next));
            }
            drop(q);
            let q = open();
            prop_assert_eq!(live(&q), (m.entries.clone(), m.bindings.clone(), m.next));
            let audit = std::fs::read_to_string(dir.path().join(DISCARDED)).unwrap_or_default();
            prop_assert_eq!(audit.lines().count(), m.discarded);
        }
    }
}
