//! Scripted sessions for `evos sim --scenario NAME`: a user's session driven
//! through the simulated world, checked through Evse1 as a client sees it.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use evos_bus::evse::Evse1Proxy;
use evos_bus::sim::Sim1Proxy;
use futures_util::StreamExt;

pub const NAMES: &[&str] = &["ac-session", "dc-session"];

/// Energy the scripted session charges before unplugging (Wh).
const TARGET_WH: f64 = 250.0;
const STEP_DEADLINE: Duration = Duration::from_secs(30);

pub async fn run(name: &str, connection: &zbus::Connection) -> Result<String> {
    match name {
        "ac-session" => session(connection, "ac-session", "ac-11kw", "an 11 kW car").await,
        "dc-session" => session(connection, "dc-session", "dc-400v", "a 400 V DC car").await,
        other => bail!("unknown scenario `{other}`"),
    }
}

async fn evse(connection: &zbus::Connection, id: u32) -> Result<Evse1Proxy<'static>> {
    Ok(Evse1Proxy::builder(connection)
        .path(evos_bus::evse::path(id))
        .build()
        .await?)
}

/// Wait until the status is one of `want`.
async fn wait_status(proxy: &Evse1Proxy<'_>, want: &[&str]) -> Result<String> {
    let mut changes = proxy.receive_status_changed().await;
    let wait = async {
        loop {
            let status = proxy.status().await?;
            if want.contains(&status.as_str()) {
                return Ok::<_, anyhow::Error>(status);
            }
            changes.next().await.context("status stream ended")?;
        }
    };
    tokio::time::timeout(STEP_DEADLINE, wait)
        .await
        .with_context(|| format!("EVSE did not reach {want:?} within {STEP_DEADLINE:?}"))?
}

async fn session(
    connection: &zbus::Connection,
    name: &str,
    profile: &str,
    car: &str,
) -> Result<String> {
    let sim = Sim1Proxy::new(connection).await?;
    let evse = evse(connection, 1).await?;
    let started = std::time::Instant::now();
    println!("scenario: plug {car} into EVSE 1");
    sim.plug(1, profile).await?;
    wait_status(&evse, &["Preparing"]).await?;
    let token = super::DEMO_TOKENS[0];
    println!("scenario: swipe {token}");
    let mut ended = evse.receive_session_ended().await?;
    sim.swipe(1, token).await?;
    wait_status(&evse, &["Charging"]).await?;
    println!("scenario: charging; waiting for {TARGET_WH} Wh");
    let mut energy = evse.receive_session_energy_wh_changed().await;
    tokio::time::timeout(STEP_DEADLINE, async {
        while evse.session_energy_wh().await? < TARGET_WH {
            energy.next().await.context("energy stream ended")?;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("energy did not reach the target")??;
    println!("scenario: unplug");
    sim.unplug(1).await?;
    let record = tokio::time::timeout(STEP_DEADLINE, ended.next())
        .await
        .context("no SessionEnded")?
        .context("signal stream ended")?
        .args()?
        .record;
    wait_status(&evse, &["Available"]).await?;
    Ok(format!(
        "scenario {name} complete: session {} token {} energy {:.1} Wh stop reason {} in {:.1} s",
        record.id,
        record.token,
        record.energy_wh(),
        record.stop_reason,
        started.elapsed().as_secs_f64()
    ))
}

/// The `evos ctl status` line of one EVSE.
pub async fn status_of(connection: &zbus::Connection, id: u32) -> Result<String> {
    let p = evse(connection, id).await?;
    let row = serde_json::json!({
        "id": id, "kind": p.kind().await?, "status": p.status().await?, "cp_state": p.cp_state().await?,
        "offered_current_a": p.offered_current().await?, "power_w": p.power_w().await?,
        "session_energy_wh": p.session_energy_wh().await?, "session_id": p.session_id().await?,
        "fault": p.fault().await?,
    });
    Ok(crate::ctl::status_line(&row))
}
