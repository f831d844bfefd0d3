//! OCPP 1.6 configuration keys (OCPP 1.6 edition 2 §9 "Standard
//! Configuration Key Names & Values", with the Security Whitepaper edition 2
//! keys `AuthorizationKey` and `SecurityProfile`) and the store behind
//! ChangeConfiguration (§5.3) and GetConfiguration (§5.8).
//!
//! Every key of the profiles this station supports (Core, Local Auth List
//! Management, Reservation, Smart Charging) is typed and validated:
//! booleans (`true`/`false`, any case on input, lowercase when reported),
//! integers with ranges, and comma-separated lists (measurands, checked
//! against the 1.6 `Measurand` enum with an optional phase suffix such as
//! `Voltage.L1`, and against their `…MaxLength` key; phase rotations).
//! Key names match case-sensitively, as the spec spells them.
//!
//! Who may set what:
//! - read-write keys: the CSMS (ChangeConfiguration) and the station TOML;
//! - station settings the CSMS only reads (`…MaxLength`, smart-charging
//!   limits, `SecurityProfile`: changing it belongs to the security
//!   profile migration, not to a plain ChangeConfiguration): TOML only;
//! - facts about this station (`NumberOfConnectors`,
//!   `SupportedFeatureProfiles`, `StopTransactionOnEVSideDisconnect` and
//!   `UnlockConnectorOnEVSideDisconnect`, both true since evse always stops
//!   and unlocks when the EV side is unplugged, …): nobody;
//! - `AuthorizationKey` is write-only: stored, used for HTTP Basic auth,
//!   never reported (GetConfiguration lists it as unknown).
//!
//! Precedence (ARCHITECTURE.md): the TOML `[ocpp.keys]` table gives defaults;
//! a value the CSMS set is persisted together with the TOML value it
//! overrode, and wins until the TOML value of that key changes. Every key is
//! applied live, so ChangeConfiguration never answers `RebootRequired`
//! today; the per-key flag keeps that answer reachable.
//!
//! Left out on purpose: `BlinkRepeat` and `LightIntensity` (no signalling
//! lights to drive), `MaxEnergyOnInvalidId` (evse stops a session whose id
//! turns out invalid rather than granting an energy allowance), and the
//! certificate keys of the Security Whitepaper (`CpoName`,
//! `AdditionalRootCertificateCheck`, `CertificateSignedMaxChainSize`,
//! `CertificateStoreMaxLength`), which belong with the certificate handling.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Longest value ChangeConfiguration.req and GetConfiguration.conf carry
/// (CiString500).
const VALUE_MAX_LEN: usize = 500;
/// Upper bound for the seconds-valued keys: a year; beyond that a value is
/// a mistake, and the bound keeps conversions to milliseconds safe.
const SECONDS_MAX: i64 = 365 * 86_400;

macro_rules! keys {
    ($($(#[$doc:meta])* $key:ident,)*) => {
        /// Every configuration key this station knows, in the spec's order.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Key {
            $($(#[$doc])* $key,)*
        }

        impl Key {
            pub const ALL: &[Key] = &[$(Key::$key,)*];

            /// The OCPP name, e.g. `HeartbeatInterval`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Key::$key => stringify!($key),)*
                }
            }
        }
    };
}

keys! {
    // Core profile (§9.1).
    /// bool, RW, default false.
    AllowOfflineTxForUnknownId,
    /// bool, RW, default true.
    AuthorizationCacheEnabled,
    /// bool, RW, default false.
    AuthorizeRemoteTxRequests,
    /// seconds, RW, 0 (no clock-aligned data, the default) to 86400.
    ClockAlignedDataInterval,
    /// seconds, RW, 1 to 86400, default 60 (as evse's own default).
    ConnectionTimeOut,
    /// list of `<connector>.<rotation>`, RW, default `<n>.Unknown` for each
    /// connector.
    ConnectorPhaseRotation,
    /// fixed: number of connectors + 1 (connector 0 is the grid side).
    ConnectorPhaseRotationMaxLength,
    /// RO, default 100.
    GetConfigurationMaxKeys,
    /// seconds, RW, default 300 (BootNotification.conf's interval replaces
    /// it); 0 leaves the choice to the station.
    HeartbeatInterval,
    /// bool, RW, default true.
    LocalAuthorizeOffline,
    /// bool, RW, default false.
    LocalPreAuthorize,
    /// measurands, RW, default `Energy.Active.Import.Register`.
    MeterValuesAlignedData,
    /// RO, default 10.
    MeterValuesAlignedDataMaxLength,
    /// measurands, RW, default `Energy.Active.Import.Register` (the spec's).
    MeterValuesSampledData,
    /// RO, default 10.
    MeterValuesSampledDataMaxLength,
    /// seconds, RW, default 60; 0: no sampled data.
    MeterValueSampleInterval,
    /// seconds, RW, default 0.
    MinimumStatusDuration,
    /// fixed: from the station.
    NumberOfConnectors,
    /// RW, 0 to 100, default 3.
    ResetRetries,
    /// fixed true: evse always ends the session when the EV side is unplugged.
    StopTransactionOnEVSideDisconnect,
    /// bool, RW, default true.
    StopTransactionOnInvalidId,
    /// measurands, RW, default empty.
    StopTxnAlignedData,
    /// RO, default 10.
    StopTxnAlignedDataMaxLength,
    /// measurands, RW, default empty.
    StopTxnSampledData,
    /// RO, default 10.
    StopTxnSampledDataMaxLength,
    /// fixed: `Core,LocalAuthListManagement,Reservation,SmartCharging,RemoteTrigger`
    /// (FirmwareManagement joins once the updater answers its messages).
    SupportedFeatureProfiles,
    /// fixed: 6.
    SupportedFeatureProfilesMaxLength,
    /// RW, 1 to 100, default 3 (0 would drop messages unsent).
    TransactionMessageAttempts,
    /// seconds, RW, default 60.
    TransactionMessageRetryInterval,
    /// fixed true: evse always unlocks when the EV side is unplugged.
    UnlockConnectorOnEVSideDisconnect,
    /// seconds, RW, default 60; 0 disables the client's pings.
    WebSocketPingInterval,
    // Local Auth List Management profile (§9.2).
    /// bool, RW, default true.
    LocalAuthListEnabled,
    /// RO, default 1000.
    LocalAuthListMaxLength,
    /// RO, default 100.
    SendLocalListMaxLength,
    // Reservation profile (§9.3).
    /// fixed false.
    ReserveConnectorZeroSupported,
    // Smart Charging profile (§9.4).
    /// RO, default 10.
    ChargeProfileMaxStackLevel,
    /// fixed: `Current,Power`.
    ChargingScheduleAllowedChargingRateUnit,
    /// RO, default 96 (a day in quarter hours).
    ChargingScheduleMaxPeriods,
    /// fixed false.
    ConnectorSwitch3to1PhaseSupported,
    /// RO, default 20.
    MaxChargingProfilesInstalled,
    // Security Whitepaper.
    /// write-only: the HTTP Basic password, hex-encoded 16 to 20 bytes.
    AuthorizationKey,
    /// RO here, 0 to 3, default 0.
    SecurityProfile,
}

impl Key {
    /// The key named exactly `name` (case-sensitive).
    pub fn from_name(name: &str) -> Option<Key> {
        Key::ALL.iter().copied().find(|k| k.name() == name)
    }

    fn spec(self, connectors: u32) -> Spec {
        use Access::*;
        use Kind::*;
        let int = |min, max| Int { min, max };
        let seconds = |min| Int {
            min,
            max: SECONDS_MAX,
        };
        let (access, kind, default): (Access, Kind, String) = match self {
            Key::AllowOfflineTxForUnknownId => (ReadWrite, Bool, "false".into()),
            Key::AuthorizationCacheEnabled => (ReadWrite, Bool, "true".into()),
            Key::AuthorizeRemoteTxRequests => (ReadWrite, Bool, "false".into()),
            Key::ClockAlignedDataInterval => (ReadWrite, int(0, 86_400), "0".into()),
            Key::ConnectionTimeOut => (ReadWrite, int(1, 86_400), "60".into()),
            Key::ConnectorPhaseRotation => (
                ReadWrite,
                PhaseRotation,
                (1..=connectors)
                    .map(|c| format!("{c}.Unknown"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            Key::ConnectorPhaseRotationMaxLength => (
                Fixed,
                int(0, i64::MAX),
                (u64::from(connectors) + 1).to_string(),
            ),
            Key::GetConfigurationMaxKeys => (ReadOnly, int(1, 1000), "100".into()),
            Key::HeartbeatInterval => (ReadWrite, seconds(0), "300".into()),
            Key::LocalAuthorizeOffline => (ReadWrite, Bool, "true".into()),
            Key::LocalPreAuthorize => (ReadWrite, Bool, "false".into()),
            Key::MeterValuesAlignedData => (
                ReadWrite,
                Measurands(Key::MeterValuesAlignedDataMaxLength),
                "Energy.Active.Import.Register".into(),
            ),
            Key::MeterValuesSampledData => (
                ReadWrite,
                Measurands(Key::MeterValuesSampledDataMaxLength),
                "Energy.Active.Import.Register".into(),
            ),
            Key::StopTxnAlignedData => (
                ReadWrite,
                Measurands(Key::StopTxnAlignedDataMaxLength),
                String::new(),
            ),
            Key::StopTxnSampledData => (
                ReadWrite,
                Measurands(Key::StopTxnSampledDataMaxLength),
                String::new(),
            ),
            Key::MeterValuesAlignedDataMaxLength
            | Key::MeterValuesSampledDataMaxLength
            | Key::StopTxnAlignedDataMaxLength
            | Key::StopTxnSampledDataMaxLength => (ReadOnly, int(1, 100), "10".into()),
            Key::MeterValueSampleInterval => (ReadWrite, seconds(0), "60".into()),
            Key::MinimumStatusDuration => (ReadWrite, seconds(0), "0".into()),
            Key::NumberOfConnectors => (Fixed, int(0, i64::MAX), connectors.to_string()),
            Key::ResetRetries => (ReadWrite, int(0, 100), "3".into()),
            Key::StopTransactionOnEVSideDisconnect => (Fixed, Bool, "true".into()),
            Key::StopTransactionOnInvalidId => (ReadWrite, Bool, "true".into()),
            Key::SupportedFeatureProfiles => (
                Fixed,
                FixedList,
                "Core,LocalAuthListManagement,Reservation,SmartCharging,RemoteTrigger".into(),
            ),
            Key::SupportedFeatureProfilesMaxLength => (Fixed, int(0, i64::MAX), "6".into()),
            Key::TransactionMessageAttempts => (ReadWrite, int(1, 100), "3".into()),
            Key::TransactionMessageRetryInterval => (ReadWrite, seconds(0), "60".into()),
            Key::UnlockConnectorOnEVSideDisconnect => (Fixed, Bool, "true".into()),
            Key::WebSocketPingInterval => (ReadWrite, seconds(0), "60".into()),
            Key::LocalAuthListEnabled => (ReadWrite, Bool, "true".into()),
            Key::LocalAuthListMaxLength => (ReadOnly, int(1, 100_000), "1000".into()),
            Key::SendLocalListMaxLength => (ReadOnly, int(1, 100_000), "100".into()),
            Key::ReserveConnectorZeroSupported => (Fixed, Bool, "false".into()),
            Key::ChargeProfileMaxStackLevel => (ReadOnly, int(0, 1000), "10".into()),
            Key::ChargingScheduleAllowedChargingRateUnit => {
                (Fixed, FixedList, "Current,Power".into())
            }
            Key::ChargingScheduleMaxPeriods => (ReadOnly, int(1, 1000), "96".into()),
            Key::ConnectorSwitch3to1PhaseSupported => (Fixed, Bool, "false".into()),
            Key::MaxChargingProfilesInstalled => (ReadOnly, int(1, 1000), "20".into()),
            Key::AuthorizationKey => (WriteOnly, HexKey, String::new()),
            Key::SecurityProfile => (ReadOnly, int(0, 3), "0".into()),
        };
        Spec {
            access,
            kind,
            default,
            reboot: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// The CSMS and the TOML may set it.
    ReadWrite,
    /// A station setting: the TOML may set it, the CSMS only reads it.
    ReadOnly,
    /// A fact about this station: nobody sets it.
    Fixed,
    /// The CSMS and the TOML set it; nobody reads it over OCPP.
    WriteOnly,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    Int {
        min: i64,
        max: i64,
    },
    /// Measurands, at most as many as the value of the given key.
    Measurands(Key),
    PhaseRotation,
    /// A list that only the station sets.
    FixedList,
    /// Hex-encoded 16 to 20 bytes (Security Whitepaper: AuthorizationKey).
    HexKey,
}

struct Spec {
    access: Access,
    kind: Kind,
    /// The built-in default: used when the TOML does not set the key.
    default: String,
    /// Whether a change takes effect only after a reboot.
    reboot: bool,
}

/// ChangeConfiguration.conf status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeResult {
    Accepted,
    /// Read-only key, or an invalid value.
    Rejected,
    RebootRequired,
    /// Unknown key.
    NotSupported,
}

impl ChangeResult {
    /// The OCPP `ConfigurationStatus` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeResult::Accepted => "Accepted",
            ChangeResult::Rejected => "Rejected",
            ChangeResult::RebootRequired => "RebootRequired",
            ChangeResult::NotSupported => "NotSupported",
        }
    }
}

/// One GetConfiguration.conf `configurationKey` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub readonly: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(thiserror::Error, Debug)]
pub enum ConfigKeyError {
    /// A bad `[ocpp.keys]` entry; `key` is its TOML path, `ocpp.keys.<Key>`.
    #[error("{key}: {why}")]
    Invalid { key: String, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
}

/// A validated value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    Bool(bool),
    Int(i64),
    List(Vec<String>),
    Str(String),
}

impl Val {
    /// The OCPP text.
    fn render(&self) -> String {
        match self {
            Val::Bool(b) => b.to_string(),
            Val::Int(i) => i.to_string(),
            Val::List(items) => items.join(","),
            Val::Str(s) => s.clone(),
        }
    }
}

/// §7.31 Measurand, as the generated wire type spells them.
const MEASURANDS: &[&str] = crate::v16::messages::Measurand::VALUES;

/// §7.28 Phase.
const PHASES: &[&str] = crate::v16::messages::Phase::VALUES;

const ROTATIONS: [&str; 8] = [
    "NotApplicable",
    "Unknown",
    "RST",
    "RTS",
    "SRT",
    "STR",
    "TRS",
    "TSR",
];

/// The canonical spelling of `word` in `set`, matched case-insensitively.
fn canonical(set: &[&'static str], word: &str) -> Option<&'static str> {
    set.iter().copied().find(|c| c.eq_ignore_ascii_case(word))
}

/// A measurand, optionally with a phase (`Voltage.L1`), in canonical case.
fn measurand(item: &str) -> Option<String> {
    if let Some(m) = canonical(MEASURANDS, item) {
        return Some(m.to_owned());
    }
    let (m, phase) = item.rsplit_once('.')?;
    Some(format!(
        "{}.{}",
        canonical(MEASURANDS, m)?,
        canonical(PHASES, phase)?
    ))
}

/// The items of a comma-separated list; empty text is the empty list.
fn items(raw: &str) -> Result<Vec<&str>, String> {
    if raw.trim().is_empty() {
        return Ok(Vec::new());
    }
    raw.split(',')
        .map(|item| {
            let item = item.trim();
            if item.is_empty() {
                Err("empty item in the list".to_owned())
            } else {
                Ok(item)
            }
        })
        .collect()
}

fn no_duplicates(list: &[String]) -> Result<(), String> {
    for (i, item) in list.iter().enumerate() {
        if list[..i].contains(item) {
            return Err(format!("{item} is listed twice"));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Persisted {
    /// The value the CSMS set.
    value: String,
    /// The TOML value it overrode (normalised); `None`: the TOML had none.
    toml: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    keys: BTreeMap<String, Persisted>,
}

/// The configuration keys: defaults from the TOML, changes from the CSMS.
pub struct ConfigStore {
    path: PathBuf,
    connectors: u32,
    values: BTreeMap<Key, Val>,
    /// The normalised TOML value of each key the TOML sets.
    toml: BTreeMap<Key, String>,
    /// What the CSMS set (as persisted).
    set: BTreeMap<Key, Persisted>,
}

impl ConfigStore {
    /// `defaults`: the `[ocpp.keys]` table of the station TOML, key names as
    /// in OCPP, validated (an unknown, fixed or invalid key is an error
    /// naming `ocpp.keys.<Key>`). `path`: the JSON file where changes made
    /// by the CSMS persist; they win over the TOML until the TOML value of
    /// that key changes.
    pub fn open(
        path: &Path,
        defaults: &BTreeMap<String, String>,
        number_of_connectors: u32,
    ) -> Result<ConfigStore, ConfigKeyError> {
        let mut store = ConfigStore {
            path: path.to_owned(),
            connectors: number_of_connectors,
            values: BTreeMap::new(),
            toml: BTreeMap::new(),
            set: BTreeMap::new(),
        };
        let invalid = |name: &str, why: String| ConfigKeyError::Invalid {
            key: format!("ocpp.keys.{name}"),
            why,
        };
        let mut given = BTreeMap::new();
        for (name, raw) in defaults {
            let key = Key::from_name(name).ok_or_else(|| {
                invalid(
                    name,
                    "not an OCPP 1.6 configuration key of this station (names are case-sensitive)"
                        .into(),
                )
            })?;
            if key.spec(number_of_connectors).access == Access::Fixed {
                return Err(invalid(
                    name,
                    format!(
                        "fixed by this station (it is {})",
                        key.spec(number_of_connectors).default
                    ),
                ));
            }
            given.insert(key, raw.as_str());
        }
        // Lists are checked against the lengths, so those come first.
        let (lists, scalars): (Vec<Key>, Vec<Key>) = Key::ALL.iter().partition(|k| {
            matches!(
                k.spec(number_of_connectors).kind,
                Kind::Measurands(_) | Kind::PhaseRotation
            )
        });
        for key in scalars.into_iter().chain(lists) {
            let spec = key.spec(number_of_connectors);
            let value = match given.get(&key) {
                Some(raw) => {
                    let value = store
                        .parse(key, raw)
                        .map_err(|why| invalid(key.name(), why))?;
                    store.toml.insert(key, value.render());
                    value
                }
                // No Basic authentication password until one is set.
                None if key == Key::AuthorizationKey => Val::Str(String::new()),
                None => store
                    .parse(key, &spec.default)
                    .map_err(|why| invalid(key.name(), format!("the default: {why}")))?,
            };
            store.values.insert(key, value);
        }
        store.load()?;
        Ok(store)
    }

    /// Applies the persisted CSMS changes that still hold; rewrites the file
    /// without the others, so a stale one cannot come back when the TOML
    /// returns to an earlier value.
    fn load(&mut self) -> Result<(), ConfigKeyError> {
        let path = self.path.clone();
        let io = |source| ConfigKeyError::Io {
            path: path.clone(),
            source,
        };
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(e)),
        };
        let file: StoreFile =
            serde_json::from_slice(&text).map_err(|e| ConfigKeyError::Corrupt {
                path: self.path.clone(),
                why: e.to_string(),
            })?;
        let mut dropped = false;
        for (name, persisted) in file.keys {
            let applied = match Key::from_name(&name) {
                None => Err("no such key any more".to_owned()),
                Some(key) => self.restore(key, &persisted).map(|value| (key, value)),
            };
            match applied {
                Ok((key, value)) => {
                    self.values.insert(key, value);
                    self.set.insert(key, persisted);
                }
                Err(why) => {
                    tracing::info!(
                        "configuration key {name}: the CSMS's value no longer applies: {why}"
                    );
                    dropped = true;
                }
            }
        }
        if dropped {
            self.save(&self.set).map_err(io)?;
        }
        Ok(())
    }

    fn restore(&self, key: Key, persisted: &Persisted) -> Result<Val, String> {
        let access = key.spec(self.connectors).access;
        if !matches!(access, Access::ReadWrite | Access::WriteOnly) {
            return Err("it is not writable".into());
        }
        if persisted.toml.as_ref() != self.toml.get(&key) {
            return Err(format!(
                "the TOML value changed ({} to {})",
                persisted.toml.as_deref().unwrap_or("none"),
                self.toml.get(&key).map_or("none", |s| s.as_str())
            ));
        }
        self.parse(key, &persisted.value)
    }

    fn save(&self, set: &BTreeMap<Key, Persisted>) -> std::io::Result<()> {
        let file = StoreFile {
            version: 1,
            keys: set
                .iter()
                .map(|(k, p)| (k.name().to_owned(), p.clone()))
                .collect(),
        };
        let mut text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        text.push(b'\n');
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        evos_service::persist::write_atomic(&self.path, &text)
    }

    /// Validates `raw` for `key` against the current values (list lengths,
    /// connector count).
    fn parse(&self, key: Key, raw: &str) -> Result<Val, String> {
        if raw.len() > VALUE_MAX_LEN {
            return Err(format!("longer than {VALUE_MAX_LEN} characters"));
        }
        match key.spec(self.connectors).kind {
            Kind::Bool => match raw.trim() {
                b if b.eq_ignore_ascii_case("true") => Ok(Val::Bool(true)),
                b if b.eq_ignore_ascii_case("false") => Ok(Val::Bool(false)),
                _ => Err(format!("{raw:?} is not true or false")),
            },
            Kind::Int { min, max } => {
                let i: i64 = raw
                    .trim()
                    .parse()
                    .map_err(|_| format!("{raw:?} is not an integer"))?;
                if (min..=max).contains(&i) {
                    Ok(Val::Int(i))
                } else if max == i64::MAX {
                    Err(format!("{i} is less than {min}"))
                } else {
                    Err(format!("{i} is outside {min} to {max}"))
                }
            }
            Kind::Measurands(max_key) => {
                let list = items(raw)?
                    .into_iter()
                    .map(|item| {
                        measurand(item).ok_or_else(|| {
                            format!("{item} is not a measurand (with an optional phase, e.g. Voltage.L1)")
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                no_duplicates(&list)?;
                self.within(max_key, list.len())?;
                Ok(Val::List(list))
            }
            Kind::PhaseRotation => {
                let mut connectors = Vec::new();
                let mut list = Vec::new();
                for item in items(raw)? {
                    let bad = || {
                        format!(
                            "{item} is not <connector>.<rotation> with a connector 0 to {} and a rotation of {}",
                            self.connectors,
                            ROTATIONS.join(", ")
                        )
                    };
                    let (connector, rotation) = item.split_once('.').ok_or_else(bad)?;
                    let connector: u32 = connector.trim().parse().map_err(|_| bad())?;
                    let rotation = canonical(&ROTATIONS, rotation.trim()).ok_or_else(bad)?;
                    if connector > self.connectors {
                        return Err(bad());
                    }
                    if connectors.contains(&connector) {
                        return Err(format!("connector {connector} is listed twice"));
                    }
                    connectors.push(connector);
                    list.push(format!("{connector}.{rotation}"));
                }
                self.within(Key::ConnectorPhaseRotationMaxLength, list.len())?;
                Ok(Val::List(list))
            }
            Kind::FixedList => Ok(Val::List(
                items(raw)?.into_iter().map(str::to_owned).collect(),
            )),
            Kind::HexKey => {
                let hex = raw.trim();
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) || !hex.len().is_multiple_of(2) {
                    return Err("not hex-encoded bytes".into());
                }
                if !(32..=40).contains(&hex.len()) {
                    return Err(format!(
                        "{} bytes; the password must be 16 to 20 bytes",
                        hex.len() / 2
                    ));
                }
                Ok(Val::Str(hex.to_owned()))
            }
        }
    }

    fn within(&self, max_key: Key, len: usize) -> Result<(), String> {
        let max = self.int(max_key);
        if len as i64 > max {
            return Err(format!("{len} items, more than {} ({max})", max_key.name()));
        }
        Ok(())
    }

    /// GetConfiguration: `keys` empty means every readable key. Requested
    /// names that are unknown (or write-only) come back in the second
    /// vector. Names match case-sensitively.
    pub fn get_configuration(&self, keys: &[String]) -> (Vec<KeyValue>, Vec<String>) {
        let entry = |key: Key| {
            let access = key.spec(self.connectors).access;
            (access != Access::WriteOnly).then(|| KeyValue {
                key: key.name().to_owned(),
                readonly: access != Access::ReadWrite,
                value: self.values.get(&key).map(Val::render),
            })
        };
        if keys.is_empty() {
            return (
                Key::ALL.iter().copied().filter_map(entry).collect(),
                Vec::new(),
            );
        }
        let mut known = Vec::new();
        let mut unknown = Vec::new();
        for name in keys {
            match Key::from_name(name).and_then(entry) {
                Some(kv) => known.push(kv),
                None => unknown.push(name.clone()),
            }
        }
        (known, unknown)
    }

    /// ChangeConfiguration: validates, persists atomically, answers.
    pub fn change(&mut self, key: &str, value: &str) -> ChangeResult {
        let Some(k) = Key::from_name(key) else {
            return ChangeResult::NotSupported;
        };
        let spec = k.spec(self.connectors);
        if !matches!(spec.access, Access::ReadWrite | Access::WriteOnly) {
            tracing::info!("ChangeConfiguration {key}: read-only");
            return ChangeResult::Rejected;
        }
        let parsed = match self.parse(k, value) {
            Ok(parsed) => parsed,
            Err(why) => {
                tracing::info!("ChangeConfiguration {key}: {why}");
                return ChangeResult::Rejected;
            }
        };
        let mut set = self.set.clone();
        set.insert(
            k,
            Persisted {
                value: parsed.render(),
                toml: self.toml.get(&k).cloned(),
            },
        );
        if let Err(e) = self.save(&set) {
            tracing::error!("ChangeConfiguration {key}: {}: {e}", self.path.display());
            return ChangeResult::Rejected;
        }
        self.set = set;
        self.values.insert(k, parsed);
        if spec.reboot {
            ChangeResult::RebootRequired
        } else {
            ChangeResult::Accepted
        }
    }

    fn mismatch(&self, key: Key, wanted: &str) {
        tracing::error!(
            "configuration key {} read as {wanted}: a bug; using a neutral value",
            key.name()
        );
    }

    /// A boolean key's value.
    pub fn bool(&self, key: Key) -> bool {
        match self.values.get(&key) {
            Some(Val::Bool(b)) => *b,
            _ => {
                self.mismatch(key, "a boolean");
                false
            }
        }
    }

    /// An integer key's value.
    pub fn int(&self, key: Key) -> i64 {
        match self.values.get(&key) {
            Some(Val::Int(i)) => *i,
            _ => {
                self.mismatch(key, "an integer");
                0
            }
        }
    }

    /// A list key's items (canonical spelling, e.g. `Voltage.L1`, `1.RST`).
    pub fn list(&self, key: Key) -> Vec<String> {
        match self.values.get(&key) {
            Some(Val::List(items)) => items.clone(),
            _ => {
                self.mismatch(key, "a list");
                Vec::new()
            }
        }
    }

    /// Any key's value as OCPP text; `AuthorizationKey` is empty when unset.
    pub fn string(&self, key: Key) -> String {
        self.values.get(&key).map(Val::render).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CONNECTORS: u32 = 2;

    fn defaults(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn open(dir: &Path, pairs: &[(&str, &str)]) -> ConfigStore {
        ConfigStore::open(&dir.join("keys.json"), &defaults(pairs), CONNECTORS).unwrap()
    }

    fn open_err(pairs: &[(&str, &str)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        match ConfigStore::open(&dir.path().join("keys.json"), &defaults(pairs), CONNECTORS) {
            Ok(_) => panic!("{pairs:?} accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// Good values (input, reported) and bad values for a kind.
    fn samples(kind: Kind) -> (Vec<(String, String)>, Vec<String>) {
        let s = |v: &str| v.to_owned();
        let same = |v: &str| (v.to_owned(), v.to_owned());
        match kind {
            Kind::Bool => (
                vec![
                    (s("TRUE"), s("true")),
                    (s("False"), s("false")),
                    same("true"),
                ],
                vec![s("yes"), s("1"), s(""), s("truee")],
            ),
            Kind::Int { min, max } => {
                let mut good = vec![same(&min.to_string()), same(&max.to_string())];
                good.push((format!(" {} ", min), min.to_string()));
                let mut bad = vec![s("abc"), s("1.5"), s(""), s("0x10")];
                if min > i64::MIN {
                    bad.push((min - 1).to_string());
                }
                if max < i64::MAX {
                    bad.push((max + 1).to_string());
                }
                (good, bad)
            }
            Kind::Measurands(_) => (
                vec![
                    same(""),
                    (
                        s("energy.active.import.register, Voltage.l1"),
                        s("Energy.Active.Import.Register,Voltage.L1"),
                    ),
                    same("SoC,Power.Active.Import,Current.Import.L3-N,RPM"),
                    same(&MEASURANDS[..10].join(",")),
                ],
                vec![
                    s("Bogus"),
                    s("Voltage.L4"),
                    s("Voltage,Voltage"),
                    s("Voltage,,SoC"),
                    s("Voltage,"),
                    s("Energy.Active"),
                    MEASURANDS[..11].join(","),
                ],
            ),
            Kind::PhaseRotation => (
                vec![
                    (s("0.RST, 1.rts,2.unknown"), s("0.RST,1.RTS,2.Unknown")),
                    same("1.NotApplicable"),
                    same(""),
                ],
                vec![
                    s("3.RST"),
                    s("1.XYZ"),
                    s("1.RST,1.RTS"),
                    s("RST"),
                    s("a.RST"),
                    s("-1.RST"),
                ],
            ),
            Kind::FixedList => (vec![], vec![]),
            Kind::HexKey => (
                vec![same(&"0123456789abcdef".repeat(2)), same(&"A1".repeat(20))],
                vec![
                    String::new(),
                    "ab".repeat(15),
                    "ab".repeat(21),
                    "abc".repeat(11),
                    "zz".repeat(16),
                ],
            ),
        }
    }

    #[test]
    fn names_round_trip_and_every_default_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &[]);
        for &key in Key::ALL {
            assert_eq!(Key::from_name(key.name()), Some(key));
            let value = store.values.get(&key).unwrap();
            let kind_matches = match key.spec(CONNECTORS).kind {
                Kind::Bool => matches!(value, Val::Bool(_)),
                Kind::Int { .. } => matches!(value, Val::Int(_)),
                Kind::Measurands(max) => {
                    matches!(value, Val::List(_))
                        && max.name() == format!("{}MaxLength", key.name())
                }
                Kind::PhaseRotation | Kind::FixedList => matches!(value, Val::List(_)),
                Kind::HexKey => matches!(value, Val::Str(_)),
            };
            assert!(kind_matches, "{key:?}: {value:?}");
        }
        assert_eq!(Key::from_name("heartbeatinterval"), None);
        assert_eq!(Key::from_name("BlinkRepeat"), None);
    }

    #[test]
    fn every_key_validates_its_type() {
        for &key in Key::ALL {
            let spec = key.spec(CONNECTORS);
            let (good, bad) = samples(spec.kind);
            let writable = matches!(spec.access, Access::ReadWrite | Access::WriteOnly);
            let dir = tempfile::tempdir().unwrap();
            let mut store = open(dir.path(), &[]);
            if !writable {
                let current = store.string(key);
                assert_eq!(
                    store.change(key.name(), &current),
                    ChangeResult::Rejected,
                    "{key:?}"
                );
                assert_eq!(store.string(key), current);
            }
            for (input, want) in &good {
                if writable {
                    assert_eq!(
                        store.change(key.name(), input),
                        ChangeResult::Accepted,
                        "{key:?} {input:?}"
                    );
                    assert_eq!(&store.string(key), want, "{key:?} {input:?}");
                }
                if spec.access != Access::Fixed {
                    // The same rules hold for the TOML defaults.
                    let d = tempfile::tempdir().unwrap();
                    let s = open(d.path(), &[(key.name(), input)]);
                    assert_eq!(&s.string(key), want, "{key:?} {input:?}");
                }
            }
            for input in &bad {
                let before = store.string(key);
                assert_eq!(
                    store.change(key.name(), input),
                    ChangeResult::Rejected,
                    "{key:?} {input:?}"
                );
                assert_eq!(store.string(key), before);
                let err = open_err(&[(key.name(), input)]);
                assert!(
                    err.starts_with(&format!("ocpp.keys.{}: ", key.name())),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn read_only_and_fixed_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), &[("SecurityProfile", "2")]);
        for (key, value) in [
            ("SecurityProfile", "1"),
            ("NumberOfConnectors", "4"),
            ("SupportedFeatureProfiles", "Core"),
            ("ChargingScheduleAllowedChargingRateUnit", "Current"),
            ("ReserveConnectorZeroSupported", "true"),
            ("StopTransactionOnEVSideDisconnect", "false"),
            ("UnlockConnectorOnEVSideDisconnect", "false"),
            ("LocalAuthListMaxLength", "5"),
            ("GetConfigurationMaxKeys", "5"),
        ] {
            assert_eq!(store.change(key, value), ChangeResult::Rejected, "{key}");
        }
        assert_eq!(store.int(Key::SecurityProfile), 2);
        assert_eq!(store.int(Key::NumberOfConnectors), 2);
        assert!(!dir.path().join("keys.json").exists());
        let kv = |key: &str| store.get_configuration(&[key.to_owned()]).0.remove(0);
        assert_eq!(
            kv("SecurityProfile"),
            KeyValue {
                key: "SecurityProfile".into(),
                readonly: true,
                value: Some("2".into())
            }
        );
        assert!(!kv("HeartbeatInterval").readonly);
        assert!(kv("NumberOfConnectors").readonly);
        assert_eq!(
            kv("SupportedFeatureProfiles").value.unwrap(),
            "Core,LocalAuthListManagement,Reservation,SmartCharging,RemoteTrigger"
        );
        assert_eq!(
            kv("ChargingScheduleAllowedChargingRateUnit").value.unwrap(),
            "Current,Power"
        );
        assert_eq!(
            kv("ConnectorPhaseRotation").value.unwrap(),
            "1.Unknown,2.Unknown"
        );
        assert_eq!(kv("ConnectorPhaseRotationMaxLength").value.unwrap(), "3");
        assert_eq!(kv("ReserveConnectorZeroSupported").value.unwrap(), "false");
        assert_eq!(
            kv("UnlockConnectorOnEVSideDisconnect").value.unwrap(),
            "true"
        );
    }

    #[test]
    fn unknown_keys_are_not_supported_and_reported_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), &[]);
        assert_eq!(store.change("Bogus", "1"), ChangeResult::NotSupported);
        assert_eq!(
            store.change("heartbeatinterval", "1"),
            ChangeResult::NotSupported
        );
        assert_eq!(store.change("BlinkRepeat", "1"), ChangeResult::NotSupported);
        let (known, unknown) = store.get_configuration(&[
            "Bogus".into(),
            "HeartbeatInterval".into(),
            "heartbeatInterval".into(),
        ]);
        assert_eq!(
            known,
            [KeyValue {
                key: "HeartbeatInterval".into(),
                readonly: false,
                value: Some("300".into())
            }]
        );
        assert_eq!(unknown, ["Bogus", "heartbeatInterval"]);
    }

    #[test]
    fn get_configuration_lists_every_readable_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &[]);
        let (all, unknown) = store.get_configuration(&[]);
        assert!(unknown.is_empty());
        assert_eq!(all.len(), Key::ALL.len() - 1);
        assert!(
            all.iter()
                .all(|kv| kv.key != "AuthorizationKey" && kv.value.is_some())
        );
        let json = serde_json::to_value(&all[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"key": "AllowOfflineTxForUnknownId", "readonly": false, "value": "false"})
        );
    }

    #[test]
    fn authorization_key_is_stored_but_never_reported() {
        let dir = tempfile::tempdir().unwrap();
        let key = "00112233445566778899AABBCCDDEEFF";
        let mut store = open(dir.path(), &[]);
        assert_eq!(store.string(Key::AuthorizationKey), "");
        assert_eq!(
            store.change("AuthorizationKey", key),
            ChangeResult::Accepted
        );
        assert_eq!(store.string(Key::AuthorizationKey), key);
        let (known, unknown) = store.get_configuration(&["AuthorizationKey".into()]);
        assert!(known.is_empty());
        assert_eq!(unknown, ["AuthorizationKey"]);
        let (all, _) = store.get_configuration(&[]);
        assert!(all.iter().all(|kv| kv.key != "AuthorizationKey"));
        drop(store);
        let store = open(dir.path(), &[]);
        assert_eq!(store.string(Key::AuthorizationKey), key);
    }

    #[test]
    fn changes_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), &[]);
        assert_eq!(
            store.change("HeartbeatInterval", "42"),
            ChangeResult::Accepted
        );
        assert_eq!(
            store.change("LocalPreAuthorize", "TRUE"),
            ChangeResult::Accepted
        );
        assert_eq!(
            store.change("MeterValuesSampledData", "Voltage.L1,SoC"),
            ChangeResult::Accepted
        );
        drop(store);
        let store = open(dir.path(), &[]);
        assert_eq!(store.int(Key::HeartbeatInterval), 42);
        assert!(store.bool(Key::LocalPreAuthorize));
        assert_eq!(
            store.list(Key::MeterValuesSampledData),
            ["Voltage.L1", "SoC"]
        );
        assert_eq!(store.string(Key::LocalPreAuthorize), "true");
        // Untouched keys keep their defaults.
        assert_eq!(store.int(Key::MeterValueSampleInterval), 60);
        assert!(store.bool(Key::StopTransactionOnInvalidId));
    }

    #[test]
    fn csms_value_wins_until_the_toml_value_changes() {
        let dir = tempfile::tempdir().unwrap();
        let toml = |v: &str| vec![("HeartbeatInterval", v.to_owned())];
        let open_with = |pairs: &[(&str, String)]| {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            open(dir.path(), &pairs)
        };
        let mut store = open_with(&toml("300"));
        assert_eq!(store.int(Key::HeartbeatInterval), 300);
        assert_eq!(
            store.change("HeartbeatInterval", "60"),
            ChangeResult::Accepted
        );
        drop(store);
        // Same TOML value (even spelt differently): the CSMS's value stays.
        assert_eq!(open_with(&toml("300")).int(Key::HeartbeatInterval), 60);
        assert_eq!(open_with(&toml("+300")).int(Key::HeartbeatInterval), 60);
        // The TOML value changed: it wins, and the CSMS's value is gone for
        // good, also when the TOML goes back.
        assert_eq!(open_with(&toml("120")).int(Key::HeartbeatInterval), 120);
        assert_eq!(open_with(&toml("300")).int(Key::HeartbeatInterval), 300);

        // A CSMS value over the built-in default yields to a TOML value that
        // appears later, …
        let mut store = open_with(&[]);
        assert_eq!(
            store.change("HeartbeatInterval", "61"),
            ChangeResult::Accepted
        );
        drop(store);
        assert_eq!(open_with(&[]).int(Key::HeartbeatInterval), 61);
        assert_eq!(open_with(&toml("90")).int(Key::HeartbeatInterval), 90);
        // … and one over a TOML value yields when that TOML value goes away.
        let mut store = open_with(&toml("90"));
        assert_eq!(
            store.change("HeartbeatInterval", "62"),
            ChangeResult::Accepted
        );
        drop(store);
        assert_eq!(open_with(&[]).int(Key::HeartbeatInterval), 300);
    }

    #[test]
    fn bad_defaults_name_the_key() {
        let err = open_err(&[("HeartBeatInterval", "60")]);
        assert!(err.starts_with("ocpp.keys.HeartBeatInterval: "), "{err}");
        let err = open_err(&[("HeartbeatInterval", "-1")]);
        assert!(err.starts_with("ocpp.keys.HeartbeatInterval: "), "{err}");
        let err = open_err(&[("NumberOfConnectors", "2")]);
        assert!(
            err.starts_with("ocpp.keys.NumberOfConnectors: fixed"),
            "{err}"
        );
        let err = open_err(&[("AuthorizeRemoteTxRequests", "maybe")]);
        assert!(
            err.starts_with("ocpp.keys.AuthorizeRemoteTxRequests: "),
            "{err}"
        );
        let err = open_err(&[
            ("MeterValuesSampledDataMaxLength", "1"),
            ("MeterValuesSampledData", "Voltage,SoC"),
        ]);
        assert_eq!(
            err,
            "ocpp.keys.MeterValuesSampledData: 2 items, more than MeterValuesSampledDataMaxLength (1)"
        );
    }

    #[test]
    fn lists_respect_their_max_length() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), &[("StopTxnSampledDataMaxLength", "2")]);
        assert_eq!(store.int(Key::StopTxnSampledDataMaxLength), 2);
        assert_eq!(
            store.change("StopTxnSampledData", "Voltage,SoC,RPM"),
            ChangeResult::Rejected
        );
        assert_eq!(
            store.change("StopTxnSampledData", "Voltage,SoC"),
            ChangeResult::Accepted
        );
        drop(store);
        // A later, lower limit drops the CSMS's list that no longer fits.
        let store = open(dir.path(), &[("StopTxnSampledDataMaxLength", "1")]);
        assert_eq!(store.list(Key::StopTxnSampledData), Vec::<String>::new());
        let text = std::fs::read_to_string(dir.path().join("keys.json")).unwrap();
        assert!(!text.contains("StopTxnSampledData"), "{text}");
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::fs::write(&path, b"{ nope").unwrap();
        let err = ConfigStore::open(&path, &BTreeMap::new(), 1).err().unwrap();
        assert!(matches!(err, ConfigKeyError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("keys.json"), "{err}");
    }

    #[test]
    fn stale_entries_in_the_file_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::fs::write(
            &path,
            br#"{"version":1,"keys":{
                "Retired":{"value":"1","toml":null},
                "NumberOfConnectors":{"value":"9","toml":null},
                "HeartbeatInterval":{"value":"abc","toml":null},
                "ResetRetries":{"value":"7","toml":null}}}"#,
        )
        .unwrap();
        let store = open(dir.path(), &[]);
        assert_eq!(store.int(Key::NumberOfConnectors), 2);
        assert_eq!(store.int(Key::HeartbeatInterval), 300);
        assert_eq!(store.int(Key::ResetRetries), 7);
        let file: StoreFile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(file.keys.keys().collect::<Vec<_>>(), ["ResetRetries"]);
    }

    #[test]
    fn typed_accessors() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &[("ConnectorPhaseRotation", "0.RST,1.TSR")]);
        assert!(store.bool(Key::LocalAuthorizeOffline));
        assert!(!store.bool(Key::AllowOfflineTxForUnknownId));
        assert_eq!(store.int(Key::HeartbeatInterval), 300);
        assert_eq!(store.int(Key::TransactionMessageAttempts), 3);
        assert_eq!(store.list(Key::ConnectorPhaseRotation), ["0.RST", "1.TSR"]);
        assert_eq!(
            store.list(Key::ChargingScheduleAllowedChargingRateUnit),
            ["Current", "Power"]
        );
        assert_eq!(store.string(Key::ClockAlignedDataInterval), "0");
        assert_eq!(store.list(Key::StopTxnAlignedData), Vec::<String>::new());
        // A type mismatch is a bug: logged, answered neutrally.
        assert!(!store.bool(Key::HeartbeatInterval));
    }

    fn writable_keys() -> Vec<Key> {
        Key::ALL
            .iter()
            .copied()
            .filter(|k| {
                matches!(
                    k.spec(CONNECTORS).access,
                    Access::ReadWrite | Access::WriteOnly
                )
            })
            .collect()
    }

    proptest! {
        /// Whatever the CSMS sends, the answer is well-formed, and an
        /// accepted value is stored in a normal form that is accepted again
        /// unchanged.
        #[test]
        fn any_value_is_answered_and_normalised(
            key in proptest::sample::select(writable_keys()),
            value in prop_oneof![
                ".{0,40}",
                "[ ,.0-9a-zA-Z-]{0,40}",
                proptest::sample::subsequence(MEASURANDS.to_vec(), 0..12)
                    .prop_map(|m| m.join(",").to_lowercase()),
                (0u32..4, proptest::sample::select(ROTATIONS.to_vec()))
                    .prop_map(|(c, r)| format!("{c}.{r}")),
                any::<i64>().prop_map(|i| i.to_string()),
                (0i64..100_000).prop_map(|i| i.to_string()),
            ],
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut store = open(dir.path(), &[]);
            let before = store.string(key);
            match store.change(key.name(), &value) {
                ChangeResult::Accepted => {
                    let stored = store.string(key);
                    prop_assert_eq!(store.change(key.name(), &stored), ChangeResult::Accepted);
                    prop_assert_eq!(&store.string(key), &stored);
                    drop(store);
                    prop_assert_eq!(open(dir.path(), &[]).string(key), stored);
                }
                ChangeResult::Rejected => prop_assert_eq!(store.string(key), before),
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
