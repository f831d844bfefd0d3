//! End-to-end: real broker, hal-sim and evse as processes, driven over D-Bus
//! the way `evos ctl` and the OCPP service drive them.

mod harness;

use harness::{Stack, TOKEN, next_ended, wait_energy_above, wait_status};

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
