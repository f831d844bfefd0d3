//! The `evos` command line as a user meets it: bad input gets one clear line
//! and a non-zero exit; `evos sim` runs a scripted session and supervises.

mod harness;

use std::process::{Command, Stdio};

fn evos() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_evos"));
    cmd.env_remove("EVOS_BUS_ADDRESS")
        .env("XDG_RUNTIME_DIR", tempfile::tempdir().unwrap().keep());
    cmd
}

fn fails_with(cmd: &mut Command, needle: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {stderr}");
    assert!(
        stderr.contains(needle),
        "stderr should mention `{needle}`: {stderr}"
    );
}

#[test]
fn ctl_without_a_running_stack_says_so() {
    fails_with(evos().args(["ctl", "status"]), "no running evos sim found");
    let dir = tempfile::tempdir().unwrap();
    fails_with(
        evos().args(["ctl", "--data-dir", dir.path().to_str().unwrap(), "status"]),
        "no evos sim is running",
    );
}

#[test]
fn bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = harness::config(dir.path());
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("phases = 3", "phases = 3\nmax_curent = 3");
    std::fs::write(&config, text).unwrap();
    fails_with(
        evos().args(["run", "evse", "--config", config.to_str().unwrap()]),
        "max_curent",
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("max_curent = 3", "")
        .replace("phases = 3", "phases = 2");
    std::fs::write(&config, text).unwrap();
    fails_with(
        evos().args(["run", "evse", "--config", config.to_str().unwrap()]),
        "evse.evse[0].phases",
    );
}

#[test]
fn sim_refuses_ocpp_2_0_1_for_now() {
    let dir = tempfile::tempdir().unwrap();
    fails_with(
        evos().args([
            "sim",
            "--ocpp",
            "2.0.1",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ]),
        "OCPP 1.6 only",
    );
    assert!(
        !dir.path().join("evos.toml").exists(),
        "refused before anything starts"
    );
}

/// Run `evos sim [EXTRA] --scenario NAME` in a fresh data dir; it must
/// complete, end the session by unplugging, and clean up.
fn scenario_completes(extra: &[&str], name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = evos()
        .arg("sim")
        .args(extra)
        .args([
            "--scenario",
            name,
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("scenario {name} complete")),
        "{stdout}"
    );
    assert!(stdout.contains("stop reason EVDisconnected"), "{stdout}");
    assert!(
        !dir.path().join("bus.address").exists(),
        "cleaned up on exit"
    );
}

#[test]
fn scenario_ac_session_completes() {
    scenario_completes(&[], "ac-session");
}

#[test]
fn dc_scenario_charges_through_the_simulated_power_modules() {
    scenario_completes(&["--dc"], "dc-session");
}

#[test]
fn second_sim_on_the_same_data_dir_is_refused_and_ctl_reaches_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut first = evos()
        .args(["sim", "--data-dir", data])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The first sim prints `ready:` once every service is READY.
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(first.stdout.take().unwrap()));
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.starts_with("ready:")),
        "first sim never got ready"
    );

    fails_with(
        evos().args(["sim", "--data-dir", data]),
        "another evos sim is running",
    );

    let out = evos()
        .args(["ctl", "--data-dir", data, "--json", "status"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["id"], 1);
    assert_eq!(rows[0]["kind"], "AC");
    // Its meter is the simulated SDM630, read by the meter service.
    assert_eq!(rows[0]["meter"]["model"], "Eastron SDM630 Modbus V2");
    assert_eq!(rows[0]["meter"]["evse"], 1);
    fails_with(
        evos().args(["ctl", "--data-dir", data, "sim", "plug", "7"]),
        "unknown EVSE 7",
    );
    fails_with(
        evos().args(["ctl", "--data-dir", data, "sim", "fault", "1", "meteor"]),
        "unknown fault",
    );
    fails_with(
        evos().args([
            "ctl",
            "--data-dir",
            data,
            "sim",
            "meter-fault",
            "1",
            "meteor",
        ]),
        "unknown meter fault",
    );

    // SIGTERM stops every child and exits 0.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let status = first.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!dir.path().join("bus.address").exists());
}
