//! The `meter` service: one poll task and one `org.evos.Meter1` object per
//! meter. Meters that share a transport (an RS-485 line, a TCP gateway)
//! share one [`ModbusBus`], which keeps one request on the wire at a time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use evos_bus::meter::{self as contract, TransactionReading};
use tokio::task::JoinSet;
use zbus::object_server::InterfaceRef;
use zbus::{fdo, interface};

use crate::config::{Config, MeterSpec};
use crate::health::{Fault, Health, Verdict};
use crate::ocmf::{self, StationKey};
use crate::reading::Reading;
use crate::register_map::{Block, Function};
use crate::transaction::{TransactionError, TransactionRecord, TransactionStore};
use crate::transport::ModbusBus;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("config: {0}")]
    Config(#[from] evos_service::config::Invalid),
    #[error("OCMF station key: {0}")]
    Key(#[from] ocmf::OcmfError),
    #[error("cannot open the transaction store {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One meter: its map, its bus and its health.
struct Meter {
    spec: MeterSpec,
    bus: Arc<ModbusBus>,
    blocks: Vec<Block>,
    health: Mutex<Health>,
}

impl Meter {
    fn evse(&self) -> u32 {
        self.spec.config.evse
    }

    fn unit(&self) -> u8 {
        self.spec.config.unit
    }

    /// Read every block and decode.
    async fn read(&self) -> Result<Reading, Fault> {
        let mut data = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let words = self
                .bus
                .read(self.unit(), *block)
                .await
                .map_err(|e| Fault::from(&e))?;
            data.push(words);
        }
        self.spec
            .map
            .decode(&self.blocks, &data, now_ms())
            .ok_or(Fault::Undecodable)
    }

    /// Poll once: read, check, and keep the reading if it is good.
    async fn poll(&self) -> Verdict {
        let outcome = self.read().await;
        let mut health = self.lock_health();
        let verdict = match outcome {
            Ok(reading) => health.offer(reading),
            Err(fault) => health.failed(fault),
        };
        match (&verdict, health.fault()) {
            (Verdict::Faulted, Some(fault)) => {
                tracing::warn!(evse = self.evse(), "meter fault: {fault}");
            }
            (Verdict::Recovered, _) => tracing::info!(evse = self.evse(), "meter recovered"),
            _ => {}
        }
        verdict
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, Health> {
        // A poisoned lock only means a panic elsewhere; the data is whole.
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn last_good(&self) -> Option<Reading> {
        self.lock_health().last_good().cloned()
    }

    fn fault_text(&self) -> String {
        self.lock_health()
            .fault()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    /// The meter's own OCMF record (meters that sign themselves): trigger it
    /// with the map's command, then read its ASCII registers.
    async fn own_ocmf(&self, begin: bool) -> Result<Option<String>, Fault> {
        let Some(registers) = &self.spec.map.ocmf else {
            return Ok(None);
        };
        if let Some(command) = registers.command {
            let value = if begin {
                registers.begin
            } else {
                registers.end
            };
            self.bus
                .write_register(self.unit(), command, value)
                .await
                .map_err(|e| Fault::from(&e))?;
        }
        let mut text = Vec::with_capacity(usize::from(registers.length) * 2);
        let mut address = registers.address;
        let end = u32::from(registers.address) + u32::from(registers.length);
        while u32::from(address) < end {
            let count = (end - u32::from(address)).min(120) as u16;
            let block = Block {
                function: Function::Holding,
                address,
                count,
            };
            let words = self
                .bus
                .read(self.unit(), block)
                .await
                .map_err(|e| Fault::from(&e))?;
            for word in words {
                text.extend_from_slice(&word.to_be_bytes());
            }
            address = address.saturating_add(count);
        }
        let len = text.iter().position(|b| *b == 0).unwrap_or(text.len());
        let record = String::from_utf8(text[..len].to_vec())
            .map_err(|_| Fault::BadResponse("OCMF registers are not text".into()))?;
        if !record.starts_with("OCMF|") {
            return Err(Fault::BadResponse(
                "the meter's OCMF registers hold no OCMF record".into(),
            ));
        }
        Ok(Some(record))
    }
}

/// What signs transaction records when the meter does not sign itself.
struct Signer {
    key: StationKey,
    gateway_serial: String,
}

/// `org.evos.Meter1` for one meter.
struct MeterObject {
    meter: Arc<Meter>,
    store: Arc<TransactionStore>,
    signer: Option<Arc<Signer>>,
    /// Start and stop of one meter run one at a time, so a repeated call
    /// for the same id sees the first one's record.
    transactions: tokio::sync::Mutex<()>,
}

fn bus_error(e: TransactionError) -> evos_bus::Error {
    match e {
        TransactionError::BadId(_) | TransactionError::OtherEvse(..) => {
            evos_bus::Error::InvalidArgument(e.to_string())
        }
        _ => evos_bus::Error::Failed(e.to_string()),
    }
}

impl MeterObject {
    fn ocmf_info(&self, token: &str) -> ocmf::TransactionInfo {
        let map = &self.meter.spec.map.meter;
        ocmf::TransactionInfo {
            gateway_serial: self
                .signer
                .as_ref()
                .map(|s| s.gateway_serial.clone())
                .unwrap_or_default(),
            meter_vendor: map.vendor.clone(),
            meter_model: map.model.clone(),
            meter_serial: self.meter.spec.config.serial.clone().unwrap_or_default(),
            dc: map.kind == crate::register_map::MeterKind::Dc,
            token: token.to_owned(),
        }
    }

    /// The record for a transaction reading: the meter's own where it
    /// signs, else the station's signature where configured, else none.
    async fn record(
        &self,
        token: &str,
        begin: &TransactionReading,
        end: Option<&TransactionReading>,
    ) -> Result<String, evos_bus::Error> {
        let evse = self.meter.evse();
        let failed = |why: String| evos_bus::Error::Failed(format!("meter {evse}: {why}"));
        if let Some(own) = self
            .meter
            .own_ocmf(end.is_none())
            .await
            .map_err(|f| failed(f.to_string()))?
        {
            return Ok(own);
        }
        let Some(signer) = &self.signer else {
            return Ok(String::new());
        };
        let point = |r: &TransactionReading| ocmf::Point {
            timestamp_ms: r.timestamp_ms,
            energy_wh: r.energy_wh,
        };
        ocmf::sign_transaction(
            &signer.key,
            &self.ocmf_info(token),
            &point(begin),
            end.map(point).as_ref(),
        )
        .map_err(|e| failed(format!("cannot sign: {e}")))
    }
}

#[interface(name = "org.evos.Meter1")]
impl MeterObject {
    async fn start_transaction(
        &self,
        id: &str,
        token: &str,
    ) -> Result<TransactionReading, evos_bus::Error> {
        let _one_at_a_time = self.transactions.lock().await;
        let evse = self.meter.evse();
        if let Some(record) = self.store.load(id).map_err(bus_error)? {
            if record.evse != evse {
                return Err(bus_error(TransactionError::OtherEvse(
                    id.into(),
                    record.evse,
                )));
            }
            return Ok(record.start);
        }
        self.store.check_id(id).map_err(bus_error)?;
        if token.len() > 255 {
            return Err(evos_bus::Error::InvalidArgument(
                "a token has at most 255 bytes".into(),
            ));
        }
        // A transaction starts on a fresh reading, never on a stale one.
        if !matches!(self.meter.poll().await, Verdict::Good | Verdict::Recovered) {
            return Err(evos_bus::Error::Failed(format!(
                "meter {evse}: no start reading: {}",
                self.meter.fault_text()
            )));
        }
        let Some(reading) = self.meter.last_good() else {
            return Err(evos_bus::Error::Failed(format!("meter {evse}: no reading")));
        };
        let mut start = TransactionReading {
            transaction: id.to_owned(),
            energy_wh: reading.energy_import_wh,
            timestamp_ms: reading.timestamp_ms,
            ocmf: String::new(),
        };
        start.ocmf = self.record(token, &start, None).await?;
        let record = TransactionRecord {
            id: id.to_owned(),
            evse,
            token: token.to_owned(),
            start: start.clone(),
            stop: None,
        };
        self.store.save(&record).map_err(bus_error)?;
        tracing::info!(
            evse,
            transaction = id,
            energy_wh = start.energy_wh,
            "transaction started"
        );
        Ok(start)
    }

    async fn stop_transaction(&self, id: &str) -> Result<TransactionReading, evos_bus::Error> {
        let _one_at_a_time = self.transactions.lock().await;
        let evse = self.meter.evse();
        let Some(mut record) = self.store.load(id).map_err(bus_error)? else {
            return Err(evos_bus::Error::NotFound(format!(
                "meter {evse}: no transaction {id} was started"
            )));
        };
        if record.evse != evse {
            return Err(bus_error(TransactionError::OtherEvse(
                id.into(),
                record.evse,
            )));
        }
        if let Some(stop) = record.stop {
            return Ok(stop);
        }
        let fresh = matches!(self.meter.poll().await, Verdict::Good | Verdict::Recovered);
        let Some(reading) = self.meter.last_good() else {
            return Err(evos_bus::Error::Failed(format!(
                "meter {evse}: no stop reading: {}",
                self.meter.fault_text()
            )));
        };
        if !fresh {
            // The car has left; the last good reading is the best evidence
            // there is, and its own timestamp says how old it is.
            tracing::warn!(
                evse,
                transaction = id,
                "meter fault at stop ({}); using the last good reading of {} ms ago",
                self.meter.fault_text(),
                now_ms().saturating_sub(reading.timestamp_ms)
            );
        }
        if reading.energy_import_wh < record.start.energy_wh {
            return Err(evos_bus::Error::Failed(format!(
                "meter {evse}: the meter reads {:.1} Wh, below the start reading {:.1} Wh",
                reading.energy_import_wh, record.start.energy_wh
            )));
        }
        let mut stop = TransactionReading {
            transaction: id.to_owned(),
            energy_wh: reading.energy_import_wh,
            timestamp_ms: reading.timestamp_ms,
            ocmf: String::new(),
        };
        stop.ocmf = self
            .record(&record.token, &record.start, Some(&stop))
            .await?;
        record.stop = Some(stop.clone());
        self.store.save(&record).map_err(bus_error)?;
        tracing::info!(
            evse,
            transaction = id,
            energy_wh = stop.energy_wh - record.start.energy_wh,
            "transaction stopped"
        );
        Ok(stop)
    }

    #[zbus(signal)]
    async fn reading(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        reading: contract::MeterReading,
    ) -> zbus::Result<()>;

    #[zbus(property(emits_changed_signal = "const"))]
    fn evse(&self) -> u32 {
        self.meter.evse()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn model(&self) -> String {
        self.meter.spec.map.display_name()
    }

    #[zbus(property)]
    fn energy_import_wh(&self) -> f64 {
        self.bus_reading().energy_import_wh
    }

    #[zbus(property)]
    fn energy_export_wh(&self) -> f64 {
        self.bus_reading().energy_export_wh
    }

    #[zbus(property)]
    fn power_w(&self) -> f64 {
        self.bus_reading().power_w
    }

    #[zbus(property)]
    fn voltage_v(&self) -> Vec<f64> {
        self.bus_reading().voltage_v
    }

    #[zbus(property)]
    fn current_a(&self) -> Vec<f64> {
        self.bus_reading().current_a
    }

    #[zbus(property)]
    fn frequency_hz(&self) -> f64 {
        self.bus_reading().frequency_hz
    }

    #[zbus(property)]
    fn timestamp_ms(&self) -> u64 {
        self.bus_reading().timestamp_ms
    }

    #[zbus(property)]
    fn fault(&self) -> String {
        self.meter.fault_text()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn public_key(&self) -> String {
        self.signer
            .as_ref()
            .map(|s| s.key.public_key_hex())
            .unwrap_or_default()
    }
}

impl MeterObject {
    /// The last good reading in bus form; NaN everywhere before the first.
    fn bus_reading(&self) -> contract::MeterReading {
        match self.meter.last_good() {
            Some(r) => r.to_bus(),
            None => contract::MeterReading {
                timestamp_ms: 0,
                energy_import_wh: f64::NAN,
                energy_export_wh: f64::NAN,
                power_w: f64::NAN,
                power_phase_w: Vec::new(),
                voltage_v: Vec::new(),
                current_a: Vec::new(),
                frequency_hz: f64::NAN,
            },
        }
    }
}

/// Poll one meter forever, publishing what changed.
async fn poll_loop(meter: Arc<Meter>, iface: InterfaceRef<MeterObject>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown = (None::<contract::MeterReading>, String::new());
    loop {
        tick.tick().await;
        meter.poll().await;
        let object = iface.get().await;
        let now = (meter.last_good().map(|r| r.to_bus()), meter.fault_text());
        let emitter = iface.signal_emitter();
        let fresh =
            now.0.as_ref().map(|r| r.timestamp_ms) != shown.0.as_ref().map(|r| r.timestamp_ms);
        if let (true, Some(reading)) = (fresh, &now.0) {
            let old = shown.0.as_ref();
            let differs = |f: fn(&contract::MeterReading) -> f64| {
                old.is_none_or(|o| f(o).to_bits() != f(reading).to_bits())
            };
            let mut results = Vec::new();
            if differs(|r| r.energy_import_wh) {
                results.push(object.energy_import_wh_changed(emitter).await);
            }
            if differs(|r| r.energy_export_wh) {
                results.push(object.energy_export_wh_changed(emitter).await);
            }
            if differs(|r| r.power_w) {
                results.push(object.power_w_changed(emitter).await);
            }
            if old.is_none_or(|o| o.voltage_v != reading.voltage_v) {
                results.push(object.voltage_v_changed(emitter).await);
            }
            if old.is_none_or(|o| o.current_a != reading.current_a) {
                results.push(object.current_a_changed(emitter).await);
            }
            if differs(|r| r.frequency_hz) {
                results.push(object.frequency_hz_changed(emitter).await);
            }
            results.push(object.timestamp_ms_changed(emitter).await);
            results.push(MeterObject::reading(emitter, reading.clone()).await);
            for e in results.into_iter().filter_map(Result::err) {
                tracing::warn!("cannot emit a reading: {e}");
            }
        }
        if now.1 != shown.1
            && let Err(e) = object.fault_changed(emitter).await
        {
            tracing::warn!("cannot emit Fault: {e}");
        }
        shown = now;
    }
}

/// Run the service until SIGTERM or Ctrl-C.
pub async fn run(
    config: Config,
    state_dir: &Path,
    bus_address: Option<&str>,
) -> Result<(), ServiceError> {
    let specs = config.validate()?;
    let signer = if config.sign {
        let path = config
            .key_file
            .clone()
            .unwrap_or_else(|| state_dir.join("ocmf-key.pem"));
        let key = StationKey::load_or_create(&path)?;
        // The public half beside it, for users and transparency software.
        let public_path = path.with_extension("pub.pem");
        if let Err(e) =
            evos_service::persist::write_atomic(&public_path, key.public_key_pem().as_bytes())
        {
            tracing::warn!(path = %public_path.display(), "cannot write the OCMF public key: {e}");
        }
        tracing::info!(key = %path.display(), public_key = key.public_key_hex(), "OCMF signing key");
        Some(Arc::new(Signer {
            key,
            gateway_serial: config.station_serial.clone().unwrap_or_default(),
        }))
    } else {
        None
    };
    let store_dir = state_dir.join("transactions");
    let store =
        Arc::new(
            TransactionStore::open(&store_dir).map_err(|source| ServiceError::Store {
                path: store_dir.display().to_string(),
                source,
            })?,
        );
    for open in store.open_transactions() {
        tracing::info!(
            evse = open.evse,
            transaction = open.id,
            start_wh = open.start.energy_wh,
            "transaction still open from before the restart"
        );
    }

    let timeout = Duration::from_millis(config.timeout_ms);
    let mut buses: HashMap<_, Arc<ModbusBus>> = HashMap::new();
    let mut meters = Vec::new();
    let mut builder =
        evos_bus::connection_builder(bus_address).serve_at(contract::ROOT_PATH, fdo::ObjectManager);
    for spec in specs {
        let bus = buses
            .entry(spec.transport.clone())
            .or_insert_with(|| Arc::new(ModbusBus::new(spec.transport.clone(), timeout)))
            .clone();
        let meter = Arc::new(Meter {
            blocks: spec.map.blocks(),
            health: Mutex::new(Health::new(spec.config.max_power_w)),
            spec,
            bus,
        });
        tracing::info!(
            evse = meter.evse(),
            model = meter.spec.map.display_name(),
            transport = %meter.bus.address(),
            unit = meter.unit(),
            requests_per_poll = meter.blocks.len(),
            "meter"
        );
        builder = builder.serve_at(
            contract::path(meter.evse()),
            MeterObject {
                meter: meter.clone(),
                store: store.clone(),
                signer: signer.clone(),
                transactions: tokio::sync::Mutex::new(()),
            },
        );
        meters.push(meter);
    }
    let connection = builder.name(contract::BUS_NAME).build().await?;
    let mut tasks = JoinSet::new();
    let period = Duration::from_millis(config.poll_interval_ms);
    for meter in &meters {
        let iface = connection
            .object_server()
            .interface::<_, MeterObject>(contract::path(meter.evse()))
            .await?;
        tasks.spawn(poll_loop(meter.clone(), iface, period));
    }
    evos_service::notify::ready(&format!("{} meter(s) on the bus", meters.len()));
    tracing::info!(meters = meters.len(), "meter service ready");

    evos_service::notify::serve_until_stopped(&mut tasks)
        .await
        .map_err(|e| zbus::Error::Failure(format!("cannot catch SIGTERM: {e}")))?;
    tracing::info!("meter service stopping");
    Ok(())
}
