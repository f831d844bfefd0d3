//! OCPP 1.6 Local Authorization & Offline Behaviour (edition 2, §3.5): the
//! Local Authorization List (§3.5.2; GetLocalListVersion §5.10,
//! SendLocalList §5.15), the Authorization Cache (§3.5.1; ClearCache §5.4)
//! and the decision whether an idTag is answered locally or by the Central
//! System (§3.5, §3.5.3 Unknown Offline Authorization).
//!
//! Both stores are persisted to their own JSON files, replaced atomically.
//! idTags are CiString20 (§7.15): compared ignoring ASCII case; the first
//! spelling is kept for display.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum LocalAuthError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// AuthorizationStatus (§7.2), as the bus contract spells it to evse.
pub use evos_bus::ocpp::AuthorizationStatus as AuthStatus;

/// IdTagInfo (§7.27).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdTagInfo {
    pub status: AuthStatus,
    pub expiry_ms: Option<i64>,
    pub parent: Option<String>,
}

impl IdTagInfo {
    fn with_status(status: AuthStatus) -> IdTagInfo {
        IdTagInfo {
            status,
            expiry_ms: None,
            parent: None,
        }
    }

    /// As it reads at `now_ms`: at or past its expiry date an Accepted (or
    /// ConcurrentTx) entry reads as Expired (§3.5.1). Blocked and Invalid
    /// keep their stronger reason.
    pub fn at(&self, now_ms: i64) -> IdTagInfo {
        let mut info = self.clone();
        if matches!(info.status, AuthStatus::Accepted | AuthStatus::ConcurrentTx)
            && info.expiry_ms.is_some_and(|expiry| now_ms >= expiry)
        {
            info.status = AuthStatus::Expired;
        }
        info
    }
}

fn key(id_tag: &str) -> String {
    id_tag.to_ascii_lowercase()
}

fn load<T: DeserializeOwned + Default>(path: &Path) -> Result<T, LocalAuthError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| LocalAuthError::Parse {
            path: path.to_owned(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(LocalAuthError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn save<T: Serialize>(path: &Path, state: &T) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    evos_service::persist::write_atomic(path, &json)
}

/// One SendLocalList entry: the idTag and its info to add or replace, or
/// None to remove it.
pub type ListUpdate = (String, Option<IdTagInfo>);

/// UpdateType (§7.48).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    Full,
    Differential,
}

/// UpdateStatus (§7.47).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateStatus {
    Accepted,
    Failed,
    /// Never produced here; for the glue when the list is disabled.
    NotSupported,
    VersionMismatch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    id_tag: String,
    info: IdTagInfo,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ListState {
    version: i32,
    /// By lower-cased idTag.
    entries: BTreeMap<String, Entry>,
}

/// The Local Authorization List (§3.5.2): set by the Central System only,
/// versioned, persisted.
#[derive(Debug)]
pub struct LocalList {
    path: PathBuf,
    max_length: usize,
    state: ListState,
}

impl LocalList {
    /// Loads the list saved at `path` (empty, version 0, if none).
    /// `max_length`: LocalAuthListMaxLength (§9.2).
    pub fn open(path: &Path, max_length: usize) -> Result<LocalList, LocalAuthError> {
        Ok(LocalList {
            path: path.to_owned(),
            max_length,
            state: load(path)?,
        })
    }

    /// GetLocalListVersion (§5.10): 0 when no list was ever installed. The
    /// −1 of a disabled list is the caller's to answer.
    pub fn version(&self) -> i32 {
        self.state.version
    }

    pub fn len(&self) -> usize {
        self.state.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.entries.is_empty()
    }

    /// SendLocalList (§5.15). `entries`: idTag with its info to add or
    /// replace, or None to remove it (differential only; a full update
    /// needs every idTagInfo). Full replaces the list; a differential
    /// update needs a version above the current one. A list that would
    /// exceed the maximum length, or cannot be saved, is Failed and the old
    /// list stays.
    pub fn update(
        &mut self,
        version: i32,
        kind: UpdateKind,
        entries: Vec<ListUpdate>,
    ) -> UpdateStatus {
        // Negative versions are reserved for "no list support" (§5.10).
        if version < 0 {
            return UpdateStatus::Failed;
        }
        let mut next = match kind {
            UpdateKind::Full => {
                if entries.iter().any(|(_, info)| info.is_none()) {
                    return UpdateStatus::Failed;
                }
                ListState::default()
            }
            UpdateKind::Differential => {
                if version <= self.state.version {
                    return UpdateStatus::VersionMismatch;
                }
                self.state.clone()
            }
        };
        next.version = version;
        for (id_tag, info) in entries {
            match info {
                Some(info) => {
                    next.entries.insert(key(&id_tag), Entry { id_tag, info });
                }
                None => {
                    next.entries.remove(&key(&id_tag));
                }
            }
        }
        if next.entries.len() > self.max_length {
            return UpdateStatus::Failed;
        }
        if let Err(e) = save(&self.path, &next) {
            tracing::error!(error = %e, path = %self.path.display(), "cannot save the local authorization list");
            return UpdateStatus::Failed;
        }
        self.state = next;
        UpdateStatus::Accepted
    }

    /// The entry for `id_tag` as stored (see [`IdTagInfo::at`] for expiry).
    pub fn get(&self, id_tag: &str) -> Option<&IdTagInfo> {
        self.state.entries.get(&key(id_tag)).map(|e| &e.info)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CacheEntry {
    id_tag: String,
    info: IdTagInfo,
    /// When the Central System last told us about it.
    updated_ms: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CacheState {
    /// By lower-cased idTag.
    entries: BTreeMap<String, CacheEntry>,
}

/// The Authorization Cache (§3.5.1): the latest IdTagInfo from
/// Authorize / StartTransaction / StopTransaction confirmations, persisted
/// and bounded. When full, the entry to make room is chosen among the
/// others: first those no longer usable (expired, or not Accepted), then
/// the least recently updated. Callers should not cache idTags that are in
/// the Local Authorization List (§3.5.1).
#[derive(Debug)]
pub struct AuthCache {
    path: PathBuf,
    capacity: usize,
    state: CacheState,
}

impl AuthCache {
    /// Loads the cache saved at `path` (empty if none), trimmed to
    /// `capacity`.
    pub fn open(path: &Path, capacity: usize) -> Result<AuthCache, LocalAuthError> {
        let mut cache = AuthCache {
            path: path.to_owned(),
            capacity,
            state: load(path)?,
        };
        let now = cache
            .state
            .entries
            .values()
            .map(|e| e.updated_ms)
            .max()
            .unwrap_or(0);
        cache.evict(now, None);
        Ok(cache)
    }

    pub fn len(&self) -> usize {
        self.state.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.entries.is_empty()
    }

    /// Records what the Central System answered for `id_tag`.
    pub fn update(&mut self, id_tag: &str, info: IdTagInfo, now_ms: i64) {
        if self.capacity == 0 {
            return;
        }
        let k = key(id_tag);
        self.state.entries.insert(
            k.clone(),
            CacheEntry {
                id_tag: id_tag.to_owned(),
                info,
                updated_ms: now_ms,
            },
        );
        self.evict(now_ms, Some(&k));
        if let Err(e) = save(&self.path, &self.state) {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot save the authorization cache");
        }
    }

    /// Drops entries beyond the capacity, never `keep`.
    fn evict(&mut self, now_ms: i64, keep: Option<&str>) {
        while self.state.entries.len() > self.capacity {
            let victim = self
                .state
                .entries
                .iter()
                .filter(|(k, _)| Some(k.as_str()) != keep)
                .min_by_key(|(_, e)| {
                    (
                        e.info.at(now_ms).status == AuthStatus::Accepted,
                        e.updated_ms,
                    )
                })
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => self.state.entries.remove(&k),
                None => break,
            };
        }
    }

    /// The cached info as it reads at `now_ms`: past its expiry an entry
    /// reads as Expired (§3.5.1).
    pub fn get(&self, id_tag: &str, now_ms: i64) -> Option<IdTagInfo> {
        self.state
            .entries
            .get(&key(id_tag))
            .map(|e| e.info.at(now_ms))
    }

    /// ClearCache (§5.4): false (Rejected) if the emptied cache could not
    /// be saved; it is empty in memory either way.
    pub fn clear(&mut self) -> bool {
        self.state.entries.clear();
        match save(&self.path, &self.state) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "cannot save the cleared authorization cache");
                false
            }
        }
    }
}

/// The configuration keys (§9.1, §9.2) that shape the decision, and whether the
/// Central System is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthFlags {
    pub online: bool,
    /// LocalAuthorizeOffline
    pub local_authorize_offline: bool,
    /// LocalPreAuthorize
    pub local_pre_authorize: bool,
    /// AuthorizationCacheEnabled
    pub cache_enabled: bool,
    /// LocalAuthListEnabled
    pub list_enabled: bool,
    /// AllowOfflineTxForUnknownId
    pub allow_offline_unknown: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer without the Central System.
    Local(IdTagInfo),
    /// Send Authorize.req and use its answer.
    AskCsms,
}

/// Whether `id_tag` is authorized locally or must be asked for (§3.5).
///
/// The local list wins over the cache (§3.5: the list holds the Central
/// System's authoritative answer). Online, only LocalPreAuthorize lets a
/// locally Accepted, unexpired idTag start without waiting (§3.5);
/// everything else is asked. Offline with LocalAuthorizeOffline, a locally
/// known idTag is answered with what is known (§3.5.1, §3.5.2). An unknown
/// idTag offline — or any idTag offline when local authorization is off —
/// is Accepted only with AllowOfflineTxForUnknownId (§3.5.3), else Invalid.
pub fn decide(
    flags: &AuthFlags,
    list: &LocalList,
    cache: &AuthCache,
    id_tag: &str,
    now_ms: i64,
) -> Decision {
    let listed = flags
        .list_enabled
        .then(|| list.get(id_tag).map(|info| info.at(now_ms)))
        .flatten();
    let known = listed.or_else(|| {
        flags
            .cache_enabled
            .then(|| cache.get(id_tag, now_ms))
            .flatten()
    });
    if flags.online {
        return match known {
            Some(info) if flags.local_pre_authorize && info.status == AuthStatus::Accepted => {
                Decision::Local(info)
            }
            _ => Decision::AskCsms,
        };
    }
    match known {
        Some(info) if flags.local_authorize_offline => Decision::Local(info),
        _ if flags.allow_offline_unknown => {
            Decision::Local(IdTagInfo::with_status(AuthStatus::Accepted))
        }
        _ => Decision::Local(IdTagInfo::with_status(AuthStatus::Invalid)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    const T0: i64 = 1_700_000_000_000;

    fn info(status: AuthStatus) -> IdTagInfo {
        IdTagInfo::with_status(status)
    }

    fn expiring(status: AuthStatus, expiry_ms: i64) -> IdTagInfo {
        IdTagInfo {
            status,
            expiry_ms: Some(expiry_ms),
            parent: Some("PARENT".into()),
        }
    }

    fn add(id: &str, i: IdTagInfo) -> ListUpdate {
        (id.to_owned(), Some(i))
    }

    fn remove(id: &str) -> ListUpdate {
        (id.to_owned(), None)
    }

    fn list(dir: &TempDir) -> LocalList {
        LocalList::open(&dir.path().join("list.json"), 3).unwrap()
    }

    fn cache(dir: &TempDir) -> AuthCache {
        AuthCache::open(&dir.path().join("cache.json"), 3).unwrap()
    }

    #[test]
    fn list_full_and_differential_updates() {
        let dir = TempDir::new().unwrap();
        let mut l = list(&dir);
        assert_eq!(l.version(), 0);
        assert!(l.is_empty());

        let full = vec![
            add("AAA", info(AuthStatus::Accepted)),
            add("bbb", info(AuthStatus::Blocked)),
        ];
        assert_eq!(l.update(5, UpdateKind::Full, full), UpdateStatus::Accepted);
        assert_eq!(l.version(), 5);
        assert_eq!(l.get("aaa"), Some(&info(AuthStatus::Accepted)));
        assert_eq!(l.get("BbB"), Some(&info(AuthStatus::Blocked)));

        // Add, replace, remove.
        let diff = vec![
            add("ccc", info(AuthStatus::Accepted)),
            add("Aaa", info(AuthStatus::Expired)),
            remove("BBB"),
        ];
        assert_eq!(
            l.update(6, UpdateKind::Differential, diff),
            UpdateStatus::Accepted
        );
        assert_eq!(l.version(), 6);
        assert_eq!(l.get("AAA"), Some(&info(AuthStatus::Expired)));
        assert_eq!(l.get("bbb"), None);
        assert_eq!(l.get("CCC"), Some(&info(AuthStatus::Accepted)));
        assert_eq!(l.len(), 2);

        // Removing an unknown tag is no error.
        assert_eq!(
            l.update(7, UpdateKind::Differential, vec![remove("zzz")]),
            UpdateStatus::Accepted
        );

        // A full update replaces everything, whatever the version.
        assert_eq!(
            l.update(
                2,
                UpdateKind::Full,
                vec![add("ddd", info(AuthStatus::Invalid))]
            ),
            UpdateStatus::Accepted
        );
        assert_eq!(l.version(), 2);
        assert_eq!(l.len(), 1);
        assert_eq!(l.get("aaa"), None);

        // An empty full update empties the list.
        assert_eq!(
            l.update(3, UpdateKind::Full, vec![]),
            UpdateStatus::Accepted
        );
        assert!(l.is_empty());
    }

    #[test]
    fn list_rejections_leave_the_list_alone() {
        let dir = TempDir::new().unwrap();
        let mut l = list(&dir);
        let three = vec![
            add("a", info(AuthStatus::Accepted)),
            add("b", info(AuthStatus::Accepted)),
            add("c", info(AuthStatus::Accepted)),
        ];
        assert_eq!(l.update(4, UpdateKind::Full, three), UpdateStatus::Accepted);
        let cases: Vec<(&str, i32, UpdateKind, Vec<ListUpdate>, UpdateStatus)> = vec![
            (
                "same version",
                4,
                UpdateKind::Differential,
                vec![remove("a")],
                UpdateStatus::VersionMismatch,
            ),
            (
                "older version",
                3,
                UpdateKind::Differential,
                vec![remove("a")],
                UpdateStatus::VersionMismatch,
            ),
            (
                "differential over max length",
                5,
                UpdateKind::Differential,
                vec![add("d", info(AuthStatus::Accepted))],
                UpdateStatus::Failed,
            ),
            (
                "full over max length",
                5,
                UpdateKind::Full,
                ["a", "b", "c", "d"]
                    .iter()
                    .map(|t| add(t, info(AuthStatus::Accepted)))
                    .collect(),
                UpdateStatus::Failed,
            ),
            (
                "removal in a full update",
                5,
                UpdateKind::Full,
                vec![remove("a")],
                UpdateStatus::Failed,
            ),
            (
                "negative version",
                -1,
                UpdateKind::Full,
                vec![],
                UpdateStatus::Failed,
            ),
        ];
        for (name, version, kind, entries, status) in cases {
            assert_eq!(l.update(version, kind, entries), status, "{name}");
            assert_eq!((l.version(), l.len()), (4, 3), "{name}");
        }
        // Same tag twice in differently cased spellings counts once.
        let dup = vec![
            add("d", info(AuthStatus::Accepted)),
            add("D", info(AuthStatus::Blocked)),
            remove("a"),
        ];
        assert_eq!(
            l.update(5, UpdateKind::Differential, dup),
            UpdateStatus::Accepted
        );
        assert_eq!(l.get("d"), Some(&info(AuthStatus::Blocked)));
    }

    #[test]
    fn list_persists_and_unsaved_updates_fail() {
        let dir = TempDir::new().unwrap();
        let mut l = list(&dir);
        let entries = vec![add("Tag-1", expiring(AuthStatus::Accepted, T0))];
        assert_eq!(
            l.update(9, UpdateKind::Full, entries),
            UpdateStatus::Accepted
        );
        drop(l);
        let l = list(&dir);
        assert_eq!(l.version(), 9);
        assert_eq!(l.get("TAG-1"), Some(&expiring(AuthStatus::Accepted, T0)));

        let mut unsaved = LocalList::open(&dir.path().join("missing/list.json"), 3).unwrap();
        assert_eq!(
            unsaved.update(1, UpdateKind::Full, vec![]),
            UpdateStatus::Failed
        );
        assert_eq!(unsaved.version(), 0);

        std::fs::write(dir.path().join("bad.json"), b"[").unwrap();
        assert!(matches!(
            LocalList::open(&dir.path().join("bad.json"), 3),
            Err(LocalAuthError::Parse { .. })
        ));
    }

    #[test]
    fn cache_expiry() {
        let dir = TempDir::new().unwrap();
        let mut c = cache(&dir);
        c.update("Tag", expiring(AuthStatus::Accepted, T0 + 1000), T0);
        c.update("blocked", expiring(AuthStatus::Blocked, T0 + 1000), T0);
        assert_eq!(
            c.get("TAG", T0 + 999),
            Some(expiring(AuthStatus::Accepted, T0 + 1000))
        );
        assert_eq!(
            c.get("tag", T0 + 1000),
            Some(expiring(AuthStatus::Expired, T0 + 1000))
        );
        assert_eq!(
            c.get("BLOCKED", T0 + 5000).unwrap().status,
            AuthStatus::Blocked
        );
        assert_eq!(c.get("other", T0), None);
        // A newer answer replaces the entry.
        c.update("TAG", info(AuthStatus::Accepted), T0 + 2000);
        assert_eq!(c.get("tag", T0 + 9000), Some(info(AuthStatus::Accepted)));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn cache_eviction_prefers_unusable_then_least_recent() {
        let dir = TempDir::new().unwrap();
        let mut c = cache(&dir);
        c.update("old", info(AuthStatus::Accepted), T0);
        c.update("blocked", info(AuthStatus::Blocked), T0 + 1);
        c.update("expiring", expiring(AuthStatus::Accepted, T0 + 100), T0 + 2);
        // Full: at T0 + 50 the blocked one goes first.
        c.update("new1", info(AuthStatus::Accepted), T0 + 50);
        assert_eq!(c.get("blocked", T0 + 50), None);
        // At T0 + 200 "expiring" has expired: it goes before "old".
        c.update("new2", info(AuthStatus::Accepted), T0 + 200);
        assert_eq!(c.get("expiring", T0 + 200), None);
        // All usable: the least recently updated goes.
        c.update("new3", info(AuthStatus::Accepted), T0 + 300);
        assert_eq!(c.get("old", T0 + 300), None);
        // A new non-accepted entry is kept; it displaces the oldest.
        c.update("new4", info(AuthStatus::Invalid), T0 + 400);
        assert_eq!(c.get("new4", T0 + 400), Some(info(AuthStatus::Invalid)));
        assert_eq!(c.get("new1", T0 + 400), None);
        let mut left: Vec<&str> = ["new1", "new2", "new3", "new4"]
            .into_iter()
            .filter(|t| c.get(t, T0 + 400).is_some())
            .collect();
        left.sort();
        assert_eq!(left, vec!["new2", "new3", "new4"]);

        let mut none = AuthCache::open(&dir.path().join("none.json"), 0).unwrap();
        none.update("x", info(AuthStatus::Accepted), T0);
        assert!(none.is_empty());
    }

    #[test]
    fn cache_clear_and_persistence() {
        let dir = TempDir::new().unwrap();
        let mut c = cache(&dir);
        c.update("a", info(AuthStatus::Accepted), T0);
        c.update("b", expiring(AuthStatus::Accepted, T0 + 10), T0 + 1);
        c.update("c", info(AuthStatus::Blocked), T0 + 2);
        drop(c);
        let mut c = cache(&dir);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("B", T0 + 10).unwrap().status, AuthStatus::Expired);

        // Reopened with less room: trimmed by the same rule, judged at the
        // latest update (no clock at open).
        let smaller = AuthCache::open(&dir.path().join("cache.json"), 1).unwrap();
        assert_eq!(
            smaller.get("b", T0),
            Some(expiring(AuthStatus::Accepted, T0 + 10))
        );
        assert_eq!(smaller.len(), 1);

        assert!(c.clear());
        assert!(c.is_empty());
        assert!(cache(&dir).is_empty());

        let mut unsaved = AuthCache::open(&dir.path().join("missing/cache.json"), 3).unwrap();
        unsaved.update("a", info(AuthStatus::Accepted), T0);
        assert_eq!(unsaved.len(), 1, "kept in memory");
        assert!(!unsaved.clear());
    }

    #[test]
    fn decisions() {
        use AuthStatus::*;
        let dir = TempDir::new().unwrap();
        let mut l = LocalList::open(&dir.path().join("list.json"), 10).unwrap();
        let entries = vec![
            add("LIST-OK", info(Accepted)),
            add("LIST-BLOCKED", info(Blocked)),
            add("LIST-OLD", expiring(Accepted, T0)),
            // The list wins over the cache's Accepted.
            add("BOTH", info(Blocked)),
        ];
        assert_eq!(
            l.update(1, UpdateKind::Full, entries),
            UpdateStatus::Accepted
        );
        let mut c = cache(&dir);
        c.update("CACHE-OK", info(Accepted), T0);
        c.update("CACHE-INVALID", info(Invalid), T0);
        c.update("BOTH", info(Accepted), T0);

        let online = AuthFlags {
            online: true,
            local_authorize_offline: true,
            local_pre_authorize: true,
            cache_enabled: true,
            list_enabled: true,
            allow_offline_unknown: true,
        };
        let offline = AuthFlags {
            online: false,
            ..online
        };
        let strict = AuthFlags {
            allow_offline_unknown: false,
            ..offline
        };
        let local = |s| Decision::Local(info(s));
        let ask = Decision::AskCsms;
        let cases: Vec<(&str, AuthFlags, &str, Decision)> = vec![
            // Online.
            (
                "online pre-authorize, listed",
                online,
                "list-ok",
                local(Accepted),
            ),
            (
                "online pre-authorize, cached",
                online,
                "cache-ok",
                local(Accepted),
            ),
            (
                "online pre-authorize, listed blocked",
                online,
                "LIST-BLOCKED",
                ask.clone(),
            ),
            (
                "online pre-authorize, listed expired",
                online,
                "LIST-OLD",
                ask.clone(),
            ),
            (
                "online pre-authorize, cached invalid",
                online,
                "CACHE-INVALID",
                ask.clone(),
            ),
            (
                "online pre-authorize, list beats cache",
                online,
                "BOTH",
                ask.clone(),
            ),
            (
                "online pre-authorize, unknown",
                online,
                "nobody",
                ask.clone(),
            ),
            (
                "online without pre-authorize",
                AuthFlags {
                    local_pre_authorize: false,
                    ..online
                },
                "LIST-OK",
                ask.clone(),
            ),
            (
                "online, list disabled",
                AuthFlags {
                    list_enabled: false,
                    ..online
                },
                "LIST-OK",
                ask.clone(),
            ),
            (
                "online, list disabled, cache used",
                AuthFlags {
                    list_enabled: false,
                    ..online
                },
                "BOTH",
                local(Accepted),
            ),
            (
                "online, cache disabled",
                AuthFlags {
                    cache_enabled: false,
                    ..online
                },
                "CACHE-OK",
                ask.clone(),
            ),
            // Offline with LocalAuthorizeOffline.
            ("offline, listed", offline, "LIST-OK", local(Accepted)),
            ("offline, cached", offline, "CACHE-OK", local(Accepted)),
            (
                "offline, listed blocked",
                offline,
                "LIST-BLOCKED",
                local(Blocked),
            ),
            (
                "offline, cached invalid",
                offline,
                "CACHE-INVALID",
                local(Invalid),
            ),
            (
                "offline, listed expired",
                offline,
                "LIST-OLD",
                Decision::Local(IdTagInfo {
                    status: Expired,
                    ..expiring(Accepted, T0)
                }),
            ),
            ("offline, list beats cache", offline, "BOTH", local(Blocked)),
            (
                "offline, unknown allowed",
                offline,
                "nobody",
                local(Accepted),
            ),
            (
                "offline, unknown not allowed",
                strict,
                "nobody",
                local(Invalid),
            ),
            (
                "offline, cache disabled: unknown",
                AuthFlags {
                    cache_enabled: false,
                    ..strict
                },
                "CACHE-OK",
                local(Invalid),
            ),
            (
                "offline, list disabled: cache",
                AuthFlags {
                    list_enabled: false,
                    ..strict
                },
                "BOTH",
                local(Accepted),
            ),
            // Offline without LocalAuthorizeOffline: only the unknown rule.
            (
                "offline, no local authorization, unknown allowed",
                AuthFlags {
                    local_authorize_offline: false,
                    ..offline
                },
                "LIST-BLOCKED",
                local(Accepted),
            ),
            (
                "offline, no local authorization, unknown not allowed",
                AuthFlags {
                    local_authorize_offline: false,
                    ..strict
                },
                "LIST-OK",
                local(Invalid),
            ),
        ];
        for (name, flags, tag, expected) in cases {
            assert_eq!(decide(&flags, &l, &c, tag, T0 + 1), expected, "{name}");
        }
    }
}
