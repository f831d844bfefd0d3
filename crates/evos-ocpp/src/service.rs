//! `evos run ocpp`: serves `org.evos.Ocpp1`, watches evse and meter on the
//! bus, and runs the version's station loop ([`crate::v16::Station`]).
//!
//! Bus watchers turn Evse1 property changes and signals into
//! [`EvseEvent`]s. Whenever evse (re)appears on the bus, a snapshot of its
//! state and recent sessions lets the station catch up on what it missed —
//! that, with the persistent queue and ledger, is what makes a kill -9 of
//! either service lose nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use evos_bus::evse::Evse1Proxy;
use evos_bus::meter::{Meter1Proxy, MeterReading};
use evos_bus::ocpp as contract;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use zbus::interface;
use zbus::object_server::{InterfaceRef, SignalEmitter};

use crate::config::Config;
use crate::v16::station::{Bus, Event, EvseEvent, Exit, Published, Station};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("config: {0}")]
    Config(#[from] evos_service::config::Invalid),
    #[error("state: {0}")]
    State(String),
    #[error("bus: {0}")]
    Bus(#[from] zbus::Error),
}

struct OcppObject {
    events: mpsc::Sender<Event>,
    published: Published,
    endpoint: String,
    /// How long a D-Bus caller waits for the CSMS before the offline rules answer.
    answer_within: Duration,
}

#[interface(name = "org.evos.Ocpp1")]
impl OcppObject {
    async fn authorize(&self, evse: u32, token: &str) -> Result<(String, String), evos_bus::Error> {
        if token.is_empty() {
            return Err(evos_bus::Error::InvalidArgument("empty token".into()));
        }
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::Authorize {
                evse,
                token: token.to_owned(),
                reply,
            })
            .await
            .map_err(|_| evos_bus::Error::Failed("the OCPP station is stopping".into()))?;
        match tokio::time::timeout(self.answer_within, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => Err(evos_bus::Error::Failed(
                "no authorization decision in time".into(),
            )),
        }
    }

    /// A station → CSMS DataTransfer (OCPP 1.6 §4.3); returns the CSMS's
    /// status and data.
    async fn data_transfer(
        &self,
        vendor_id: &str,
        message_id: &str,
        data: &str,
    ) -> Result<(String, String), evos_bus::Error> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::DataTransfer {
                vendor_id: vendor_id.to_owned(),
                message_id: message_id.to_owned(),
                data: data.to_owned(),
                reply,
            })
            .await
            .map_err(|_| evos_bus::Error::Failed("the OCPP station is stopping".into()))?;
        match tokio::time::timeout(self.answer_within, answer).await {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(why))) => Err(evos_bus::Error::Failed(why)),
            _ => Err(evos_bus::Error::Failed(
                "no answer from the CSMS in time".into(),
            )),
        }
    }

    #[zbus(property)]
    fn connection_state(&self) -> String {
        self.published.connection_state.clone()
    }
    #[zbus(property)]
    fn registration_status(&self) -> String {
        self.published.registration_status.clone()
    }
    #[zbus(property)]
    fn queued_messages(&self) -> u32 {
        self.published.queued_messages
    }
    #[zbus(property)]
    fn protocol(&self) -> String {
        "1.6".into()
    }
    #[zbus(property)]
    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }
}

/// Run the service until SIGTERM, Ctrl-C or a reset; Ok(Some(exit)) when a
/// reset ends it (the service manager starts it again).
pub async fn run(
    config: Config,
    state_dir: &Path,
    bus_address: Option<&str>,
) -> Result<Option<Exit>, ServiceError> {
    config.validate()?;
    let password = config.read_password()?;
    let connectors = config.connectors.max(1);
    let (events_tx, events_rx) = mpsc::channel(256);
    let initial = Published {
        connection_state: "Offline".into(),
        ..Published::default()
    };
    let (published_tx, mut published_rx) = watch::channel(initial.clone());

    let object = OcppObject {
        events: events_tx.clone(),
        published: initial,
        endpoint: format!(
            "{}/{}",
            config.csms_url.trim_end_matches('/'),
            config.station_id
        ),
        answer_within: Duration::from_secs(config.response_timeout_s + 5),
    };
    let connection = evos_bus::connection_builder(bus_address)
        .serve_at(contract::PATH, object)
        .name(contract::BUS_NAME)
        .build()
        .await?;

    let mut bus = Bus {
        evse: BTreeMap::new(),
        meter: BTreeMap::new(),
    };
    for id in 1..=connectors {
        let evse = Evse1Proxy::builder(&connection)
            .path(evos_bus::evse::path(id))
            .build()
            .await?;
        let meter = Meter1Proxy::builder(&connection)
            .path(evos_bus::meter::path(id))
            .build()
            .await?;
        bus.evse.insert(id, evse);
        bus.meter.insert(id, meter);
    }

    let station = Station::open(
        config,
        state_dir,
        password,
        bus.clone(),
        events_tx.clone(),
        published_tx,
    )
    .map_err(|e| ServiceError::State(e.to_string()))?;

    let mut tasks = JoinSet::new();
    for (id, proxy) in &bus.evse {
        tasks.spawn(watch_evse(*id, proxy.clone(), events_tx.clone()));
    }
    for (id, proxy) in &bus.meter {
        tasks.spawn(watch_meter(*id, proxy.clone(), events_tx.clone()));
    }
    let iface: InterfaceRef<OcppObject> =
        connection.object_server().interface(contract::PATH).await?;
    tasks.spawn(async move {
        while published_rx.changed().await.is_ok() {
            let now = published_rx.borrow_and_update().clone();
            publish(&iface, now).await;
        }
    });

    evos_service::notify::ready(&format!("OCPP 1.6 station for {connectors} connector(s)"));
    tracing::info!(connectors, "ocpp service ready");
    let exit = tokio::select! {
        exit = station.run(events_rx) => Some(exit),
        stopped = evos_service::notify::serve_until_stopped(&mut tasks) => {
            stopped.map_err(|e| zbus::Error::Failure(format!("cannot catch SIGTERM: {e}")))?;
            None
        }
    };
    tracing::info!(?exit, "ocpp service stopping");
    Ok(exit)
}

async fn publish(iface: &InterfaceRef<OcppObject>, now: Published) {
    let mut object = iface.get_mut().await;
    let old = std::mem::replace(&mut object.published, now.clone());
    let emitter: &SignalEmitter<'_> = iface.signal_emitter();
    let mut results = Vec::new();
    if old.connection_state != now.connection_state {
        results.push(object.connection_state_changed(emitter).await);
    }
    if old.registration_status != now.registration_status {
        results.push(object.registration_status_changed(emitter).await);
    }
    if old.queued_messages != now.queued_messages {
        results.push(object.queued_messages_changed(emitter).await);
    }
    for e in results.into_iter().filter_map(Result::err) {
        tracing::warn!("cannot emit a property change: {e}");
    }
}

/// Follow one EVSE: its status, its session signals, and evse restarts.
async fn watch_evse(id: u32, proxy: Evse1Proxy<'static>, events: mpsc::Sender<Event>) {
    let (Ok(mut started), Ok(mut ended), Ok(mut owner)) = (
        proxy.receive_session_started().await,
        proxy.receive_session_ended().await,
        proxy.inner().receive_owner_changed().await,
    ) else {
        tracing::error!(evse = id, "cannot subscribe to Evse1 signals");
        return;
    };
    let mut status = proxy.receive_status_changed().await;
    let mut fault = proxy.receive_fault_changed().await;
    snapshot(id, &proxy, &events).await;
    loop {
        let event = tokio::select! {
            Some(s) = started.next() => match s.args() {
                Ok(a) => EvseEvent::SessionStarted(a.record),
                Err(e) => { tracing::warn!("bad SessionStarted: {e}"); continue }
            },
            Some(s) = ended.next() => match s.args() {
                Ok(a) => EvseEvent::SessionEnded(a.record),
                Err(e) => { tracing::warn!("bad SessionEnded: {e}"); continue }
            },
            Some(_) = status.next() => status_event(id, &proxy).await,
            Some(_) = fault.next() => status_event(id, &proxy).await,
            Some(new_owner) = owner.next() => {
                if new_owner.is_some() {
                    tracing::info!(evse = id, "evse (re)appeared on the bus: catching up");
                    snapshot(id, &proxy, &events).await;
                }
                continue;
            }
            else => return,
        };
        if events.send(Event::Evse(event)).await.is_err() {
            return;
        }
    }
}

async fn status_event(id: u32, proxy: &Evse1Proxy<'static>) -> EvseEvent {
    EvseEvent::Status {
        evse: id,
        status: proxy.status().await.unwrap_or_default(),
        fault: proxy.fault().await.unwrap_or_default(),
    }
}

async fn snapshot(id: u32, proxy: &Evse1Proxy<'static>, events: &mpsc::Sender<Event>) {
    let (Ok(status), Ok(sessions)) = (proxy.status().await, proxy.sessions().await) else {
        tracing::debug!(evse = id, "evse not on the bus yet");
        return;
    };
    let fault = proxy.fault().await.unwrap_or_default();
    let _ = events
        .send(Event::Evse(EvseEvent::Snapshot {
            evse: id,
            status,
            fault,
            sessions,
        }))
        .await;
}

async fn watch_meter(id: u32, proxy: Meter1Proxy<'static>, events: mpsc::Sender<Event>) {
    let Ok(mut readings) = proxy.receive_reading().await else {
        tracing::error!(evse = id, "cannot subscribe to Meter1 readings");
        return;
    };
    // The latest reading now, so a TriggerMessage right after the start
    // has values before the first Reading signal.
    if let Some(reading) = current_reading(&proxy).await {
        let _ = events.send(Event::Reading { evse: id, reading }).await;
    }
    while let Some(signal) = readings.next().await {
        if let Ok(args) = signal.args()
            && events
                .send(Event::Reading {
                    evse: id,
                    reading: args.reading,
                })
                .await
                .is_err()
        {
            return;
        }
    }
}

/// Meter1's properties as one reading (None before its first good one).
async fn current_reading(proxy: &Meter1Proxy<'static>) -> Option<MeterReading> {
    let timestamp_ms = proxy.timestamp_ms().await.ok().filter(|t| *t > 0)?;
    Some(MeterReading {
        timestamp_ms,
        energy_import_wh: proxy.energy_import_wh().await.ok()?,
        energy_export_wh: proxy.energy_export_wh().await.unwrap_or(f64::NAN),
        power_w: proxy.power_w().await.unwrap_or(f64::NAN),
        power_phase_w: Vec::new(),
        voltage_v: proxy.voltage_v().await.unwrap_or_default(),
        current_a: proxy.current_a().await.unwrap_or_default(),
        frequency_hz: proxy.frequency_hz().await.unwrap_or(f64::NAN),
    })
}
