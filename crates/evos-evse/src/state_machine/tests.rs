use super::*;

use CpState::{A, B, C, D, E, F};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Wall-clock time (Unix ms) at which every rig starts.
const WALL0: i64 = 1_700_000_000_000;

/// A tethered AC EVSE: 32 A, three phases at 230 V, no lock.
fn tethered_ac() -> Spec {
    Spec {
        id: 1,
        kind: Kind::Ac,
        max_current_a: 32.0,
        phases: 3,
        socket: false,
        nominal_voltage_v: 230.0,
        connection_timeout: Duration::from_secs(60),
        free_vend: false,
    }
}

/// An AC socket outlet: lock and proximity pilot.
fn socket_ac() -> Spec {
    Spec {
        socket: true,
        ..tethered_ac()
    }
}

fn dc() -> Spec {
    Spec {
        kind: Kind::Dc,
        max_current_a: 200.0,
        ..tethered_ac()
    }
}

/// A board status with the EV in `cp`, the lock unlocked, contactors open
/// and no fault.
fn ev(cp: CpState) -> BoardStatus {
    BoardStatus {
        cp,
        cable_rating_a: None,
        contactors_closed: false,
        lock: LockState::Unlocked,
        rcd_tripped: false,
        diode_fault: false,
    }
}

trait BoardStatusExt {
    fn locked(self) -> Self;
    fn lock(self, lock: LockState) -> Self;
    fn cable(self, amps: u8) -> Self;
    /// Contactor feedback reads closed.
    fn closed(self) -> Self;
    fn rcd(self) -> Self;
    fn diode(self) -> Self;
}

impl BoardStatusExt for BoardStatus {
    fn locked(self) -> Self {
        self.lock(LockState::Locked)
    }
    fn lock(self, lock: LockState) -> Self {
        BoardStatus { lock, ..self }
    }
    fn cable(self, amps: u8) -> Self {
        BoardStatus {
            cable_rating_a: Some(amps),
            ..self
        }
    }
    fn closed(self) -> Self {
        BoardStatus {
            contactors_closed: true,
            ..self
        }
    }
    fn rcd(self) -> Self {
        BoardStatus {
            rcd_tripped: true,
            ..self
        }
    }
    fn diode(self) -> Self {
        BoardStatus {
            diode_fault: true,
            ..self
        }
    }
}

fn meter(energy_wh: f64) -> Measurement {
    Measurement {
        voltage_v: [230.0; 3],
        current_a: [16.0; 3],
        energy_wh,
    }
}

fn amps(value: f64) -> Limit {
    Limit {
        value,
        unit: LimitUnit::Amps,
        expires: None,
    }
}

fn watts(value: f64) -> Limit {
    Limit {
        value,
        unit: LimitUnit::Watts,
        expires: None,
    }
}

fn outputs(pwm: PwmOutput, contactors: bool, lock: bool) -> Outputs {
    Outputs {
        pwm,
        contactors,
        lock,
        dc: None,
    }
}

/// What a 32 A EVSE offers: IEC 61851-1 Table A.8, 53.3 %.
const DUTY_32A: PwmOutput = PwmOutput::Duty(533);

/// One EVSE with a clock that only moves when the test says so.
struct Rig {
    evse: Evse,
    t0: Instant,
    elapsed: Duration,
}

impl Rig {
    /// A fresh service start with no session to recover.
    fn new(spec: Spec) -> Self {
        Self::restarted(spec, None)
    }

    /// A service start with `active` the session persisted before.
    fn restarted(spec: Spec, active: Option<SessionRecord>) -> Self {
        Self::restored(
            spec,
            Restored {
                session: active,
                ..Restored::default()
            },
        )
    }

    /// A service start with what it kept from before.
    fn restored(spec: Spec, restored: Restored) -> Self {
        let t0 = Instant::now();
        let evse = Evse::new(
            spec,
            restored,
            Now {
                mono: t0,
                wall_ms: WALL0,
            },
        );
        Rig {
            evse,
            t0,
            elapsed: Duration::ZERO,
        }
    }

    fn now(&self) -> Now {
        Now {
            mono: self.mono(),
            wall_ms: self.wall_ms(),
        }
    }

    fn mono(&self) -> Instant {
        self.t0 + self.elapsed
    }

    fn wall_ms(&self) -> i64 {
        WALL0 + i64::try_from(self.elapsed.as_millis()).unwrap()
    }

    fn advance(&mut self, by: Duration) {
        self.elapsed += by;
    }

    fn advance_to(&mut self, at: Instant) {
        assert!(at >= self.mono(), "time only moves forward");
        self.elapsed = at - self.t0;
    }

    fn try_step(&mut self, input: Input) -> Result<Vec<Effect>, Refusal> {
        let now = self.now();
        self.evse.handle(input, now)
    }

    fn step(&mut self, input: Input) -> Vec<Effect> {
        let shown = format!("{input:?}");
        self.try_step(input)
            .unwrap_or_else(|r| panic!("{shown} refused: {r:?}"))
    }

    fn refused(&mut self, input: Input) -> Refusal {
        let shown = format!("{input:?}");
        match self.try_step(input) {
            Ok(effects) => panic!("{shown} accepted with {effects:?}"),
            Err(r) => r,
        }
    }

    fn board(&mut self, status: BoardStatus) -> Vec<Effect> {
        self.step(Input::Board(status))
    }

    fn token(&mut self, token: &str) -> Vec<Effect> {
        self.step(Input::Token(token.into()))
    }

    /// The authorizer answers `status` and `parent` for `token`: the other
    /// effects, and what the decision told the token's presenter (if any).
    fn decide(
        &mut self,
        token: &str,
        status: AuthStatus,
        parent: &str,
    ) -> (Vec<Effect>, Option<Result<AuthStatus, Refusal>>) {
        let effects = self.step(Input::AuthResult {
            token: token.into(),
            status,
            parent: parent.into(),
        });
        let mut decision = None;
        let rest = effects
            .into_iter()
            .filter(|e| match e {
                Effect::TokenDecided { token: t, outcome } => {
                    assert_eq!(t, token, "decided for the token asked about");
                    assert!(decision.is_none(), "decided once");
                    decision = Some(outcome.clone());
                    false
                }
                _ => true,
            })
            .collect();
        (rest, decision)
    }

    /// The authorizer accepts (or not) `token`, without a parent id.
    fn auth(&mut self, token: &str, accepted: bool) -> Vec<Effect> {
        let status = if accepted {
            AuthStatus::Accepted
        } else {
            AuthStatus::Invalid
        };
        self.decide(token, status, "").0
    }

    /// Present `token` and accept it, as the authorizer would.
    fn authorize(&mut self, token: &str) -> Vec<Effect> {
        assert_eq!(self.token(token), [Effect::Authorize(token.into())]);
        self.auth(token, true)
    }

    fn measure(&mut self, energy_wh: f64) -> Vec<Effect> {
        self.step(Input::Measurement(meter(energy_wh)))
    }

    fn limit(&mut self, limit: Option<Limit>) -> Vec<Effect> {
        self.step(Input::SetLimit(limit))
    }

    fn tick(&mut self) -> Vec<Effect> {
        self.step(Input::Tick)
    }

    fn status(&self) -> ConnectorStatus {
        self.evse.status()
    }

    fn outputs(&self) -> Outputs {
        self.evse.outputs()
    }
}

/// The effects are exactly one SessionStarted; its record.
#[track_caller]
fn started(effects: Vec<Effect>) -> SessionRecord {
    match <[Effect; 1]>::try_from(effects) {
        Ok([Effect::SessionStarted(record)]) => record,
        other => panic!("expected one SessionStarted, got {other:?}"),
    }
}

/// The effects are exactly one SessionEnded; its record.
#[track_caller]
fn ended(effects: Vec<Effect>) -> SessionRecord {
    match <[Effect; 1]>::try_from(effects) {
        Ok([Effect::SessionEnded(record)]) => record,
        other => panic!("expected one SessionEnded, got {other:?}"),
    }
}

/// Started, no EV: the first board status says CP A.
fn idle(spec: Spec) -> Rig {
    let mut rig = Rig::new(spec);
    assert_eq!(rig.board(ev(A)), []);
    assert_eq!(rig.status(), ConnectorStatus::Available);
    rig
}

/// An EV plugged in (CP B), nobody authorized yet.
fn plugged(spec: Spec) -> Rig {
    let mut rig = idle(spec);
    assert_eq!(rig.board(ev(B).cable(32)), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    rig
}

/// A session authorized by token "CARD-1" after plug-in; lock not yet
/// confirmed, EV in B.
fn in_session(spec: Spec) -> (Rig, SessionRecord) {
    let mut rig = plugged(spec);
    let record = started(rig.authorize("CARD-1"));
    (rig, record)
}

/// Energy flows: lock confirmed, EV in C, contactor feedback closed. The
/// meter read 1000 Wh at the start.
fn charging(spec: Spec) -> (Rig, SessionRecord) {
    let mut rig = idle(spec);
    rig.measure(1000.0);
    assert_eq!(rig.board(ev(B).cable(32)), []);
    let record = started(rig.authorize("CARD-1"));
    assert_eq!(record.start_meter_wh, 1000.0);
    assert_eq!(rig.board(ev(B).cable(32).locked()), []);
    assert_eq!(rig.board(ev(C).cable(32).locked()), []);
    assert!(rig.outputs().contactors);
    assert_eq!(rig.board(ev(C).cable(32).locked().closed()), []);
    assert_eq!(rig.status(), ConnectorStatus::Charging);
    rig.advance(Duration::from_secs(600));
    rig.measure(4000.0);
    (rig, record)
}

/// A persisted active session, as the store hands it back after a restart.
fn persisted_session() -> SessionRecord {
    SessionRecord {
        id: "1-1699999000000".into(),
        evse: 1,
        token: "CARD-1".into(),
        started_ms: WALL0 - 1_000_000,
        ended_ms: 0,
        start_meter_wh: 500.0,
        stop_meter_wh: 900.0,
        stop_reason: String::new(),
        fault: String::new(),
        stop_token: String::new(),
        reservation_id: 0,
    }
}

/// The fault has opened the contactors, stopped the PWM and ended the
/// session with reason Other; returns the ended record.
#[track_caller]
fn assert_fault_ended_session(rig: &Rig, effects: Vec<Effect>, fault: Fault) -> SessionRecord {
    let record = ended(effects);
    assert_eq!(record.stop_reason, "Other");
    assert_eq!(record.fault, fault.as_str());
    assert!(!record.is_active());
    assert_faulted(rig, fault);
    assert_eq!(rig.evse.session(), None);
    record
}

#[track_caller]
fn assert_faulted(rig: &Rig, fault: Fault) {
    assert_eq!(rig.status(), ConnectorStatus::Faulted);
    assert_eq!(rig.evse.fault(), Some(fault));
    let out = rig.outputs();
    assert!(!out.contactors, "contactors must open on {fault:?}");
    assert_eq!(out.pwm, PwmOutput::Off);
}

// ---------------------------------------------------------------------------
// Plug-in and unplug
// ---------------------------------------------------------------------------

#[test]
fn before_the_first_board_status_nothing_is_driven() {
    let rig = Rig::new(socket_ac());
    assert_eq!(rig.status(), ConnectorStatus::Available);
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, false));
    assert_eq!(rig.evse.cp_state(), None);
    assert_eq!(rig.evse.session(), None);
    assert_eq!(rig.evse.next_deadline(), None);
}

#[test]
fn first_status_with_an_ev_is_occupied() {
    let mut rig = Rig::new(tethered_ac());
    assert_eq!(rig.board(ev(B)), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    assert_eq!(rig.evse.cp_state(), Some(B));
    assert_eq!(rig.evse.session(), None);
}

#[test]
fn plug_in_and_unplug_without_authorization() {
    let mut rig = idle(socket_ac());
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, false));

    assert_eq!(rig.board(ev(B).cable(32)), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    // Nobody authorized it: no energy offered, no lock.
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, false));

    // Even an EV asking for energy gets none.
    assert_eq!(rig.board(ev(C).cable(32)), []);
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, false));
    assert_eq!(rig.status(), ConnectorStatus::Preparing);

    assert_eq!(rig.board(ev(A)), []);
    assert_eq!(rig.status(), ConnectorStatus::Available);
    assert_eq!(rig.evse.cp_state(), Some(A));
}

// ---------------------------------------------------------------------------
// Token before plug-in
// ---------------------------------------------------------------------------

#[test]
fn token_before_plug_in_authorizes_then_plug_in_starts_the_session() {
    let mut rig = idle(tethered_ac());
    rig.measure(1234.0);

    assert_eq!(rig.token("CARD-1"), [Effect::Authorize("CARD-1".into())]);
    // Not yet answered: still available.
    assert_eq!(rig.status(), ConnectorStatus::Available);

    assert_eq!(rig.auth("CARD-1", true), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    assert_eq!(rig.evse.session(), None);
    assert_eq!(
        rig.evse.next_deadline(),
        Some(rig.mono() + Duration::from_secs(60))
    );
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, false));

    rig.advance(Duration::from_secs(10));
    let record = started(rig.board(ev(B)));
    assert_eq!(record.token, "CARD-1");
    assert_eq!(record.evse, 1);
    assert_eq!(record.id, format!("1-{}", rig.wall_ms()));
    assert_eq!(record.started_ms, rig.wall_ms());
    assert_eq!(record.ended_ms, 0);
    assert!(record.is_active());
    assert_eq!(record.start_meter_wh, 1234.0);
    assert_eq!(record.stop_meter_wh, 1234.0);
    assert_eq!(record.stop_reason, "");
    assert_eq!(record.fault, "");
    assert_eq!(rig.evse.session(), Some(&record));
    // The connection timer is gone with the Authorized state.
    assert_eq!(rig.evse.next_deadline(), None);
    assert_eq!(rig.outputs(), outputs(DUTY_32A, false, false));
    assert_eq!(rig.status(), ConnectorStatus::SuspendedEv);
}

#[test]
fn authorization_without_plug_in_expires_at_the_connection_timeout() {
    let mut rig = idle(tethered_ac());
    rig.authorize("CARD-1");
    let deadline = rig.evse.next_deadline().expect("connection timeout");
    assert_eq!(deadline, rig.mono() + Duration::from_secs(60));

    rig.advance(Duration::from_secs(59));
    assert_eq!(rig.tick(), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);

    rig.advance_to(deadline);
    assert_eq!(rig.tick(), []);
    assert_eq!(rig.status(), ConnectorStatus::Available);
    assert_eq!(rig.evse.next_deadline(), None);

    // Plugging in now does not start a session.
    assert_eq!(rig.board(ev(B)), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    assert_eq!(rig.evse.session(), None);
}

#[test]
fn the_same_token_again_cancels_the_authorization() {
    let mut rig = idle(tethered_ac());
    rig.authorize("CARD-1");
    assert_eq!(rig.status(), ConnectorStatus::Preparing);

    // Card UIDs compare case-insensitively.
    assert_eq!(rig.token("card-1"), []);
    assert_eq!(rig.status(), ConnectorStatus::Available);
    assert_eq!(rig.evse.next_deadline(), None);

    assert_eq!(rig.board(ev(B)), []);
    assert_eq!(rig.evse.session(), None);
}

#[test]
fn another_token_while_authorized_is_ignored() {
    let mut rig = idle(tethered_ac());
    rig.authorize("CARD-1");
    assert_eq!(rig.token("CARD-2"), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    let record = started(rig.board(ev(B)));
    assert_eq!(record.token, "CARD-1");
}

#[test]
fn stop_cancels_an_authorization() {
    let mut rig = idle(tethered_ac());
    rig.authorize("CARD-1");
    assert_eq!(rig.step(Input::Stop(StopReason::Remote)), []);
    assert_eq!(rig.status(), ConnectorStatus::Available);
    assert_eq!(rig.board(ev(B)), []);
    assert_eq!(rig.evse.session(), None);
}

// ---------------------------------------------------------------------------
// Token after plug-in
// ---------------------------------------------------------------------------

#[test]
fn token_after_plug_in_starts_the_session_once_accepted() {
    let mut rig = plugged(tethered_ac());
    assert_eq!(rig.token("CARD-1"), [Effect::Authorize("CARD-1".into())]);
    assert_eq!(rig.evse.session(), None);
    assert_eq!(rig.outputs().pwm, PwmOutput::Off);

    let record = started(rig.auth("CARD-1", true));
    assert_eq!(record.token, "CARD-1");
    assert_eq!(rig.evse.session(), Some(&record));
    assert_eq!(rig.outputs(), outputs(DUTY_32A, false, false));
    assert_eq!(rig.status(), ConnectorStatus::SuspendedEv);
}

#[test]
fn rejected_token_leaves_the_ev_waiting() {
    let mut rig = plugged(tethered_ac());
    assert_eq!(rig.token("CARD-1"), [Effect::Authorize("CARD-1".into())]);
    assert_eq!(rig.auth("CARD-1", false), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    assert_eq!(rig.evse.session(), None);
    assert_eq!(rig.outputs().pwm, PwmOutput::Off);

    // The request is answered: a late duplicate "accepted" changes nothing.
    assert_eq!(rig.auth("CARD-1", true), []);
    assert_eq!(rig.evse.session(), None);

    // A new presentation is asked again.
    assert_eq!(rig.token("CARD-1"), [Effect::Authorize("CARD-1".into())]);
    started(rig.auth("CARD-1", true));
}

#[test]
fn stale_auth_result_for_another_token_is_ignored() {
    let mut rig = plugged(tethered_ac());
    assert_eq!(rig.token("CARD-1"), [Effect::Authorize("CARD-1".into())]);
    // A second card overtakes the first request.
    assert_eq!(rig.token("CARD-2"), [Effect::Authorize("CARD-2".into())]);

    assert_eq!(rig.auth("CARD-1", true), []);
    assert_eq!(rig.evse.session(), None);
    assert_eq!(rig.auth("NEVER-ASKED", true), []);
    assert_eq!(rig.evse.session(), None);

    let record = started(rig.auth("CARD-2", true));
    assert_eq!(record.token, "CARD-2");
}

#[test]
fn a_different_token_during_a_session_changes_nothing() {
    let (mut rig, record) = charging(tethered_ac());
    assert_eq!(rig.token("CARD-2"), []);
    assert_eq!(rig.evse.session().map(|s| &s.id), Some(&record.id));
    assert_eq!(rig.status(), ConnectorStatus::Charging);
}

// ---------------------------------------------------------------------------
// Free vend
// ---------------------------------------------------------------------------

#[test]
fn free_vend_starts_a_session_on_plug_in() {
    let mut rig = idle(Spec {
        free_vend: true,
        ..tethered_ac()
    });
    assert_eq!(rig.status(), ConnectorStatus::Available);
    let record = started(rig.board(ev(B)));
    assert_eq!(record.token, "FreeVend");
    assert_eq!(rig.outputs(), outputs(DUTY_32A, false, false));

    assert_eq!(rig.board(ev(C).closed()), []);
    assert_eq!(rig.status(), ConnectorStatus::Charging);

    let end = ended(rig.board(ev(A)));
    assert_eq!(end.id, record.id);
    assert_eq!(end.stop_reason, "EVDisconnected");
    assert_eq!(rig.status(), ConnectorStatus::Available);
}

// ---------------------------------------------------------------------------
// Connector lock (socket outlets)
// ---------------------------------------------------------------------------

#[test]
fn socket_offers_energy_only_once_the_lock_is_confirmed() {
    let (mut rig, _) = in_session(socket_ac());
    // Lock commanded, PWM held off until the feedback confirms it.
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, true));
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    assert_eq!(rig.evse.next_deadline(), Some(rig.mono() + LOCK_TIMEOUT));

    // An EV that asks for energy early still gets none.
    assert_eq!(rig.board(ev(C).cable(32)), []);
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, true));

    rig.advance(Duration::from_millis(300));
    assert_eq!(rig.board(ev(C).cable(32).locked()), []);
    assert_eq!(rig.outputs(), outputs(DUTY_32A, true, true));
    assert_eq!(rig.evse.next_deadline(), None);
    assert_eq!(rig.board(ev(C).cable(32).locked().closed()), []);
    assert_eq!(rig.status(), ConnectorStatus::Charging);

    // The deadline is gone: a Tick after it does nothing.
    rig.advance(LOCK_TIMEOUT);
    assert_eq!(rig.tick(), []);
    assert_eq!(rig.status(), ConnectorStatus::Charging);
}

#[test]
fn lock_confirmed_in_the_same_status_as_the_session_start_sets_no_deadline() {
    let mut rig = idle(Spec {
        free_vend: true,
        ..socket_ac()
    });
    // A lock that already reads locked (e.g. a fast actuator) is accepted.
    started(rig.board(ev(B).cable(32).locked()));
    assert_eq!(rig.evse.next_deadline(), None);
    assert_eq!(rig.outputs(), outputs(DUTY_32A, false, true));
}

#[test]
fn lock_timeout_ends_the_session_with_lock_failure() {
    let (mut rig, record) = in_session(socket_ac());
    let deadline = rig.evse.next_deadline().expect("lock deadline");

    rig.advance(LOCK_TIMEOUT - Duration::from_millis(1));
    assert_eq!(rig.tick(), []);
    assert!(rig.evse.session().is_some());

    rig.advance_to(deadline);
    let end = ended(rig.tick());
    assert_eq!(end.id, record.id);
    assert_eq!(end.stop_reason, "Other");
    assert_eq!(end.fault, "LockFailure");
    // Lock released, nothing offered.
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, false));
    assert_eq!(rig.evse.session(), None);
    // The lock never moved (its feedback reads unlocked), so there is nothing
    // left to wait for: the fault clears within the same step and the EV is
    // back to waiting for a token.
    // NOTE: this is the current behaviour, and questionable: the Faulted
    // status never outlives this step, so it is never published.
    assert_eq!(rig.evse.fault(), None);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
}

#[test]
fn tethered_cable_needs_no_lock() {
    let (mut rig, _) = in_session(tethered_ac());
    assert_eq!(rig.evse.next_deadline(), None);
    assert_eq!(rig.outputs(), outputs(DUTY_32A, false, false));
    assert_eq!(rig.board(ev(C)), []);
    assert_eq!(rig.outputs(), outputs(DUTY_32A, true, false));
    assert_eq!(rig.board(ev(C).closed()), []);
    assert_eq!(rig.status(), ConnectorStatus::Charging);

    // No lock deadline: a Tick much later does not fault.
    rig.advance(Duration::from_secs(3600));
    assert_eq!(rig.tick(), []);
    assert_eq!(rig.status(), ConnectorStatus::Charging);
}

// ---------------------------------------------------------------------------
// Offered current (AC duty cycle) and charging limits
// ---------------------------------------------------------------------------

#[test]
fn duty_cycle_follows_the_evse_rating() {
    for (max, duty) in [(16.0, 266), (32.0, 533), (63.0, 892), (80.0, 960)] {
        let (rig, _) = in_session(Spec {
            max_current_a: max,
            ..tethered_ac()
        });
        assert_eq!(rig.evse.offered_current(), max);
        assert_eq!(rig.outputs().pwm, PwmOutput::Duty(duty), "{max} A");
    }
}

#[test]
fn cable_rating_caps_the_offer_on_a_socket() {
    let (mut rig, _) = in_session(socket_ac());
    assert_eq!(rig.board(ev(B).cable(20).locked()), []);
    assert_eq!(rig.evse.offered_current(), 20.0);
    assert_eq!(rig.outputs().pwm, PwmOutput::Duty(333));

    // A cable rated above the EVSE does not raise the offer.
    assert_eq!(rig.board(ev(B).cable(63).locked()), []);
    assert_eq!(rig.evse.offered_current(), 32.0);
    assert_eq!(rig.outputs().pwm, DUTY_32A);
}

#[test]
fn cable_rating_is_ignored_on_a_tethered_connector() {
    let (mut rig, _) = in_session(tethered_ac());
    assert_eq!(rig.board(ev(B).cable(13)), []);
    assert_eq!(rig.evse.offered_current(), 32.0);
    assert_eq!(rig.outputs().pwm, DUTY_32A);
}

#[test]
fn limit_in_amps_lowers_the_offer() {
    let (mut rig, _) = charging(tethered_ac());
    assert_eq!(rig.limit(Some(amps(10.0))), []);
    assert_eq!(rig.evse.limit(), Some(amps(10.0)));
    assert_eq!(rig.evse.offered_current(), 10.0);
    assert_eq!(rig.outputs(), outputs(PwmOutput::Duty(166), true, false));
    assert_eq!(rig.status(), ConnectorStatus::Charging);

    // A limit above the rating does not raise the offer.
    rig.limit(Some(amps(100.0)));
    assert_eq!(rig.evse.offered_current(), 32.0);

    rig.limit(None);
    assert_eq!(rig.evse.limit(), None);
    assert_eq!(rig.outputs().pwm, DUTY_32A);
}

#[test]
fn limit_in_watts_is_converted_with_nominal_voltage_and_phases() {
    // Three phases at 230 V: 11040 W is 16 A per phase.
    let (mut rig, _) = charging(tethered_ac());
    rig.limit(Some(watts(11_040.0)));
    assert_eq!(rig.evse.offered_current(), 16.0);
    assert_eq!(rig.outputs().pwm, PwmOutput::Duty(266));

    // One phase at 230 V: 3680 W is 16 A; at three phases it would be 5.3 A.
    let (mut rig, _) = charging(Spec {
        phases: 1,
        ..tethered_ac()
    });
    rig.limit(Some(watts(3680.0)));
    assert_eq!(rig.evse.offered_current(), 16.0);
    assert_eq!(rig.outputs().pwm, PwmOutput::Duty(266));

    // 120 V nominal: 2400 W on one phase is 20 A.
    let (mut rig, _) = charging(Spec {
        phases: 1,
        nominal_voltage_v: 120.0,
        ..tethered_ac()
    });
    rig.limit(Some(watts(2400.0)));
    assert_eq!(rig.evse.offered_current(), 20.0);
    assert_eq!(rig.outputs().pwm, PwmOutput::Duty(333));
}

#[test]
fn cable_and_limit_together_take_the_lowest() {
    let (mut rig, _) = in_session(socket_ac());
    rig.board(ev(C).cable(20).locked());
    rig.limit(Some(amps(25.0)));
    assert_eq!(rig.evse.offered_current(), 20.0);
    rig.limit(Some(amps(13.0)));
    assert_eq!(rig.evse.offered_current(), 13.0);
    assert_eq!(rig.outputs().pwm, PwmOutput::Duty(216));
}

#[test]
fn limit_below_6_amps_suspends_charging() {
    let (mut rig, record) = charging(tethered_ac());
    assert_eq!(rig.limit(Some(amps(5.9))), []);
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, false));
    assert_eq!(rig.status(), ConnectorStatus::SuspendedEvse);
    // Suspended, not ended.
    assert_eq!(rig.evse.session().map(|s| &s.id), Some(&record.id));

    // A W limit below 6 A (1380 W on three phases is 2 A) does the same.
    rig.limit(Some(watts(1380.0)));
    assert_eq!(rig.evse.offered_current(), 2.0);
    assert_eq!(rig.status(), ConnectorStatus::SuspendedEvse);

    // Zero and negative limits offer nothing.
    rig.limit(Some(amps(-5.0)));
    assert_eq!(rig.evse.offered_current(), 0.0);
    assert_eq!(rig.outputs().pwm, PwmOutput::Off);

    // Exactly 6 A is the lowest offer allowed.
    rig.limit(Some(amps(6.0)));
    assert_eq!(rig.outputs(), outputs(PwmOutput::Duty(100), true, false));
    assert_eq!(rig.status(), ConnectorStatus::Charging);
}

#[test]
fn limit_expires_at_its_deadline() {
    let (mut rig, _) = charging(tethered_ac());
    let expires = rig.mono() + Duration::from_secs(900);
    rig.limit(Some(Limit {
        value: 10.0,
        unit: LimitUnit::Amps,
        expires: Some(expires),
    }));
    assert_eq!(rig.outputs().pwm, PwmOutput::Duty(166));
    assert_eq!(rig.evse.next_deadline(), Some(expires));

    rig.advance(Duration::from_secs(899));
    assert_eq!(rig.tick(), []);
    assert_eq!(rig.outputs().pwm, PwmOutput::Duty(166));

    rig.advance_to(expires);
    assert_eq!(rig.tick(), []);
    assert_eq!(rig.evse.limit(), None);
    assert_eq!(rig.outputs().pwm, DUTY_32A);
    assert_eq!(rig.evse.next_deadline(), None);
}

#[test]
fn an_expiring_suspension_resumes_charging() {
    let (mut rig, _) = charging(tethered_ac());
    let expires = rig.mono() + Duration::from_secs(60);
    rig.limit(Some(Limit {
        value: 0.0,
        unit: LimitUnit::Watts,
        expires: Some(expires),
    }));
    assert_eq!(rig.status(), ConnectorStatus::SuspendedEvse);
    assert!(!rig.outputs().contactors);
    assert_eq!(rig.board(ev(C)), [], "contactor feedback opens");
    rig.advance_to(expires);
    rig.tick();
    assert!(rig.outputs().contactors);
    rig.board(ev(C).closed());
    assert_eq!(rig.status(), ConnectorStatus::Charging);
}

#[test]
fn a_limit_set_while_idle_applies_to_the_next_session() {
    let mut rig = plugged(tethered_ac());
    rig.limit(Some(amps(16.0)));
    assert_eq!(rig.outputs().pwm, PwmOutput::Off);
    started(rig.authorize("CARD-1"));
    assert_eq!(rig.outputs().pwm, PwmOutput::Duty(266));
}

// ---------------------------------------------------------------------------
// What the EV does during a session
// ---------------------------------------------------------------------------

#[test]
fn ev_state_drives_contactors_and_status() {
    let (mut rig, _) = in_session(tethered_ac());
    // B with PWM: the EV does not want energy (yet).
    assert_eq!(rig.status(), ConnectorStatus::SuspendedEv);
    assert!(!rig.outputs().contactors);

    rig.board(ev(C));
    assert_eq!(rig.outputs(), outputs(DUTY_32A, true, false));
    // Contactors commanded but their feedback not yet closed: no energy yet.
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    rig.board(ev(C).closed());
    assert_eq!(rig.status(), ConnectorStatus::Charging);

    rig.board(ev(B).closed());
    assert_eq!(rig.status(), ConnectorStatus::SuspendedEv);
    assert_eq!(rig.outputs(), outputs(DUTY_32A, false, false));

    // D (ventilation required) is ready as well.
    rig.board(ev(D));
    assert!(rig.outputs().contactors);
    rig.board(ev(D).closed());
    assert_eq!(rig.status(), ConnectorStatus::Charging);
}

#[test]
fn dc_signals_digital_communication() {
    let (mut rig, _) = in_session(dc());
    assert_eq!(rig.outputs(), outputs(PwmOutput::DIGITAL, false, false));
    assert_eq!(PwmOutput::DIGITAL, PwmOutput::Duty(50));
    assert_eq!(rig.status(), ConnectorStatus::SuspendedEv);

    rig.board(ev(C));
    assert_eq!(rig.outputs(), outputs(PwmOutput::DIGITAL, true, false));
    rig.board(ev(C).closed());
    assert_eq!(rig.status(), ConnectorStatus::Charging);

    // The limit goes to the power modules, not into the pilot.
    rig.limit(Some(amps(50.0)));
    assert_eq!(rig.outputs().pwm, PwmOutput::DIGITAL);
    assert_eq!(rig.evse.offered_current(), 50.0);
}

#[test]
fn dc_socket_waits_for_the_lock_too() {
    let (mut rig, _) = in_session(Spec {
        socket: true,
        ..dc()
    });
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, true));
    rig.board(ev(C).locked());
    assert_eq!(rig.outputs(), outputs(PwmOutput::DIGITAL, true, true));
}

// ---------------------------------------------------------------------------
// Stopping
// ---------------------------------------------------------------------------

#[test]
fn the_same_token_stops_its_session_locally() {
    let (mut rig, record) = charging(socket_ac());
    rig.advance(Duration::from_secs(60));
    let end = ended(rig.token("card-1"));
    assert_eq!(end.id, record.id);
    assert_eq!(end.token, "CARD-1");
    assert_eq!(end.stop_reason, "Local");
    assert_eq!(end.fault, "");
    assert_eq!(end.ended_ms, rig.wall_ms());
    assert_eq!(end.start_meter_wh, 1000.0);
    assert_eq!(end.stop_meter_wh, 4000.0);
    assert_eq!(end.energy_wh(), 3000.0);

    // EV still plugged in: finishing, nothing offered, lock released.
    assert_eq!(rig.status(), ConnectorStatus::Finishing);
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, false));
    assert_eq!(rig.evse.session(), None);

    rig.board(ev(B).cable(32).locked().closed());
    assert_eq!(rig.status(), ConnectorStatus::Finishing);
    assert_eq!(rig.board(ev(A)), []);
    assert_eq!(rig.status(), ConnectorStatus::Available);
}

#[test]
fn stop_with_a_reason_ends_the_session() {
    let (mut rig, record) = charging(tethered_ac());
    let end = ended(rig.step(Input::Stop(StopReason::Remote)));
    assert_eq!(end.id, record.id);
    assert_eq!(end.stop_reason, "Remote");
    assert_eq!(end.fault, "");
    assert_eq!(rig.status(), ConnectorStatus::Finishing);
    assert!(!rig.outputs().contactors);

    // Nothing left to stop.
    assert!(matches!(
        rig.refused(Input::Stop(StopReason::Remote)),
        Refusal::NotPermitted(_)
    ));
}

#[test]
fn stop_without_a_session_is_not_permitted() {
    let mut rig = idle(tethered_ac());
    assert!(matches!(
        rig.refused(Input::Stop(StopReason::Local)),
        Refusal::NotPermitted(_)
    ));
    rig.board(ev(B));
    assert!(matches!(
        rig.refused(Input::Stop(StopReason::Remote)),
        Refusal::NotPermitted(_)
    ));
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
}

#[test]
fn a_new_token_after_finishing_starts_a_new_session() {
    let (mut rig, first) = charging(tethered_ac());
    ended(rig.token("CARD-1"));
    assert_eq!(rig.status(), ConnectorStatus::Finishing);
    assert_eq!(rig.board(ev(C)), [], "contactor feedback opens");

    rig.advance(Duration::from_secs(5));
    let second = started(rig.authorize("CARD-2"));
    assert_ne!(second.id, first.id);
    assert_eq!(second.token, "CARD-2");
    assert_eq!(second.start_meter_wh, 4000.0);
    assert!(rig.outputs().contactors);
    rig.board(ev(C).closed());
    assert_eq!(rig.status(), ConnectorStatus::Charging);
}

// ---------------------------------------------------------------------------
// Remote start
// ---------------------------------------------------------------------------

#[test]
fn remote_start_on_an_idle_evse_authorizes_until_plug_in() {
    let mut rig = idle(tethered_ac());
    assert_eq!(rig.step(Input::RemoteStart("REMOTE-1".into())), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    assert_eq!(
        rig.evse.next_deadline(),
        Some(rig.mono() + Duration::from_secs(60))
    );
    let record = started(rig.board(ev(B)));
    assert_eq!(record.token, "REMOTE-1");
}

#[test]
fn remote_start_with_an_ev_plugged_in_starts_the_session() {
    let mut rig = plugged(tethered_ac());
    let record = started(rig.step(Input::RemoteStart("REMOTE-1".into())));
    assert_eq!(record.token, "REMOTE-1");
    assert_eq!(rig.status(), ConnectorStatus::SuspendedEv);
}

#[test]
fn remote_start_is_refused_when_faulted_busy_or_unavailable() {
    let mut rig = idle(tethered_ac());
    rig.board(ev(A).rcd());
    let refusal = rig.refused(Input::RemoteStart("REMOTE-1".into()));
    assert!(
        matches!(&refusal, Refusal::NotPermitted(m) if m.contains("RcdTripped")),
        "{refusal:?}"
    );

    let (mut rig, record) = charging(tethered_ac());
    assert!(matches!(
        rig.refused(Input::RemoteStart("REMOTE-1".into())),
        Refusal::Busy(_)
    ));
    assert_eq!(rig.evse.session().map(|s| &s.id), Some(&record.id));

    let mut rig = plugged(tethered_ac());
    rig.step(Input::SetAvailable(false));
    assert!(matches!(
        rig.refused(Input::RemoteStart("REMOTE-1".into())),
        Refusal::NotPermitted(_)
    ));
    assert_eq!(rig.evse.session(), None);

    // Before the board has told whether a recovered session goes on.
    let mut rig = Rig::restarted(tethered_ac(), Some(persisted_session()));
    assert!(matches!(
        rig.refused(Input::RemoteStart("REMOTE-1".into())),
        Refusal::Busy(_)
    ));
}

// ---------------------------------------------------------------------------
// Availability (OCPP ChangeAvailability)
// ---------------------------------------------------------------------------

#[test]
fn unavailable_when_idle() {
    let mut rig = idle(Spec {
        free_vend: true,
        ..tethered_ac()
    });
    assert_eq!(rig.step(Input::SetAvailable(false)), []);
    assert_eq!(rig.status(), ConnectorStatus::Unavailable);

    // Tokens are not even asked about, and a plug-in starts nothing.
    assert_eq!(rig.token("CARD-1"), []);
    assert_eq!(rig.board(ev(B)), []);
    assert_eq!(rig.status(), ConnectorStatus::Unavailable);
    assert_eq!(rig.evse.session(), None);
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, false));

    rig.board(ev(A));
    assert_eq!(rig.step(Input::SetAvailable(true)), []);
    assert_eq!(rig.status(), ConnectorStatus::Available);
}

#[test]
fn an_ev_plugged_in_while_unavailable_is_noticed_when_available_again() {
    let mut rig = idle(tethered_ac());
    rig.step(Input::SetAvailable(false));
    rig.board(ev(B));
    assert_eq!(rig.status(), ConnectorStatus::Unavailable);

    // No new board status comes (the EV has not moved), yet it is there.
    assert_eq!(rig.step(Input::SetAvailable(true)), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    assert_eq!(rig.token("CARD-1"), [Effect::Authorize("CARD-1".into())]);
    started(rig.auth("CARD-1", true));
}

#[test]
fn free_vend_starts_when_made_available_with_an_ev_plugged_in() {
    let mut rig = idle(Spec {
        free_vend: true,
        ..tethered_ac()
    });
    rig.step(Input::SetAvailable(false));
    assert_eq!(rig.board(ev(B)), []);
    let record = started(rig.step(Input::SetAvailable(true)));
    assert_eq!(record.token, "FreeVend");
}

#[test]
fn unavailable_is_deferred_while_a_session_runs() {
    let (mut rig, record) = charging(tethered_ac());
    assert_eq!(rig.step(Input::SetAvailable(false)), []);
    assert_eq!(rig.status(), ConnectorStatus::Charging);
    assert!(rig.outputs().contactors);
    assert_eq!(rig.evse.session().map(|s| &s.id), Some(&record.id));

    ended(rig.step(Input::Stop(StopReason::Local)));
    assert_eq!(rig.status(), ConnectorStatus::Finishing);
    // Finishing while inoperative: a token does not start another session.
    assert_eq!(rig.token("CARD-2"), []);

    rig.board(ev(A));
    assert_eq!(rig.status(), ConnectorStatus::Unavailable);
}

// ---------------------------------------------------------------------------
// Unplug during a session, meter readings
// ---------------------------------------------------------------------------

#[test]
fn unplug_during_a_session_ends_it_with_the_meter_readings() {
    let mut rig = idle(tethered_ac());
    rig.measure(10_000.0);
    rig.board(ev(B));
    let record = started(rig.authorize("CARD-1"));
    assert_eq!(record.start_meter_wh, 10_000.0);
    rig.board(ev(C).closed());

    rig.advance(Duration::from_secs(1800));
    assert_eq!(rig.measure(15_500.0), []);
    // The live record follows the meter.
    let live = rig.evse.session().expect("active");
    assert_eq!(live.stop_meter_wh, 15_500.0);
    assert_eq!(live.energy_wh(), 5500.0);
    assert_eq!(rig.evse.measurement(), Some(meter(15_500.0)));

    rig.advance(Duration::from_secs(1800));
    rig.measure(21_000.0);
    rig.advance(Duration::from_secs(1));
    let end = ended(rig.board(ev(A)));
    assert_eq!(end.id, record.id);
    assert_eq!(end.stop_reason, "EVDisconnected");
    assert_eq!(end.fault, "");
    assert_eq!(end.started_ms, record.started_ms);
    assert_eq!(end.ended_ms, rig.wall_ms());
    assert_eq!(end.start_meter_wh, 10_000.0);
    assert_eq!(end.stop_meter_wh, 21_000.0);
    assert_eq!(end.energy_wh(), 11_000.0);

    assert_eq!(rig.status(), ConnectorStatus::Available);
    assert_eq!(rig.evse.session(), None);
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, false));
}

#[test]
fn a_session_without_a_meter_counts_zero_energy() {
    let (mut rig, record) = in_session(tethered_ac());
    assert_eq!(record.start_meter_wh, 0.0);
    let end = ended(rig.board(ev(A)));
    assert_eq!(end.energy_wh(), 0.0);
    // Ended in the same millisecond it started: still after the start.
    assert_eq!(end.ended_ms, record.started_ms + 1);
}

#[test]
fn the_meters_persisted_start_reading_replaces_the_live_one() {
    let mut rig = idle(tethered_ac());
    rig.measure(10_000.0);
    rig.board(ev(B));
    let record = started(rig.authorize("CARD-1"));
    assert_eq!(record.start_meter_wh, 10_000.0);
    // Meter1 took a fresh reading a moment later.
    let effects = rig.step(Input::MeterStarted {
        session: record.id.clone(),
        energy_wh: 10_002.5,
    });
    let [Effect::SessionUpdated(updated)] = effects.as_slice() else {
        panic!("expected SessionUpdated, got {effects:?}");
    };
    assert_eq!(updated.id, record.id);
    assert_eq!(updated.start_meter_wh, 10_002.5);
    // The live stop reading never sits below the start.
    assert_eq!(updated.stop_meter_wh, 10_002.5);
    rig.measure(10_500.0);
    assert_eq!(
        rig.evse.session().map(SessionRecord::energy_wh),
        Some(497.5)
    );
    // A start for a session that is not the active one changes nothing.
    let other = rig.step(Input::MeterStarted {
        session: "1-0".into(),
        energy_wh: 0.0,
    });
    assert_eq!(other, []);
    assert_eq!(ended(rig.board(ev(A))).start_meter_wh, 10_002.5);
}

#[test]
fn a_meter_that_went_backwards_gives_no_negative_energy() {
    let (mut rig, _) = charging(tethered_ac());
    rig.measure(500.0); // e.g. a replaced meter
    let end = ended(rig.board(ev(A)));
    assert_eq!(end.start_meter_wh, 1000.0);
    assert_eq!(end.stop_meter_wh, 1000.0);
    assert_eq!(end.energy_wh(), 0.0);
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

#[test]
fn rcd_trip_ends_the_session_and_recovers_when_reset() {
    let (mut rig, record) = charging(socket_ac());
    let effects = rig.board(ev(C).cable(32).locked().closed().rcd());
    let end = assert_fault_ended_session(&rig, effects, Fault::RcdTripped);
    assert_eq!(end.id, record.id);
    assert_eq!(end.stop_meter_wh, 4000.0);
    assert_eq!(end.energy_wh(), 3000.0);
    assert!(
        !rig.outputs().lock,
        "the lock is released on a fault other than a weld"
    );

    // Still tripped: nothing changes, no second SessionEnded.
    rig.advance(Duration::from_millis(100));
    assert_eq!(rig.board(ev(B).cable(32).locked().rcd()), []);
    assert_faulted(&rig, Fault::RcdTripped);
    assert_eq!(rig.token("CARD-1"), []);

    // Reset with the EV still plugged in: it waits for a new authorization.
    assert_eq!(rig.board(ev(B).cable(32)), []);
    assert_eq!(rig.evse.fault(), None);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    assert_eq!(rig.evse.session(), None);
    assert_eq!(rig.outputs().pwm, PwmOutput::Off);
}

#[test]
fn fault_recovers_to_available_without_an_ev() {
    let (mut rig, _) = charging(tethered_ac());
    let effects = rig.board(ev(A).rcd());
    assert_fault_ended_session(&rig, effects, Fault::RcdTripped);
    assert_eq!(rig.board(ev(A)), []);
    assert_eq!(rig.status(), ConnectorStatus::Available);
}

#[test]
fn diode_fault_ends_the_session() {
    let (mut rig, _) = charging(tethered_ac());
    let effects = rig.board(ev(C).closed().diode());
    assert_fault_ended_session(&rig, effects, Fault::DiodeFault);

    assert_eq!(rig.board(ev(B)), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
}

#[test]
fn cp_state_e_is_a_fault_not_an_unplug() {
    let (mut rig, record) = charging(tethered_ac());
    let effects = rig.board(ev(E).closed());
    let end = assert_fault_ended_session(&rig, effects, Fault::CpError);
    assert_eq!(end.id, record.id);

    assert_eq!(rig.board(ev(B)), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
}

#[test]
fn cp_state_f_is_board_unavailable() {
    let (mut rig, _) = charging(tethered_ac());
    let effects = rig.board(ev(F));
    assert_fault_ended_session(&rig, effects, Fault::BoardUnavailable);

    assert_eq!(rig.board(ev(A)), []);
    assert_eq!(rig.status(), ConnectorStatus::Available);
}

#[test]
fn lock_feedback_fault_ends_the_session() {
    let (mut rig, _) = charging(socket_ac());
    let effects = rig.board(ev(C).cable(32).closed().lock(LockState::Fault));
    assert_fault_ended_session(&rig, effects, Fault::LockFailure);
    assert!(!rig.outputs().lock);

    // Reads locked again while commanded open: still faulted.
    assert_eq!(rig.board(ev(B).cable(32).locked()), []);
    assert_faulted(&rig, Fault::LockFailure);

    assert_eq!(rig.board(ev(B).cable(32)), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
}

#[test]
fn link_loss_ends_the_session_and_recovers_on_the_next_status() {
    let (mut rig, _) = charging(tethered_ac());
    let effects = rig.step(Input::LinkDown);
    let end = assert_fault_ended_session(&rig, effects, Fault::LinkLost);
    assert_eq!(end.fault, "McuLinkLost");
    assert_eq!(rig.evse.cp_state(), None);
    // The EV's state is unknown: the session ended as if it left.
    assert_eq!(end.stop_meter_wh, 4000.0);

    // Repeated link-down reports change nothing.
    assert_eq!(rig.step(Input::LinkDown), []);
    assert_faulted(&rig, Fault::LinkLost);
    // No board status yet: a Tick does not clear the fault.
    assert_eq!(rig.tick(), []);
    assert_faulted(&rig, Fault::LinkLost);

    assert_eq!(rig.board(ev(C)), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    assert!(!rig.outputs().contactors);
}

#[test]
fn link_loss_replaces_another_fault() {
    let mut rig = idle(tethered_ac());
    rig.board(ev(A).diode());
    assert_faulted(&rig, Fault::DiodeFault);
    assert_eq!(rig.step(Input::LinkDown), []);
    assert_faulted(&rig, Fault::LinkLost);
}

#[test]
fn welded_contactor_is_detected_after_the_grace_period() {
    let (mut rig, record) = charging(socket_ac());
    // The EV stops asking; the contactors are commanded open...
    assert_eq!(rig.board(ev(B).cable(32).locked().closed()), []);
    assert!(!rig.outputs().contactors);
    assert_eq!(rig.status(), ConnectorStatus::SuspendedEv);
    let deadline = rig.evse.next_deadline().expect("weld check");
    assert_eq!(deadline, rig.mono() + WELD_GRACE);

    // ...but the feedback still reads closed. Within the grace period: fine.
    rig.advance(WELD_GRACE - Duration::from_millis(1));
    assert_eq!(rig.board(ev(B).cable(32).locked().closed()), []);
    assert_eq!(rig.tick(), []);
    assert_eq!(rig.status(), ConnectorStatus::SuspendedEv);

    rig.advance_to(deadline);
    let effects = rig.tick();
    let end = assert_fault_ended_session(&rig, effects, Fault::ContactorWelded);
    assert_eq!(end.id, record.id);
    // The plug must not be released while it may be live.
    assert!(rig.outputs().lock);
    assert_eq!(
        rig.evse.next_deadline(),
        None,
        "no more deadlines once detected"
    );

    // Still closed: no repeat.
    rig.advance(Duration::from_secs(1));
    assert_eq!(rig.board(ev(B).cable(32).locked().closed()), []);
    assert_faulted(&rig, Fault::ContactorWelded);

    // Feedback finally open: fault clears, lock released.
    assert_eq!(rig.board(ev(B).cable(32).locked()), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    assert!(!rig.outputs().lock);
}

#[test]
fn contactor_opening_within_the_grace_period_is_no_weld() {
    let (mut rig, _) = charging(tethered_ac());
    rig.board(ev(B).closed());
    rig.advance(Duration::from_millis(100));
    assert_eq!(rig.board(ev(B)), []);
    assert_eq!(rig.evse.next_deadline(), None);
    rig.advance(Duration::from_secs(1));
    assert_eq!(rig.tick(), []);
    assert_eq!(rig.status(), ConnectorStatus::SuspendedEv);
}

#[test]
fn weld_is_timed_from_the_open_command_not_from_the_feedback() {
    let (mut rig, _) = charging(tethered_ac());
    // Session stopped: contactors commanded open now.
    ended(rig.step(Input::Stop(StopReason::Remote)));
    let commanded_open = rig.mono();
    rig.advance(WELD_GRACE / 2);
    // A status halfway through the grace period still reads closed.
    assert_eq!(rig.board(ev(C).closed()), []);
    assert_eq!(rig.evse.next_deadline(), Some(commanded_open + WELD_GRACE));
    rig.advance_to(commanded_open + WELD_GRACE);
    assert_eq!(rig.tick(), []);
    assert_faulted(&rig, Fault::ContactorWelded);
}

#[test]
fn contactor_closed_while_idle_is_a_weld() {
    let mut rig = Rig::new(tethered_ac());
    assert_eq!(rig.board(ev(A).closed()), []);
    assert_eq!(rig.status(), ConnectorStatus::Available);
    let deadline = rig.evse.next_deadline().expect("weld check");
    assert_eq!(deadline, rig.mono() + WELD_GRACE);
    rig.advance_to(deadline);
    assert_eq!(rig.tick(), [], "no session to end");
    assert_faulted(&rig, Fault::ContactorWelded);
    // Tethered: no lock to hold.
    assert!(!rig.outputs().lock);
}

#[test]
fn rcd_takes_precedence_over_a_weld() {
    let (mut rig, _) = charging(tethered_ac());
    let effects = rig.board(ev(C).closed().rcd());
    assert_fault_ended_session(&rig, effects, Fault::RcdTripped);
    rig.advance(Duration::from_secs(1));
    rig.board(ev(C).closed().rcd());
    assert_faulted(&rig, Fault::RcdTripped);
    // A Tick could not tell more while the RCD masks the weld: no deadline
    // (a past one would have the service spin on Ticks).
    assert_eq!(rig.evse.next_deadline(), None);
    // The RCD is reset but the contactors still read closed: welded.
    rig.board(ev(C).closed());
    assert_faulted(&rig, Fault::ContactorWelded);
}

#[test]
fn fault_while_idle_or_authorized_has_no_session_to_end() {
    let mut rig = idle(tethered_ac());
    rig.authorize("CARD-1");
    assert_eq!(rig.board(ev(A).rcd()), []);
    assert_faulted(&rig, Fault::RcdTripped);
    assert_eq!(rig.evse.next_deadline(), None);

    // The authorization did not survive the fault.
    rig.board(ev(A));
    assert_eq!(rig.status(), ConnectorStatus::Available);
    assert_eq!(rig.board(ev(B)), []);
    assert_eq!(rig.evse.session(), None);
}

#[test]
fn fault_drops_a_pending_authorization() {
    let mut rig = plugged(tethered_ac());
    assert_eq!(rig.token("CARD-1"), [Effect::Authorize("CARD-1".into())]);
    rig.board(ev(B).diode());
    rig.board(ev(B));
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    // The answer to a request from before the fault starts nothing.
    assert_eq!(rig.auth("CARD-1", true), []);
    assert_eq!(rig.evse.session(), None);
}

#[test]
fn every_fault_has_its_name() {
    let names = [
        (Fault::RcdTripped, "RcdTripped"),
        (Fault::ContactorWelded, "ContactorWelded"),
        (Fault::LockFailure, "LockFailure"),
        (Fault::DiodeFault, "DiodeFault"),
        (Fault::CpError, "CpError"),
        (Fault::BoardUnavailable, "BoardUnavailable"),
        (Fault::LinkLost, "McuLinkLost"),
    ];
    for (fault, name) in names {
        assert_eq!(fault.as_str(), name);
    }
}

// ---------------------------------------------------------------------------
// Recovery after a restart
// ---------------------------------------------------------------------------

#[test]
fn restart_with_the_ev_still_connected_resumes_the_session() {
    let active = persisted_session();
    let mut rig = Rig::restarted(socket_ac(), Some(active.clone()));
    // Until the board speaks: keep the plug locked, offer nothing.
    assert_eq!(rig.status(), ConnectorStatus::Charging);
    assert_eq!(rig.evse.session(), Some(&active));
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, true));

    rig.advance(Duration::from_millis(50));
    assert_eq!(
        rig.board(ev(C).cable(32).locked()),
        [],
        "no new SessionStarted"
    );
    assert_eq!(rig.evse.session().map(|s| &s.id), Some(&active.id));
    assert_eq!(rig.outputs(), outputs(DUTY_32A, true, true));
    assert_eq!(rig.board(ev(C).cable(32).locked().closed()), []);
    assert_eq!(rig.status(), ConnectorStatus::Charging);
    assert_eq!(rig.evse.session().map(|s| &s.id), Some(&active.id));

    rig.measure(1500.0);
    let end = ended(rig.board(ev(A)));
    assert_eq!(end.id, active.id);
    assert_eq!(end.started_ms, active.started_ms);
    assert_eq!(end.start_meter_wh, 500.0);
    assert_eq!(end.stop_meter_wh, 1500.0);
    assert_eq!(end.stop_reason, "EVDisconnected");
}

#[test]
fn restart_resumes_and_waits_for_the_lock() {
    let active = persisted_session();
    let mut rig = Rig::restarted(socket_ac(), Some(active.clone()));
    assert_eq!(rig.board(ev(C).cable(32)), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, true));
    assert_eq!(rig.evse.next_deadline(), Some(rig.mono() + LOCK_TIMEOUT));

    rig.advance(Duration::from_millis(200));
    assert_eq!(rig.board(ev(C).cable(32).locked()), []);
    assert_eq!(rig.evse.next_deadline(), None);
    assert!(rig.outputs().contactors);
    assert_eq!(rig.board(ev(C).cable(32).locked().closed()), []);
    assert_eq!(rig.status(), ConnectorStatus::Charging);
    assert_eq!(rig.evse.session().map(|s| &s.id), Some(&active.id));
}

#[test]
fn restart_resumes_on_a_tethered_connector_without_a_lock() {
    let active = persisted_session();
    let mut rig = Rig::restarted(tethered_ac(), Some(active.clone()));
    assert!(!rig.outputs().lock);
    assert_eq!(rig.board(ev(C)), []);
    assert!(rig.outputs().contactors);
    assert_eq!(rig.evse.next_deadline(), None);
    assert_eq!(rig.board(ev(C).closed()), []);
    assert_eq!(rig.status(), ConnectorStatus::Charging);
}

#[test]
fn restart_with_the_ev_gone_ends_the_session() {
    let active = persisted_session();
    let mut rig = Rig::restarted(socket_ac(), Some(active.clone()));
    rig.measure(950.0);
    rig.advance(Duration::from_millis(50));
    let end = ended(rig.board(ev(A)));
    assert_eq!(end.id, active.id);
    assert_eq!(end.token, "CARD-1");
    assert_eq!(end.stop_reason, "EVDisconnected");
    assert_eq!(end.fault, "");
    assert_eq!(end.ended_ms, rig.wall_ms());
    assert_eq!(end.stop_meter_wh, 950.0);
    assert_eq!(end.energy_wh(), 450.0);
    assert_eq!(rig.status(), ConnectorStatus::Available);
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, false));
}

#[test]
fn restart_into_a_fault_ends_the_session_with_it() {
    let active = persisted_session();
    let mut rig = Rig::restarted(socket_ac(), Some(active.clone()));
    let effects = rig.board(ev(C).cable(32).locked().rcd());
    let end = assert_fault_ended_session(&rig, effects, Fault::RcdTripped);
    assert_eq!(end.id, active.id);
    // No meter reading yet: the persisted one stands.
    assert_eq!(end.stop_meter_wh, 900.0);
}

#[test]
fn restart_with_cp_error_ends_the_session_with_the_fault() {
    let active = persisted_session();
    let mut rig = Rig::restarted(tethered_ac(), Some(active.clone()));
    let effects = rig.board(ev(E));
    let end = assert_fault_ended_session(&rig, effects, Fault::CpError);
    assert_eq!(end.id, active.id);
}

#[test]
fn restart_with_the_link_down_ends_the_session_with_link_lost() {
    let active = persisted_session();
    let mut rig = Rig::restarted(tethered_ac(), Some(active.clone()));
    let effects = rig.step(Input::LinkDown);
    let end = assert_fault_ended_session(&rig, effects, Fault::LinkLost);
    assert_eq!(end.id, active.id);
}

// ---------------------------------------------------------------------------
// Deadlines
// ---------------------------------------------------------------------------

#[test]
fn next_deadline_is_the_earliest_pending_timer() {
    let mut rig = idle(socket_ac());
    assert_eq!(rig.evse.next_deadline(), None);

    // Connection timeout vs a later limit expiry.
    rig.authorize("CARD-1");
    let connection = rig.mono() + Duration::from_secs(60);
    let expiry = rig.mono() + Duration::from_secs(90);
    rig.limit(Some(Limit {
        value: 16.0,
        unit: LimitUnit::Amps,
        expires: Some(expiry),
    }));
    assert_eq!(rig.evse.next_deadline(), Some(connection));

    // Plug-in: the lock deadline replaces the connection timeout.
    rig.advance(Duration::from_secs(1));
    started(rig.board(ev(B).cable(32)));
    let lock = rig.mono() + LOCK_TIMEOUT;
    assert_eq!(rig.evse.next_deadline(), Some(lock));

    // Lock confirmed: the limit expiry is what is left.
    rig.board(ev(B).cable(32).locked());
    assert_eq!(rig.evse.next_deadline(), Some(expiry));

    // An earlier limit expiry wins over the weld check and vice versa.
    rig.board(ev(C).cable(32).locked());
    rig.board(ev(C).cable(32).locked().closed());
    rig.board(ev(B).cable(32).locked().closed());
    assert_eq!(rig.evse.next_deadline(), Some(rig.mono() + WELD_GRACE));
    let soon = rig.mono() + Duration::from_millis(100);
    rig.limit(Some(Limit {
        value: 16.0,
        unit: LimitUnit::Amps,
        expires: Some(soon),
    }));
    assert_eq!(rig.evse.next_deadline(), Some(soon));
}

#[test]
fn stop_reasons_parse_case_insensitively() {
    assert_eq!(
        StopReason::parse("evdisconnected"),
        Some(StopReason::EvDisconnected)
    );
    assert_eq!(StopReason::parse("Remote"), Some(StopReason::Remote));
    assert_eq!(StopReason::parse("LOCAL"), Some(StopReason::Local));
    assert_eq!(StopReason::parse("Unknown"), None);
    assert_eq!(StopReason::EvDisconnected.as_str(), "EVDisconnected");
}

#[test]
fn a_fault_at_plug_in_starts_no_session() {
    let mut rig = idle(tethered_ac());
    rig.authorize("CARD-1");
    assert_eq!(
        rig.board(ev(B).diode()),
        [],
        "no SessionStarted + SessionEnded"
    );
    assert_faulted(&rig, Fault::DiodeFault);

    let mut rig = idle(Spec {
        free_vend: true,
        ..tethered_ac()
    });
    assert_eq!(rig.board(ev(B).rcd()), []);
    assert_faulted(&rig, Fault::RcdTripped);
    // Cleared with the EV plugged in: it waits, even on free vend.
    assert_eq!(rig.board(ev(B)), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    assert_eq!(rig.evse.session(), None);
}

// ---------------------------------------------------------------------------
// DC output
// ---------------------------------------------------------------------------

fn dc_demand(voltage_v: f64, current_a: f64) -> Input {
    Input::DcDemand {
        voltage_v,
        current_a,
    }
}

#[test]
fn dc_power_is_asked_for_only_while_contactors_may_close() {
    let mut rig = idle(dc());
    rig.board(ev(B));
    rig.step(dc_demand(400.0, 125.0));
    started(rig.authorize("CARD-1"));
    assert_eq!(rig.outputs().dc, None, "EV not ready (B): no power");
    rig.board(ev(C));
    assert!(rig.outputs().contactors);
    assert_eq!(
        rig.outputs().dc,
        Some(DcTarget {
            voltage_v: 400.0,
            current_a: 125.0
        })
    );
    // The EV asks for more than the EVSE's rating (200 A).
    rig.step(dc_demand(410.0, 350.0));
    assert_eq!(rig.outputs().dc.map(|d| d.current_a), Some(200.0));
    // A charging limit in W applies at the EV's voltage.
    rig.limit(Some(watts(41_000.0)));
    assert_eq!(rig.outputs().dc.map(|d| d.current_a), Some(100.0));
    rig.limit(Some(amps(80.0)));
    assert_eq!(rig.outputs().dc.map(|d| d.current_a), Some(80.0));
    // The EV stops asking (B): power off with the contactors.
    rig.board(ev(B));
    assert_eq!(rig.outputs().dc, None);
}

#[test]
fn an_ac_evse_never_asks_for_dc_power() {
    let (mut rig, _) = charging(tethered_ac());
    rig.step(dc_demand(400.0, 100.0));
    assert_eq!(rig.outputs().dc, None);
}

#[test]
fn a_power_fault_ends_the_dc_session_and_leaves_the_evse_usable() {
    let mut rig = idle(dc());
    rig.board(ev(B));
    rig.step(dc_demand(400.0, 125.0));
    let record = started(rig.authorize("CARD-1"));
    rig.board(ev(C).closed());
    assert_eq!(rig.status(), ConnectorStatus::Charging);
    let end = ended(rig.step(Input::PowerFault("no module can deliver".into())));
    assert_eq!(end.id, record.id);
    assert_eq!(end.stop_reason, "Other");
    assert_eq!(end.fault, "PowerModuleFault");
    assert_eq!(rig.outputs().dc, None);
    assert!(!rig.outputs().contactors);
    assert_ne!(rig.status(), ConnectorStatus::Faulted);
    // Outside a session a power fault changes nothing.
    assert_eq!(rig.step(Input::PowerFault("again".into())), []);
    assert!(matches!(
        rig.try_step(dc_demand(f64::NAN, 1.0)),
        Err(Refusal::NotPermitted(_))
    ));
}

#[test]
fn every_ocpp_stop_reason_parses() {
    for reason in [
        "DeAuthorized",
        "EmergencyStop",
        "EVDisconnected",
        "HardReset",
        "Local",
        "Other",
        "PowerLoss",
        "Reboot",
        "Remote",
        "SoftReset",
        "UnlockCommand",
    ] {
        let parsed = StopReason::parse(reason).unwrap_or_else(|| panic!("{reason}"));
        assert_eq!(parsed.as_str(), reason);
    }
    assert_eq!(StopReason::parse(""), None);
    assert_eq!(StopReason::parse("Unplugged"), None);
}

// ---------------------------------------------------------------------------
// Stop by parent id (OCPP 1.6 §3.5, TC_069)
// ---------------------------------------------------------------------------

/// A session started by "CARD-1", whose parent id is "FLEET"; EV in C,
/// energy flowing.
fn charging_with_parent(spec: Spec) -> (Rig, SessionRecord) {
    let mut rig = plugged(spec);
    assert_eq!(rig.token("CARD-1"), [Effect::Authorize("CARD-1".into())]);
    let (effects, decision) = rig.decide("CARD-1", AuthStatus::Accepted, "FLEET");
    assert_eq!(decision, Some(Ok(AuthStatus::Accepted)));
    let record = started(effects);
    assert_eq!(rig.evse.session_parent(), "FLEET");
    rig.board(ev(C).cable(32).locked().closed());
    (rig, record)
}

#[test]
fn a_token_with_the_sessions_parent_id_stops_it() {
    let (mut rig, record) = charging_with_parent(tethered_ac());
    // Its parent is unknown until the authorizer tells.
    assert_eq!(rig.token("CARD-2"), [Effect::Authorize("CARD-2".into())]);
    assert_eq!(rig.status(), ConnectorStatus::Charging);

    let (effects, decision) = rig.decide("CARD-2", AuthStatus::Accepted, "fleet");
    assert_eq!(decision, Some(Ok(AuthStatus::Accepted)));
    let end = ended(effects);
    assert_eq!(end.id, record.id);
    assert_eq!(end.token, "CARD-1");
    assert_eq!(end.stop_token, "CARD-2", "who stopped it is on record");
    assert_eq!(end.stop_reason, "Local");
    assert_eq!(rig.evse.session_parent(), "", "forgotten with the session");
    assert_eq!(rig.status(), ConnectorStatus::Finishing);
}

#[test]
fn a_token_with_another_or_no_parent_does_not_stop_the_session() {
    let (mut rig, _) = charging_with_parent(tethered_ac());
    for (token, status, parent) in [
        ("CARD-2", AuthStatus::Accepted, "OTHER"),
        ("CARD-3", AuthStatus::Accepted, ""),
        ("CARD-4", AuthStatus::Blocked, "FLEET"),
    ] {
        assert_eq!(rig.token(token), [Effect::Authorize(token.into())]);
        let (effects, decision) = rig.decide(token, status, parent);
        assert_eq!(effects, [], "{token}");
        assert!(
            matches!(decision, Some(Err(Refusal::NotPermitted(_)))),
            "{token}: {decision:?}"
        );
        assert_eq!(rig.status(), ConnectorStatus::Charging);
    }
}

#[test]
fn the_same_token_stops_and_is_recorded_as_presented() {
    let (mut rig, _) = charging_with_parent(tethered_ac());
    let end = ended(rig.token("card-1"));
    assert_eq!(end.stop_token, "card-1");
}

#[test]
fn a_stop_over_the_bus_records_no_stop_token() {
    let (mut rig, _) = charging_with_parent(tethered_ac());
    let end = ended(rig.step(Input::Stop(StopReason::Remote)));
    assert_eq!(end.stop_reason, "Remote");
    assert_eq!(end.stop_token, "");
}

#[test]
fn a_parent_answer_after_the_session_ended_stops_nothing() {
    let (mut rig, _) = charging_with_parent(tethered_ac());
    rig.token("CARD-2");
    ended(rig.board(ev(A)));
    let (effects, decision) = rig.decide("CARD-2", AuthStatus::Accepted, "FLEET");
    assert_eq!(effects, []);
    assert!(matches!(decision, Some(Err(Refusal::NotPermitted(_)))));
    assert_eq!(rig.status(), ConnectorStatus::Available);
}

#[test]
fn the_sessions_parent_id_survives_a_restart() {
    let mut rig = Rig::restored(
        tethered_ac(),
        Restored {
            session: Some(persisted_session()),
            parent: "FLEET".into(),
            reservation: None,
        },
    );
    rig.board(ev(C));
    assert_eq!(rig.evse.session_parent(), "FLEET");
    assert_eq!(rig.token("CARD-2"), [Effect::Authorize("CARD-2".into())]);
    let (effects, _) = rig.decide("CARD-2", AuthStatus::ConcurrentTx, "FLEET");
    assert_eq!(ended(effects).stop_token, "CARD-2");
}

#[test]
fn only_accepted_starts_a_session() {
    for status in [
        AuthStatus::Blocked,
        AuthStatus::Expired,
        AuthStatus::Invalid,
        AuthStatus::ConcurrentTx,
    ] {
        let mut rig = plugged(tethered_ac());
        rig.token("CARD-1");
        let (effects, decision) = rig.decide("CARD-1", status, "FLEET");
        assert_eq!(effects, [], "{status:?}");
        assert_eq!(
            decision,
            Some(Ok(status)),
            "reported as the authorizer said"
        );
        assert_eq!(rig.evse.session(), None);
    }
}

// ---------------------------------------------------------------------------
// Reservations (OCPP 1.6 §3.11, §5.13 ReserveNow, §5.3 CancelReservation)
// ---------------------------------------------------------------------------

/// Reservation 7 for "RES-1" (parent `parent`), expiring in an hour.
fn reservation(rig: &Rig, parent: &str) -> Reservation {
    Reservation {
        id: 7,
        token: "RES-1".into(),
        parent: parent.into(),
        expiry_ms: rig.wall_ms() + 3_600_000,
    }
}

impl Rig {
    fn reserve(&mut self, r: Reservation) -> (Vec<Effect>, ReserveStatus) {
        let effects = self.step(Input::Reserve(r));
        let (answers, rest): (Vec<_>, Vec<_>) = effects
            .into_iter()
            .partition(|e| matches!(e, Effect::ReserveStatus(_)));
        match <[Effect; 1]>::try_from(answers) {
            Ok([Effect::ReserveStatus(status)]) => (rest, status),
            other => panic!("expected one ReserveStatus, got {other:?}"),
        }
    }

    /// Reserve and expect it accepted and announced.
    fn reserved(&mut self, r: Reservation) {
        let (effects, status) = self.reserve(r.clone());
        assert_eq!(status, ReserveStatus::Accepted);
        assert_eq!(effects, [Effect::Reservation(Some(r.clone()))]);
        assert_eq!(self.evse.reservation(), Some(&r));
    }
}

/// Idle, reserved by reservation 7 for "RES-1" (parent `parent`).
fn reserved(spec: Spec, parent: &str) -> (Rig, Reservation) {
    let mut rig = idle(spec);
    let r = reservation(&rig, parent);
    rig.reserved(r.clone());
    assert_eq!(rig.status(), ConnectorStatus::Reserved);
    (rig, r)
}

#[test]
fn a_reservation_shows_reserved_and_expires_at_its_time() {
    let (mut rig, r) = reserved(socket_ac(), "");
    assert_eq!(
        rig.evse.next_deadline(),
        Some(rig.mono() + Duration::from_secs(3600))
    );
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, false));

    rig.advance(Duration::from_secs(3600) - Duration::from_millis(1));
    assert_eq!(rig.tick(), []);
    assert_eq!(rig.status(), ConnectorStatus::Reserved);

    rig.advance_to(rig.evse.next_deadline().unwrap());
    assert_eq!(rig.wall_ms(), r.expiry_ms);
    assert_eq!(rig.tick(), [Effect::Reservation(None)]);
    assert_eq!(rig.status(), ConnectorStatus::Available);
    assert_eq!(rig.evse.reservation(), None);
    assert_eq!(rig.evse.next_deadline(), None);
}

#[test]
fn a_reservation_is_occupied_by_an_ev_a_session_or_another_reservation() {
    let mut rig = plugged(tethered_ac());
    let r = reservation(&rig, "");
    assert_eq!(rig.reserve(r.clone()), (vec![], ReserveStatus::Occupied));

    let (mut rig, _) = charging(tethered_ac());
    assert_eq!(rig.reserve(r.clone()), (vec![], ReserveStatus::Occupied));

    let mut rig = idle(tethered_ac());
    rig.authorize("CARD-1");
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    assert_eq!(rig.reserve(r.clone()), (vec![], ReserveStatus::Occupied));

    let (mut rig, held) = reserved(tethered_ac(), "");
    let other = Reservation { id: 8, ..r };
    assert_eq!(rig.reserve(other), (vec![], ReserveStatus::Occupied));
    assert_eq!(rig.evse.reservation(), Some(&held));
}

#[test]
fn a_reservation_is_refused_when_faulted_or_unavailable() {
    let mut rig = idle(tethered_ac());
    let r = reservation(&rig, "");
    rig.board(ev(A).rcd());
    assert_eq!(rig.reserve(r.clone()), (vec![], ReserveStatus::Faulted));

    let mut rig = idle(tethered_ac());
    rig.step(Input::SetAvailable(false));
    assert_eq!(rig.reserve(r), (vec![], ReserveStatus::Unavailable));
    assert_eq!(rig.evse.reservation(), None);
}

#[test]
fn the_same_reservation_id_replaces_the_reservation() {
    let (mut rig, r) = reserved(tethered_ac(), "");
    let replaced = Reservation {
        token: "RES-2".into(),
        expiry_ms: r.expiry_ms + 60_000,
        ..r
    };
    rig.reserved(replaced);
    assert_eq!(
        rig.evse.next_deadline(),
        Some(rig.mono() + Duration::from_secs(3660))
    );
}

#[test]
fn cancel_ends_the_reservation_and_an_unknown_id_is_not_found() {
    let (mut rig, r) = reserved(tethered_ac(), "");
    assert!(matches!(
        rig.refused(Input::CancelReservation(8)),
        Refusal::NotFound(_)
    ));
    assert_eq!(rig.evse.reservation(), Some(&r));
    assert_eq!(
        rig.step(Input::CancelReservation(7)),
        [Effect::Reservation(None)]
    );
    assert_eq!(rig.status(), ConnectorStatus::Available);
    assert!(matches!(
        rig.refused(Input::CancelReservation(7)),
        Refusal::NotFound(_)
    ));
}

#[test]
fn the_reserved_token_consumes_the_reservation_when_its_session_starts() {
    let (mut rig, _) = reserved(tethered_ac(), "");
    assert_eq!(rig.token("res-1"), [Effect::Authorize("res-1".into())]);
    let (effects, decision) = rig.decide("res-1", AuthStatus::Accepted, "");
    assert_eq!(effects, []);
    assert_eq!(decision, Some(Ok(AuthStatus::Accepted)));
    // Authorized, waiting for the EV: the reservation still holds.
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    assert!(rig.evse.reservation().is_some());

    let effects = rig.board(ev(B));
    match effects.as_slice() {
        [Effect::SessionStarted(record), Effect::Reservation(None)] => {
            assert_eq!(record.token, "res-1");
            assert_eq!(record.reservation_id, 7);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.evse.reservation(), None);
    assert_eq!(rig.evse.session().unwrap().reservation_id, 7);
}

#[test]
fn an_ev_plugged_in_at_a_reservation_waits_for_the_reserved_token() {
    let (mut rig, _) = reserved(tethered_ac(), "");
    assert_eq!(rig.board(ev(B)), []);
    assert_eq!(rig.status(), ConnectorStatus::Reserved);

    rig.token("OTHER");
    let (effects, decision) = rig.decide("OTHER", AuthStatus::Accepted, "");
    assert_eq!(effects, []);
    assert_eq!(decision, Some(Ok(AuthStatus::Invalid)), "refused here");
    assert_eq!(rig.status(), ConnectorStatus::Reserved);
    assert_eq!(rig.evse.session(), None);

    rig.token("RES-1");
    let (effects, _) = rig.decide("RES-1", AuthStatus::Accepted, "");
    assert!(matches!(
        effects.as_slice(),
        [Effect::SessionStarted(r), Effect::Reservation(None)] if r.reservation_id == 7
    ));
}

#[test]
fn a_token_of_the_reservations_parent_may_use_it() {
    let (mut rig, _) = reserved(tethered_ac(), "FLEET");
    rig.board(ev(B));
    rig.token("CARD-9");
    let (effects, decision) = rig.decide("CARD-9", AuthStatus::Accepted, "fleet");
    assert_eq!(decision, Some(Ok(AuthStatus::Accepted)));
    match effects.as_slice() {
        [Effect::SessionStarted(record), Effect::Reservation(None)] => {
            assert_eq!(record.token, "CARD-9");
            assert_eq!(record.reservation_id, 7);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.evse.session_parent(), "fleet");
}

#[test]
fn remote_start_honours_the_reservation() {
    // Another token, no parent to match: refused at once.
    let (mut rig, _) = reserved(tethered_ac(), "");
    assert!(matches!(
        rig.refused(Input::RemoteStart("OTHER".into())),
        Refusal::NotPermitted(_)
    ));
    assert_eq!(rig.status(), ConnectorStatus::Reserved);
    // The reserved token: authorized until the EV plugs in.
    assert_eq!(rig.step(Input::RemoteStart("RES-1".into())), []);
    assert_eq!(rig.status(), ConnectorStatus::Preparing);
    let record = match rig.board(ev(B)).as_slice() {
        [Effect::SessionStarted(r), Effect::Reservation(None)] => r.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(record.reservation_id, 7);
}

#[test]
fn remote_start_at_a_reservation_with_a_parent_asks_for_the_tokens_parent() {
    let (mut rig, _) = reserved(tethered_ac(), "FLEET");
    rig.board(ev(B));
    assert_eq!(
        rig.step(Input::RemoteStart("OTHER".into())),
        [Effect::Authorize("OTHER".into())]
    );
    let (effects, decision) = rig.decide("OTHER", AuthStatus::Accepted, "NOT-FLEET");
    assert_eq!(effects, []);
    assert!(matches!(decision, Some(Err(Refusal::NotPermitted(_)))));
    assert_eq!(rig.status(), ConnectorStatus::Reserved);

    rig.step(Input::RemoteStart("MEMBER".into()));
    let (effects, decision) = rig.decide("MEMBER", AuthStatus::Accepted, "FLEET");
    assert_eq!(decision, Some(Ok(AuthStatus::Accepted)));
    assert!(matches!(
        effects.as_slice(),
        [Effect::SessionStarted(r), Effect::Reservation(None)] if r.token == "MEMBER"
    ));
}

#[test]
fn free_vend_waits_for_the_reserved_token_and_starts_once_the_reservation_ends() {
    let spec = Spec {
        free_vend: true,
        ..tethered_ac()
    };
    let (mut rig, _) = reserved(spec, "");
    assert_eq!(rig.board(ev(B)), [], "no free session at a reservation");
    assert_eq!(rig.status(), ConnectorStatus::Reserved);

    let effects = rig.step(Input::CancelReservation(7));
    match effects.as_slice() {
        [Effect::Reservation(None), Effect::SessionStarted(record)] => {
            assert_eq!(record.token, "FreeVend");
            assert_eq!(record.reservation_id, 0);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn faulted_and_unavailable_show_over_reserved() {
    let (mut rig, r) = reserved(tethered_ac(), "");
    rig.step(Input::SetAvailable(false));
    assert_eq!(rig.status(), ConnectorStatus::Unavailable);
    rig.step(Input::SetAvailable(true));
    assert_eq!(rig.status(), ConnectorStatus::Reserved);
    rig.board(ev(A).rcd());
    assert_eq!(rig.status(), ConnectorStatus::Faulted);
    assert_eq!(rig.evse.reservation(), Some(&r), "the reservation holds");
    rig.board(ev(A));
    assert_eq!(rig.status(), ConnectorStatus::Reserved);
}

#[test]
fn a_restored_reservation_holds_until_its_wall_clock_expiry() {
    let r = Reservation {
        id: 3,
        token: "RES-1".into(),
        parent: String::new(),
        expiry_ms: WALL0 + 90_000,
    };
    let mut rig = Rig::restored(
        tethered_ac(),
        Restored {
            reservation: Some(r.clone()),
            ..Restored::default()
        },
    );
    rig.board(ev(A));
    assert_eq!(rig.status(), ConnectorStatus::Reserved);
    assert_eq!(rig.evse.reservation(), Some(&r));
    assert_eq!(
        rig.evse.next_deadline(),
        Some(rig.mono() + Duration::from_secs(90))
    );
}

// ---------------------------------------------------------------------------
// UnlockConnector (OCPP 1.6 §5.17)
// ---------------------------------------------------------------------------

#[test]
fn unlock_during_a_session_ends_it_then_waits_for_the_lock() {
    let (mut rig, record) = charging(socket_ac());
    assert!(rig.outputs().lock);
    let effects = rig.step(Input::Unlock);
    match effects.as_slice() {
        [Effect::SessionEnded(end), Effect::ReleaseLock] => {
            assert_eq!(end.id, record.id);
            assert_eq!(end.stop_reason, "UnlockCommand");
            assert_eq!(end.stop_token, "");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.outputs(), outputs(PwmOutput::Off, false, false));
    let unlock_deadline = rig.mono() + LOCK_TIMEOUT;

    // The contactors open first; the lock still reads locked.
    assert_eq!(rig.board(ev(B).cable(32).locked()), []);
    assert_eq!(rig.evse.next_deadline(), Some(unlock_deadline));
    rig.advance(Duration::from_millis(300));
    assert_eq!(
        rig.board(ev(B).cable(32)),
        [Effect::Unlock(UnlockStatus::Unlocked)]
    );
    assert_eq!(rig.status(), ConnectorStatus::Finishing);
    assert_eq!(rig.evse.next_deadline(), None);
}

#[test]
fn unlock_of_a_lock_that_reads_unlocked_answers_at_once() {
    let mut rig = idle(socket_ac());
    assert_eq!(
        rig.step(Input::Unlock),
        [Effect::ReleaseLock, Effect::Unlock(UnlockStatus::Unlocked)]
    );
}

#[test]
fn unlock_fails_when_the_lock_does_not_open() {
    let mut rig = plugged(socket_ac());
    rig.board(ev(B).cable(32).lock(LockState::Fault));
    assert_faulted(&rig, Fault::LockFailure);
    assert_eq!(rig.step(Input::Unlock), [Effect::ReleaseLock]);
    rig.advance(LOCK_TIMEOUT - Duration::from_millis(1));
    assert_eq!(rig.tick(), []);
    rig.advance(Duration::from_millis(1));
    assert_eq!(rig.tick(), [Effect::Unlock(UnlockStatus::UnlockFailed)]);
    assert_eq!(rig.evse.next_deadline(), None);
}

#[test]
fn unlock_of_a_tethered_cable_is_not_supported_and_keeps_the_session() {
    let (mut rig, _) = charging(tethered_ac());
    assert_eq!(
        rig.step(Input::Unlock),
        [Effect::Unlock(UnlockStatus::NotSupported)]
    );
    assert_eq!(rig.status(), ConnectorStatus::Charging);
}

#[test]
fn unlock_keeps_a_connector_with_a_welded_contactor_locked() {
    let (mut rig, _) = charging(socket_ac());
    rig.board(ev(B).cable(32).locked().closed());
    rig.advance(WELD_GRACE);
    ended(rig.tick());
    assert_faulted(&rig, Fault::ContactorWelded);
    assert_eq!(
        rig.step(Input::Unlock),
        [Effect::Unlock(UnlockStatus::UnlockFailed)]
    );
    assert!(rig.outputs().lock);
}

#[test]
fn unlock_ends_a_session_resumed_before_the_board_is_heard() {
    let mut rig = Rig::restarted(socket_ac(), Some(persisted_session()));
    let effects = rig.step(Input::Unlock);
    match effects.as_slice() {
        [Effect::SessionEnded(end), Effect::ReleaseLock] => {
            assert_eq!(end.stop_reason, "UnlockCommand");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.evse.session(), None);
}

// ---------------------------------------------------------------------------
// ConnectionTimeOut
// ---------------------------------------------------------------------------

#[test]
fn the_connection_timeout_changes_for_later_authorizations() {
    let mut rig = idle(tethered_ac());
    rig.step(Input::SetConnectionTimeout(Duration::from_secs(5)));
    assert_eq!(rig.evse.connection_timeout(), Duration::from_secs(5));
    rig.authorize("CARD-1");
    assert_eq!(
        rig.evse.next_deadline(),
        Some(rig.mono() + Duration::from_secs(5))
    );
    rig.advance(Duration::from_secs(5));
    assert_eq!(rig.tick(), []);
    assert_eq!(rig.status(), ConnectorStatus::Available);
}
