//! End-to-end: real broker, hal-sim and evse as processes, driven over D-Bus
//! the way `evos ctl` and the OCPP service drive them.

mod harness;

use std::sync::{Arc, Mutex};

use evos_bus::evse::{Evse1Proxy, SessionRecord};
use futures_util::StreamExt;
use harness::{DEADLINE, Stack, TOKEN, next_ended, wait_cp, wait_energy_above, wait_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ac_session_plug_swipe_charge_unplug() {
    let stack = Stack::start().await;
    let sim = stack.sim().await;
    let evse = stack.evse().await;
    wait_status(&evse, "Available").await;

    sim.plug(1, "ac-11kw").await.unwrap();
    wait_status(&evse, "Preparing").await;
    let mut ended = evse.receive_session_ended().await.unwrap();
    sim.swipe(1, TOKEN).await.unwrap();
    wait_status(&evse, "Charging").await;
    let world = stack.sim_evse().await;
    assert!(world.relays_closed && world.locked, "{world:?}");
    assert!(
        (world.offered_a - 32.0).abs() < 0.1,
        "32 A offered by PWM: {world:?}"
    );
    assert_eq!(world.current_a, 16.0, "the car draws its own maximum");

    let first = wait_energy_above(&evse, 0.0).await;
    let later = wait_energy_above(&evse, first + 20.0).await;
    assert!(later > first);

    sim.unplug(1).await.unwrap();
    let record = next_ended(&mut ended).await;
    wait_status(&evse, "Available").await;
    assert_eq!(record.token, TOKEN);
    assert_eq!(record.stop_reason, "EVDisconnected");
    assert!(record.ended_ms >= record.started_ms);
    assert!(record.energy_wh() >= later, "{record:?}");
    assert!(!stack.sim_evse().await.relays_closed);

    let sessions = evse.sessions().await.unwrap();
    assert_eq!(
        sessions.last(),
        Some(&record),
        "the ended session is on record"
    );
    let history =
        std::fs::read_to_string(stack.dir.path().join("state/evse/sessions/history-1.jsonl"))
            .unwrap();
    assert!(history.contains(&record.id), "persisted: {history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rcd_trip_opens_contactors_and_ends_session() {
    let stack = Stack::start().await;
    let sim = stack.sim().await;
    let evse = stack.evse().await;
    sim.plug(1, "ac-22kw").await.unwrap();
    sim.swipe(1, TOKEN).await.unwrap();
    wait_status(&evse, "Charging").await;
    wait_energy_above(&evse, 1.0).await;
    let mut ended = evse.receive_session_ended().await.unwrap();

    sim.fault(1, "rcd").await.unwrap();
    wait_status(&evse, "Faulted").await;
    assert_eq!(evse.fault().await.unwrap(), "RcdTripped");
    let world = stack.sim_evse().await;
    assert!(!world.relays_closed, "contactors open: {world:?}");
    assert_eq!(world.offered_a, 0.0, "no PWM offer while faulted");
    let record = next_ended(&mut ended).await;
    assert_eq!(record.fault, "RcdTripped");
    assert_eq!(record.stop_reason, "Other");
    assert!(record.energy_wh() > 0.0);
    assert!(
        evse.sessions().await.unwrap().contains(&record),
        "nothing lost"
    );

    sim.clear(1).await.unwrap();
    wait_status(&evse, "Preparing").await;
    assert_eq!(evse.fault().await.unwrap(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_evse_mid_session_resumes_the_session() {
    let mut stack = Stack::start().await;
    let sim = stack.sim().await;
    let evse = stack.evse().await;
    sim.plug(1, "ac-11kw").await.unwrap();
    sim.swipe(1, TOKEN).await.unwrap();
    wait_status(&evse, "Charging").await;
    let before = wait_energy_above(&evse, 5.0).await;
    let session = evse.session_id().await.unwrap();
    assert!(!session.is_empty());

    stack.evse.kill().unwrap(); // SIGKILL
    stack.restart_evse();

    let evse = stack.evse().await;
    wait_status(&evse, "Charging").await;
    assert_eq!(
        evse.session_id().await.unwrap(),
        session,
        "the same session goes on"
    );
    let after = wait_energy_above(&evse, before).await;
    assert!(
        after > before,
        "energy keeps counting from the meter: {before} -> {after}"
    );
    let sessions = evse.sessions().await.unwrap();
    assert_eq!(
        sessions.iter().filter(|s| s.id == session).count(),
        1,
        "not duplicated"
    );

    let mut ended = evse.receive_session_ended().await.unwrap();
    sim.swipe(1, TOKEN).await.unwrap(); // the same card stops its session
    let record = next_ended(&mut ended).await;
    assert_eq!(record.id, session);
    assert_eq!(record.stop_reason, "Local");
    wait_status(&evse, "Finishing").await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The standard stack with `auth` set in `[evse]` (evse restarted with it).
async fn stack_with_auth(auth: &str) -> Stack {
    let mut stack = Stack::start().await;
    let path = stack.dir.path().join("evos.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen("[evse]\n", &format!("[evse]\nauth = \"{auth}\"\n"), 1);
    std::fs::write(&path, text).unwrap();
    stack.evse.kill().unwrap();
    stack.restart_evse();
    wait_cp(&stack.evse().await, "A").await;
    stack
}

/// What `evos ctl --bus BUS ARGS` prints.
async fn ctl(stack: &Stack, args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_evos"))
        .args(["ctl", "--bus", &stack.bus])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The record of the next SessionStarted signal.
async fn next_started(started: &mut evos_bus::evse::SessionStartedStream) -> SessionRecord {
    let signal = tokio::time::timeout(DEADLINE, started.next())
        .await
        .unwrap_or_else(|_| panic!("no SessionStarted within {DEADLINE:?}"))
        .expect("signal stream");
    signal.args().expect("SessionStarted arguments").record
}

/// Wait until EVSE 1 holds reservation `id` (0: none), driven by
/// PropertiesChanged.
async fn wait_reservation(evse: &Evse1Proxy<'_>, id: i32) -> (i32, String, String, i64) {
    let mut changes = evse.receive_reservation_changed().await;
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            let held = evse.reservation().await.unwrap();
            if held.0 == id {
                return held;
            }
            changes.next().await.expect("reservation stream");
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("reservation {id} not shown within {DEADLINE:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservation_refuses_other_tokens_and_the_reserved_one_starts() {
    // Free vend: any token is authorized, so only the reservation refuses.
    let mut stack = stack_with_auth("free-vend").await;
    let evse = stack.evse().await;
    wait_status(&evse, "Available").await;

    let expiry = now_ms() + 3_600_000;
    let reserve = evse.reserve(7, "RES-TOKEN", "", expiry).await.unwrap();
    assert_eq!(reserve, "Accepted");
    wait_status(&evse, "Reserved").await;
    assert_eq!(
        evse.reservation().await.unwrap(),
        (7, "RES-TOKEN".into(), String::new(), expiry)
    );
    let other = evse.reserve(8, "OTHER", "", expiry).await.unwrap();
    assert_eq!(other, "Occupied", "one reservation at a time");
    assert!(matches!(
        evse.cancel_reservation(8).await,
        Err(evos_bus::Error::NotFound(_))
    ));
    let shown = ctl(&stack, &["status"]).await;
    assert!(shown.contains("reserved #7 for RES-TOKEN"), "{shown}");
    let rows: serde_json::Value =
        serde_json::from_str(&ctl(&stack, &["--json", "status"]).await).unwrap();
    assert_eq!(rows[0]["reservation"]["id"], 7);
    assert_eq!(rows[0]["reservation"]["expiry_ms"], expiry);

    // It survives a crash of evse.
    stack.evse.kill().unwrap();
    stack.restart_evse();
    let evse = stack.evse().await;
    wait_status(&evse, "Reserved").await;
    assert_eq!(wait_reservation(&evse, 7).await.3, expiry);

    // An EV plugged in does not start a free-vend session at a reservation.
    let sim = stack.sim().await;
    sim.plug(1, "ac-11kw").await.unwrap();
    wait_cp(&evse, "B").await;
    assert_eq!(evse.status().await.unwrap(), "Reserved");

    assert_eq!(evse.present_token("WRONG").await.unwrap(), "Invalid");
    assert!(matches!(
        evse.start_session("WRONG").await,
        Err(evos_bus::Error::NotPermitted(_))
    ));
    assert_eq!(evse.status().await.unwrap(), "Reserved");
    assert_eq!(evse.session_id().await.unwrap(), "");

    let mut started = evse.receive_session_started().await.unwrap();
    assert_eq!(evse.present_token("res-token").await.unwrap(), "Accepted");
    let record = next_started(&mut started).await;
    assert_eq!(record.token, "res-token");
    assert_eq!(record.reservation_id, 7, "the session consumed it");
    wait_status(&evse, "Charging").await;
    assert_eq!(
        wait_reservation(&evse, 0).await,
        (0, String::new(), String::new(), 0)
    );
    assert!(
        !stack
            .dir
            .path()
            .join("state/evse/reservation-1.json")
            .exists(),
        "no longer persisted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservation_expires_at_its_time() {
    let stack = Stack::start().await;
    let evse = stack.evse().await;
    wait_status(&evse, "Available").await;

    let expiry = now_ms() + 1500;
    let reserve = evse.reserve(9, TOKEN, "FLEET", expiry).await.unwrap();
    assert_eq!(reserve, "Accepted");
    assert_eq!(wait_reservation(&evse, 9).await.2, "FLEET");
    wait_status(&evse, "Reserved").await;

    wait_reservation(&evse, 0).await;
    assert!(now_ms() >= expiry, "not before its expiry");
    wait_status(&evse, "Available").await;
    assert!(matches!(
        evse.cancel_reservation(9).await,
        Err(evos_bus::Error::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_during_a_session_ends_it_and_opens_the_lock() {
    let stack = Stack::start().await;
    let sim = stack.sim().await;
    let evse = stack.evse().await;
    sim.plug(1, "ac-11kw").await.unwrap();
    sim.swipe(1, TOKEN).await.unwrap();
    wait_status(&evse, "Charging").await;
    assert!(stack.sim_evse().await.locked);
    let mut ended = evse.receive_session_ended().await.unwrap();

    assert_eq!(evse.unlock().await.unwrap(), "Unlocked");
    let record = next_ended(&mut ended).await;
    assert_eq!(record.stop_reason, "UnlockCommand");
    assert_eq!(record.stop_token, "");
    let world = stack.sim_evse().await;
    assert!(!world.locked && !world.relays_closed, "{world:?}");
    wait_status(&evse, "Finishing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_of_a_stuck_lock_fails() {
    let stack = Stack::start().await;
    let sim = stack.sim().await;
    let evse = stack.evse().await;
    sim.plug(1, "ac-11kw").await.unwrap();
    sim.swipe(1, TOKEN).await.unwrap();
    wait_status(&evse, "Charging").await;

    sim.fault(1, "lock").await.unwrap();
    wait_status(&evse, "Faulted").await;
    assert_eq!(evse.fault().await.unwrap(), "LockFailure");
    assert_eq!(evse.unlock().await.unwrap(), "UnlockFailed");

    sim.clear(1).await.unwrap();
    wait_status(&evse, "Preparing").await;
    assert_eq!(evse.unlock().await.unwrap(), "Unlocked");
}

/// A stand-in for the OCPP service: answers `Authorize` from a table and
/// records who asked.
struct FakeOcpp {
    calls: Arc<Mutex<Vec<(u32, String)>>>,
}

#[zbus::interface(name = "org.evos.Ocpp1")]
impl FakeOcpp {
    fn authorize(&self, evse: u32, token: &str) -> (String, String) {
        self.calls.lock().unwrap().push((evse, token.to_owned()));
        let (status, parent) = match token {
            "CARD-A" | "CARD-B" => ("Accepted", "FLEET"),
            "CARD-C" => ("Accepted", "OTHER-FLEET"),
            "BLOCKED" => ("Blocked", "FLEET"),
            _ => ("Invalid", ""),
        };
        (status.into(), parent.into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocpp_authorizes_and_a_card_of_the_same_parent_stops() {
    let stack = stack_with_auth("ocpp").await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let ocpp = evos_bus::connection_builder(Some(&stack.bus))
        .name(evos_bus::ocpp::BUS_NAME)
        .serve_at(
            evos_bus::ocpp::PATH,
            FakeOcpp {
                calls: calls.clone(),
            },
        )
        .build()
        .await
        .unwrap();
    let sim = stack.sim().await;
    let evse = stack.evse().await;
    sim.plug(1, "ac-11kw").await.unwrap();
    wait_status(&evse, "Preparing").await;

    assert_eq!(evse.present_token("UNKNOWN").await.unwrap(), "Invalid");
    assert_eq!(evse.present_token("BLOCKED").await.unwrap(), "Blocked");
    assert_eq!(evse.status().await.unwrap(), "Preparing");

    let mut ended = evse.receive_session_ended().await.unwrap();
    assert_eq!(evse.present_token("CARD-A").await.unwrap(), "Accepted");
    wait_status(&evse, "Charging").await;

    // Another fleet's card does not stop it; a card of its own fleet does.
    assert!(matches!(
        evse.present_token("CARD-C").await,
        Err(evos_bus::Error::NotPermitted(_))
    ));
    assert_eq!(evse.status().await.unwrap(), "Charging");
    assert_eq!(evse.present_token("CARD-B").await.unwrap(), "Accepted");
    let record = next_ended(&mut ended).await;
    assert_eq!(record.token, "CARD-A");
    assert_eq!(record.stop_token, "CARD-B");
    assert_eq!(record.stop_reason, "Local");
    wait_status(&evse, "Finishing").await;

    let asked: Vec<(u32, String)> = ["UNKNOWN", "BLOCKED", "CARD-A", "CARD-C", "CARD-B"]
        .iter()
        .map(|t| (1, t.to_string()))
        .collect();
    assert_eq!(*calls.lock().unwrap(), asked, "evse asked the OCPP service");

    // Without the OCPP service on the bus, nobody is authorized.
    ocpp.release_name(evos_bus::ocpp::BUS_NAME).await.unwrap();
    assert_eq!(evse.present_token("CARD-A").await.unwrap(), "Invalid");
    assert_eq!(evse.status().await.unwrap(), "Finishing");
    assert_eq!(calls.lock().unwrap().len(), asked.len());
}
