//! Reservations of an EVSE (OCPP 1.6 §3.11 Reservations, §5.13 ReserveNow,
//! §5.3 CancelReservation) and the file that keeps one across a restart.
//!
//! Per EVSE, `reservation-<id>.json` holds the reservation (replaced
//! atomically), or is absent when none is held. Expiry is wall-clock (the
//! CSMS's expiryDate), so a reservation that expired while the service was
//! down is dropped when it is read back.

use std::path::{Path, PathBuf};

use evos_service::persist::write_atomic;
use serde::{Deserialize, Serialize};

/// A reservation as ReserveNow gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// OCPP reservationId; never 0 (the bus shows 0 for "none").
    pub id: i32,
    /// The idTag the EVSE is reserved for.
    pub token: String,
    /// parentIdTag: any token with this parent may use the reservation too;
    /// empty for none.
    pub parent: String,
    /// Unix ms at which the reservation ends unused.
    pub expiry_ms: i64,
}

impl Reservation {
    /// Whether `token`, whose parent id is `parent`, may use the reservation
    /// (§5.13: its own idTag, or a token of its parentIdTag). IdTokens are
    /// case-insensitive (OCPP 1.6 §7.28 IdToken).
    pub fn admits(&self, token: &str, parent: &str) -> bool {
        self.token.eq_ignore_ascii_case(token)
            || (!self.parent.is_empty() && self.parent.eq_ignore_ascii_case(parent))
    }

    /// The `Reservation` property: (id, token, parent, expiry); id 0 for none.
    pub fn as_property(reservation: Option<&Reservation>) -> (i32, String, String, i64) {
        reservation.map_or((0, String::new(), String::new(), 0), |r| {
            (r.id, r.token.clone(), r.parent.clone(), r.expiry_ms)
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("reservation store {path}: {source}")]
pub struct ReservationStoreError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The file holding one EVSE's reservation.
#[derive(Debug)]
pub struct ReservationStore {
    path: PathBuf,
}

impl ReservationStore {
    pub fn open(dir: &Path, evse: u32) -> Result<Self, ReservationStoreError> {
        std::fs::create_dir_all(dir).map_err(|source| ReservationStoreError {
            path: dir.to_owned(),
            source,
        })?;
        Ok(ReservationStore {
            path: dir.join(format!("reservation-{evse}.json")),
        })
    }

    fn err(&self, source: std::io::Error) -> ReservationStoreError {
        ReservationStoreError {
            path: self.path.clone(),
            source,
        }
    }

    /// The reservation held when the service stopped, unless it has expired
    /// by `now_ms` (then the file goes too).
    pub fn load(&self, now_ms: i64) -> Result<Option<Reservation>, ReservationStoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        match serde_json::from_slice::<Reservation>(&bytes) {
            Ok(r) if r.expiry_ms > now_ms && r.id != 0 => Ok(Some(r)),
            Ok(r) => {
                tracing::info!(reservation = r.id, "reservation expired while stopped");
                self.save(None)?;
                Ok(None)
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), "reservation is unreadable: {e}");
                self.save(None)?;
                Ok(None)
            }
        }
    }

    /// Keep `reservation`, or remove the file for none.
    pub fn save(&self, reservation: Option<&Reservation>) -> Result<(), ReservationStoreError> {
        match reservation {
            Some(r) => {
                let json = serde_json::to_vec(r).map_err(|e| self.err(e.into()))?;
                write_atomic(&self.path, &json).map_err(|e| self.err(e))
            }
            None => match std::fs::remove_file(&self.path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(self.err(e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation(expiry_ms: i64) -> Reservation {
        Reservation {
            id: 7,
            token: "CARD-1".into(),
            parent: "FLEET".into(),
            expiry_ms,
        }
    }

    #[test]
    fn admits_its_token_or_its_parent_case_insensitively() {
        let r = reservation(0);
        assert!(r.admits("card-1", ""));
        assert!(r.admits("CARD-2", "fleet"));
        assert!(!r.admits("CARD-2", "OTHER"));
        assert!(!r.admits("CARD-2", ""));
        let no_parent = Reservation {
            parent: String::new(),
            ..r
        };
        assert!(
            !no_parent.admits("CARD-2", ""),
            "an empty parent matches none"
        );
    }

    #[test]
    fn survives_a_reopen_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReservationStore::open(dir.path(), 1).unwrap();
        assert_eq!(store.load(1000).unwrap(), None);
        store.save(Some(&reservation(5000))).unwrap();

        let store = ReservationStore::open(dir.path(), 1).unwrap();
        assert_eq!(store.load(1000).unwrap(), Some(reservation(5000)));
        assert_eq!(store.load(5000).unwrap(), None, "expired meanwhile");
        assert!(!dir.path().join("reservation-1.json").exists());
    }

    #[test]
    fn none_removes_the_file_and_garbage_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReservationStore::open(dir.path(), 2).unwrap();
        store.save(Some(&reservation(5000))).unwrap();
        store.save(None).unwrap();
        assert_eq!(store.load(0).unwrap(), None);
        std::fs::write(dir.path().join("reservation-2.json"), b"{\"id\":").unwrap();
        assert_eq!(store.load(0).unwrap(), None);
        assert!(!dir.path().join("reservation-2.json").exists());
    }
}
