//! End-to-end: `evos sim` with its built-in CSMS, driven the way a desktop
//! developer drives it — `evos ctl csms …` as the operator, `evos ctl sim …`
//! as the driver — and `evos sim --csms URL` against another Central System.

mod harness;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use evos_bus::csms::{Csms1Proxy, CsmsStation, CsmsTransaction};
use evos_bus::evse::Evse1Proxy;
use futures_util::StreamExt;
use harness::{DEADLINE, wait_status};
use serde_json::Value;

/// A running `evos sim` in its own data dir.
struct Sim {
    child: Child,
    dir: tempfile::TempDir,
    runtime: PathBuf,
    stdout: mpsc::Receiver<String>,
    connection: zbus::Connection,
}

impl Drop for Sim {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Sim {
    async fn start(extra: &[&str]) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("xdg");
        std::fs::create_dir_all(&runtime).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_evos"))
            .arg("sim")
            .args(extra)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env_remove("EVOS_BUS_ADDRESS")
            .env("XDG_RUNTIME_DIR", &runtime)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let (lines, stdout) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        wait_line(&stdout, |l| l.starts_with("ready:"));
        let bus = std::fs::read_to_string(dir.path().join("data/bus.address")).unwrap();
        let connection = evos_bus::connection_builder(Some(bus.trim()))
            .build()
            .await
            .unwrap();
        Sim {
            child,
            dir,
            runtime,
            stdout,
            connection,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn wait_line(&self, f: impl Fn(&str) -> bool) -> String {
        wait_line(&self.stdout, f)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// `evos ctl --data-dir DATA ARGS`: (success, stdout, stderr).
    fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_evos"))
            .arg("ctl")
            .arg("--data-dir")
            .arg(self.data())
            .args(args)
            .env_remove("EVOS_BUS_ADDRESS")
            .env("XDG_RUNTIME_DIR", &self.runtime)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    }

    /// `evos ctl ARGS`, which must succeed; its output.
    fn ctl_ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.ctl(args);
        assert!(ok, "evos ctl {args:?} failed: {stderr}");
        stdout
    }

    /// `evos ctl --json ARGS`: one JSON value per line.
    fn ctl_json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.ctl_ok(&all)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn evse(&self) -> Evse1Proxy<'static> {
        Evse1Proxy::builder(&self.connection)
            .path(evos_bus::evse::path(1))
            .build()
            .await
            .unwrap()
    }

    /// Wait until what the CSMS shows satisfies `f`, re-checking on every
    /// change it announces.
    async fn wait_csms(
        &self,
        what: &str,
        f: impl Fn(&[CsmsStation], &[CsmsTransaction]) -> bool,
    ) -> (Vec<CsmsStation>, Vec<CsmsTransaction>) {
        let csms = Csms1Proxy::new(&self.connection).await.unwrap();
        let mut changes = csms.receive_changes_changed().await;
        let found = tokio::time::timeout(DEADLINE, async {
            loop {
                let stations = csms.stations().await.unwrap();
                let transactions = csms.transactions().await.unwrap();
                if f(&stations, &transactions) {
                    return (stations, transactions);
                }
                changes.next().await.expect("Changes stream");
            }
        })
        .await;
        match found {
            Ok(found) => found,
            Err(_) => panic!(
                "the CSMS never showed {what}: {:?} {:?}",
                csms.stations().await,
                csms.transactions().await
            ),
        }
    }
}

/// Wait for a line of `evos sim`'s output that satisfies `f`.
fn wait_line(stdout: &mpsc::Receiver<String>, f: impl Fn(&str) -> bool) -> String {
    loop {
        let line = stdout
            .recv_timeout(DEADLINE)
            .expect("evos sim printed nothing more in time");
        if f(&line) {
            return line;
        }
    }
}

fn received(station: &CsmsStation, action: &str) -> u32 {
    station
        .received
        .iter()
        .find(|(a, _)| a == action)
        .map_or(0, |(_, n)| *n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_csms_authorizes_records_and_commands() {
    let sim = Sim::start(&[]).await;
    let evse = sim.evse().await;
    sim.wait_csms("the station booted", |s, _| {
        s.len() == 1 && s[0].connected && s[0].boot_status == "Accepted" && s[0].boots == 1
    })
    .await;
    let line = sim.wait_line(|l| l.starts_with("OCPP Connected, Accepted"));
    assert!(line.ends_with("/EVOS-SIM-1"), "{line}");
    let stations = sim.ctl_ok(&["csms", "stations"]);
    assert!(
        stations.contains("station EVOS-SIM-1: connected, boot Accepted"),
        "{stations}"
    );
    // Sample every second, so the transaction shows meter values soon.
    assert_eq!(
        sim.ctl_ok(&["csms", "set-config", "MeterValueSampleInterval", "1"]),
        "Accepted"
    );
    let keys = sim.ctl_json(&["csms", "get-config", "MeterValueSampleInterval"]);
    assert_eq!(keys[0]["value"], "1", "{keys:?}");

    // A swipe of a demo token is authorized by the CSMS and starts a
    // transaction that the CSMS records with its meter values.
    sim.ctl_ok(&["sim", "plug", "1"]);
    wait_status(&evse, "Preparing").await;
    sim.ctl_ok(&["sim", "swipe", "1", "EVOS-DEMO"]);
    wait_status(&evse, "Charging").await;
    sim.wait_csms("meter values of the transaction", |_, t| {
        t.len() == 1 && t[0].meter_values >= 2 && t[0].last_meter_wh > 0.0
    })
    .await;
    let transactions = sim.ctl_json(&["csms", "transactions"]);
    let tx = &transactions[0];
    assert_eq!(tx["id"], 1, "{tx}");
    assert_eq!(tx["station"], "EVOS-SIM-1");
    assert_eq!(tx["connector"], 1);
    assert_eq!(tx["id_tag"], "EVOS-DEMO");
    assert_eq!(tx["auth_status"], "Accepted");
    assert_eq!(tx["running"], true);
    assert!(tx["meter_values"].as_u64().unwrap() >= 2, "{tx}");
    assert!(
        tx["last_meter_wh"].as_f64().unwrap() >= tx["meter_start_wh"].as_f64().unwrap(),
        "{tx}"
    );
    let human = sim.ctl_ok(&["csms", "transactions"]);
    assert!(
        human.starts_with("transaction 1 EVOS-SIM-1/1 EVOS-DEMO (Accepted): running since"),
        "{human}"
    );

    // The operator stops it remotely.
    assert_eq!(sim.ctl_ok(&["csms", "remote-stop", "1"]), "Accepted");
    wait_status(&evse, "Finishing").await;
    let (_, t) = sim
        .wait_csms("the transaction stopped", |_, t| t[0].meter_stop_wh >= 0)
        .await;
    assert_eq!(t[0].reason, "Remote");
    assert!(t[0].meter_stop_wh >= t[0].meter_start_wh, "{:?}", t[0]);

    // ... and starts another one for the EV still plugged in.
    assert_eq!(
        sim.ctl_ok(&["csms", "remote-start", "1", "EVOS-DEMO"]),
        "Accepted"
    );
    wait_status(&evse, "Charging").await;
    let (_, t) = sim
        .wait_csms("a second transaction", |_, t| t.len() == 2)
        .await;
    assert_eq!((t[1].id, t[1].meter_stop_wh), (2, -1), "{:?}", t[1]);

    // A limit from the CSMS reaches evse as its charging limit.
    let mut limits = evse.receive_charging_limit_changed().await;
    assert_eq!(
        sim.ctl_ok(&["csms", "set-limit", "1", "10", "A"]),
        "Accepted"
    );
    tokio::time::timeout(DEADLINE, async {
        while evse.charging_limit().await.unwrap() != (10.0, "A".to_owned()) {
            limits.next().await.expect("limit stream");
        }
    })
    .await
    .expect("Evse1 ChargingLimit becomes (10, A)");
    let (ok, _, stderr) = sim.ctl(&["csms", "set-limit", "1", "10", "kW"]);
    assert!(!ok && stderr.contains("kW"), "{stderr}");

    // A triggered StatusNotification arrives.
    let (s, _) = sim.wait_csms("the station", |s, _| !s.is_empty()).await;
    let before = received(&s[0], "StatusNotification");
    assert_eq!(
        sim.ctl_ok(&["csms", "trigger", "StatusNotification", "1"]),
        "Accepted"
    );
    sim.wait_csms("the triggered StatusNotification", |s, _| {
        received(&s[0], "StatusNotification") > before
    })
    .await;

    // A soft reset ends the transaction, restarts ocpp (on purpose, not as
    // a crash), and the station boots again.
    assert_eq!(sim.ctl_ok(&["csms", "reset", "soft"]), "Accepted");
    let (s, t) = sim
        .wait_csms("a second boot and the reset's StopTransaction", |s, t| {
            s[0].boots == 2 && s[0].connected && t[1].meter_stop_wh >= 0
        })
        .await;
    assert_eq!(s[0].boot_status, "Accepted");
    assert_eq!(t[1].reason, "SoftReset");
    let stderr = sim.stderr();
    assert!(
        stderr.contains("ocpp exited for a reset"),
        "the reset is logged as such: {stderr}"
    );
    assert!(
        !stderr.contains("ocpp exited ("),
        "not as a crash: {stderr}"
    );

    // Unknown stations are NotFound.
    let (ok, _, stderr) = sim.ctl(&["csms", "--station", "NOPE", "reset", "hard"]);
    assert!(
        !ok && stderr.contains("org.evos.Error.NotFound"),
        "{stderr}"
    );
}

/// A Central System of our own in the test process, standing for any CSMS.
async fn external_csms(tokens: &[&str]) -> (hal_sim::csms::Csms, u16) {
    let config = hal_sim::csms::Config {
        port: 0,
        tokens: tokens.iter().map(|t| t.to_string()).collect(),
        heartbeat_interval_s: 60,
    };
    let server = hal_sim::csms::Server::bind(config, None).await.unwrap();
    let port = server.local_addr().unwrap().port();
    let csms = server.csms();
    tokio::spawn(server.run());
    (csms, port)
}

async fn until(csms: &hal_sim::csms::Csms, what: &str, f: impl Fn(&hal_sim::csms::Csms) -> bool) {
    let mut changes = csms.subscribe();
    tokio::time::timeout(DEADLINE, async {
        while !f(csms) {
            changes.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the external CSMS never saw {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_csms_url_the_stack_uses_that_csms() {
    let (csms, port) = external_csms(&["EXT-TOKEN"]).await;
    let url = format!("ws://127.0.0.1:{port}/ocpp");
    let sim = Sim::start(&["--csms", &url, "--station-id", "EXT-7"]).await;
    until(&csms, "the station boot", |c| {
        c.stations()
            .iter()
            .any(|s| s.id == "EXT-7" && s.boots == 1 && s.connected)
    })
    .await;
    let config = std::fs::read_to_string(sim.data().join("evos.toml")).unwrap();
    assert!(!config.contains("[sim.csms]"), "no built-in CSMS: {config}");

    let (ok, _, stderr) = sim.ctl(&["csms", "stations"]);
    assert!(
        !ok && stderr.contains("the built-in CSMS is not running"),
        "{stderr}"
    );

    // That CSMS's token list decides.
    let evse = sim.evse().await;
    sim.ctl_ok(&["sim", "plug", "1"]);
    wait_status(&evse, "Preparing").await;
    sim.ctl_ok(&["sim", "swipe", "1", "EXT-TOKEN"]);
    wait_status(&evse, "Charging").await;
    until(&csms, "the transaction", |c| {
        c.transactions()
            .iter()
            .any(|t| t.station == "EXT-7" && t.id_tag == "EXT-TOKEN")
    })
    .await;
    assert_eq!(csms.remote_stop("EXT-7", 0, 1).await.unwrap(), "Accepted");
    wait_status(&evse, "Finishing").await;
}
