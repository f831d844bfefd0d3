//! Session records that survive a crash or a power cut.
//!
//! Per EVSE, `active-<id>.json` holds the active session (replaced
//! atomically) with the parent id of its token (so a restart keeps stop by
//! parent id working), and `history-<id>.jsonl` the ended ones, appended and
//! fsynced.
//! Ending a session appends to the history first and removes the active file
//! second; a crash between the two leaves an active file whose id is already
//! in the history, which [`SessionStore::open`] recognises as ended.
//! The meter register is the source of energy, so the active record is not
//! rewritten as energy flows. A later history line with the same id
//! supersedes an earlier one: that is how the meter's persisted stop reading
//! corrects a record already ended with the live reading.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

use evos_bus::evse::SessionRecord;
use evos_service::persist::write_atomic;
use serde::{Deserialize, Serialize};

/// Ended sessions kept per EVSE.
const HISTORY_KEEP: usize = 500;

#[derive(Debug, thiserror::Error)]
#[error("session store {path}: {source}")]
pub struct StoreError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError {
        path: path.to_owned(),
        source,
    }
}

/// Add `record` to the history, replacing an earlier record of its id.
fn supersede(history: &mut VecDeque<SessionRecord>, record: SessionRecord) {
    match history.iter_mut().rev().find(|h| h.id == record.id) {
        Some(old) => *old = record,
        None => history.push_back(record),
    }
}

/// The active file: the record, and what the bus does not show of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Active {
    #[serde(flatten)]
    record: SessionRecord,
    /// The parent id of the session's token; empty when none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    parent: String,
}

#[derive(Debug)]
pub struct SessionStore {
    active_path: PathBuf,
    history_path: PathBuf,
    active: Option<Active>,
    history: VecDeque<SessionRecord>,
}

impl SessionStore {
    pub fn open(dir: &Path, evse: u32) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let active_path = dir.join(format!("active-{evse}.json"));
        let history_path = dir.join(format!("history-{evse}.jsonl"));
        let mut history = VecDeque::new();
        match std::fs::read_to_string(&history_path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    match serde_json::from_str::<SessionRecord>(line) {
                        Ok(record) => supersede(&mut history, record),
                        // Only the last line can be torn by a power cut.
                        Err(e) => {
                            tracing::warn!(path = %history_path.display(), line = n + 1, "skipped an unreadable session record: {e}")
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&history_path)(e)),
        }
        let active = match std::fs::read(&active_path) {
            Ok(bytes) => match serde_json::from_slice::<Active>(&bytes) {
                Ok(active) if history.iter().any(|h| h.id == active.record.id) => None,
                Ok(active) => Some(active),
                Err(e) => {
                    tracing::error!(path = %active_path.display(), "active session record is unreadable: {e}");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(&active_path)(e)),
        };
        let mut store = SessionStore {
            active_path,
            history_path,
            active,
            history,
        };
        if store.active.is_none() {
            store.remove_active()?;
        }
        if store.history.len() > HISTORY_KEEP * 2 {
            store.compact()?;
        }
        Ok(store)
    }

    pub fn active(&self) -> Option<&SessionRecord> {
        self.active.as_ref().map(|a| &a.record)
    }

    /// The parent id of the active session's token; empty when none.
    pub fn active_parent(&self) -> &str {
        self.active.as_ref().map_or("", |a| a.parent.as_str())
    }

    pub fn history(&self) -> impl Iterator<Item = &SessionRecord> {
        self.history.iter()
    }

    /// Record the active session (again, when its record changed); `parent`
    /// is its token's parent id.
    pub fn started(&mut self, record: &SessionRecord, parent: &str) -> Result<(), StoreError> {
        let active = Active {
            record: record.clone(),
            parent: parent.to_owned(),
        };
        let json = serde_json::to_vec(&active).map_err(|e| err(&self.active_path)(e.into()))?;
        write_atomic(&self.active_path, &json).map_err(err(&self.active_path))?;
        self.active = Some(active);
        Ok(())
    }

    /// Record an ended session; ending one already ended corrects it.
    pub fn ended(&mut self, record: &SessionRecord) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(record).map_err(|e| err(&self.history_path)(e.into()))?;
        line.push(b'\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.history_path)
            .map_err(err(&self.history_path))?;
        file.write_all(&line).map_err(err(&self.history_path))?;
        file.sync_all().map_err(err(&self.history_path))?;
        supersede(&mut self.history, record.clone());
        self.active = None;
        self.remove_active()?;
        if self.history.len() > HISTORY_KEEP * 2 {
            self.compact()?;
        }
        Ok(())
    }

    fn remove_active(&self) -> Result<(), StoreError> {
        match std::fs::remove_file(&self.active_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(&self.active_path)(e)),
        }
    }

    fn compact(&mut self) -> Result<(), StoreError> {
        while self.history.len() > HISTORY_KEEP {
            self.history.pop_front();
        }
        let mut text = Vec::new();
        for record in &self.history {
            serde_json::to_writer(&mut text, record)
                .map_err(|e| err(&self.history_path)(e.into()))?;
            text.push(b'\n');
        }
        write_atomic(&self.history_path, &text).map_err(err(&self.history_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, ended_ms: i64) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            evse: 1,
            token: "T".into(),
            started_ms: 1,
            ended_ms,
            start_meter_wh: 10.0,
            stop_meter_wh: 20.0,
            stop_reason: if ended_ms > 0 {
                "Local".into()
            } else {
                String::new()
            },
            fault: String::new(),
            stop_token: String::new(),
            reservation_id: 0,
        }
    }

    #[test]
    fn active_survives_reopen_and_ends_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SessionStore::open(dir.path(), 1).unwrap();
        store.started(&record("a", 0), "").unwrap();
        let mut store = SessionStore::open(dir.path(), 1).unwrap();
        assert_eq!(store.active().unwrap().id, "a");
        store.ended(&record("a", 5)).unwrap();
        let store = SessionStore::open(dir.path(), 1).unwrap();
        assert!(store.active().is_none());
        assert_eq!(
            store.history().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
    }

    #[test]
    fn the_parent_id_survives_reopen_and_old_files_have_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SessionStore::open(dir.path(), 1).unwrap();
        store.started(&record("a", 0), "FLEET").unwrap();
        let store = SessionStore::open(dir.path(), 1).unwrap();
        assert_eq!(store.active(), Some(&record("a", 0)));
        assert_eq!(store.active_parent(), "FLEET");

        // A file written before parents were kept.
        let old = serde_json::to_vec(&record("b", 0)).unwrap();
        std::fs::write(dir.path().join("active-1.json"), old).unwrap();
        let store = SessionStore::open(dir.path(), 1).unwrap();
        assert_eq!(store.active(), Some(&record("b", 0)));
        assert_eq!(store.active_parent(), "");
    }

    #[test]
    fn crash_between_history_and_active_removal_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SessionStore::open(dir.path(), 1).unwrap();
        store.started(&record("a", 0), "").unwrap();
        let active = std::fs::read(dir.path().join("active-1.json")).unwrap();
        store.ended(&record("a", 5)).unwrap();
        std::fs::write(dir.path().join("active-1.json"), active).unwrap();
        let store = SessionStore::open(dir.path(), 1).unwrap();
        assert!(store.active().is_none(), "the session ended already");
        assert_eq!(store.history().count(), 1);
    }

    #[test]
    fn a_correction_supersedes_the_ended_record_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SessionStore::open(dir.path(), 1).unwrap();
        store.ended(&record("a", 5)).unwrap();
        store.ended(&record("b", 6)).unwrap();
        let mut fixed = record("a", 5);
        fixed.stop_meter_wh = 25.0;
        store.ended(&fixed).unwrap();
        let ids = |s: &SessionStore| s.history().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&store), ["a", "b"]);
        let store = SessionStore::open(dir.path(), 1).unwrap();
        assert_eq!(ids(&store), ["a", "b"]);
        assert_eq!(store.history().next().unwrap().stop_meter_wh, 25.0);
    }

    #[test]
    fn torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SessionStore::open(dir.path(), 1).unwrap();
        store.ended(&record("a", 5)).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("history-1.jsonl"))
            .unwrap();
        f.write_all(b"{\"id\":\"b\",\"ev").unwrap();
        let store = SessionStore::open(dir.path(), 1).unwrap();
        assert_eq!(store.history().count(), 1);
    }
}
