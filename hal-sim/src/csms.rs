//! The built-in Central System of `evos sim`: a small OCPP 1.6J CSMS
//! (OCPP 1.6 edition 2 §4–§6, OCPP-J 1.6 §3–§4) on 127.0.0.1.
//!
//! It plays the operator's back office, not the station: it speaks the
//! protocol as a real Central System would, through the generated 1.6
//! message types (so everything it sends or accepts matches the schemas)
//! and `evos_ocpp::rpc` framing.
//!
//! - Connection (OCPP-J 1.6 §3): a WebSocket at `ws://127.0.0.1:PORT/ID`;
//!   the station identity is the last path segment. The `ocpp1.6`
//!   subprotocol is required; an upgrade without it is refused with HTTP 400.
//!   A station connecting again replaces its previous connection.
//! - Station → CSMS (§4): BootNotification is Accepted with the configured
//!   heartbeat interval; Heartbeat gets the time; StatusNotification and
//!   MeterValues are recorded; Authorize and StartTransaction answer from the
//!   token list (others are `Invalid`); StartTransaction gets increasing
//!   transaction ids, persisted in the state dir so a restart never reuses
//!   one; StopTransaction closes the record; DataTransfer is
//!   UnknownVendorId; the other notifications are acknowledged, and
//!   SignCertificate is Rejected (this CSMS signs nothing).
//! - CSMS → station (§5): the operator's commands ([`Csms`]), one
//!   outstanding CALL per connection (OCPP-J 1.6 §4.1.1), each returning the
//!   station's answer.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use evos_bus::csms::{CsmsStation, CsmsTransaction};
use evos_ocpp::rpc::{self, Call, CallError, CallResult, ErrorCode, Frame, MessageIds};
use evos_ocpp::v16::messages::{self as m, Request};
use evos_ocpp::wire::{CiString, DateTime};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as Upgrade, Response,
};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use zbus::interface;

/// The only subprotocol spoken (OCPP-J 1.6 §3.1.2).
pub const SUBPROTOCOL: &str = "ocpp1.6";

/// How long a command waits for the station's answer, by default.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take over the WebSocket upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Profile ids of `set-limit`, per connector: the same id again replaces the
/// profile (OCPP 1.6 §5.16.1), so repeated limits never pile up.
const TX_DEFAULT_PROFILE_ID: i32 = 1000;
const TX_PROFILE_ID: i32 = 2000;

/// The `[sim.csms]` section: run the built-in CSMS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// TCP port on 127.0.0.1; 0 lets the kernel choose.
    pub port: u16,
    /// Id tags the CSMS accepts (case-insensitively, as idTags compare).
    #[serde(default)]
    pub tokens: Vec<String>,
    /// The heartbeat interval BootNotification.conf asks for (s).
    #[serde(default = "default_heartbeat_interval")]
    pub heartbeat_interval_s: u32,
}

fn default_heartbeat_interval() -> u32 {
    60
}

impl Config {
    pub fn validate(&self) -> Result<(), evos_service::config::Invalid> {
        use evos_service::config::Invalid;
        if let Some(t) = self.tokens.iter().find(|t| t.is_empty() || t.len() > 20) {
            return Err(Invalid::new(
                "sim.csms.tokens",
                format!("`{t}` is not an idTag (1 to 20 characters)"),
            ));
        }
        if self.heartbeat_interval_s == 0 || self.heartbeat_interval_s > i32::MAX as u32 {
            return Err(Invalid::new(
                "sim.csms.heartbeat_interval_s",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CsmsError {
    #[error("the CSMS cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no station is connected")]
    NoStation,
    #[error("station `{0}` is not connected")]
    NotConnected(String),
    #[error("{0} stations are connected ({1}); name one")]
    Ambiguous(usize, String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("station `{station}` has no transaction running on connector {connector}")]
    NoTransaction { station: String, connector: u32 },
    #[error("the station answered {action} with {code}: {description}")]
    Refused {
        action: &'static str,
        code: ErrorCode,
        description: String,
    },
    #[error("the station did not answer {action} in time")]
    Timeout { action: &'static str },
    #[error("the station disconnected before answering {action}")]
    Disconnected { action: &'static str },
    #[error("the station's answer to {action} is invalid: {why}")]
    BadAnswer { action: &'static str, why: String },
}

impl From<CsmsError> for evos_bus::Error {
    fn from(e: CsmsError) -> Self {
        let text = e.to_string();
        match e {
            CsmsError::NoStation | CsmsError::NotConnected(_) | CsmsError::NoTransaction { .. } => {
                evos_bus::Error::NotFound(text)
            }
            CsmsError::Ambiguous(..) | CsmsError::InvalidArgument(_) => {
                evos_bus::Error::InvalidArgument(text)
            }
            CsmsError::Listen { .. }
            | CsmsError::Refused { .. }
            | CsmsError::Timeout { .. }
            | CsmsError::Disconnected { .. }
            | CsmsError::BadAnswer { .. } => evos_bus::Error::Failed(text),
        }
    }
}

/// A CALL to send to a station, and where its answer goes.
struct Command {
    action: &'static str,
    payload: Value,
    reply: oneshot::Sender<Result<Value, CsmsError>>,
}

/// A station's live connection.
struct Link {
    generation: u64,
    commands: mpsc::Sender<Command>,
}

struct Station {
    info: CsmsStation,
    link: Option<Link>,
}

struct State {
    stations: BTreeMap<String, Station>,
    transactions: Vec<CsmsTransaction>,
    last_transaction_id: i32,
    generations: u64,
}

struct Shared {
    config: Config,
    /// Where the last assigned transaction id is kept.
    id_file: Option<PathBuf>,
    response_timeout: Duration,
    state: Mutex<State>,
    /// Counts changes of what [`Csms::stations`] and
    /// [`Csms::transactions`] show, for whoever waits on one.
    changes: watch::Sender<u64>,
}

/// The CSMS: what it knows, and the operator's commands. Cheap to clone.
#[derive(Clone)]
pub struct Csms {
    shared: Arc<Shared>,
}

/// The CSMS listening, before it serves.
pub struct Server {
    listener: TcpListener,
    csms: Csms,
}

fn id_file(state_dir: &Path) -> PathBuf {
    state_dir.join("csms-last-transaction-id")
}

impl Server {
    /// Listen on 127.0.0.1:`config.port`. With a `state_dir`, transaction
    /// ids continue from the last one a previous run assigned.
    pub async fn bind(config: Config, state_dir: Option<&Path>) -> Result<Server, CsmsError> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, config.port));
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| CsmsError::Listen { address, source })?;
        let id_file = state_dir.map(id_file);
        let last_transaction_id = id_file
            .as_deref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|text| text.trim().parse::<i32>().ok())
            .filter(|id| *id >= 0)
            .unwrap_or(0);
        let csms = Csms {
            shared: Arc::new(Shared {
                config,
                id_file,
                response_timeout: RESPONSE_TIMEOUT,
                changes: watch::Sender::new(0),
                state: Mutex::new(State {
                    stations: BTreeMap::new(),
                    transactions: Vec::new(),
                    last_transaction_id,
                    generations: 0,
                }),
            }),
        };
        Ok(Server { listener, csms })
    }

    /// Wait `timeout` for a station's answer instead of [`RESPONSE_TIMEOUT`].
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.csms.shared) {
            shared.response_timeout = timeout;
        }
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn csms(&self) -> Csms {
        self.csms.clone()
    }

    /// Accept stations until dropped.
    pub async fn run(self) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    tokio::spawn(self.csms.clone().serve(stream, peer));
                }
                Err(e) => {
                    tracing::warn!("CSMS: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// What an upgrade request asks for, or the HTTP answer refusing it.
fn check_upgrade(request: &Upgrade) -> Result<String, (StatusCode, &'static str)> {
    let offered = request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !offered {
        return Err((
            StatusCode::BAD_REQUEST,
            "this Central System speaks the ocpp1.6 subprotocol only",
        ));
    }
    let segment = request
        .uri()
        .path()
        .trim_end_matches('/')
        .rsplit('/')
        .next();
    let id = segment
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .filter(|id| !id.is_empty() && !id.chars().any(char::is_control))
        .ok_or((
            StatusCode::NOT_FOUND,
            "no station identity in the URL (ws://HOST:PORT/STATION-ID)",
        ))?;
    Ok(id)
}

fn refuse(status: StatusCode, why: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(why.to_owned()));
    *response.status_mut() = status;
    response
}

/// The outstanding CALL of a connection.
struct Outstanding {
    id: String,
    action: &'static str,
    reply: oneshot::Sender<Result<Value, CsmsError>>,
    deadline: Instant,
}

enum Step {
    Incoming(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Command(Option<Command>),
    Timeout,
}

fn decode<T: DeserializeOwned>(payload: Value) -> Result<T, (ErrorCode, String)> {
    serde_json::from_value(payload).map_err(|e| (rpc::payload_error(&e), e.to_string()))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Value, (ErrorCode, String)> {
    serde_json::to_value(value).map_err(|e| (ErrorCode::InternalError, e.to_string()))
}

/// Decode a request of type `R`, answer it with `f`.
fn answer<R: Request>(
    payload: Value,
    f: impl FnOnce(R) -> R::Response,
) -> Result<Value, (ErrorCode, String)> {
    encode(&f(decode::<R>(payload)?))
}

fn unix_ms_now() -> i64 {
    DateTime::now().unix_ms()
}

/// The energy register (Wh) among sampled values, if one is there.
fn energy_wh(values: &[m::MeterValue]) -> Option<f64> {
    values
        .iter()
        .flat_map(|v| &v.sampled_value)
        .filter(|s| {
            s.measurand
                .is_none_or(|m| m == m::Measurand::EnergyActiveImportRegister)
                && s.phase.is_none()
                && s.format != Some(m::ValueFormat::SignedData)
        })
        .filter_map(|s| {
            let value: f64 = s.value.trim().parse().ok()?;
            match s.unit {
                None | Some(m::UnitOfMeasure::Wh) => Some(value),
                Some(m::UnitOfMeasure::KWh) => Some(value * 1000.0),
                Some(_) => None,
            }
        })
        .next_back()
}

fn ci<const N: usize>(what: &str, s: &str) -> Result<CiString<N>, CsmsError> {
    CiString::new(s)
        .map_err(|_| CsmsError::InvalidArgument(format!("{what} has at most {N} characters")))
}

impl Csms {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data; go on with it.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn accepts(&self, id_tag: &str) -> m::AuthorizationStatus {
        if self
            .shared
            .config
            .tokens
            .iter()
            .any(|t| t.eq_ignore_ascii_case(id_tag))
        {
            m::AuthorizationStatus::Accepted
        } else {
            m::AuthorizationStatus::Invalid
        }
    }

    fn id_tag_info(&self, id_tag: &str) -> m::IdTagInfo {
        m::IdTagInfo {
            expiry_date: None,
            parent_id_tag: None,
            status: self.accepts(id_tag),
        }
    }

    /// A receiver that sees a change whenever a station connects,
    /// disconnects, boots or reports a status, or a transaction changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    fn changed(&self) {
        self.shared.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Every station seen since the CSMS started.
    pub fn stations(&self) -> Vec<CsmsStation> {
        self.state()
            .stations
            .values()
            .map(|s| s.info.clone())
            .collect()
    }

    /// Every transaction assigned an id, oldest first.
    pub fn transactions(&self) -> Vec<CsmsTransaction> {
        self.state().transactions.clone()
    }

    /// The connection of `station`, or of the only connected one when empty.
    fn link(&self, station: &str) -> Result<(String, mpsc::Sender<Command>), CsmsError> {
        let state = self.state();
        if station.is_empty() {
            let connected: Vec<(&String, &Link)> = state
                .stations
                .iter()
                .filter_map(|(id, s)| s.link.as_ref().map(|l| (id, l)))
                .collect();
            return match connected.as_slice() {
                [] => Err(CsmsError::NoStation),
                [(id, link)] => Ok(((*id).clone(), link.commands.clone())),
                many => Err(CsmsError::Ambiguous(
                    many.len(),
                    many.iter()
                        .map(|(id, _)| id.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                )),
            };
        }
        match state.stations.get(station).and_then(|s| s.link.as_ref()) {
            Some(link) => Ok((station.to_owned(), link.commands.clone())),
            None => Err(CsmsError::NotConnected(station.to_owned())),
        }
    }

    /// Send `request` to `station` and wait for its answer.
    pub async fn call<R: Request>(
        &self,
        station: &str,
        request: R,
    ) -> Result<R::Response, CsmsError> {
        let (_, commands) = self.link(station)?;
        self.call_on(&commands, request).await
    }

    async fn call_on<R: Request>(
        &self,
        commands: &mpsc::Sender<Command>,
        request: R,
    ) -> Result<R::Response, CsmsError> {
        let action = R::ACTION;
        let payload = serde_json::to_value(&request).map_err(|e| CsmsError::BadAnswer {
            action,
            why: format!("cannot encode the request: {e}"),
        })?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command {
                action,
                payload,
                reply,
            })
            .await
            .map_err(|_| CsmsError::Disconnected { action })?;
        let payload = answer
            .await
            .map_err(|_| CsmsError::Disconnected { action })??;
        serde_json::from_value(payload).map_err(|e| CsmsError::BadAnswer {
            action,
            why: e.to_string(),
        })
    }

    /// The id of the transaction running on `connector` of `station` (the
    /// newest, should a station have left an older one open).
    fn running_transaction(&self, station: &str, connector: u32) -> Option<i32> {
        self.state()
            .transactions
            .iter()
            .rev()
            .find(|t| t.station == station && t.connector == connector && t.meter_stop_wh < 0)
            .map(|t| t.id)
    }

    /// RemoteStartTransaction (OCPP 1.6 §5.11); connector 0: the station chooses.
    pub async fn remote_start(
        &self,
        station: &str,
        connector: u32,
        token: &str,
    ) -> Result<String, CsmsError> {
        let request = m::RemoteStartTransactionRequest {
            connector_id: (connector > 0).then_some(connector_i32(connector)?),
            id_tag: ci("a token", token)?,
            charging_profile: None,
        };
        Ok(self.call(station, request).await?.status.to_string())
    }

    /// RemoteStopTransaction (§5.12) of `transaction_id`, or when 0 of the
    /// transaction running on `connector`.
    pub async fn remote_stop(
        &self,
        station: &str,
        transaction_id: i32,
        connector: u32,
    ) -> Result<String, CsmsError> {
        let (station, commands) = self.link(station)?;
        let transaction_id = match transaction_id {
            0 => self
                .running_transaction(&station, connector)
                .ok_or(CsmsError::NoTransaction { station, connector })?,
            id => id,
        };
        let request = m::RemoteStopTransactionRequest { transaction_id };
        Ok(self.call_on(&commands, request).await?.status.to_string())
    }

    /// SetChargingProfile (§5.16): one absolute period of `value` `unit`,
    /// as the TxProfile of the transaction running on `connector`, else as
    /// the connector's TxDefaultProfile.
    pub async fn set_limit(
        &self,
        station: &str,
        connector: u32,
        value: f64,
        unit: &str,
    ) -> Result<String, CsmsError> {
        let unit = match unit {
            u if u.eq_ignore_ascii_case("A") => m::ChargingRateUnitType::A,
            u if u.eq_ignore_ascii_case("W") => m::ChargingRateUnitType::W,
            other => {
                return Err(CsmsError::InvalidArgument(format!(
                    "unknown unit `{other}`; known: A, W"
                )));
            }
        };
        if !(0.0..=1.0e9).contains(&value) {
            return Err(CsmsError::InvalidArgument(format!(
                "a limit is a number from 0 to 1e9, not {value}"
            )));
        }
        let connector_id = connector_i32(connector)?;
        let (station, commands) = self.link(station)?;
        let running = (connector > 0)
            .then(|| self.running_transaction(&station, connector))
            .flatten();
        let (id, purpose) = match running {
            Some(_) => (TX_PROFILE_ID, m::ChargingProfilePurposeType::TxProfile),
            None => (
                TX_DEFAULT_PROFILE_ID,
                m::ChargingProfilePurposeType::TxDefaultProfile,
            ),
        };
        // A station's clock may trail ours by the round trip; a start a
        // second back makes the limit apply at once there too.
        let start = DateTime::from_unix_ms(unix_ms_now() - 1000);
        let request = m::SetChargingProfileRequest {
            connector_id,
            cs_charging_profiles: m::ChargingProfile {
                charging_profile_id: id + connector_id,
                transaction_id: running,
                stack_level: 0,
                charging_profile_purpose: purpose,
                charging_profile_kind: m::ChargingProfileKindType::Absolute,
                recurrency_kind: None,
                valid_from: None,
                valid_to: None,
                charging_schedule: m::ChargingSchedule {
                    duration: None,
                    start_schedule: Some(start),
                    charging_rate_unit: unit,
                    charging_schedule_period: vec![m::ChargingSchedulePeriod {
                        start_period: 0,
                        // The schema wants a multiple of 0.1.
                        limit: (value * 10.0).round() / 10.0,
                        number_phases: None,
                    }],
                    min_charging_rate: None,
                },
            },
        };
        Ok(self.call_on(&commands, request).await?.status.to_string())
    }

    /// ClearChargingProfile (§5.5) of every profile on `connector`.
    pub async fn clear_limit(&self, station: &str, connector: u32) -> Result<String, CsmsError> {
        let request = m::ClearChargingProfileRequest {
            connector_id: Some(connector_i32(connector)?),
            ..Default::default()
        };
        Ok(self.call(station, request).await?.status.to_string())
    }

    /// Reset (§5.13), `kind` "soft" or "hard".
    pub async fn reset(&self, station: &str, kind: &str) -> Result<String, CsmsError> {
        let r#type = match kind {
            k if k.eq_ignore_ascii_case("soft") => m::ResetType::Soft,
            k if k.eq_ignore_ascii_case("hard") => m::ResetType::Hard,
            other => {
                return Err(CsmsError::InvalidArgument(format!(
                    "unknown reset `{other}`; known: soft, hard"
                )));
            }
        };
        let request = m::ResetRequest { r#type };
        Ok(self.call(station, request).await?.status.to_string())
    }

    /// TriggerMessage (§5.17) for `message`; connector 0: none given.
    pub async fn trigger(
        &self,
        station: &str,
        message: &str,
        connector: u32,
    ) -> Result<String, CsmsError> {
        let requested_message = m::MessageTrigger::ALL
            .iter()
            .copied()
            .find(|t| t.as_str().eq_ignore_ascii_case(message))
            .ok_or_else(|| {
                CsmsError::InvalidArgument(format!(
                    "unknown message `{message}`; known: {}",
                    m::MessageTrigger::VALUES.join(", ")
                ))
            })?;
        let request = m::TriggerMessageRequest {
            requested_message,
            connector_id: (connector > 0).then_some(connector_i32(connector)?),
        };
        Ok(self.call(station, request).await?.status.to_string())
    }

    /// GetConfiguration (§5.8) of `keys` (empty: all): (key, readonly, value).
    pub async fn get_configuration(
        &self,
        station: &str,
        keys: &[String],
    ) -> Result<Vec<(String, bool, String)>, CsmsError> {
        let key = if keys.is_empty() {
            None
        } else {
            Some(
                keys.iter()
                    .map(|k| ci("a configuration key", k))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let answer = self
            .call(station, m::GetConfigurationRequest { key })
            .await?;
        Ok(answer
            .configuration_key
            .unwrap_or_default()
            .into_iter()
            .map(|kv| {
                (
                    kv.key.into_string(),
                    kv.readonly,
                    kv.value.map(CiString::into_string).unwrap_or_default(),
                )
            })
            .collect())
    }

    /// ChangeConfiguration (§5.3).
    pub async fn change_configuration(
        &self,
        station: &str,
        key: &str,
        value: &str,
    ) -> Result<String, CsmsError> {
        let request = m::ChangeConfigurationRequest {
            key: ci("a configuration key", key)?,
            value: ci("a configuration value", value)?,
        };
        Ok(self.call(station, request).await?.status.to_string())
    }

    /// Register a new connection of `id`, replacing any older one (whose
    /// command sender is dropped, which ends it).
    fn connected(&self, id: &str) -> (u64, mpsc::Receiver<Command>) {
        let (commands, receiver) = mpsc::channel(16);
        let mut state = self.state();
        state.generations += 1;
        let generation = state.generations;
        let station = state
            .stations
            .entry(id.to_owned())
            .or_insert_with(|| Station {
                info: CsmsStation {
                    id: id.to_owned(),
                    connected: false,
                    boot_status: String::new(),
                    boots: 0,
                    vendor: String::new(),
                    model: String::new(),
                    connectors: Vec::new(),
                    received: Vec::new(),
                },
                link: None,
            });
        station.info.connected = true;
        station.link = Some(Link {
            generation,
            commands,
        });
        drop(state);
        self.changed();
        (generation, receiver)
    }

    fn disconnected(&self, id: &str, generation: u64) {
        let mut state = self.state();
        if let Some(station) = state.stations.get_mut(id)
            && station
                .link
                .as_ref()
                .is_some_and(|l| l.generation == generation)
        {
            station.link = None;
            station.info.connected = false;
            drop(state);
            self.changed();
        }
    }

    /// Upgrade, then serve one station until it goes.
    // The callback's error type (an HTTP response) is tungstenite's.
    #[allow(clippy::result_large_err)]
    async fn serve(self, stream: TcpStream, peer: SocketAddr) {
        let mut identity = None;
        let callback = |request: &Upgrade, mut response: Response| match check_upgrade(request) {
            Ok(id) => {
                identity = Some(id);
                response.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    HeaderValue::from_static(SUBPROTOCOL),
                );
                Ok(response)
            }
            Err((status, why)) => Err(refuse(status, why)),
        };
        let upgrade = tokio_tungstenite::accept_hdr_async(stream, callback);
        let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                tracing::info!(%peer, "CSMS: refused a connection: {e}");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "CSMS: the WebSocket upgrade timed out");
                return;
            }
        };
        let Some(id) = identity else { return };
        tracing::info!(station = id, %peer, "CSMS: station connected");
        let (generation, commands) = self.connected(&id);
        self.session(&id, ws, commands).await;
        self.disconnected(&id, generation);
        tracing::info!(station = id, "CSMS: station disconnected");
    }

    async fn session(
        &self,
        id: &str,
        mut ws: WebSocketStream<TcpStream>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let mut ids = MessageIds::new();
        let mut outstanding: Option<Outstanding> = None;
        loop {
            let deadline = outstanding.as_ref().map(|o| o.deadline);
            let step = tokio::select! {
                message = ws.next() => Step::Incoming(message),
                command = commands.recv(), if outstanding.is_none() => Step::Command(command),
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => Step::Timeout,
            };
            let out = match step {
                Step::Incoming(None | Some(Err(_))) => break,
                Step::Incoming(Some(Ok(Message::Text(text)))) => {
                    self.on_text(id, text.as_str(), &mut outstanding)
                }
                // Pings are answered by tungstenite; OCPP-J uses text only.
                Step::Incoming(Some(Ok(_))) => None,
                // A newer connection of the same station replaced this one.
                Step::Command(None) => break,
                Step::Command(Some(command)) => {
                    let call_id = ids.next();
                    outstanding = Some(Outstanding {
                        id: call_id.clone(),
                        action: command.action,
                        reply: command.reply,
                        deadline: Instant::now() + self.shared.response_timeout,
                    });
                    Some(Frame::Call(Call {
                        id: call_id,
                        action: command.action.to_owned(),
                        payload: command.payload,
                    }))
                }
                Step::Timeout => {
                    if let Some(o) = outstanding.take() {
                        let _ = o.reply.send(Err(CsmsError::Timeout { action: o.action }));
                    }
                    None
                }
            };
            if let Some(frame) = out
                && ws
                    .send(Message::Text(Utf8Bytes::from(frame.to_text())))
                    .await
                    .is_err()
            {
                break;
            }
        }
        if let Some(o) = outstanding {
            let _ = o
                .reply
                .send(Err(CsmsError::Disconnected { action: o.action }));
        }
    }

    /// React to one text message; the frame to send back, if any.
    fn on_text(
        &self,
        id: &str,
        text: &str,
        outstanding: &mut Option<Outstanding>,
    ) -> Option<Frame> {
        let settle =
            |outstanding: &mut Option<Outstanding>, answer_id: &str, result| match outstanding
                .take_if(|o| o.id == answer_id)
            {
                Some(o) => {
                    let _ = o.reply.send(result);
                }
                None => tracing::info!(station = id, "CSMS: an answer to no outstanding CALL"),
            };
        match rpc::parse(text) {
            Ok(Frame::Call(Call {
                id: call_id,
                action,
                payload,
            })) => Some(match self.on_call(id, &action, payload) {
                Ok(payload) => Frame::CallResult(CallResult {
                    id: call_id,
                    payload,
                }),
                Err((code, description)) => {
                    tracing::info!(station = id, action, %code, "CSMS: refused a CALL: {description}");
                    Frame::CallError(CallError::new(call_id, code, description))
                }
            }),
            Ok(Frame::CallResult(result)) => {
                settle(outstanding, &result.id, Ok(result.payload));
                None
            }
            Ok(Frame::CallError(error)) => {
                let action = outstanding.as_ref().map_or("", |o| o.action);
                settle(
                    outstanding,
                    &error.id,
                    Err(CsmsError::Refused {
                        action,
                        code: error.code,
                        description: error.description,
                    }),
                );
                None
            }
            Err(e) if e.needs_reply() => Some(Frame::CallError(e.reply())),
            Err(e) => {
                if let (Some(answer_id), Some(o)) = (&e.id, outstanding.as_ref()) {
                    let action = o.action;
                    settle(
                        outstanding,
                        answer_id,
                        Err(CsmsError::BadAnswer {
                            action,
                            why: e.to_string(),
                        }),
                    );
                }
                None
            }
        }
    }

    /// Answer a station's CALL (OCPP 1.6 §4).
    fn on_call(
        &self,
        id: &str,
        action: &str,
        payload: Value,
    ) -> Result<Value, (ErrorCode, String)> {
        self.count(id, action);
        match action {
            m::BootNotificationRequest::ACTION => {
                answer(payload, |r: m::BootNotificationRequest| {
                    self.booted(id, &r);
                    m::BootNotificationResponse {
                        status: m::RegistrationStatus::Accepted,
                        current_time: DateTime::now(),
                        interval: self.shared.config.heartbeat_interval_s as i32,
                    }
                })
            }
            m::HeartbeatRequest::ACTION => {
                answer(payload, |_: m::HeartbeatRequest| m::HeartbeatResponse {
                    current_time: DateTime::now(),
                })
            }
            m::StatusNotificationRequest::ACTION => {
                answer(payload, |r: m::StatusNotificationRequest| {
                    self.status(id, &r);
                    m::StatusNotificationResponse {}
                })
            }
            m::AuthorizeRequest::ACTION => {
                answer(payload, |r: m::AuthorizeRequest| m::AuthorizeResponse {
                    id_tag_info: self.id_tag_info(&r.id_tag),
                })
            }
            m::StartTransactionRequest::ACTION => {
                answer(payload, |r: m::StartTransactionRequest| self.start(id, r))
            }
            m::StopTransactionRequest::ACTION => {
                answer(payload, |r: m::StopTransactionRequest| self.stop(id, r))
            }
            m::MeterValuesRequest::ACTION => answer(payload, |r: m::MeterValuesRequest| {
                if let Some(tx) = r.transaction_id {
                    self.with_transaction(id, tx, |t| {
                        t.meter_values += r.meter_value.len() as u32;
                        if let Some(wh) = energy_wh(&r.meter_value) {
                            t.last_meter_wh = wh;
                        }
                    });
                }
                m::MeterValuesResponse {}
            }),
            m::DataTransferRequest::ACTION => answer(payload, |_: m::DataTransferRequest| {
                m::DataTransferResponse {
                    status: m::DataTransferStatus::UnknownVendorId,
                    data: None,
                }
            }),
            m::DiagnosticsStatusNotificationRequest::ACTION => {
                answer(payload, |_: m::DiagnosticsStatusNotificationRequest| {
                    m::DiagnosticsStatusNotificationResponse {}
                })
            }
            m::FirmwareStatusNotificationRequest::ACTION => {
                answer(payload, |_: m::FirmwareStatusNotificationRequest| {
                    m::FirmwareStatusNotificationResponse {}
                })
            }
            m::SecurityEventNotificationRequest::ACTION => {
                answer(payload, |_: m::SecurityEventNotificationRequest| {
                    m::SecurityEventNotificationResponse {}
                })
            }
            m::LogStatusNotificationRequest::ACTION => {
                answer(payload, |_: m::LogStatusNotificationRequest| {
                    m::LogStatusNotificationResponse {}
                })
            }
            m::SignedFirmwareStatusNotificationRequest::ACTION => {
                answer(payload, |_: m::SignedFirmwareStatusNotificationRequest| {
                    m::SignedFirmwareStatusNotificationResponse {}
                })
            }
            m::SignCertificateRequest::ACTION => answer(payload, |_: m::SignCertificateRequest| {
                m::SignCertificateResponse {
                    status: m::GenericStatus::Rejected,
                }
            }),
            a if m::is_known_action(a) => Err((
                ErrorCode::NotSupported,
                format!("{a} is sent by a Central System, not to one"),
            )),
            a => Err((ErrorCode::NotImplemented, format!("unknown action {a:?}"))),
        }
    }

    fn count(&self, id: &str, action: &str) {
        let mut state = self.state();
        let Some(station) = state.stations.get_mut(id) else {
            return;
        };
        let received = &mut station.info.received;
        match received.binary_search_by(|(a, _)| a.as_str().cmp(action)) {
            Ok(i) => received[i].1 += 1,
            // Only actions of the message set: a peer cannot grow the list.
            Err(i) if m::is_known_action(action) => received.insert(i, (action.to_owned(), 1)),
            Err(_) => return,
        }
        drop(state);
        self.changed();
    }

    fn booted(&self, id: &str, request: &m::BootNotificationRequest) {
        let mut state = self.state();
        if let Some(station) = state.stations.get_mut(id) {
            station.info.boot_status = m::RegistrationStatus::Accepted.to_string();
            station.info.boots += 1;
            station.info.vendor = request.charge_point_vendor.to_string();
            station.info.model = request.charge_point_model.to_string();
        }
        drop(state);
        self.changed();
        tracing::info!(station = id, "CSMS: BootNotification accepted");
    }

    fn status(&self, id: &str, request: &m::StatusNotificationRequest) {
        let Ok(connector) = u32::try_from(request.connector_id) else {
            return;
        };
        let mut state = self.state();
        let Some(station) = state.stations.get_mut(id) else {
            return;
        };
        let entry = (
            connector,
            request.status.to_string(),
            request.error_code.to_string(),
        );
        let connectors = &mut station.info.connectors;
        match connectors.binary_search_by_key(&connector, |c| c.0) {
            Ok(i) => connectors[i] = entry,
            Err(i) => connectors.insert(i, entry),
        }
        drop(state);
        self.changed();
    }

    fn start(&self, id: &str, request: m::StartTransactionRequest) -> m::StartTransactionResponse {
        let id_tag_info = self.id_tag_info(&request.id_tag);
        let mut state = self.state();
        // Never reuse an id, even after 2^31 of them.
        let transaction_id = state.last_transaction_id.checked_add(1).unwrap_or(1);
        state.last_transaction_id = transaction_id;
        if let Some(file) = &self.shared.id_file
            && let Err(e) =
                evos_service::persist::write_atomic(file, transaction_id.to_string().as_bytes())
        {
            tracing::warn!(file = %file.display(), "CSMS: cannot save the transaction id: {e}");
        }
        state.transactions.push(CsmsTransaction {
            id: transaction_id,
            station: id.to_owned(),
            connector: u32::try_from(request.connector_id).unwrap_or_default(),
            id_tag: request.id_tag.to_string(),
            auth_status: id_tag_info.status.to_string(),
            meter_start_wh: i64::from(request.meter_start),
            meter_stop_wh: -1,
            last_meter_wh: -1.0,
            meter_values: 0,
            started_ms: request.timestamp.unix_ms(),
            stopped_ms: 0,
            reason: String::new(),
        });
        drop(state);
        self.changed();
        tracing::info!(
            station = id,
            transaction_id,
            connector = request.connector_id,
            id_tag = %request.id_tag,
            status = %id_tag_info.status,
            "CSMS: transaction started"
        );
        m::StartTransactionResponse {
            id_tag_info,
            transaction_id,
        }
    }

    fn stop(&self, id: &str, request: m::StopTransactionRequest) -> m::StopTransactionResponse {
        let data = request.transaction_data.as_deref().unwrap_or_default();
        let known = self.with_transaction(id, request.transaction_id, |t| {
            t.meter_stop_wh = i64::from(request.meter_stop).max(0);
            t.stopped_ms = request.timestamp.unix_ms();
            t.reason = request
                .reason
                .map_or(m::Reason::Local.to_string(), |r| r.to_string());
            t.meter_values += data.len() as u32;
            t.last_meter_wh = energy_wh(data).unwrap_or(f64::from(request.meter_stop));
        });
        if known {
            tracing::info!(
                station = id,
                transaction_id = request.transaction_id,
                "CSMS: transaction stopped"
            );
        } else {
            // Accepted all the same (§4.10: a StopTransaction is never
            // refused), so the station can drop it from its queue.
            tracing::warn!(
                station = id,
                transaction_id = request.transaction_id,
                "CSMS: StopTransaction of an unknown transaction"
            );
        }
        m::StopTransactionResponse {
            id_tag_info: request.id_tag.as_ref().map(|t| self.id_tag_info(t)),
        }
    }

    /// Change the record of transaction `tx` of station `id`; whether there is one.
    fn with_transaction(&self, id: &str, tx: i32, f: impl FnOnce(&mut CsmsTransaction)) -> bool {
        let mut state = self.state();
        match state
            .transactions
            .iter_mut()
            .rev()
            .find(|t| t.id == tx && t.station == id)
        {
            Some(t) => {
                f(t);
                drop(state);
                self.changed();
                true
            }
            None => false,
        }
    }
}

fn connector_i32(connector: u32) -> Result<i32, CsmsError> {
    i32::try_from(connector)
        .map_err(|_| CsmsError::InvalidArgument(format!("no connector {connector}")))
}

/// `org.evos.Csms1` (see `evos_bus::csms`).
pub(crate) struct Csms1(pub Csms);

/// Emit `Changes` on the bus whenever what the CSMS shows changes.
pub(crate) async fn publish_changes(connection: zbus::Connection, csms: Csms) {
    let mut changes = csms.subscribe();
    let Ok(iface) = connection
        .object_server()
        .interface::<_, Csms1>(evos_bus::csms::PATH)
        .await
    else {
        return;
    };
    while changes.changed().await.is_ok() {
        changes.mark_unchanged();
        if let Err(e) = iface
            .get()
            .await
            .changes_changed(iface.signal_emitter())
            .await
        {
            tracing::warn!("CSMS: cannot emit Changes: {e}");
        }
    }
}

#[interface(name = "org.evos.Csms1")]
impl Csms1 {
    async fn stations(&self) -> Vec<CsmsStation> {
        self.0.stations()
    }

    async fn transactions(&self) -> Vec<CsmsTransaction> {
        self.0.transactions()
    }

    #[zbus(property)]
    fn changes(&self) -> u64 {
        *self.0.shared.changes.borrow()
    }

    async fn remote_start(
        &self,
        station: &str,
        connector: u32,
        token: &str,
    ) -> Result<String, evos_bus::Error> {
        Ok(self.0.remote_start(station, connector, token).await?)
    }

    async fn remote_stop(
        &self,
        station: &str,
        transaction_id: i32,
        connector: u32,
    ) -> Result<String, evos_bus::Error> {
        Ok(self
            .0
            .remote_stop(station, transaction_id, connector)
            .await?)
    }

    async fn set_limit(
        &self,
        station: &str,
        connector: u32,
        value: f64,
        unit: &str,
    ) -> Result<String, evos_bus::Error> {
        Ok(self.0.set_limit(station, connector, value, unit).await?)
    }

    async fn clear_limit(&self, station: &str, connector: u32) -> Result<String, evos_bus::Error> {
        Ok(self.0.clear_limit(station, connector).await?)
    }

    async fn reset(&self, station: &str, kind: &str) -> Result<String, evos_bus::Error> {
        Ok(self.0.reset(station, kind).await?)
    }

    async fn trigger(
        &self,
        station: &str,
        message: &str,
        connector: u32,
    ) -> Result<String, evos_bus::Error> {
        Ok(self.0.trigger(station, message, connector).await?)
    }

    async fn get_configuration(
        &self,
        station: &str,
        keys: Vec<String>,
    ) -> Result<Vec<(String, bool, String)>, evos_bus::Error> {
        Ok(self.0.get_configuration(station, &keys).await?)
    }

    async fn change_configuration(
        &self,
        station: &str,
        key: &str,
        value: &str,
    ) -> Result<String, evos_bus::Error> {
        Ok(self.0.change_configuration(station, key, value).await?)
    }
}

#[cfg(test)]
mod tests;
