//! End-to-end harness: a real broker (dbus-daemon; the embedded broker only
//! where dbus-daemon is missing outside CI), and the real `evos` services as
//! processes, each reporting READY over its own NOTIFY_SOCKET as under systemd.

#![allow(dead_code)]

pub mod csms;
pub mod python;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use evos_bus::evse::Evse1Proxy;
use evos_bus::sim::Sim1Proxy;
use futures_util::StreamExt;

pub const DEADLINE: Duration = Duration::from_secs(20);
pub const TOKEN: &str = "TEST-TOKEN-1";

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub bus: String,
    pub connection: zbus::Connection,
    broker: Child,
    pub hal_sim: Child,
    pub meter: Child,
    /// DC stacks only.
    pub power: Option<Child>,
    pub evse: Child,
    /// Stacks made by [`Stack::start_ocpp`] only.
    pub ocpp: Option<Child>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in [&mut self.power, &mut self.ocpp].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for child in [
            &mut self.evse,
            &mut self.meter,
            &mut self.hal_sim,
            &mut self.broker,
        ] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn evos() -> &'static str {
    env!("CARGO_BIN_EXE_evos")
}

fn dbus_daemon_available() -> bool {
    Command::new("dbus-daemon")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn start_broker(dir: &Path) -> (Child, String) {
    let socket = dir.join("bus.sock");
    let address = format!("unix:path={}", socket.display());
    if dbus_daemon_available() {
        let conf = dir.join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                "<busconfig><type>session</type><listen>{address}</listen><auth>EXTERNAL</auth>\
                 <policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/>\
                 <allow eavesdrop=\"true\"/><allow own=\"*\"/></policy></busconfig>"
            ),
        )
        .unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon starts");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        return (child, line.trim().to_owned());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the tests on dbus-daemon; it is not installed"
    );
    eprintln!("dbus-daemon not found: using the embedded broker");
    let (child, _) = spawn_ready(
        &["run", "broker", "--listen", &address],
        dir,
        "broker",
        &address,
    );
    (child, address)
}

/// Start `evos ARGS` and wait until it reports READY=1 on its notify socket.
pub fn spawn_ready(args: &[&str], dir: &Path, name: &str, bus: &str) -> (Child, PathBuf) {
    let notify_path = dir.join(format!("notify-{name}.sock"));
    let _ = std::fs::remove_file(&notify_path);
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(DEADLINE)).unwrap();
    let child = Command::new(evos())
        .args(args)
        .env("EVOS_BUS_ADDRESS", bus)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .spawn()
        .expect("evos starts");
    let mut buf = [0u8; 1024];
    loop {
        let n = notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{name} did not report READY: {e}"));
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1")
        {
            break;
        }
    }
    (child, notify_path)
}

/// A loopback port nobody listens on (the kernel's pick; the listener is
/// closed at once and the port is not handed out again that quickly).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The simulated world runs this many times faster than the wall clock.
pub const TIME_SCALE: f64 = 120.0;

pub fn config(dir: &Path) -> PathBuf {
    let path = dir.join("evos.toml");
    std::fs::write(
        &path,
        format!(
            "[sim]\ntime_scale = {TIME_SCALE:?}\n\n[evse]\nallow_list = [\"{TOKEN}\"]\n\n[[evse.evse]]\nid = 1\nkind = \"ac\"\n\
             link = \"unix:{}\"\nmax_current_a = 32\nphases = 3\n\n\
             [meter]\npoll_interval_ms = 200\nsign = true\nstation_serial = \"TEST-STATION\"\n\n\
             [[meter.meter]]\nevse = 1\nmap = \"sdm630\"\ntransport = \"tcp:127.0.0.1:{}\"\nserial = \"SIM-0001\"\n\
             max_power_w = {:?}\n",
            dir.join("mcu-1.sock").display(),
            free_port(),
            25_000.0 * TIME_SCALE,
        ),
    )
    .unwrap();
    path
}

/// A DC station: `evses` DC EVSEs sharing a pool of `modules` simulated
/// modules speaking `protocol` (`"infypower"`, `"uugreen"`; 30 kW, 100 A
/// each, addresses 1..=`modules`; the pool may draw 30 kW per module), an
/// AcuDC 240 meter each.
pub fn dc_config(dir: &Path, protocol: &str, evses: u32, modules: u8) -> PathBuf {
    let path = dir.join("evos.toml");
    let mut text =
        format!("[sim]\ntime_scale = {TIME_SCALE:?}\n\n[evse]\nallow_list = [\"{TOKEN}\"]\n");
    for id in 1..=evses {
        text += &format!(
            "\n[[evse.evse]]\nid = {id}\nkind = \"dc\"\nlink = \"unix:{}\"\nmax_current_a = 200\nsocket = false\n",
            dir.join(format!("mcu-{id}.sock")).display()
        );
    }
    let pool: Vec<String> = (1..=modules).map(|a| a.to_string()).collect();
    text += &format!(
        "\n[power]\nprotocol = \"{protocol}\"\ncan = \"sim:{}\"\nramp_a_per_s = 2000\ncontrol_interval_ms = 50\n\
         pool_max_power_w = {}\npool = [{}]\n",
        dir.join("can.sock").display(),
        30_000 * u32::from(modules),
        pool.join(", ")
    );
    for address in 1..=modules {
        text += &format!(
            "\n[[power.module]]\naddress = {address}\nmax_current_a = 100\nmax_power_w = 30000\n"
        );
    }
    for id in 1..=evses {
        text += &format!("\n[[power.output]]\nevse = {id}\n");
    }
    text += "\n[meter]\npoll_interval_ms = 200\nsign = true\n";
    for id in 1..=evses {
        text += &format!(
            "\n[[meter.meter]]\nevse = {id}\nmap = \"dc-meter\"\ntransport = \"tcp:127.0.0.1:{}\"\nmax_power_w = {:?}\n",
            free_port(),
            150_000.0 * TIME_SCALE
        );
    }
    std::fs::write(&path, text).unwrap();
    path
}

impl Stack {
    pub async fn start() -> Stack {
        let dir = tempfile::tempdir().unwrap();
        config(dir.path());
        Self::start_in(dir, false).await
    }

    /// A DC station (see [`dc_config`]), with the power service.
    pub async fn start_dc(protocol: &str, evses: u32, modules: u8) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        dc_config(dir.path(), protocol, evses, modules);
        Self::start_in(dir, true).await
    }

    async fn start_in(dir: tempfile::TempDir, dc: bool) -> Stack {
        let config = dir.path().join("evos.toml");
        let (broker, bus) = start_broker(dir.path());
        let (hal_sim, _) = spawn_ready(&sim_args(&config), dir.path(), "hal-sim", &bus);
        let meter = Self::spawn_service_in("meter", dir.path(), &bus);
        let power = dc.then(|| Self::spawn_service_in("power", dir.path(), &bus));
        let evse = Self::spawn_service_in("evse", dir.path(), &bus);
        let connection = evos_bus::connection_builder(Some(&bus))
            .build()
            .await
            .unwrap();
        let stack = Stack {
            dir,
            bus,
            connection,
            broker,
            hal_sim,
            meter,
            power,
            evse,
            ocpp: None,
        };
        wait_cp(&stack.evse().await, "A").await;
        stack
    }

    fn spawn_service_in(service: &str, dir: &Path, bus: &str) -> Child {
        let config = dir.join("evos.toml");
        let state = dir.join("state");
        let args = [
            "run",
            service,
            "--config",
            config.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ];
        spawn_ready(&args, dir, service, bus).0
    }

    /// Start `evse` again after it died.
    pub fn restart_evse(&mut self) {
        let _ = self.evse.wait();
        self.evse = Self::spawn_service_in("evse", self.dir.path(), &self.bus);
    }

    /// Start `meter` again after it died.
    pub fn restart_meter(&mut self) {
        let _ = self.meter.wait();
        self.meter = Self::spawn_service_in("meter", self.dir.path(), &self.bus);
    }

    pub async fn meter(&self) -> evos_bus::meter::Meter1Proxy<'static> {
        evos_bus::meter::Meter1Proxy::builder(&self.connection)
            .path(evos_bus::meter::path(1))
            .build()
            .await
            .unwrap()
    }

    pub async fn sim(&self) -> Sim1Proxy<'static> {
        Sim1Proxy::new(&self.connection).await.unwrap()
    }

    pub async fn evse(&self) -> Evse1Proxy<'static> {
        Evse1Proxy::builder(&self.connection)
            .path(evos_bus::evse::path(1))
            .build()
            .await
            .unwrap()
    }

    pub async fn sim_evse(&self) -> evos_bus::sim::SimEvse {
        self.sim().await.evses().await.unwrap().remove(0)
    }
}

/// The `[ocpp]` section of a stack made by [`Stack::start_ocpp`].
#[derive(Debug, Clone)]
pub struct OcppOptions {
    pub csms_url: String,
    pub station_id: String,
    pub security_profile: u8,
    pub password: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// `[ocpp.keys]`: configuration key defaults.
    pub keys: Vec<(String, String)>,
}

impl OcppOptions {
    /// Security profile 0 to `csms_url`, fast reconnects and retries.
    pub fn new(csms_url: &str) -> OcppOptions {
        OcppOptions {
            csms_url: csms_url.into(),
            station_id: csms::STATION_ID.into(),
            security_profile: 0,
            password: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            keys: vec![("TransactionMessageRetryInterval".into(), "1".into())],
        }
    }

    /// Set (or replace) a configuration key default.
    pub fn key(mut self, name: &str, value: &str) -> OcppOptions {
        self.keys.retain(|(k, _)| k != name);
        self.keys.push((name.into(), value.into()));
        self
    }
}

/// [`config`] with evse asking ocpp for every authorization, and an
/// `[ocpp]` section. Reset runs no command: the service exits (75) and the
/// test starts it again, as systemd would.
pub fn ocpp_config(dir: &Path, opts: &OcppOptions) -> PathBuf {
    let path = config(dir);
    let mut text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("[evse]\nallow_list = [\"{TOKEN}\"]\n"),
        "[evse]\nauth = \"ocpp\"\n",
    );
    assert!(text.contains("auth = \"ocpp\""), "evse section rewritten");
    text += &format!(
        "\n[ocpp]\ncsms_url = {:?}\nstation_id = {:?}\nsecurity_profile = {}\n\
         response_timeout_s = 5\nreconnect_min_s = 1\nreconnect_max_s = 2\n",
        opts.csms_url, opts.station_id, opts.security_profile
    );
    if let Some(p) = &opts.password {
        text += &format!("password = {p:?}\n");
    }
    for (key, file) in [
        ("ca_file", &opts.ca_file),
        ("client_cert", &opts.client_cert),
        ("client_key", &opts.client_key),
    ] {
        if let Some(file) = file {
            text += &format!("{key} = {:?}\n", file.display().to_string());
        }
    }
    text += "\n[ocpp.keys]\n";
    for (k, v) in &opts.keys {
        text += &format!("{k} = {v:?}\n");
    }
    std::fs::write(&path, text).unwrap();
    path
}

impl Stack {
    /// An AC station whose evse authorizes through ocpp, with `evos run
    /// ocpp` connecting as `opts` says.
    pub async fn start_ocpp(opts: &OcppOptions) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        ocpp_config(dir.path(), opts);
        let mut stack = Self::start_in(dir, false).await;
        stack.ocpp = Some(Self::spawn_service_in("ocpp", stack.dir.path(), &stack.bus));
        stack
    }

    /// SIGKILL the ocpp service (a crash or power cut of that process).
    pub fn kill_ocpp(&mut self) {
        if let Some(ocpp) = &mut self.ocpp {
            let _ = ocpp.kill();
            let _ = ocpp.wait();
        }
    }

    /// Start ocpp again (killing it first if it still runs).
    pub fn restart_ocpp(&mut self) {
        self.kill_ocpp();
        self.ocpp = Some(Self::spawn_service_in("ocpp", self.dir.path(), &self.bus));
    }

    /// Wait until the ocpp service exits by itself (a Reset), at most
    /// `within`; its exit status.
    pub fn wait_ocpp_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let ocpp = self.ocpp.as_mut().expect("an ocpp stack");
        let until = std::time::Instant::now() + within;
        loop {
            if let Some(status) = ocpp.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < until,
                "ocpp did not exit within {within:?}"
            );
            // Polls the exit; nothing else to wait on for a child's end.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn ocpp(&self) -> evos_bus::ocpp::Ocpp1Proxy<'static> {
        evos_bus::ocpp::Ocpp1Proxy::new(&self.connection)
            .await
            .unwrap()
    }
}

fn sim_args(config: &Path) -> Vec<&str> {
    vec!["run", "hal-sim", "--config", config.to_str().unwrap()]
}

/// Wait until EVSE 1's status is `want`, driven by PropertiesChanged.
pub async fn wait_status(evse: &Evse1Proxy<'_>, want: &str) {
    let mut changes = evse.receive_status_changed().await;
    let result = tokio::time::timeout(DEADLINE, async {
        loop {
            if evse.status().await.unwrap() == want {
                return;
            }
            changes.next().await.expect("status stream");
        }
    })
    .await;
    let now = evse.status().await.unwrap_or_default();
    assert!(
        result.is_ok(),
        "status did not become {want} within {DEADLINE:?}; it is {now}"
    );
}

/// Wait until the session energy exceeds `wh`.
pub async fn wait_energy_above(evse: &Evse1Proxy<'_>, wh: f64) -> f64 {
    let mut changes = evse.receive_session_energy_wh_changed().await;
    tokio::time::timeout(DEADLINE, async {
        loop {
            let e = evse.session_energy_wh().await.unwrap();
            if e > wh {
                return e;
            }
            changes.next().await.expect("energy stream");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("session energy did not exceed {wh} Wh within {DEADLINE:?}"))
}

/// Wait until EVSE 1 reports control pilot state `want` (the board is heard).
pub async fn wait_cp(evse: &Evse1Proxy<'_>, want: &str) {
    let mut changes = evse.receive_cp_state_changed().await;
    let result = tokio::time::timeout(DEADLINE, async {
        while evse.cp_state().await.unwrap() != want {
            changes.next().await.expect("CP stream");
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "CP state did not become {want} within {DEADLINE:?}"
    );
}

/// The record of the next SessionEnded signal.
pub async fn next_ended(
    ended: &mut evos_bus::evse::SessionEndedStream,
) -> evos_bus::evse::SessionRecord {
    let signal = tokio::time::timeout(DEADLINE, ended.next())
        .await
        .unwrap_or_else(|_| panic!("no SessionEnded within {DEADLINE:?}"))
        .expect("signal stream");
    signal.args().expect("SessionEnded arguments").record
}

/// Wait until `check` holds for the meter, re-checking on every Reading
/// signal and Fault change.
pub async fn wait_meter<T>(
    meter: &evos_bus::meter::Meter1Proxy<'_>,
    what: &str,
    mut check: impl AsyncFnMut(&evos_bus::meter::Meter1Proxy<'_>) -> Option<T>,
) -> T {
    let mut readings = meter.receive_reading().await.unwrap();
    let mut faults = meter.receive_fault_changed().await;
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(value) = check(meter).await {
                return value;
            }
            tokio::select! {
                _ = readings.next() => {}
                _ = faults.next() => {}
            }
        }
    })
    .await;
    let fault = meter.fault().await.unwrap_or_default();
    let energy = meter.energy_import_wh().await.unwrap_or(f64::NAN);
    found.unwrap_or_else(|_| {
        panic!("meter: {what} not seen within {DEADLINE:?} (fault `{fault}`, energy {energy} Wh)")
    })
}
