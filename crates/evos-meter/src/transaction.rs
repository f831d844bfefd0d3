//! Transaction readings, persisted before they are returned.
//!
//! One file per transaction, `<state>/meter/transactions/<id>.json`,
//! replaced atomically (temp + fsync + rename). The start is written before
//! `StartTransaction` returns and the stop before `StopTransaction` returns,
//! so after a crash or power cut a repeated call returns the same record,
//! and a stop after a restart still pairs with the original start.

use std::path::{Path, PathBuf};

use evos_bus::meter::TransactionReading;
use serde::{Deserialize, Serialize};

/// Completed transactions kept on disk for repeated `StopTransaction`
/// calls; older ones are removed.
const KEEP_COMPLETED: usize = 200;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionRecord {
    pub id: String,
    pub evse: u32,
    pub token: String,
    pub start: TransactionReading,
    pub stop: Option<TransactionReading>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    #[error("transaction id `{0}` is not 1 to 64 characters of letters, digits, `-`, `_` or `.`")]
    BadId(String),
    #[error("transaction {0} belongs to EVSE {1}")]
    OtherEvse(String, u32),
    #[error("cannot persist transaction {id}: {source}")]
    Io {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("transaction file {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
}

pub struct TransactionStore {
    dir: PathBuf,
}

impl TransactionStore {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(TransactionStore {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: &str) -> Result<PathBuf, TransactionError> {
        let valid = !id.is_empty()
            && id.len() <= 64
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(TransactionError::BadId(id.to_owned()));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    pub fn load(&self, id: &str) -> Result<Option<TransactionRecord>, TransactionError> {
        let path = self.path(id)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(TransactionError::Io {
                    id: id.to_owned(),
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| TransactionError::Corrupt {
                path,
                message: e.to_string(),
            })
    }

    /// Check the id names a file we could write, before reading the meter.
    pub fn check_id(&self, id: &str) -> Result<(), TransactionError> {
        self.path(id).map(drop)
    }

    pub fn save(&self, record: &TransactionRecord) -> Result<(), TransactionError> {
        let path = self.path(&record.id)?;
        let io = |source| TransactionError::Io {
            id: record.id.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| io(std::io::Error::other(e)))?;
        evos_service::persist::write_atomic(&path, &bytes).map_err(io)?;
        if record.stop.is_some() {
            self.prune();
        }
        Ok(())
    }

    /// Transactions started and not stopped, e.g. across a restart.
    pub fn open_transactions(&self) -> Vec<TransactionRecord> {
        self.all()
            .into_iter()
            .filter(|r| r.stop.is_none())
            .collect()
    }

    fn all(&self) -> Vec<TransactionRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<TransactionRecord>(&b).ok())
            .collect()
    }

    fn prune(&self) {
        // Counting names is cheap; read the records only when over the limit.
        let files = std::fs::read_dir(&self.dir).map_or(0, |entries| entries.count());
        if files <= KEEP_COMPLETED {
            return;
        }
        let mut done: Vec<TransactionRecord> = self
            .all()
            .into_iter()
            .filter(|r| r.stop.is_some())
            .collect();
        if done.len() <= KEEP_COMPLETED {
            return;
        }
        done.sort_by_key(|r| r.stop.as_ref().map_or(0, |s| s.timestamp_ms));
        for old in &done[..done.len() - KEEP_COMPLETED] {
            if let Ok(path) = self.path(&old.id) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(id: &str, wh: f64, t: u64) -> TransactionReading {
        TransactionReading {
            transaction: id.into(),
            energy_wh: wh,
            timestamp_ms: t,
            ocmf: String::new(),
        }
    }

    #[test]
    fn a_record_survives_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = TransactionStore::open(dir.path()).unwrap();
        let record = TransactionRecord {
            id: "s-1".into(),
            evse: 1,
            token: "04A1B2C3".into(),
            start: reading("s-1", 1000.0, 1),
            stop: None,
        };
        store.save(&record).unwrap();
        let store = TransactionStore::open(dir.path()).unwrap();
        assert_eq!(store.load("s-1").unwrap(), Some(record.clone()));
        assert_eq!(store.open_transactions(), vec![record]);
        assert_eq!(store.load("s-2").unwrap(), None);
    }

    #[test]
    fn ids_that_are_not_file_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = TransactionStore::open(dir.path()).unwrap();
        for bad in ["", "../x", "a/b", ".hidden", &"x".repeat(65)] {
            assert!(
                matches!(store.load(bad), Err(TransactionError::BadId(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn completed_transactions_are_pruned_to_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = TransactionStore::open(dir.path()).unwrap();
        for i in 0..(KEEP_COMPLETED as u64 + 5) {
            let id = format!("t{i}");
            store
                .save(&TransactionRecord {
                    id: id.clone(),
                    evse: 1,
                    token: String::new(),
                    start: reading(&id, 0.0, i),
                    stop: Some(reading(&id, 1.0, 1000 + i)),
                })
                .unwrap();
        }
        assert_eq!(store.load("t0").unwrap(), None);
        assert!(
            store
                .load(&format!("t{}", KEEP_COMPLETED + 4))
                .unwrap()
                .is_some()
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            KEEP_COMPLETED
        );
    }
}
