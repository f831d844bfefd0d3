//! The `evse` service: one driver task per EVSE joins its safety board, its
//! state machine, its session and reservation stores and its
//! `org.evos.Evse1` object (the methods the OCPP 1.6 client needs:
//! RemoteStart/Stop §5.11/§5.12, ReserveNow §5.13, CancelReservation §5.3,
//! UnlockConnector §5.17, ConnectionTimeOut §9.1).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use evos_bus::evse::{self as contract, SessionRecord};
use evos_hal::mcu::{KEEPALIVE_PERIOD_MS, KEEPALIVE_TIMEOUT_MS, LinkAddress, McuBoard};
use evos_hal::{BoardEvent, SafetyBoard};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use zbus::object_server::{InterfaceRef, SignalEmitter};
use zbus::{fdo, interface};

use crate::auth::{Authorization, Authorizer};
use crate::config::{AuthMode, Config, EvseConfig, Kind, MeterSource};
use crate::metering::{self, MeterOutcome};
use crate::reservation::{Reservation, ReservationStore, ReservationStoreError};
use crate::session_store::{SessionStore, StoreError};
use crate::state_machine::{
    Effect, Evse, Input, Limit, LimitUnit, Now, Outputs, Refusal, Restored, Spec, StopReason,
};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Reservations(#[from] ReservationStoreError),
    #[error("evse.evse: {0}")]
    Link(#[from] evos_hal::HalError),
}

fn now() -> Now {
    let wall_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Now {
        mono: Instant::now(),
        wall_ms,
    }
}

/// What `org.evos.Evse1` shows; the driver publishes a new one after every
/// transition.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    status: String,
    cp_state: String,
    offered_current: f64,
    power_w: f64,
    session_energy_wh: f64,
    session_id: String,
    fault: String,
    charging_limit: (f64, String),
    reservation: (i32, String, String, i64),
}

impl Snapshot {
    fn of(evse: &Evse, last_session_energy: f64) -> Self {
        let outputs = evse.outputs();
        let session = evse.session();
        Snapshot {
            status: evse.status().as_str().into(),
            cp_state: evse.cp_state().map(|c| c.to_string()).unwrap_or_default(),
            offered_current: outputs.pwm.offered_current(),
            power_w: evse.measurement().map_or(0.0, |m| m.power_w()),
            session_energy_wh: session.map_or(last_session_energy, SessionRecord::energy_wh),
            session_id: session.map(|s| s.id.clone()).unwrap_or_default(),
            fault: evse
                .fault()
                .map(|f| f.as_str().to_owned())
                .unwrap_or_default(),
            charging_limit: evse.limit().map_or((0.0, String::new()), |l| {
                (l.value, l.unit.as_str().to_owned())
            }),
            reservation: Reservation::as_property(evse.reservation()),
        }
    }
}

/// What one step yields for the caller of the input.
#[derive(Debug, Default)]
struct Stepped {
    /// An authorization was asked for: the caller waits for its decision.
    authorizing: bool,
    /// The method's answer, where the state machine gave one.
    answer: Option<String>,
}

enum Request {
    Input(Input, oneshot::Sender<Result<Option<String>, Refusal>>),
    Sessions(oneshot::Sender<Vec<SessionRecord>>),
}

/// The `org.evos.Evse1` object of one EVSE.
struct EvseObject {
    id: u32,
    kind: Kind,
    snapshot: watch::Receiver<Snapshot>,
    requests: mpsc::Sender<Request>,
}

impl EvseObject {
    async fn ask(&self, input: Input) -> Result<Option<String>, evos_bus::Error> {
        let (tx, rx) = oneshot::channel();
        let gone = || evos_bus::Error::Failed("the EVSE driver stopped".into());
        self.requests
            .send(Request::Input(input, tx))
            .await
            .map_err(|_| gone())?;
        match rx.await.map_err(|_| gone())? {
            Ok(answer) => Ok(answer),
            Err(refusal) => Err(bus_error(refusal)),
        }
    }
}

fn bus_error(refusal: Refusal) -> evos_bus::Error {
    match refusal {
        Refusal::NotPermitted(why) => evos_bus::Error::NotPermitted(why),
        Refusal::Busy(why) => evos_bus::Error::Busy(why),
        Refusal::NotFound(why) => evos_bus::Error::NotFound(why),
    }
}

fn non_empty_token(token: &str) -> Result<String, evos_bus::Error> {
    let token = token.trim();
    if token.is_empty() || token.len() > 64 {
        return Err(evos_bus::Error::InvalidArgument(
            "a token has 1 to 64 characters".into(),
        ));
    }
    Ok(token.to_owned())
}

/// The answer a method expects, from the driver's reply.
fn answer(reply: Option<String>, method: &str) -> Result<String, evos_bus::Error> {
    reply.ok_or_else(|| evos_bus::Error::Failed(format!("{method}: the EVSE gave no answer")))
}

#[interface(name = "org.evos.Evse1")]
impl EvseObject {
    async fn present_token(&self, token: &str) -> Result<String, evos_bus::Error> {
        let token = non_empty_token(token)?;
        Ok(self
            .ask(Input::Token(token))
            .await?
            .unwrap_or_else(|| "Accepted".into()))
    }

    async fn start_session(&self, token: &str) -> Result<(), evos_bus::Error> {
        let token = non_empty_token(token)?;
        self.ask(Input::RemoteStart(token)).await.map(drop)
    }

    /// `reason` is an OCPP 1.6 Reason (§7.36).
    async fn stop_session(&self, reason: &str) -> Result<(), evos_bus::Error> {
        let reason = StopReason::parse(reason).ok_or_else(|| {
            evos_bus::Error::InvalidArgument(format!("unknown stop reason `{reason}`"))
        })?;
        self.ask(Input::Stop(reason)).await.map(drop)
    }

    async fn reserve(
        &self,
        reservation_id: i32,
        token: &str,
        parent: &str,
        expiry_ms: i64,
    ) -> Result<String, evos_bus::Error> {
        if reservation_id == 0 {
            return Err(evos_bus::Error::InvalidArgument(
                "reservation id 0 means none; ids start at 1".into(),
            ));
        }
        let token = non_empty_token(token)?;
        let parent = parent.trim();
        if parent.len() > 64 {
            return Err(evos_bus::Error::InvalidArgument(
                "a parent id has at most 64 characters".into(),
            ));
        }
        if expiry_ms <= now().wall_ms {
            return Err(evos_bus::Error::InvalidArgument(format!(
                "expiry {expiry_ms} is not in the future"
            )));
        }
        let reservation = Reservation {
            id: reservation_id,
            token,
            parent: parent.to_owned(),
            expiry_ms,
        };
        answer(self.ask(Input::Reserve(reservation)).await?, "Reserve")
    }

    async fn cancel_reservation(&self, reservation_id: i32) -> Result<(), evos_bus::Error> {
        self.ask(Input::CancelReservation(reservation_id))
            .await
            .map(drop)
    }

    async fn unlock(&self) -> Result<String, evos_bus::Error> {
        answer(self.ask(Input::Unlock).await?, "Unlock")
    }

    async fn set_connection_timeout(&self, seconds: u32) -> Result<(), evos_bus::Error> {
        if seconds == 0 {
            return Err(evos_bus::Error::InvalidArgument(
                "the connection timeout is at least 1 s".into(),
            ));
        }
        let timeout = Duration::from_secs(seconds.into());
        self.ask(Input::SetConnectionTimeout(timeout))
            .await
            .map(drop)
    }

    async fn set_charging_limit(
        &self,
        value: f64,
        unit: &str,
        duration_s: u32,
    ) -> Result<(), evos_bus::Error> {
        let unit = match unit {
            "A" => LimitUnit::Amps,
            "W" => LimitUnit::Watts,
            other => {
                return Err(evos_bus::Error::InvalidArgument(format!(
                    "unit `{other}`: expected A or W"
                )));
            }
        };
        if !value.is_finite() || value < 0.0 {
            return Err(evos_bus::Error::InvalidArgument(format!(
                "limit {value} is not a non-negative number"
            )));
        }
        let expires =
            (duration_s > 0).then(|| Instant::now() + Duration::from_secs(duration_s.into()));
        self.ask(Input::SetLimit(Some(Limit {
            value,
            unit,
            expires,
        })))
        .await
        .map(drop)
    }

    async fn clear_charging_limit(&self) -> Result<(), evos_bus::Error> {
        self.ask(Input::SetLimit(None)).await.map(drop)
    }

    async fn set_available(&self, available: bool) -> Result<(), evos_bus::Error> {
        self.ask(Input::SetAvailable(available)).await.map(drop)
    }

    async fn sessions(&self) -> Result<Vec<SessionRecord>, evos_bus::Error> {
        let (tx, rx) = oneshot::channel();
        let gone = || evos_bus::Error::Failed("the EVSE driver stopped".into());
        self.requests
            .send(Request::Sessions(tx))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    #[zbus(signal)]
    async fn session_started(
        emitter: &SignalEmitter<'_>,
        record: SessionRecord,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    async fn session_ended(emitter: &SignalEmitter<'_>, record: SessionRecord) -> zbus::Result<()>;

    #[zbus(property(emits_changed_signal = "const"))]
    fn id(&self) -> u32 {
        self.id
    }
    #[zbus(property(emits_changed_signal = "const"))]
    fn kind(&self) -> String {
        self.kind.as_str().into()
    }
    #[zbus(property)]
    fn status(&self) -> String {
        self.snapshot.borrow().status.clone()
    }
    #[zbus(property)]
    fn cp_state(&self) -> String {
        self.snapshot.borrow().cp_state.clone()
    }
    #[zbus(property)]
    fn offered_current(&self) -> f64 {
        self.snapshot.borrow().offered_current
    }
    #[zbus(property)]
    fn power_w(&self) -> f64 {
        self.snapshot.borrow().power_w
    }
    #[zbus(property)]
    fn session_energy_wh(&self) -> f64 {
        self.snapshot.borrow().session_energy_wh
    }
    #[zbus(property)]
    fn session_id(&self) -> String {
        self.snapshot.borrow().session_id.clone()
    }
    #[zbus(property)]
    fn fault(&self) -> String {
        self.snapshot.borrow().fault.clone()
    }
    #[zbus(property)]
    fn charging_limit(&self) -> (f64, String) {
        self.snapshot.borrow().charging_limit.clone()
    }
    #[zbus(property)]
    fn reservation(&self) -> (i32, String, String, i64) {
        self.snapshot.borrow().reservation.clone()
    }
}

/// Run the service until SIGTERM or Ctrl-C.
pub async fn run(
    config: Config,
    state_dir: &Path,
    bus_address: Option<&str>,
) -> Result<(), ServiceError> {
    let store_dir = state_dir.join("sessions");
    let mut drivers = Vec::new();
    let mut builder =
        evos_bus::connection_builder(bus_address).serve_at(contract::ROOT_PATH, fdo::ObjectManager);
    for evse_config in &config.evse {
        let link: LinkAddress = evse_config.link.parse()?;
        let store = SessionStore::open(&store_dir, evse_config.id)?;
        let reservations = ReservationStore::open(state_dir, evse_config.id)?;
        let spec = spec_of(evse_config, &config);
        let started = now();
        let restored = Restored {
            session: store.active().cloned(),
            parent: store.active_parent().to_owned(),
            reservation: reservations.load(started.wall_ms)?,
        };
        let machine = Evse::new(spec, restored, started);
        let last_energy = store.history().last().map_or(0.0, SessionRecord::energy_wh);
        let (snapshot_tx, snapshot) = watch::channel(Snapshot::of(&machine, last_energy));
        let (requests_tx, requests) = mpsc::channel(16);
        builder = builder.serve_at(
            contract::path(evse_config.id),
            EvseObject {
                id: evse_config.id,
                kind: evse_config.kind,
                snapshot,
                requests: requests_tx,
            },
        );
        drivers.push(Driver {
            link,
            machine,
            store,
            reservations,
            // Replaced once the bus connection exists; refuses all until then.
            authorizer: Authorizer::AllowList(Default::default()),
            requests,
            snapshot: snapshot_tx,
            last_energy,
            iface: None,
            meter_source: evse_config.meter,
            meter: None,
            meter_tasks: JoinSet::new(),
            power: None,
            start_tasks: Vec::new(),
            token_waiters: Vec::new(),
            unlock_waiters: Vec::new(),
            release_lock: false,
        });
    }
    let connection = builder.name(contract::BUS_NAME).build().await?;
    let authorizer = Authorizer::new(&config, &connection).await?;
    let mut tasks = JoinSet::new();
    for mut driver in drivers {
        let id = driver.machine.spec().id;
        driver.authorizer = authorizer.clone();
        driver.iface = Some(
            connection
                .object_server()
                .interface(contract::path(id))
                .await?,
        );
        if driver.machine.spec().kind == Kind::Dc {
            driver.power = Some(
                // Cached properties: `receive_fault_changed` needs them.
                evos_bus::power::Power1Proxy::builder(&connection)
                    .path(evos_bus::power::path(id))
                    .build()
                    .await?,
            );
        }
        if driver.meter_source == MeterSource::Bus {
            driver.meter = Some(
                evos_bus::meter::Meter1Proxy::builder(&connection)
                    .path(evos_bus::meter::path(id))
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build()
                    .await?,
            );
        }
        tasks.spawn(driver.run());
    }
    evos_service::notify::ready(&format!("{} EVSE(s) on the bus", config.evse.len()));
    tracing::info!(evses = config.evse.len(), "evse service ready");

    evos_service::notify::serve_until_stopped(&mut tasks)
        .await
        .map_err(|e| zbus::Error::Failure(format!("cannot catch SIGTERM: {e}")))?;
    tracing::info!("evse service stopping");
    Ok(())
}

fn spec_of(e: &EvseConfig, config: &Config) -> Spec {
    Spec {
        id: e.id,
        kind: e.kind,
        max_current_a: e.max_current_a,
        phases: e.phases,
        socket: e.socket,
        nominal_voltage_v: e.nominal_voltage_v,
        connection_timeout: Duration::from_secs(config.connection_timeout_s.into()),
        free_vend: config.auth == AuthMode::FreeVend,
    }
}

/// A reply owed to a method caller.
type Reply = oneshot::Sender<Result<Option<String>, Refusal>>;

struct Driver {
    link: LinkAddress,
    machine: Evse,
    store: SessionStore,
    reservations: ReservationStore,
    authorizer: Authorizer,
    requests: mpsc::Receiver<Request>,
    snapshot: watch::Sender<Snapshot>,
    last_energy: f64,
    iface: Option<InterfaceRef<EvseObject>>,
    meter_source: MeterSource,
    /// Meter1 for this EVSE, when energy comes from the meter service.
    meter: Option<evos_bus::meter::Meter1Proxy<'static>>,
    meter_tasks: JoinSet<MeterOutcome>,
    /// Power1 for a DC EVSE's output.
    power: Option<evos_bus::power::Power1Proxy<'static>>,
    /// Start-reading requests still retrying, by session id.
    start_tasks: Vec<(String, tokio::task::AbortHandle)>,
    /// `PresentToken` / `StartSession` callers waiting for an authorization,
    /// by token.
    token_waiters: Vec<(String, Reply)>,
    /// `Unlock` callers waiting for the lock's feedback.
    unlock_waiters: Vec<Reply>,
    /// Command the lock open at the next [`Driver::apply`], even if it is.
    release_lock: bool,
}

async fn next_reading(
    readings: &mut Option<evos_bus::meter::ReadingStream>,
) -> Option<evos_bus::meter::Reading> {
    use futures_util::StreamExt;
    match readings {
        Some(r) => r.next().await,
        None => std::future::pending().await,
    }
}

async fn next_power_fault(
    faults: &mut Option<zbus::proxy::PropertyStream<'static, String>>,
) -> Option<zbus::proxy::PropertyChanged<'static, String>> {
    use futures_util::StreamExt;
    match faults {
        Some(f) => f.next().await,
        None => std::future::pending().await,
    }
}

async fn next_event(board: &mut Option<McuBoard>) -> evos_hal::Result<BoardEvent> {
    match board {
        Some(b) => b.next_event().await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn run(mut self) {
        let id = self.machine.spec().id;
        let mut board: Option<McuBoard> = None;
        let mut applied: Option<Outputs> = None;
        let mut backoff = Duration::from_millis(50);
        let mut reconnect_at = Instant::now();
        // The MCU keeps its outputs until its keep-alive times out; only a
        // link down longer than that is a fault.
        let mut down_since: Option<Instant> = Some(Instant::now());
        let link_fault_after = Duration::from_millis(KEEPALIVE_TIMEOUT_MS);
        let mut keepalive = tokio::time::interval(Duration::from_millis(KEEPALIVE_PERIOD_MS));
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut auth_tasks: JoinSet<(String, Authorization)> = JoinSet::new();
        let mut link_fault_reported = false;
        let mut power_faults = match &self.power {
            Some(power) => Some(power.receive_fault_changed().await),
            None => None,
        };
        let mut readings = match &self.meter {
            Some(meter) => match meter.receive_reading().await {
                Ok(stream) => Some(stream),
                Err(e) => {
                    tracing::error!(evse = id, "cannot subscribe to meter readings: {e}");
                    None
                }
            },
            None => None,
        };

        loop {
            let deadline = self.machine.next_deadline();
            let link_deadline = down_since
                .filter(|_| !link_fault_reported)
                .map(|t| t + link_fault_after);
            let mut reply = None;
            let input = tokio::select! {
                event = next_event(&mut board) => match event {
                    Ok(BoardEvent::Status(s)) => Input::Board(s),
                    Ok(BoardEvent::Measurement(m)) if self.meter.is_none() => Input::Measurement(m),
                    // Energy comes from the meter service.
                    Ok(BoardEvent::Measurement(_)) => continue,
                    Ok(BoardEvent::Token(t)) => Input::Token(t),
                    Ok(BoardEvent::DcDemand { voltage_v, current_a }) => {
                        Input::DcDemand { voltage_v, current_a }
                    }
                    Err(e) => {
                        tracing::warn!(evse = id, "safety board link lost: {e}");
                        board = None;
                        applied = None;
                        down_since = Some(Instant::now());
                        reconnect_at = Instant::now() + backoff;
                        continue;
                    }
                },
                _ = sleep_until(reconnect_at), if board.is_none() => {
                    match McuBoard::connect(&self.link).await {
                        Ok(b) => {
                            tracing::info!(evse = id, link = %self.link, "safety board connected");
                            board = Some(b);
                            backoff = Duration::from_millis(50);
                            down_since = None;
                            link_fault_reported = false;
                        }
                        Err(e) => {
                            if backoff >= Duration::from_secs(2) {
                                tracing::warn!(evse = id, "safety board unreachable: {e}");
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            reconnect_at = Instant::now() + backoff;
                        }
                    }
                    continue;
                }
                _ = sleep_until(link_deadline.unwrap_or_else(Instant::now)), if link_deadline.is_some() => {
                    link_fault_reported = true;
                    Input::LinkDown
                }
                _ = keepalive.tick(), if board.is_some() => {
                    if let Some(b) = board.as_mut()
                        && let Err(e) = b.keep_alive().await
                    {
                        tracing::warn!(evse = id, "keep-alive failed: {e}");
                    }
                    continue;
                }
                Some(request) = self.requests.recv() => match request {
                    // Answered by an Effect::Unlock, now or later.
                    Request::Input(Input::Unlock, tx) => {
                        self.unlock_waiters.push(tx);
                        Input::Unlock
                    }
                    Request::Input(input, tx) => {
                        reply = Some((input.clone(), tx));
                        input
                    }
                    Request::Sessions(tx) => {
                        let mut all: Vec<SessionRecord> = self.store.history().cloned().collect();
                        all.extend(self.machine.session().cloned());
                        let _ = tx.send(all);
                        continue;
                    }
                },
                Some(Ok((token, authorization))) = auth_tasks.join_next() => {
                    let input = Input::AuthResult {
                        token: token.clone(),
                        status: authorization.status,
                        parent: authorization.parent,
                    };
                    if let Err(refusal) = self.step(input, &mut auth_tasks).await {
                        tracing::warn!(evse = id, "authorization result refused: {refusal}");
                    }
                    // Not decided: the request was overtaken (another token, a fault).
                    for (_, tx) in self.token_waiters.extract_if(.., |(t, _)| *t == token) {
                        let _ = tx.send(Err(Refusal::Busy(
                            "overtaken by another request or a fault".into(),
                        )));
                    }
                    self.apply(&mut board, &mut applied).await;
                    self.publish().await;
                    continue;
                }
                Some(fault) = next_power_fault(&mut power_faults) => match fault.get().await {
                    Ok(why) if !why.is_empty() => Input::PowerFault(why),
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(evse = id, "unreadable power fault: {e}");
                        continue;
                    }
                },
                Some(signal) = next_reading(&mut readings) => match signal.args() {
                    Ok(args) => Input::Measurement(metering::measurement_of(&args.reading)),
                    Err(e) => {
                        tracing::warn!(evse = id, "unreadable meter reading: {e}");
                        continue;
                    }
                },
                Some(Ok(outcome)) = self.meter_tasks.join_next() => match outcome {
                    MeterOutcome::Started { session, energy_wh } => {
                        self.start_tasks.retain(|(s, _)| *s != session);
                        Input::MeterStarted { session, energy_wh }
                    }
                    MeterOutcome::Ended(record) => {
                        self.session_ended(record).await;
                        self.publish().await;
                        continue;
                    }
                },
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => Input::Tick,
            };

            let before = self.machine.status();
            let result = self.step(input, &mut auth_tasks).await;
            if let Some((input, tx)) = reply {
                match (input, result) {
                    (Input::Token(token) | Input::RemoteStart(token), Ok(stepped))
                        if stepped.authorizing =>
                    {
                        self.token_waiters.push((token, tx));
                    }
                    (Input::Token(_), Ok(_)) if self.machine.status() == before => {
                        let _ = tx.send(Err(Refusal::NotPermitted(format!(
                            "token not taken while {}",
                            before.as_str()
                        ))));
                    }
                    (_, Ok(stepped)) => {
                        let _ = tx.send(Ok(stepped.answer));
                    }
                    (_, Err(refusal)) => {
                        let _ = tx.send(Err(refusal));
                    }
                }
            }
            self.apply(&mut board, &mut applied).await;
            self.publish().await;
        }
    }

    /// Feed one input and carry out its effects.
    async fn step(
        &mut self,
        input: Input,
        auth_tasks: &mut JoinSet<(String, Authorization)>,
    ) -> Result<Stepped, Refusal> {
        let effects = self.machine.handle(input, now())?;
        let mut stepped = Stepped::default();
        for effect in effects {
            match effect {
                Effect::Authorize(token) => {
                    stepped.authorizing = true;
                    let authorizer = self.authorizer.clone();
                    let id = self.machine.spec().id;
                    auth_tasks.spawn(async move {
                        let authorization = authorizer.authorize(id, &token).await;
                        (token, authorization)
                    });
                }
                Effect::TokenDecided { token, outcome } => {
                    for (_, tx) in self.token_waiters.extract_if(.., |(t, _)| *t == token) {
                        let _ = tx.send(outcome.clone().map(|s| Some(s.as_str().to_owned())));
                    }
                }
                Effect::Reservation(reservation) => {
                    if let Err(e) = self.reservations.save(reservation.as_ref()) {
                        tracing::error!("cannot persist the reservation: {e}");
                    }
                }
                Effect::ReserveStatus(status) => stepped.answer = Some(status.as_str().into()),
                Effect::Unlock(status) => {
                    for tx in self.unlock_waiters.drain(..) {
                        let _ = tx.send(Ok(Some(status.as_str().into())));
                    }
                }
                Effect::ReleaseLock => self.release_lock = true,
                Effect::SessionStarted(record) => {
                    // Persist before telling anyone: a crash now still knows the session.
                    if let Err(e) = self.store.started(&record, self.machine.session_parent()) {
                        tracing::error!("cannot persist session start: {e}");
                    }
                    if let Some(meter) = &self.meter {
                        let task =
                            metering::start(meter.clone(), record.id.clone(), record.token.clone());
                        let handle = self.meter_tasks.spawn(task);
                        self.start_tasks.push((record.id.clone(), handle));
                    }
                    self.emit(|emitter| async move {
                        EvseObject::session_started(&emitter, record).await
                    })
                    .await;
                }
                Effect::SessionUpdated(record) => {
                    if let Err(e) = self.store.started(&record, self.machine.session_parent()) {
                        tracing::error!("cannot persist the session's meter start: {e}");
                    }
                }
                Effect::SessionEnded(record) => {
                    // Persisted at once with the live reading, so a crash
                    // now still knows the session ended.
                    if let Err(e) = self.store.ended(&record) {
                        tracing::error!("cannot persist session end: {e}");
                    }
                    self.last_energy = record.energy_wh();
                    match &self.meter {
                        Some(meter) => {
                            for (_, task) in
                                self.start_tasks.extract_if(.., |(s, _)| *s == record.id)
                            {
                                task.abort();
                            }
                            self.meter_tasks
                                .spawn(metering::stop(meter.clone(), record));
                        }
                        None => self.session_ended(record).await,
                    }
                }
            }
        }
        Ok(stepped)
    }

    /// A session's final record: persist it (correcting the one ended with
    /// the live reading) and announce it.
    async fn session_ended(&mut self, record: SessionRecord) {
        if self.meter.is_some()
            && let Err(e) = self.store.ended(&record)
        {
            tracing::error!("cannot persist the session's meter stop: {e}");
        }
        self.last_energy = record.energy_wh();
        self.emit(|emitter| async move { EvseObject::session_ended(&emitter, record).await })
            .await;
    }

    async fn emit<F, Fut>(&self, f: F)
    where
        F: FnOnce(SignalEmitter<'static>) -> Fut,
        Fut: std::future::Future<Output = zbus::Result<()>>,
    {
        if let Some(iface) = &self.iface
            && let Err(e) = f(iface.signal_emitter().clone()).await
        {
            tracing::warn!("cannot emit signal: {e}");
        }
    }

    /// Publish the new snapshot and PropertiesChanged for what changed.
    async fn publish(&mut self) {
        let new = Snapshot::of(&self.machine, self.last_energy);
        let old = self.snapshot.borrow().clone();
        if new == old {
            return;
        }
        self.snapshot.send_replace(new.clone());
        let Some(iface) = &self.iface else { return };
        let emitter = iface.signal_emitter();
        let object = iface.get().await;
        // Status last: a client waiting for a status sees the rest already.
        let changed = [
            (new.cp_state != old.cp_state, "CpState"),
            (new.offered_current != old.offered_current, "OfferedCurrent"),
            (new.power_w != old.power_w, "PowerW"),
            (
                new.session_energy_wh != old.session_energy_wh,
                "SessionEnergyWh",
            ),
            (new.session_id != old.session_id, "SessionId"),
            (new.fault != old.fault, "Fault"),
            (new.charging_limit != old.charging_limit, "ChargingLimit"),
            (new.reservation != old.reservation, "Reservation"),
            (new.status != old.status, "Status"),
        ];
        for (_, name) in changed.iter().filter(|(c, _)| *c) {
            let result = match *name {
                "CpState" => object.cp_state_changed(emitter).await,
                "OfferedCurrent" => object.offered_current_changed(emitter).await,
                "PowerW" => object.power_w_changed(emitter).await,
                "SessionEnergyWh" => object.session_energy_wh_changed(emitter).await,
                "SessionId" => object.session_id_changed(emitter).await,
                "Fault" => object.fault_changed(emitter).await,
                "ChargingLimit" => object.charging_limit_changed(emitter).await,
                "Reservation" => object.reservation_changed(emitter).await,
                _ => object.status_changed(emitter).await,
            };
            if let Err(e) = result {
                tracing::warn!(property = name, "cannot emit PropertiesChanged: {e}");
            }
        }
        if new.status != old.status {
            tracing::info!(evse = self.machine.spec().id, status = new.status, "status");
        }
    }

    /// Drive the board to the outputs the state asks for, sending only what
    /// changed (and the lock's open command again after an unlock).
    async fn apply(&mut self, board: &mut Option<McuBoard>, applied: &mut Option<Outputs>) {
        let release_lock = std::mem::take(&mut self.release_lock);
        let Some(b) = board.as_mut() else { return };
        let want = self.machine.outputs();
        let have = *applied;
        let spec = self.machine.spec();
        let had_dc = have.and_then(|h| h.dc);
        // DC: power off before the contactors open, never under load.
        let mut dc_applied = had_dc;
        if had_dc.is_some() && want.dc.is_none() {
            match self.power_enable(false).await {
                Ok(()) => dc_applied = None,
                Err(e) => tracing::warn!(evse = spec.id, "cannot switch the power output off: {e}"),
            }
        }
        // Open contactors before the pilot changes; close them after it.
        let mut result = Ok(());
        if have.map(|h| h.contactors) != Some(want.contactors) && !want.contactors {
            result = result.and(b.set_contactors(false, spec.phases).await);
        }
        if have.map(|h| h.lock) != Some(want.lock) || (release_lock && !want.lock) {
            result = result.and(b.set_lock(want.lock).await);
        }
        if have.map(|h| h.pwm) != Some(want.pwm) {
            result = result.and(b.set_pwm(want.pwm).await);
        }
        if have.map(|h| h.contactors) != Some(want.contactors) && want.contactors {
            result = result.and(b.set_contactors(true, spec.phases).await);
        }
        // DC: target, then power on once the contactors are closed.
        if let Some(target) = want.dc
            && had_dc != want.dc
        {
            let set = async {
                self.power_target(target.voltage_v, target.current_a)
                    .await?;
                if had_dc.is_none() {
                    self.power_enable(true).await?;
                }
                Ok::<(), evos_bus::Error>(())
            };
            match set.await {
                Ok(()) => dc_applied = want.dc,
                Err(e) => tracing::warn!(evse = spec.id, "cannot set the power output: {e}"),
            }
        }
        match result {
            Ok(()) => {
                *applied = Some(Outputs {
                    dc: dc_applied,
                    ..want
                })
            }
            Err(e) => tracing::warn!(evse = spec.id, "cannot drive the safety board: {e}"),
        }
    }

    async fn power_enable(&self, on: bool) -> Result<(), evos_bus::Error> {
        match &self.power {
            Some(p) => p.set_enabled(on).await,
            None => Ok(()),
        }
    }

    async fn power_target(&self, voltage_v: f64, current_a: f64) -> Result<(), evos_bus::Error> {
        match &self.power {
            Some(p) => p.set_target(voltage_v, current_a).await,
            None => Ok(()),
        }
    }
}
