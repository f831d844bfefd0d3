//! The OCPP 1.6 station: one task that owns the CSMS connection and every
//! piece of OCPP state, driven by events (frames, bus signals, D-Bus
//! requests, timers).
//!
//! OCPP-J 1.6 §4.1.1 allows one outstanding CALL per direction: `outstanding`
//! is ours; CSMS CALLs are answered as they come, crossing ours. Nothing that
//! waits on another service runs inside this loop: Evse1 calls run in
//! spawned tasks that report back as [`Event::Reply`] / [`Event::Done`], so
//! evse calling `Ocpp1.Authorize` while we call evse can never deadlock.
//!
//! Order of what is sent (§4.2, §4.10): nothing but BootNotification until
//! the CSMS accepted us; then latency-sensitive messages (Authorize, status,
//! triggered ones) before the transaction queue, which is drained strictly
//! in order.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use evos_bus::evse::{Evse1Proxy, SessionRecord};
use evos_bus::meter::{Meter1Proxy, MeterReading};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::clock::{self, Clock};
use crate::config::Config;
use crate::queue::Queue;
use crate::rpc::{self, Call, CallError, CallResult, ErrorCode, Frame, MessageIds};
use crate::transport::{Backoff, Link, TransportConfig};
use crate::v16::config_keys::{ConfigStore, Key};
use crate::v16::ledger::Ledger;
use crate::v16::local_auth::{self, AuthCache, AuthFlags, Decision, IdTagInfo, LocalList};
use crate::v16::messages as m;
use crate::v16::smart_charging::{Electrical, Limits, ProfileStore, RateUnit};
use crate::v16::{convert, outgoing};

/// What the loop reacts to.
pub enum Event {
    /// `Ocpp1.Authorize` from evse.
    Authorize {
        evse: u32,
        token: String,
        reply: oneshot::Sender<(String, String)>,
    },
    /// `Ocpp1.DataTransfer`: a station → CSMS DataTransfer.
    DataTransfer {
        vendor_id: String,
        message_id: String,
        data: String,
        reply: oneshot::Sender<Result<(String, String), String>>,
    },
    Evse(EvseEvent),
    Reading {
        evse: u32,
        reading: MeterReading,
    },
    Connected(Box<Link>),
    ConnectFailed(String),
    /// A spawned handler finished: answer CSMS CALL `id`.
    Reply {
        id: String,
        result: Result<Value, (ErrorCode, String)>,
    },
    /// A spawned job finished something the loop must follow up.
    Done(Done),
}

/// What evse tells (through the bus watchers in `service`).
#[derive(Debug, Clone)]
pub enum EvseEvent {
    Status {
        evse: u32,
        status: String,
        fault: String,
    },
    SessionStarted(SessionRecord),
    SessionEnded(SessionRecord),
    /// evse appeared on the bus (at our start or after it restarted): its
    /// state and recent sessions, to catch up on what we missed.
    Snapshot {
        evse: u32,
        status: String,
        fault: String,
        sessions: Vec<SessionRecord>,
    },
}

#[derive(Debug)]
pub enum Done {
    /// Remote start: the session was (or was not) started after authorization.
    RemoteStartFailed { evse: u32, why: String },
    /// An accepted charging profile could not be saved: drop it again.
    ProfileNotSaved { id: i32 },
    /// A reset asked evse to end every session; once their StopTransactions
    /// are persisted, run `command` (if any) and exit.
    ResetStopsSent { hard: bool, command: Vec<String> },
    /// A session ended and the meter's signed records for it were fetched
    /// (None where the meter has none): its StopTransaction can be queued.
    Ended {
        record: SessionRecord,
        signed: Vec<(m::ReadingContext, String)>,
    },
}

/// What the D-Bus interface shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Published {
    pub connection_state: String,
    pub registration_status: String,
    pub queued_messages: u32,
}

/// How the service ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A Reset was carried out by exiting; the service manager starts us again.
    Reset { hard: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Registration {
    None,
    Pending,
    Rejected,
    Accepted,
}

impl Registration {
    fn as_str(self) -> &'static str {
        match self {
            Registration::None => "",
            Registration::Pending => "Pending",
            Registration::Rejected => "Rejected",
            Registration::Accepted => "Accepted",
        }
    }
}

/// A CALL we will send when the line is free (not a transaction message:
/// those live in the persistent queue).
pub(super) enum Pending {
    Boot,
    Heartbeat,
    Status(u32),
    Authorize {
        id_tag: String,
        then: AuthThen,
    },
    DataTransfer {
        request: m::DataTransferRequest,
        reply: oneshot::Sender<Result<(String, String), String>>,
    },
    /// Non-transactional meter values (clock-aligned without a transaction,
    /// or triggered).
    MeterValues(Box<m::MeterValuesRequest>),
    DiagnosticsStatusIdle,
    FirmwareStatusIdle,
}

pub(super) enum AuthThen {
    Reply(oneshot::Sender<(String, String)>),
    RemoteStart {
        evse: u32,
        profile: Option<Box<m::ChargingProfile>>,
    },
}

enum Sent {
    Pending(Pending),
    Queued {
        seq: u64,
        action: String,
        tx_ref: Option<String>,
    },
}

struct Outstanding {
    id: String,
    sent: Sent,
    deadline: Instant,
}

/// One connector (= EVSE, 1-based) as OCPP sees it.
#[derive(Default)]
pub(super) struct Connector {
    pub status: String,
    pub fault: String,
    /// The status last reported to the CSMS.
    pub reported: Option<(String, String)>,
    pub session: Option<SessionRecord>,
    pub reading: Option<MeterReading>,
    pub next_sample: Option<Instant>,
    /// A RemoteStart profile to install once its transaction exists.
    pub pending_tx_profile: Option<Box<m::ChargingProfile>>,
}

/// The proxies of the services we call, one per EVSE.
#[derive(Clone)]
pub struct Bus {
    pub evse: BTreeMap<u32, Evse1Proxy<'static>>,
    pub meter: BTreeMap<u32, Meter1Proxy<'static>>,
}

pub struct Station {
    pub(super) cfg: Config,
    pub(super) keys: ConfigStore,
    pub(super) queue: Queue,
    pub(super) ledger: Ledger,
    pub(super) list: LocalList,
    pub(super) cache: AuthCache,
    pub(super) profiles: ProfileStore,
    pub(super) clock: Clock,
    clock_path: PathBuf,
    pub(super) bus: Bus,
    pub(super) events: mpsc::Sender<Event>,
    published: watch::Sender<Published>,
    ids: MessageIds,
    transport: TransportConfig,
    pub(super) registration: Registration,
    pub(super) connectors: BTreeMap<u32, Connector>,
    pub(super) pending: VecDeque<Pending>,
    outstanding: Option<Outstanding>,
    connecting: bool,
    connected: bool,
    next_connect: Instant,
    backoff: Backoff,
    queue_hold_until: Option<Instant>,
    next_boot: Option<Instant>,
    next_heartbeat: Option<Instant>,
    next_aligned: Option<Instant>,
    /// The boundary (station time) the next clock-aligned sample belongs to.
    aligned_at_ms: i64,
    next_limit: Option<Instant>,
    pub(super) resetting: Option<bool>,
    reset_due: Option<(bool, Vec<String>, Instant)>,
    /// Ended sessions whose signed values are being fetched.
    ending: usize,
    exit: Option<Exit>,
    pub(super) link_ping_changed: bool,
    /// Reconnect once the current answer is out (a new AuthorizationKey).
    pub(super) reconnect_requested: bool,
    /// The limit each EVSE should have; a pusher task per EVSE applies the
    /// latest (so pushes never overtake each other) and retries until evse
    /// takes it.
    limit_tx: BTreeMap<u32, watch::Sender<Option<(f64, RateUnit)>>>,
}

impl Station {
    pub fn open(
        cfg: Config,
        dir: &std::path::Path,
        password: Option<String>,
        bus: Bus,
        events: mpsc::Sender<Event>,
        published: watch::Sender<Published>,
    ) -> Result<Station, OpenError> {
        let connectors = cfg.connectors.max(1);
        let keys = ConfigStore::open(&dir.join("config-keys.json"), &cfg.keys, connectors)?;
        let queue = Queue::open(&dir.join("queue"))?;
        let ledger = Ledger::open(&dir.join("ledger.json"))?;
        let list = LocalList::open(
            &dir.join("local-list.json"),
            keys.int(Key::LocalAuthListMaxLength).max(0) as usize,
        )?;
        let cache = AuthCache::open(&dir.join("auth-cache.json"), 1000)?;
        let profiles = ProfileStore::open(
            &dir.join("charging-profiles.json"),
            connectors,
            Limits {
                max_stack_level: keys.int(Key::ChargeProfileMaxStackLevel).max(0) as u32,
                max_periods: keys.int(Key::ChargingScheduleMaxPeriods).max(1) as usize,
                max_profiles: keys.int(Key::MaxChargingProfilesInstalled).max(1) as usize,
            },
            Electrical {
                voltage_v: cfg.voltage_v,
                phases: cfg.phases,
                max_current_a: cfg.max_current_a,
            },
        )?;
        // A key the CSMS set (Security Whitepaper §2: AuthorizationKey)
        // replaces the configured password.
        let stored_key = keys.string(Key::AuthorizationKey);
        let password = if stored_key.is_empty() {
            password
        } else {
            Some(stored_key)
        };
        let transport = cfg.transport(password);
        let clock_path = dir.join("clock-offset");
        let backoff = Backoff::new(
            Duration::from_secs(cfg.reconnect_min_s),
            Duration::from_secs(cfg.reconnect_max_s),
        );
        let connectors = (1..=connectors)
            .map(|id| (id, Connector::default()))
            .collect();
        let station = Station {
            cfg,
            keys,
            queue,
            ledger,
            list,
            cache,
            profiles,
            clock: Clock::with_offset(
                std::fs::read_to_string(&clock_path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok()),
            ),
            clock_path,
            bus,
            events,
            published,
            ids: MessageIds::new(),
            transport,
            registration: Registration::None,
            connectors,
            pending: VecDeque::new(),
            outstanding: None,
            connecting: false,
            connected: false,
            next_connect: Instant::now(),
            backoff,
            queue_hold_until: None,
            next_boot: None,
            next_heartbeat: None,
            next_aligned: None,
            aligned_at_ms: 0,
            next_limit: Some(Instant::now()),
            resetting: None,
            reset_due: None,
            ending: 0,
            exit: None,
            link_ping_changed: false,
            reconnect_requested: false,
            limit_tx: BTreeMap::new(),
        };
        station.publish();
        Ok(station)
    }

    /// Run until a reset asks the service to exit.
    pub async fn run(mut self, mut events: mpsc::Receiver<Event>) -> Exit {
        let mut link: Option<Link> = None;
        self.schedule_aligned();
        for (evse, proxy) in self.bus.evse.clone() {
            let (tx, rx) = watch::channel(None);
            tokio::spawn(push_limit(evse, proxy, rx));
            self.limit_tx.insert(evse, tx);
        }
        loop {
            if link.is_none() && !self.connecting && Instant::now() >= self.next_connect {
                self.start_connecting();
            }
            if self.link_ping_changed {
                self.link_ping_changed = false;
                if let Some(l) = link.as_mut() {
                    l.set_ping_interval(self.ping_interval());
                }
            }
            let deadline = self.next_deadline();
            tokio::select! {
                text = recv(&mut link) => match text {
                    Ok(text) => {
                        if let Some(frame) = self.on_text(&text).await {
                            self.send_frame(&mut link, &frame).await;
                        }
                    }
                    Err(e) => self.disconnected(&mut link, &e.to_string()),
                },
                Some(event) = events.recv() => {
                    if let Some(frame) = self.on_event(event, &mut link).await {
                        self.send_frame(&mut link, &frame).await;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => self.on_timers(),
            }
            if std::mem::take(&mut self.reconnect_requested)
                && let Some(l) = link.take()
            {
                tracing::info!("reconnecting with the new AuthorizationKey");
                l.close().await;
                self.disconnected(&mut link, "new AuthorizationKey");
                self.next_connect = Instant::now();
            }
            self.pump(&mut link).await;
            self.check_reset().await;
            self.publish();
            if let Some(exit) = self.exit.take() {
                if let Some(l) = link.take() {
                    l.close().await;
                }
                return exit;
            }
        }
    }

    /// The CSMS set a new AuthorizationKey: use it from the next connection.
    pub(super) fn set_password(&mut self, password: String) {
        self.transport.basic_auth_password = Some(password);
        if self.transport.security_profile == 1 || self.transport.security_profile == 2 {
            self.reconnect_requested = true;
        }
    }

    fn ping_interval(&self) -> Option<Duration> {
        let s = self.keys.int(Key::WebSocketPingInterval);
        (s > 0).then(|| Duration::from_secs(s as u64))
    }

    fn start_connecting(&mut self) {
        self.connecting = true;
        let cfg = self.transport.clone();
        let events = self.events.clone();
        tracing::info!(
            url = cfg.csms_url,
            station = cfg.station_id,
            "connecting to the CSMS"
        );
        tokio::spawn(async move {
            let event = match Link::connect(&cfg).await {
                Ok(link) => Event::Connected(Box::new(link)),
                Err(e) => Event::ConnectFailed(e.to_string()),
            };
            let _ = events.send(event).await;
        });
    }

    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut t = far;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = t.min(x);
            }
        };
        consider(self.outstanding.as_ref().map(|o| o.deadline));
        consider(self.queue_hold_until);
        consider(self.next_boot);
        consider(self.next_heartbeat);
        consider(self.next_aligned);
        consider(self.next_limit);
        consider(self.reset_due.as_ref().map(|r| r.2));
        if !self.connected && !self.connecting {
            consider(Some(self.next_connect));
        }
        for c in self.connectors.values() {
            consider(c.next_sample);
        }
        t
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        if let Some(o) = &self.outstanding
            && now >= o.deadline
        {
            let id = o.id.clone();
            tracing::warn!(id, "no answer from the CSMS in time");
            self.call_failed(ErrorCode::GenericError, "response timeout");
        }
        if self.queue_hold_until.is_some_and(|t| now >= t) {
            self.queue_hold_until = None;
        }
        if self.next_boot.is_some_and(|t| now >= t) {
            self.next_boot = None;
            if self.connected && self.registration != Registration::Accepted {
                self.pending.push_back(Pending::Boot);
            }
        }
        if self.next_heartbeat.is_some_and(|t| now >= t) {
            self.next_heartbeat = None;
            if self.registration == Registration::Accepted {
                self.pending.push_back(Pending::Heartbeat);
            }
        }
        if self.next_aligned.is_some_and(|t| now >= t) {
            self.aligned_sample();
            self.schedule_aligned();
        }
        let due: Vec<u32> = self
            .connectors
            .iter()
            .filter(|(_, c)| c.next_sample.is_some_and(|t| now >= t))
            .map(|(id, _)| *id)
            .collect();
        for evse in due {
            self.periodic_sample(evse);
        }
        if self.next_limit.is_some_and(|t| now >= t) {
            self.next_limit = None;
            self.push_limits();
        }
    }

    pub(super) fn publish(&self) {
        let state = if self.connected {
            "Connected"
        } else if self.connecting {
            "Connecting"
        } else {
            "Offline"
        };
        let p = Published {
            connection_state: state.into(),
            registration_status: self.registration.as_str().into(),
            queued_messages: self.queue.len() as u32,
        };
        self.published.send_if_modified(|old| {
            let changed = *old != p;
            *old = p;
            changed
        });
    }

    fn disconnected(&mut self, link: &mut Option<Link>, why: &str) {
        if link.take().is_some() {
            tracing::warn!("connection to the CSMS lost: {why}");
        }
        self.connected = false;
        let delay = self.backoff.next_delay();
        self.next_connect = Instant::now() + delay;
        tracing::info!(?delay, "reconnecting after back-off");
        if let Some(o) = self.outstanding.take() {
            // Offline is not a failed attempt (§4.10): a queued message stays
            // at the front; others are settled by the offline rules.
            if let Sent::Pending(p) = o.sent {
                self.pending_failed(p);
            }
        }
        // Status, heartbeat and similar go stale; they are sent afresh after
        // the reconnect. Authorizations are answered offline now.
        let pending: Vec<Pending> = self.pending.drain(..).collect();
        for p in pending {
            match p {
                Pending::Authorize { .. } | Pending::DataTransfer { .. } => self.pending_failed(p),
                _ => {}
            }
        }
        self.next_heartbeat = None;
    }

    async fn send_frame(&mut self, link: &mut Option<Link>, frame: &Frame) {
        let Some(l) = link.as_mut() else { return };
        if let Err(e) = l.send(&frame.to_text()).await {
            self.disconnected(link, &e.to_string());
        }
    }

    async fn on_event(&mut self, event: Event, link: &mut Option<Link>) -> Option<Frame> {
        match event {
            Event::Connected(l) => {
                self.connecting = false;
                self.connected = true;
                self.backoff.reset();
                let mut l = *l;
                l.set_ping_interval(self.ping_interval());
                *link = Some(l);
                tracing::info!("connected to the CSMS");
                if self.registration == Registration::Accepted {
                    // §4.2: no new BootNotification after a reconnect; tell
                    // what changed while we were away.
                    for id in self.connectors.keys().copied().collect::<Vec<_>>() {
                        self.status_changed(id, true);
                    }
                    self.schedule_heartbeat();
                } else {
                    self.pending.push_front(Pending::Boot);
                }
                None
            }
            Event::ConnectFailed(why) => {
                self.connecting = false;
                let delay = self.backoff.next_delay();
                self.next_connect = Instant::now() + delay;
                tracing::warn!(?delay, "cannot connect to the CSMS: {why}");
                None
            }
            Event::Authorize { evse, token, reply } => {
                self.authorize(evse, token, AuthThen::Reply(reply));
                None
            }
            Event::DataTransfer {
                vendor_id,
                message_id,
                data,
                reply,
            } => {
                match outgoing::data_transfer(&vendor_id, &message_id, &data) {
                    Ok(request) => {
                        if self.registration == Registration::Accepted && self.connected {
                            self.pending
                                .push_back(Pending::DataTransfer { request, reply });
                        } else {
                            let _ = reply.send(Err("not connected to the CSMS".into()));
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
                None
            }
            Event::Evse(e) => {
                self.on_evse(e);
                None
            }
            Event::Reading { evse, reading } => {
                if let Some(c) = self.connectors.get_mut(&evse) {
                    c.reading = Some(reading);
                }
                None
            }
            Event::Reply { id, result } => Some(match result {
                Ok(payload) => Frame::CallResult(CallResult { id, payload }),
                Err((code, description)) => Frame::CallError(CallError {
                    id,
                    code,
                    description,
                    details: Value::Object(Default::default()),
                }),
            }),
            Event::Done(done) => {
                self.on_done(done);
                None
            }
        }
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::RemoteStartFailed { evse, why } => {
                tracing::warn!(evse, "remote start did not start a session: {why}");
                if let Some(c) = self.connectors.get_mut(&evse) {
                    c.pending_tx_profile = None;
                }
            }
            Done::ProfileNotSaved { id } => {
                self.profiles.unset(id);
                self.push_limits();
            }
            Done::ResetStopsSent { hard, command } => {
                self.reset_due = Some((hard, command, Instant::now() + Duration::from_secs(30)));
            }
            Done::Ended { record, signed } => {
                self.ending = self.ending.saturating_sub(1);
                self.session_ended(&record, signed);
            }
        }
    }

    /// Parse and dispatch one incoming text; returns the frame to answer with.
    async fn on_text(&mut self, text: &str) -> Option<Frame> {
        match rpc::parse(text) {
            Ok(Frame::Call(call)) => self.on_call(call).await,
            Ok(Frame::CallResult(result)) => {
                self.on_result(result);
                None
            }
            Ok(Frame::CallError(error)) => {
                self.on_call_error(error);
                None
            }
            Err(e) => {
                tracing::warn!(
                    code = e.code.as_str(),
                    "malformed frame from the CSMS: {}",
                    e.description
                );
                Some(Frame::CallError(e.reply()))
            }
        }
    }

    fn on_result(&mut self, result: CallResult) {
        let Some(o) = self.outstanding.take_if(|o| o.id == result.id) else {
            tracing::warn!(
                id = result.id,
                "CALLRESULT for no outstanding CALL: ignored"
            );
            return;
        };
        match o.sent {
            Sent::Pending(p) => self.pending_answered(p, result.payload),
            Sent::Queued {
                seq,
                action,
                tx_ref,
            } => self.queued_answered(seq, &action, tx_ref.as_deref(), result.payload),
        }
    }

    fn on_call_error(&mut self, error: CallError) {
        if self.outstanding.as_ref().is_none_or(|o| o.id != error.id) {
            tracing::warn!(id = error.id, "CALLERROR for no outstanding CALL: ignored");
            return;
        }
        tracing::warn!(
            id = error.id,
            code = error.code.as_str(),
            "the CSMS answered with an error: {}",
            error.description
        );
        self.call_failed(error.code, &error.description);
    }

    /// The outstanding CALL failed (CALLERROR or no answer).
    fn call_failed(&mut self, code: ErrorCode, why: &str) {
        let Some(o) = self.outstanding.take() else {
            return;
        };
        match o.sent {
            Sent::Pending(p) => self.pending_failed(p),
            Sent::Queued { seq, action, .. } => {
                let attempts = match self.queue.record_attempt(seq) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::error!("cannot record a delivery attempt: {e}");
                        u32::MAX
                    }
                };
                let max = self.keys.int(Key::TransactionMessageAttempts).max(1) as u32;
                if attempts >= max {
                    tracing::error!(
                        seq,
                        action,
                        attempts,
                        "transaction message discarded after TransactionMessageAttempts ({}: {why})",
                        code.as_str()
                    );
                    self.discard_queued(seq, &format!("{}: {why}", code.as_str()));
                } else {
                    // §4.10: wait TransactionMessageRetryInterval × attempts.
                    let base = self.keys.int(Key::TransactionMessageRetryInterval).max(0) as u64;
                    let delay = Duration::from_secs(base * attempts as u64);
                    tracing::info!(
                        seq,
                        action,
                        attempts,
                        ?delay,
                        "transaction message will be retried"
                    );
                    self.queue_hold_until = Some(Instant::now() + delay);
                }
            }
        }
    }

    fn discard_queued(&mut self, seq: u64, why: &str) {
        let tx_ref = self
            .queue
            .front()
            .filter(|e| e.seq == seq && e.action == "StartTransaction")
            .and_then(|e| e.tx_ref.clone());
        if let Err(e) = self.queue.discard(seq, why) {
            tracing::error!("cannot discard a queued message: {e}");
        }
        // A transaction the CSMS never took: its later messages cannot carry
        // a transactionId, so the ledger counts it as done.
        if let Some(tx_ref) = tx_ref {
            self.ledger_done(&tx_ref);
        }
    }

    /// Send the next CALL if the line is free.
    async fn pump(&mut self, link: &mut Option<Link>) {
        while self.connected && self.outstanding.is_none() {
            let Some((action, payload, sent)) = self.next_call() else {
                return;
            };
            let id = self.ids.next();
            let frame = Frame::Call(Call {
                id: id.clone(),
                action,
                payload,
            });
            let timeout = Duration::from_secs(self.cfg.response_timeout_s);
            self.outstanding = Some(Outstanding {
                id,
                sent,
                deadline: Instant::now() + timeout,
            });
            self.send_frame(link, &frame).await;
            if self.registration == Registration::Accepted {
                self.schedule_heartbeat();
            }
        }
    }

    /// The next message to send: (action, payload, what it was).
    fn next_call(&mut self) -> Option<(String, Value, Sent)> {
        if self.registration != Registration::Accepted {
            // §4.2.1: only BootNotification until accepted (a triggered one
            // included).
            let at = self
                .pending
                .iter()
                .position(|p| matches!(p, Pending::Boot))?;
            let p = self.pending.remove(at)?;
            let (action, payload) = self.build_pending(&p)?;
            return Some((action, payload, Sent::Pending(p)));
        }
        while let Some(p) = self.pending.pop_front() {
            if let Some((action, payload)) = self.build_pending(&p) {
                return Some((action, payload, Sent::Pending(p)));
            }
        }
        if self.queue_hold_until.is_some() {
            return None;
        }
        loop {
            let entry = self.queue.front()?.clone();
            match outgoing::finalize(&entry, &self.queue, &self.clock) {
                Ok(payload) => {
                    return Some((
                        entry.action.clone(),
                        payload,
                        Sent::Queued {
                            seq: entry.seq,
                            action: entry.action,
                            tx_ref: entry.tx_ref,
                        },
                    ));
                }
                Err(why) => {
                    tracing::error!(seq = entry.seq, action = entry.action, "cannot send: {why}");
                    self.discard_queued(entry.seq, &why);
                }
            }
        }
    }

    fn build_pending(&mut self, p: &Pending) -> Option<(String, Value)> {
        fn enc<R: m::Request>(r: &R) -> Option<(String, Value)> {
            serde_json::to_value(r)
                .ok()
                .map(|v| (R::ACTION.to_string(), v))
        }
        match p {
            Pending::Boot => enc(&outgoing::boot(&self.cfg)),
            Pending::Heartbeat => enc(&m::HeartbeatRequest {}),
            Pending::Status(id) => {
                let r = self.status_request(*id);
                enc(&r)
            }
            Pending::Authorize { id_tag, .. } => {
                let id_tag = convert::id_tag(id_tag).ok()?;
                enc(&m::AuthorizeRequest { id_tag })
            }
            Pending::DataTransfer { request, .. } => enc(request),
            Pending::MeterValues(r) => enc(r.as_ref()),
            Pending::DiagnosticsStatusIdle => enc(&m::DiagnosticsStatusNotificationRequest {
                status: m::DiagnosticsStatus::Idle,
            }),
            Pending::FirmwareStatusIdle => enc(&m::FirmwareStatusNotificationRequest {
                status: m::FirmwareStatus::Idle,
            }),
        }
    }

    fn pending_answered(&mut self, p: Pending, payload: Value) {
        match p {
            Pending::Boot => match serde_json::from_value::<m::BootNotificationResponse>(payload) {
                Ok(conf) => self.boot_answered(conf),
                Err(e) => {
                    tracing::warn!("invalid BootNotification.conf: {e}");
                    self.next_boot = Some(Instant::now() + Duration::from_secs(30));
                }
            },
            Pending::Heartbeat => {
                if let Ok(conf) = serde_json::from_value::<m::HeartbeatResponse>(payload) {
                    self.set_clock(conf.current_time.unix_ms());
                }
            }
            Pending::Status(_) | Pending::MeterValues(_) => {}
            Pending::DiagnosticsStatusIdle | Pending::FirmwareStatusIdle => {}
            Pending::Authorize { id_tag, then } => {
                match serde_json::from_value::<m::AuthorizeResponse>(payload) {
                    Ok(conf) => {
                        let info = convert::id_tag_info(&conf.id_tag_info);
                        self.remember(&id_tag, &info);
                        self.authorized(id_tag, info, then);
                    }
                    Err(e) => {
                        tracing::warn!("invalid Authorize.conf: {e}");
                        self.pending_failed(Pending::Authorize { id_tag, then });
                    }
                }
            }
            Pending::DataTransfer { reply, .. } => {
                let answer = serde_json::from_value::<m::DataTransferResponse>(payload)
                    .map(|conf| {
                        (
                            conf.status.as_str().to_string(),
                            conf.data.unwrap_or_default(),
                        )
                    })
                    .map_err(|e| format!("invalid DataTransfer.conf: {e}"));
                let _ = reply.send(answer);
            }
        }
    }

    /// A pending CALL that will not be answered: settle what waits on it.
    fn pending_failed(&mut self, p: Pending) {
        match p {
            Pending::Authorize { id_tag, then } => {
                let now = self.clock.now_ms();
                let mut flags = self.auth_flags();
                flags.online = false;
                let info = match local_auth::decide(&flags, &self.list, &self.cache, &id_tag, now) {
                    Decision::Local(info) => info,
                    Decision::AskCsms => IdTagInfo {
                        status: local_auth::AuthStatus::Invalid,
                        expiry_ms: None,
                        parent: None,
                    },
                };
                tracing::info!(id_tag, status = ?info.status, "authorized offline");
                self.authorized(id_tag, info, then);
            }
            Pending::DataTransfer { reply, .. } => {
                let _ = reply.send(Err("the CSMS did not answer".into()));
            }
            Pending::Boot => {
                self.next_boot = Some(Instant::now() + Duration::from_secs(30));
            }
            _ => {}
        }
    }

    fn boot_answered(&mut self, conf: m::BootNotificationResponse) {
        self.set_clock(conf.current_time.unix_ms());
        let interval = conf.interval.max(0) as u64;
        match conf.status {
            m::RegistrationStatus::Accepted => {
                tracing::info!(interval, "the CSMS accepted the station");
                self.registration = Registration::Accepted;
                if interval > 0 {
                    let _ = self
                        .keys
                        .change(Key::HeartbeatInterval.name(), &interval.to_string());
                }
                // §4.9: connector 0 and every connector after boot.
                self.pending.push_back(Pending::Status(0));
                for id in self.connectors.keys().copied().collect::<Vec<_>>() {
                    self.status_changed(id, true);
                }
                self.schedule_heartbeat();
                // The clock may have moved: realign, and recompute limits.
                self.schedule_aligned();
                self.next_limit = Some(Instant::now());
            }
            status => {
                let registration = if status == m::RegistrationStatus::Pending {
                    Registration::Pending
                } else {
                    Registration::Rejected
                };
                // §4.2.1: retry after `interval`; a zero interval leaves it
                // to us.
                let retry = if interval == 0 { 30 } else { interval };
                tracing::warn!(?status, retry, "the CSMS did not accept the station yet");
                self.registration = registration;
                self.next_boot = Some(Instant::now() + Duration::from_secs(retry));
            }
        }
    }

    /// Take the CSMS's time, and keep the offset for the next run so a
    /// re-sent message is stamped exactly as the first time.
    fn set_clock(&mut self, csms_ms: i64) {
        if self.clock.set(csms_ms, clock::system_ms())
            && let Some(offset) = self.clock.offset_ms()
            && let Err(e) =
                evos_service::persist::write_atomic(&self.clock_path, offset.to_string().as_bytes())
        {
            tracing::warn!("cannot save the clock offset: {e}");
        }
    }

    pub(super) fn schedule_heartbeat(&mut self) {
        let s = self.keys.int(Key::HeartbeatInterval);
        self.next_heartbeat = (s > 0).then(|| Instant::now() + Duration::from_secs(s as u64));
    }

    /// §3.7.x ClockAlignedDataInterval: samples at whole multiples of the
    /// interval since midnight UTC.
    pub(super) fn schedule_aligned(&mut self) {
        let interval_s = self.keys.int(Key::ClockAlignedDataInterval);
        if interval_s <= 0 {
            self.next_aligned = None;
            return;
        }
        let interval_ms = interval_s * 1000;
        let now = self.clock.now_ms();
        let next = (now / interval_ms + 1) * interval_ms;
        self.aligned_at_ms = next;
        self.next_aligned = Some(Instant::now() + Duration::from_millis((next - now) as u64));
    }

    pub(super) fn auth_flags(&self) -> AuthFlags {
        AuthFlags {
            online: self.connected && self.registration == Registration::Accepted,
            local_authorize_offline: self.keys.bool(Key::LocalAuthorizeOffline),
            local_pre_authorize: self.keys.bool(Key::LocalPreAuthorize),
            cache_enabled: self.keys.bool(Key::AuthorizationCacheEnabled),
            list_enabled: self.keys.bool(Key::LocalAuthListEnabled),
            allow_offline_unknown: self.keys.bool(Key::AllowOfflineTxForUnknownId),
        }
    }

    /// Authorize `id_tag` by the §3.5 rules, then do `then`.
    pub(super) fn authorize(&mut self, evse: u32, id_tag: String, then: AuthThen) {
        let now = self.clock.now_ms();
        match local_auth::decide(&self.auth_flags(), &self.list, &self.cache, &id_tag, now) {
            Decision::Local(info) => {
                tracing::info!(evse, id_tag, status = ?info.status, "authorized locally");
                self.authorized(id_tag, info, then);
            }
            Decision::AskCsms => {
                if convert::id_tag(&id_tag).is_err() {
                    let info = IdTagInfo {
                        status: local_auth::AuthStatus::Invalid,
                        expiry_ms: None,
                        parent: None,
                    };
                    tracing::warn!(evse, "id tag longer than 20 characters: Invalid");
                    self.authorized(id_tag, info, then);
                } else {
                    // Latency-sensitive: ahead of anything else waiting.
                    self.pending.push_front(Pending::Authorize { id_tag, then });
                }
            }
        }
    }

    /// Keep an answer from the CSMS in the cache (§3.5.1), unless the local
    /// list knows the tag (the list wins and is not cached).
    pub(super) fn remember(&mut self, id_tag: &str, info: &IdTagInfo) {
        if self.keys.bool(Key::AuthorizationCacheEnabled) && self.list.get(id_tag).is_none() {
            self.cache.update(id_tag, info.clone(), self.clock.now_ms());
        }
    }

    fn authorized(&mut self, id_tag: String, info: IdTagInfo, then: AuthThen) {
        match then {
            AuthThen::Reply(reply) => {
                let _ = reply.send((
                    info.status.as_str().to_string(),
                    info.parent.clone().unwrap_or_default(),
                ));
            }
            AuthThen::RemoteStart { evse, profile } => {
                if info.status != local_auth::AuthStatus::Accepted {
                    tracing::warn!(evse, id_tag, status = ?info.status, "remote start not authorized");
                    return;
                }
                self.start_session(evse, id_tag, profile);
            }
        }
    }

    /// Ask evse to start a session (remote start), in a task.
    pub(super) fn start_session(
        &mut self,
        evse: u32,
        id_tag: String,
        profile: Option<Box<m::ChargingProfile>>,
    ) {
        if let Some(c) = self.connectors.get_mut(&evse) {
            c.pending_tx_profile = profile;
        }
        let Some(proxy) = self.bus.evse.get(&evse).cloned() else {
            return;
        };
        let events = self.events.clone();
        tokio::spawn(async move {
            if let Err(e) = proxy.start_session(&id_tag).await {
                let _ = events
                    .send(Event::Done(Done::RemoteStartFailed {
                        evse,
                        why: e.to_string(),
                    }))
                    .await;
            }
        });
    }

    /// Evse told us something.
    fn on_evse(&mut self, e: EvseEvent) {
        match e {
            EvseEvent::Status {
                evse,
                status,
                fault,
            } => {
                if let Some(c) = self.connectors.get_mut(&evse) {
                    c.status = status;
                    c.fault = fault;
                }
                self.status_changed(evse, false);
                self.update_sampling(evse);
            }
            EvseEvent::SessionStarted(record) => {
                self.session_started(&record);
                self.update_sampling(record.evse);
                self.next_limit = Some(Instant::now());
            }
            EvseEvent::SessionEnded(record) => {
                self.session_over(&record);
                self.fetch_signed_then_end(record);
            }
            EvseEvent::Snapshot {
                evse,
                status,
                fault,
                sessions,
            } => {
                if let Some(c) = self.connectors.get_mut(&evse) {
                    c.status = status;
                    c.fault = fault;
                }
                // Catch up on sessions we did not hear about (we or evse
                // were down): the ledger says which messages exist already.
                for record in &sessions {
                    if record.started_ms < self.ledger.since_ms() {
                        continue;
                    }
                    self.session_started(record);
                    if !record.is_active() && !self.ledger.stop_queued(&record.id, &self.queue) {
                        self.fetch_signed_then_end(record.clone());
                    }
                }
                if let Some(c) = self.connectors.get_mut(&evse) {
                    c.session = sessions.last().filter(|r| r.is_active()).cloned();
                }
                self.status_changed(evse, false);
                self.update_sampling(evse);
                self.repush_limit(evse);
                self.push_connection_timeout(evse);
                self.next_limit = Some(Instant::now());
            }
        }
    }

    /// Queue StatusNotification for `evse` if it differs from what the CSMS
    /// knows (or always, with `force`).
    pub(super) fn status_changed(&mut self, evse: u32, force: bool) {
        let Some(c) = self.connectors.get(&evse) else {
            return;
        };
        if c.status.is_empty() {
            return;
        }
        let now = (c.status.clone(), c.fault.clone());
        if !force && c.reported.as_ref() == Some(&now) {
            return;
        }
        if self.registration == Registration::Accepted
            && self.connected
            && !self
                .pending
                .iter()
                .any(|p| matches!(p, Pending::Status(id) if *id == evse))
        {
            self.pending.push_back(Pending::Status(evse));
        }
    }

    fn status_request(&mut self, evse: u32) -> m::StatusNotificationRequest {
        let now = self.clock.now_ms();
        if evse == 0 {
            // The station as a whole (§4.9 connector 0): unavailable only
            // when every connector is.
            let all_off = !self.connectors.is_empty()
                && self.connectors.values().all(|c| c.status == "Unavailable");
            let status = if all_off { "Unavailable" } else { "Available" };
            return outgoing::status(0, status, "", now);
        }
        let (status, fault) = self
            .connectors
            .get(&evse)
            .map(|c| (c.status.clone(), c.fault.clone()))
            .unwrap_or_default();
        if let Some(c) = self.connectors.get_mut(&evse) {
            c.reported = Some((status.clone(), fault.clone()));
        }
        outgoing::status(evse, &status, &fault, now)
    }

    /// Persist a transaction message (the queue fsyncs before returning).
    pub(super) fn enqueue(&mut self, action: &str, payload: Value, tx_ref: Option<&str>) {
        match self.queue.push(action, payload, tx_ref, clock::system_ms()) {
            Ok(seq) => tracing::debug!(seq, action, "queued"),
            Err(e) => tracing::error!(action, "cannot persist a transaction message: {e}"),
        }
    }

    fn session_started(&mut self, record: &SessionRecord) {
        if let Some(c) = self.connectors.get_mut(&record.evse)
            && record.is_active()
        {
            c.session = Some(record.clone());
        }
        if self.ledger.start_queued(&record.id, &self.queue) {
            return;
        }
        match outgoing::start_transaction(record) {
            Ok(req) => match serde_json::to_value(&req) {
                Ok(v) => {
                    self.enqueue("StartTransaction", v, Some(&record.id));
                    self.ledger_begin(&record.id, record.evse);
                }
                Err(e) => tracing::error!("cannot encode StartTransaction: {e}"),
            },
            Err(e) => tracing::error!(session = record.id, "cannot start a transaction: {e}"),
        }
    }

    /// The session is over on the connector: sampling and its TxProfiles end
    /// now, before its StopTransaction is composed.
    fn session_over(&mut self, record: &SessionRecord) {
        if let Some(c) = self.connectors.get_mut(&record.evse)
            && c.session.as_ref().is_some_and(|s| s.id == record.id)
        {
            c.session = None;
            c.pending_tx_profile = None;
        }
        let tx_id = self
            .queue
            .transaction_id(&record.id)
            .and_then(|id| i32::try_from(id).ok());
        self.profiles.transaction_ended(record.evse, tx_id);
        self.update_sampling(record.evse);
        self.next_limit = Some(Instant::now());
    }

    /// Fetch the meter's signed begin/end records (§ signed meter values,
    /// OCMF as SampledValue format SignedData), then queue the stop. The
    /// meter's transaction calls are idempotent by id, so this reads what
    /// evse already made it persist.
    fn fetch_signed_then_end(&mut self, record: SessionRecord) {
        self.ending += 1;
        let meter = self.bus.meter.get(&record.evse).cloned();
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut signed = Vec::new();
            if let Some(meter) = meter {
                let fetch = async {
                    let begin = meter.start_transaction(&record.id, &record.token).await;
                    let end = meter.stop_transaction(&record.id).await;
                    (begin, end)
                };
                match tokio::time::timeout(Duration::from_secs(5), fetch).await {
                    Ok((begin, end)) => {
                        if let Ok(b) = begin
                            && !b.ocmf.is_empty()
                        {
                            signed.push((m::ReadingContext::TransactionBegin, b.ocmf));
                        }
                        if let Ok(e) = end
                            && !e.ocmf.is_empty()
                        {
                            signed.push((m::ReadingContext::TransactionEnd, e.ocmf));
                        }
                    }
                    Err(_) => tracing::warn!(
                        session = record.id,
                        "meter did not answer: no signed values"
                    ),
                }
            }
            let _ = events
                .send(Event::Done(Done::Ended { record, signed }))
                .await;
        });
    }

    fn session_ended(&mut self, record: &SessionRecord, signed: Vec<(m::ReadingContext, String)>) {
        if self.ledger.stop_queued(&record.id, &self.queue) {
            return;
        }
        // StopTxnSampledData and the stop sample (§9.1.x): what the ledger
        // collected during the transaction, with the final reading.
        // The final sample is the meter's stop reading (the register the
        // StopTransaction reports), with the other quantities as last read.
        let reading = self
            .connectors
            .get(&record.evse)
            .and_then(|c| c.reading.clone())
            .map(|mut r| {
                r.energy_import_wh = record.stop_meter_wh;
                r
            });
        if let Some(reading) = &reading {
            let stop_measurands = self.keys.list(Key::StopTxnSampledData);
            if let Some(mv) = outgoing::meter_value(
                reading,
                &stop_measurands,
                m::ReadingContext::TransactionEnd,
                record.ended_ms,
            ) {
                self.ledger_sample(&record.id, mv);
            }
        }
        let mut data = self.ledger.transaction_data(&record.id);
        data.extend(outgoing::signed_values(&signed, record));
        match outgoing::stop_transaction(record, data) {
            Ok(req) => match serde_json::to_value(&req) {
                Ok(v) => {
                    self.enqueue("StopTransaction", v, Some(&record.id));
                    self.ledger_end(&record.id, &record.stop_token);
                }
                Err(e) => tracing::error!("cannot encode StopTransaction: {e}"),
            },
            Err(e) => tracing::error!(session = record.id, "cannot stop a transaction: {e}"),
        }
    }

    fn queued_answered(&mut self, seq: u64, action: &str, tx_ref: Option<&str>, payload: Value) {
        match action {
            "StartTransaction" => {
                match serde_json::from_value::<m::StartTransactionResponse>(payload) {
                    Ok(conf) => {
                        let Some(tx_ref) = tx_ref else {
                            return self.ack(seq);
                        };
                        if let Err(e) = self
                            .queue
                            .bind_transaction(tx_ref, conf.transaction_id as i64)
                        {
                            tracing::error!("cannot persist a transaction id: {e}");
                        }
                        self.ack(seq);
                        let info = convert::id_tag_info(&conf.id_tag_info);
                        self.start_confirmed(tx_ref, conf.transaction_id, info);
                    }
                    Err(e) => {
                        tracing::warn!("invalid StartTransaction.conf: {e}");
                        self.outstanding = Some(Outstanding {
                            id: String::new(),
                            sent: Sent::Queued {
                                seq,
                                action: action.into(),
                                tx_ref: tx_ref.map(Into::into),
                            },
                            deadline: Instant::now(),
                        });
                        self.call_failed(
                            ErrorCode::FormationViolation,
                            "invalid StartTransaction.conf",
                        );
                    }
                }
            }
            "StopTransaction" => {
                if let Ok(conf) = serde_json::from_value::<m::StopTransactionResponse>(payload)
                    && let (Some(info), Some(tx_ref)) = (conf.id_tag_info, tx_ref)
                {
                    let info = convert::id_tag_info(&info);
                    if let Some(tag) = self.ledger.stop_tag(tx_ref) {
                        self.remember(&tag, &info);
                    }
                }
                if let Some(tx_ref) = tx_ref {
                    // Ledger first: a crash between the two re-sends the
                    // stop (at least once) rather than forgetting it.
                    self.ledger_done(tx_ref);
                    self.ack(seq);
                    if let Err(e) = self.queue.forget_transaction(tx_ref) {
                        tracing::warn!("cannot forget a transaction binding: {e}");
                    }
                } else {
                    self.ack(seq);
                }
            }
            _ => self.ack(seq),
        }
    }

    fn ack(&mut self, seq: u64) {
        if let Err(e) = self.queue.ack(seq) {
            tracing::error!(seq, "cannot remove a confirmed message from the queue: {e}");
        }
    }

    /// StartTransaction.conf: the CSMS's transactionId and its verdict on
    /// the id tag (§5.x StopTransactionOnInvalidId).
    fn start_confirmed(&mut self, tx_ref: &str, transaction_id: i32, info: IdTagInfo) {
        let Some((evse, tag)) = self.ledger.session_of(tx_ref) else {
            return;
        };
        self.remember(&tag, &info);
        let active = self
            .connectors
            .get(&evse)
            .and_then(|c| c.session.as_ref())
            .is_some_and(|s| s.id == tx_ref);
        if !active {
            return;
        }
        if let Some(profile) = self
            .connectors
            .get_mut(&evse)
            .and_then(|c| c.pending_tx_profile.take())
        {
            let mut profile = *profile;
            profile.transaction_id = Some(transaction_id);
            match convert::profile(&profile) {
                Ok(p) => {
                    let r = self.profiles.set(evse, p, Some(transaction_id));
                    tracing::info!(evse, ?r, "remote start's charging profile installed");
                }
                Err(e) => tracing::warn!("remote start's charging profile: {e}"),
            }
            self.next_limit = Some(Instant::now());
        }
        if info.status != local_auth::AuthStatus::Accepted {
            let Some(proxy) = self.bus.evse.get(&evse).cloned() else {
                return;
            };
            if self.keys.bool(Key::StopTransactionOnInvalidId) {
                tracing::warn!(evse, status = ?info.status, "id tag not accepted by the CSMS: stopping");
                tokio::spawn(async move {
                    if let Err(e) = proxy.stop_session("DeAuthorized").await {
                        tracing::warn!("cannot stop a deauthorized session: {e}");
                    }
                });
            } else {
                // §9.1 StopTransactionOnInvalidId false: keep the
                // transaction, deliver no energy.
                tracing::warn!(evse, status = ?info.status, "id tag not accepted: suspending energy");
                tokio::spawn(async move {
                    if let Err(e) = proxy.set_charging_limit(0.0, "A", 0).await {
                        tracing::warn!("cannot suspend a deauthorized session: {e}");
                    }
                });
            }
        }
    }

    /// Start or stop periodic sampling for `evse` (§9.1
    /// MeterValueSampleInterval: while a transaction runs).
    fn update_sampling(&mut self, evse: u32) {
        let interval = self.keys.int(Key::MeterValueSampleInterval);
        let Some(c) = self.connectors.get_mut(&evse) else {
            return;
        };
        if c.session.is_some() && interval > 0 {
            if c.next_sample.is_none() {
                c.next_sample = Some(Instant::now() + Duration::from_secs(interval as u64));
            }
        } else {
            c.next_sample = None;
        }
    }

    pub(super) fn resample_all(&mut self) {
        for id in self.connectors.keys().copied().collect::<Vec<_>>() {
            if let Some(c) = self.connectors.get_mut(&id) {
                c.next_sample = None;
            }
            self.update_sampling(id);
        }
    }

    fn periodic_sample(&mut self, evse: u32) {
        let interval = self.keys.int(Key::MeterValueSampleInterval).max(1) as u64;
        let Some(c) = self.connectors.get_mut(&evse) else {
            return;
        };
        c.next_sample = Some(Instant::now() + Duration::from_secs(interval));
        let (Some(session), Some(reading)) = (c.session.clone(), c.reading.clone()) else {
            return;
        };
        let measurands = self.keys.list(Key::MeterValuesSampledData);
        let stamp = clock::system_ms();
        if let Some(mv) = outgoing::meter_value(
            &reading,
            &measurands,
            m::ReadingContext::SamplePeriodic,
            stamp,
        ) {
            self.enqueue_meter_values(evse, &session.id, mv);
        }
        let stop_measurands = self.keys.list(Key::StopTxnSampledData);
        if let Some(mv) = outgoing::meter_value(
            &reading,
            &stop_measurands,
            m::ReadingContext::SamplePeriodic,
            stamp,
        ) {
            self.ledger_sample(&session.id, mv);
        }
    }

    fn enqueue_meter_values(&mut self, evse: u32, tx_ref: &str, mv: m::MeterValue) {
        let req = m::MeterValuesRequest {
            connector_id: evse as i32,
            transaction_id: None,
            meter_value: vec![mv],
        };
        match serde_json::to_value(&req) {
            Ok(v) => self.enqueue("MeterValues", v, Some(tx_ref)),
            Err(e) => tracing::error!("cannot encode MeterValues: {e}"),
        }
    }

    /// A clock-aligned sample of every connector (§9.1 ClockAlignedDataInterval):
    /// transaction messages during a transaction, plain MeterValues otherwise.
    fn aligned_sample(&mut self) {
        let measurands = self.keys.list(Key::MeterValuesAlignedData);
        let stop_measurands = self.keys.list(Key::StopTxnAlignedData);
        // §9.1 ClockAlignedDataInterval: a sample is identified by the
        // boundary it was taken at, not by when the timer fired.
        let stamp = self.clock.system_ms_of(self.aligned_at_ms);
        let ids: Vec<u32> = self.connectors.keys().copied().collect();
        for evse in ids {
            let Some(c) = self.connectors.get(&evse) else {
                continue;
            };
            let (session, Some(reading)) = (c.session.clone(), c.reading.clone()) else {
                continue;
            };
            let Some(mv) =
                outgoing::meter_value(&reading, &measurands, m::ReadingContext::SampleClock, stamp)
            else {
                continue;
            };
            match session {
                Some(s) => {
                    self.enqueue_meter_values(evse, &s.id, mv);
                    if let Some(mv) = outgoing::meter_value(
                        &reading,
                        &stop_measurands,
                        m::ReadingContext::SampleClock,
                        stamp,
                    ) {
                        self.ledger_sample(&s.id, mv);
                    }
                }
                None => {
                    if self.registration == Registration::Accepted && self.connected {
                        self.pending.push_back(Pending::MeterValues(Box::new(
                            m::MeterValuesRequest {
                                connector_id: evse as i32,
                                transaction_id: None,
                                meter_value: vec![self.stamped(mv)],
                            },
                        )));
                    }
                }
            }
        }
    }

    /// A non-queued message is sent now: stamp it in station time.
    pub(super) fn stamped(&self, mut mv: m::MeterValue) -> m::MeterValue {
        if let Some(t) = self.clock.station_ms(mv.timestamp.unix_ms()) {
            mv.timestamp = crate::wire::DateTime::from_unix_ms(t);
        }
        mv
    }

    /// A sample now for `evse` (TriggerMessage MeterValues).
    pub(super) fn triggered_meter_values(&mut self, evse: u32) {
        let Some(c) = self.connectors.get(&evse) else {
            return;
        };
        let Some(reading) = c.reading.clone() else {
            return;
        };
        let tx = c
            .session
            .as_ref()
            .and_then(|s| self.queue.transaction_id(&s.id))
            .and_then(|id| i32::try_from(id).ok());
        let measurands = self.keys.list(Key::MeterValuesSampledData);
        if let Some(mv) = outgoing::meter_value(
            &reading,
            &measurands,
            m::ReadingContext::Trigger,
            clock::system_ms(),
        ) {
            self.pending
                .push_back(Pending::MeterValues(Box::new(m::MeterValuesRequest {
                    connector_id: evse as i32,
                    transaction_id: tx,
                    meter_value: vec![self.stamped(mv)],
                })));
        }
    }

    /// Push the composite limit of every connector to evse when it changed
    /// (§3.13: at every period boundary and on every change).
    pub(super) fn push_limits(&mut self) {
        let now = self.clock.now_ms();
        let mut next: Option<i64> = None;
        let ids: Vec<u32> = self.connectors.keys().copied().collect();
        for evse in ids {
            let tx = self.active_tx(evse);
            let (limit, change) = self.profiles.limit_at(evse, now, tx);
            if let Some(change) = change {
                next = Some(next.map_or(change, |n| n.min(change)));
            }
            let limit = limit.map(|(v, unit, _)| (v, unit));
            if let Some(tx) = self.limit_tx.get(&evse) {
                tx.send_if_modified(|current| {
                    let changed = *current != limit;
                    if changed {
                        tracing::info!(evse, ?limit, "charging limit from the profiles");
                        *current = limit;
                    }
                    changed
                });
            }
        }
        self.next_limit =
            next.map(|t| Instant::now() + Duration::from_millis((t - now).max(0) as u64));
    }

    /// ConnectionTimeOut lives in our keys; evse learns it whenever it
    /// (re)appears and whenever the key changes.
    pub(super) fn push_connection_timeout(&self, evse: u32) {
        let seconds = self
            .keys
            .int(Key::ConnectionTimeOut)
            .clamp(1, u32::MAX as i64) as u32;
        let Some(proxy) = self.bus.evse.get(&evse).cloned() else {
            return;
        };
        tokio::spawn(async move {
            if let Err(e) = proxy.set_connection_timeout(seconds).await {
                tracing::warn!(evse, "cannot apply ConnectionTimeOut: {e}");
            }
        });
    }

    /// evse (re)appeared: it may have lost the limit, so push it again.
    fn repush_limit(&self, evse: u32) {
        if let Some(tx) = self.limit_tx.get(&evse) {
            tx.send_modify(|_| {});
        }
    }

    /// (transactionId, start ms) of the transaction on `evse`, once the CSMS
    /// gave it an id.
    pub(super) fn active_tx(&self, evse: u32) -> Option<(i32, i64)> {
        let s = self.connectors.get(&evse)?.session.as_ref()?;
        let id = self
            .queue
            .transaction_id(&s.id)
            .and_then(|id| i32::try_from(id).ok());
        // A Relative profile anchors at the start even before the CSMS
        // answered; 0 stands for "not known yet".
        Some((
            id.unwrap_or(0),
            self.clock.station_ms(s.started_ms).unwrap_or(s.started_ms),
        ))
    }

    /// Carry out a reset once every session's StopTransaction is persisted
    /// (or after 30 s, whatever evse does).
    async fn check_reset(&mut self) {
        let Some((hard, _, deadline)) = &self.reset_due else {
            return;
        };
        // Sessions over, their StopTransactions persisted, and — while the
        // CSMS is reachable — delivered, so the next run re-sends nothing.
        let settled = self.ending == 0
            && self.connectors.values().all(|c| c.session.is_none())
            && (!self.connected || (self.queue.is_empty() && self.outstanding.is_none()));
        if !settled && Instant::now() < *deadline {
            return;
        }
        let hard = *hard;
        let Some((_, command, _)) = self.reset_due.take() else {
            return;
        };
        if !command.is_empty() {
            tracing::warn!(?command, "running the reset command");
            match tokio::process::Command::new(&command[0])
                .args(&command[1..])
                .status()
                .await
            {
                Ok(s) if s.success() => {}
                Ok(s) => tracing::error!("reset command failed: {s}"),
                Err(e) => tracing::error!("cannot run the reset command: {e}"),
            }
        }
        tracing::warn!(hard, "reset: exiting");
        self.exit = Some(Exit::Reset { hard });
    }

    fn ledger_begin(&mut self, tx_ref: &str, evse: u32) {
        let tag = self
            .connectors
            .get(&evse)
            .and_then(|c| c.session.as_ref())
            .filter(|s| s.id == tx_ref)
            .map(|s| s.token.clone())
            .unwrap_or_default();
        if let Err(e) = self.ledger.begin(tx_ref, evse, &tag) {
            tracing::error!("cannot write the transaction ledger: {e}");
        }
    }

    fn ledger_end(&mut self, tx_ref: &str, stop_tag: &str) {
        if let Err(e) = self.ledger.end(tx_ref, stop_tag) {
            tracing::error!("cannot write the transaction ledger: {e}");
        }
    }

    fn ledger_done(&mut self, tx_ref: &str) {
        if let Err(e) = self.ledger.done(tx_ref) {
            tracing::error!("cannot write the transaction ledger: {e}");
        }
    }

    fn ledger_sample(&mut self, tx_ref: &str, mv: m::MeterValue) {
        if let Err(e) = self.ledger.sample(tx_ref, mv) {
            tracing::error!("cannot write the transaction ledger: {e}");
        }
    }
}

/// Apply the latest wanted limit of `evse`, retrying while evse is away.
async fn push_limit(
    evse: u32,
    proxy: Evse1Proxy<'static>,
    mut wanted: watch::Receiver<Option<(f64, RateUnit)>>,
) {
    // The first value too: a limit left by an earlier run must be cleared.
    wanted.mark_changed();
    while wanted.changed().await.is_ok() {
        let mut failures = 0u32;
        loop {
            let limit = *wanted.borrow_and_update();
            let result = match limit {
                Some((value, unit)) => {
                    let unit = if unit == RateUnit::W { "W" } else { "A" };
                    proxy.set_charging_limit(value, unit, 0).await
                }
                None => proxy.clear_charging_limit().await,
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(evse, "cannot apply the charging limit yet (retrying): {e}");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        changed = wanted.changed() => if changed.is_err() { return },
                    }
                }
            }
        }
    }
}

/// Receive from the link if there is one; otherwise never.
async fn recv(link: &mut Option<Link>) -> Result<String, crate::transport::TransportError> {
    match link.as_mut() {
        Some(l) => l.recv().await,
        None => std::future::pending().await,
    }
}

/// Why the station's persisted state cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("configuration keys: {0}")]
    Keys(#[from] crate::v16::config_keys::ConfigKeyError),
    #[error("transaction queue: {0}")]
    Queue(#[from] crate::queue::QueueError),
    #[error("transaction ledger: {0}")]
    Ledger(#[from] crate::v16::ledger::LedgerError),
    #[error("local authorization: {0}")]
    LocalAuth(#[from] crate::v16::local_auth::LocalAuthError),
    #[error("charging profiles: {0}")]
    Profiles(#[from] crate::v16::smart_charging::SmartChargingError),
}
