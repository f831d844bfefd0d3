//! Which evse sessions have become which transaction messages, so that each
//! session yields exactly one StartTransaction and one StopTransaction
//! however often we (or evse) crash and catch up (OCPP 1.6 §4.10
//! "transaction-related messages" delivered once, in order; ARCHITECTURE.md
//! "Delivery").
//!
//! The ledger is written *after* the queue: a crash between the two leaves
//! the message in the queue, which [`Ledger::start_queued`] and
//! [`Ledger::stop_queued`] also consult. It also keeps the samples that go
//! into StopTransaction.transactionData (StopTxnSampledData /
//! StopTxnAlignedData), so they survive a restart too.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::queue::Queue;
use crate::v16::messages::MeterValue;

/// Finished transactions remembered, so a late catch-up does not repeat them.
const DONE_KEPT: usize = 500;
/// Samples kept per transaction for transactionData (a week at 15 min).
const SAMPLES_KEPT: usize = 700;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt ledger: {why}")]
    Corrupt { path: PathBuf, why: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Transaction {
    evse: u32,
    tag: String,
    #[serde(default)]
    stop_tag: String,
    started: bool,
    ended: bool,
    #[serde(default)]
    samples: Vec<MeterValue>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// Sessions that started before this are not ours to report (they
    /// predate the OCPP service on this station).
    since_ms: i64,
    open: BTreeMap<String, Transaction>,
    done: VecDeque<String>,
}

pub struct Ledger {
    path: PathBuf,
    state: State,
}

impl Ledger {
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LedgerError::Corrupt {
                path: path.to_owned(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                since_ms: crate::clock::system_ms(),
                ..State::default()
            },
            Err(source) => {
                return Err(LedgerError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let ledger = Ledger {
            path: path.to_owned(),
            state,
        };
        ledger.save()?;
        Ok(ledger)
    }

    pub fn since_ms(&self) -> i64 {
        self.state.since_ms
    }

    fn is_done(&self, tx_ref: &str) -> bool {
        self.state.done.iter().any(|d| d == tx_ref)
    }

    /// Whether the session's StartTransaction exists (queued, sent or done).
    pub fn start_queued(&self, tx_ref: &str, queue: &Queue) -> bool {
        self.state.open.get(tx_ref).is_some_and(|t| t.started)
            || self.is_done(tx_ref)
            || queue.transaction_id(tx_ref).is_some()
            || queue
                .iter()
                .any(|e| e.action == "StartTransaction" && e.tx_ref.as_deref() == Some(tx_ref))
    }

    /// Whether the session's StopTransaction exists (queued, sent or done).
    pub fn stop_queued(&self, tx_ref: &str, queue: &Queue) -> bool {
        self.state.open.get(tx_ref).is_some_and(|t| t.ended)
            || self.is_done(tx_ref)
            || queue
                .iter()
                .any(|e| e.action == "StopTransaction" && e.tx_ref.as_deref() == Some(tx_ref))
    }

    pub fn begin(&mut self, tx_ref: &str, evse: u32, tag: &str) -> Result<(), LedgerError> {
        let t = self
            .state
            .open
            .entry(tx_ref.to_owned())
            .or_insert(Transaction {
                evse,
                tag: tag.to_owned(),
                stop_tag: String::new(),
                started: false,
                ended: false,
                samples: Vec::new(),
            });
        t.started = true;
        self.save()
    }

    pub fn end(&mut self, tx_ref: &str, stop_tag: &str) -> Result<(), LedgerError> {
        if let Some(t) = self.state.open.get_mut(tx_ref) {
            t.ended = true;
            t.stop_tag = stop_tag.to_owned();
            // The samples are in the queued StopTransaction now.
            t.samples.clear();
        }
        self.save()
    }

    /// The CSMS confirmed the StopTransaction (or the transaction was
    /// given up): forget it, but remember that it is done.
    pub fn done(&mut self, tx_ref: &str) -> Result<(), LedgerError> {
        self.state.open.remove(tx_ref);
        if !self.is_done(tx_ref) {
            self.state.done.push_back(tx_ref.to_owned());
            while self.state.done.len() > DONE_KEPT {
                self.state.done.pop_front();
            }
        }
        self.save()
    }

    pub fn sample(&mut self, tx_ref: &str, mv: MeterValue) -> Result<(), LedgerError> {
        let Some(t) = self.state.open.get_mut(tx_ref) else {
            return Ok(());
        };
        if t.ended {
            return Ok(());
        }
        t.samples.push(mv);
        if t.samples.len() > SAMPLES_KEPT {
            t.samples.remove(0);
        }
        self.save()
    }

    pub fn transaction_data(&self, tx_ref: &str) -> Vec<MeterValue> {
        self.state
            .open
            .get(tx_ref)
            .map(|t| t.samples.clone())
            .unwrap_or_default()
    }

    /// (EVSE, id tag) of an open transaction.
    pub fn session_of(&self, tx_ref: &str) -> Option<(u32, String)> {
        self.state.open.get(tx_ref).map(|t| (t.evse, t.tag.clone()))
    }

    /// The id tag that stopped the transaction (or started it, when none did).
    pub fn stop_tag(&self, tx_ref: &str) -> Option<String> {
        let t = self.state.open.get(tx_ref)?;
        Some(if t.stop_tag.is_empty() {
            t.tag.clone()
        } else {
            t.stop_tag.clone()
        })
    }

    fn save(&self) -> Result<(), LedgerError> {
        let bytes = serde_json::to_vec(&self.state).map_err(|e| LedgerError::Corrupt {
            path: self.path.clone(),
            why: e.to_string(),
        })?;
        evos_service::persist::write_atomic(&self.path, &bytes).map_err(|source| LedgerError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_reported_once_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(&dir.path().join("q")).unwrap();
        let path = dir.path().join("ledger.json");
        let mut ledger = Ledger::open(&path).unwrap();
        assert!(!ledger.start_queued("s1", &queue));
        ledger.begin("s1", 1, "TAG").unwrap();
        let ledger = Ledger::open(&path).unwrap();
        assert!(ledger.start_queued("s1", &queue));
        assert!(!ledger.stop_queued("s1", &queue));
        let mut ledger = ledger;
        ledger.end("s1", "").unwrap();
        assert!(ledger.stop_queued("s1", &queue));
        assert_eq!(ledger.stop_tag("s1").as_deref(), Some("TAG"));
        ledger.done("s1").unwrap();
        let ledger = Ledger::open(&path).unwrap();
        assert!(ledger.start_queued("s1", &queue) && ledger.stop_queued("s1", &queue));
        assert_eq!(ledger.session_of("s1"), None);
    }

    #[test]
    fn the_queue_counts_when_the_ledger_write_was_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = Queue::open(&dir.path().join("q")).unwrap();
        let ledger = Ledger::open(&dir.path().join("ledger.json")).unwrap();
        // Crash after the queue push, before the ledger write.
        queue
            .push("StartTransaction", serde_json::json!({}), Some("s2"), 0)
            .unwrap();
        assert!(ledger.start_queued("s2", &queue));
        queue
            .push("StopTransaction", serde_json::json!({}), Some("s2"), 0)
            .unwrap();
        assert!(ledger.stop_queued("s2", &queue));
    }
}
