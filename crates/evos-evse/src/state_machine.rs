//! The charging state machine of one EVSE, after IEC 61851-1:2017 Annex A
//! (control pilot states A–F, duty cycle per Table A.8, sequences in A.5)
//! with connector statuses in OCPP 1.6 terms (§4.9 StatusNotification).
//!
//! It is pure: [`Evse::handle`] takes an [`Input`] and the time, changes the
//! state, and returns [`Effect`]s for the service to carry out. What the
//! board must drive (PWM, contactors, lock) is derived from the state by
//! [`Evse::outputs`], so outputs can never disagree with the state.
//! Timers are deadlines ([`Evse::next_deadline`]) the service sleeps until;
//! nothing polls.

use std::time::Duration;

use evos_bus::evse::SessionRecord;
use evos_hal::{BoardStatus, CpState, LockState, Measurement, PwmOutput};
use tokio::time::Instant;

use crate::config::Kind;

/// The lock must report Locked this soon after it is commanded.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// A contactor whose feedback still reads closed this long after it was
/// commanded open is welded. IEC 61851-1 A.5 gives the EVSE 100 ms to open
/// after C→B; the feedback contact needs a little longer to settle.
pub const WELD_GRACE: Duration = Duration::from_millis(500);

/// What does not change while the service runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub id: u32,
    pub kind: Kind,
    pub max_current_a: f64,
    pub phases: u8,
    /// A socket outlet (lock and PP) rather than a tethered cable.
    pub socket: bool,
    pub nominal_voltage_v: f64,
    /// Authorized but not plugged in: give up after this.
    pub connection_timeout: Duration,
    /// Start a session on plug-in without a token.
    pub free_vend: bool,
}

/// A point in time, monotonic for timers and wall-clock for records.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall_ms: i64,
}

/// Why the EVSE cannot charge. Each one opens the contactors at once and
/// ends any session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    RcdTripped,
    ContactorWelded,
    LockFailure,
    /// IEC 61851-1 A.4.4: the EV's diode is missing or shorted.
    DiodeFault,
    /// Control pilot state E: CP shorted to PE.
    CpError,
    /// Control pilot state F reported by the board: it cannot supply the pilot.
    BoardUnavailable,
    /// The link to the safety MCU is gone.
    LinkLost,
    /// DC: the power modules cannot deliver (Power1 `Fault`). Ends the
    /// session; the EVSE is usable again once the output is off.
    PowerModules,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::RcdTripped => "RcdTripped",
            Fault::ContactorWelded => "ContactorWelded",
            Fault::LockFailure => "LockFailure",
            Fault::DiodeFault => "DiodeFault",
            Fault::CpError => "CpError",
            Fault::BoardUnavailable => "BoardUnavailable",
            Fault::LinkLost => "McuLinkLost",
            Fault::PowerModules => "PowerModuleFault",
        }
    }
}

/// OCPP 1.6 StopTransaction reasons that the EVSE itself decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Local,
    Remote,
    EvDisconnected,
    DeAuthorized,
    EmergencyStop,
    SoftReset,
    HardReset,
    UnlockCommand,
    PowerLoss,
    Reboot,
    Other,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Local => "Local",
            StopReason::Remote => "Remote",
            StopReason::EvDisconnected => "EVDisconnected",
            StopReason::DeAuthorized => "DeAuthorized",
            StopReason::EmergencyStop => "EmergencyStop",
            StopReason::SoftReset => "SoftReset",
            StopReason::HardReset => "HardReset",
            StopReason::UnlockCommand => "UnlockCommand",
            StopReason::PowerLoss => "PowerLoss",
            StopReason::Reboot => "Reboot",
            StopReason::Other => "Other",
        }
    }

    /// Parse a reason a client asks for (case-insensitive OCPP spelling).
    pub fn parse(s: &str) -> Option<Self> {
        [
            StopReason::Local,
            StopReason::Remote,
            StopReason::EvDisconnected,
            StopReason::DeAuthorized,
            StopReason::EmergencyStop,
            StopReason::SoftReset,
            StopReason::HardReset,
            StopReason::UnlockCommand,
            StopReason::PowerLoss,
            StopReason::Reboot,
            StopReason::Other,
        ]
        .into_iter()
        .find(|r| r.as_str().eq_ignore_ascii_case(s))
    }
}

/// OCPP 1.6 ChargePointStatus of a connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorStatus {
    Available,
    Preparing,
    Charging,
    SuspendedEv,
    SuspendedEvse,
    Finishing,
    Reserved,
    Unavailable,
    Faulted,
}

impl ConnectorStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorStatus::Available => "Available",
            ConnectorStatus::Preparing => "Preparing",
            ConnectorStatus::Charging => "Charging",
            ConnectorStatus::SuspendedEv => "SuspendedEV",
            ConnectorStatus::SuspendedEvse => "SuspendedEVSE",
            ConnectorStatus::Finishing => "Finishing",
            ConnectorStatus::Reserved => "Reserved",
            ConnectorStatus::Unavailable => "Unavailable",
            ConnectorStatus::Faulted => "Faulted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitUnit {
    Amps,
    Watts,
}

impl LimitUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitUnit::Amps => "A",
            LimitUnit::Watts => "W",
        }
    }
}

/// A charging limit (smart charging), optionally expiring.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub value: f64,
    pub unit: LimitUnit,
    pub expires: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// No EV, no authorization (CP A).
    Available,
    /// A token was accepted before the EV plugged in.
    Authorized {
        token: String,
        deadline: Instant,
    },
    /// An EV is plugged in, nobody has authorized it yet.
    Occupied,
    /// A session is active: EV plugged in and authorized.
    Session {
        record: SessionRecord,
        lock_deadline: Option<Instant>,
    },
    /// The session ended while the EV is still plugged in.
    Finishing,
    Faulted(Fault),
    /// Just started: a session may have been active before the restart; the
    /// board's first status tells whether it goes on.
    Recovering {
        record: Option<SessionRecord>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Board(BoardStatus),
    Measurement(Measurement),
    /// A token read at the EVSE's reader.
    Token(String),
    AuthResult {
        token: String,
        accepted: bool,
    },
    /// Start a session for a token already authorized elsewhere (remote start).
    RemoteStart(String),
    Stop(StopReason),
    SetLimit(Option<Limit>),
    SetAvailable(bool),
    LinkDown,
    /// DC: what the EV asks for. Until ISO 15118 exists, the simulated EV
    /// states it over the simulator's link.
    DcDemand {
        voltage_v: f64,
        current_a: f64,
    },
    /// DC: the power output cannot deliver (`why` from Power1 `Fault`).
    PowerFault(String),
    /// The meter has persisted the start reading of `session` (Meter1
    /// `StartTransaction`): it replaces the live reading taken at start.
    MeterStarted {
        session: String,
        energy_wh: f64,
    },
    /// A deadline from [`Evse::next_deadline`] has passed.
    Tick,
}

/// What the service must do after a transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Ask the authorizer; answer with [`Input::AuthResult`].
    Authorize(String),
    SessionStarted(SessionRecord),
    /// The active session's record changed (its meter start); persist it.
    SessionUpdated(SessionRecord),
    SessionEnded(SessionRecord),
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    NotPermitted(String),
    #[error("{0}")]
    Busy(String),
}

/// What the board must drive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outputs {
    pub pwm: PwmOutput,
    pub contactors: bool,
    pub lock: bool,
    /// DC: the power output's target while energy may flow.
    pub dc: Option<DcTarget>,
}

/// DC output target: the EV's voltage, and the least of its current, the
/// EVSE's rating and the charging limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DcTarget {
    pub voltage_v: f64,
    pub current_a: f64,
}

#[derive(Debug)]
pub struct Evse {
    spec: Spec,
    state: State,
    board: Option<BoardStatus>,
    meter: Option<Measurement>,
    limit: Option<Limit>,
    dc_demand: Option<DcTarget>,
    operative: bool,
    pending_auth: Option<String>,
    contactors_commanded: bool,
    contactors_commanded_at: Instant,
}

impl Evse {
    /// A fresh EVSE; `active` is the session that was active when the
    /// service last stopped, if any.
    pub fn new(spec: Spec, active: Option<SessionRecord>, now: Now) -> Self {
        Evse {
            spec,
            state: State::Recovering { record: active },
            board: None,
            meter: None,
            limit: None,
            dc_demand: None,
            operative: true,
            pending_auth: None,
            contactors_commanded: false,
            contactors_commanded_at: now.mono,
        }
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn handle(&mut self, input: Input, now: Now) -> Result<Vec<Effect>, Refusal> {
        let mut effects = Vec::new();
        let result = self.transition(input, now, &mut effects);
        self.check_faults(now, &mut effects);
        let contactors = self.outputs().contactors;
        if contactors != self.contactors_commanded {
            self.contactors_commanded = contactors;
            self.contactors_commanded_at = now.mono;
        }
        result.map(|()| effects)
    }

    fn transition(
        &mut self,
        input: Input,
        now: Now,
        effects: &mut Vec<Effect>,
    ) -> Result<(), Refusal> {
        match input {
            Input::Board(status) => {
                self.board = Some(status);
                self.follow_pilot(now, effects);
            }
            Input::Measurement(m) => {
                self.meter = Some(m);
                if let State::Session { record, .. } = &mut self.state {
                    record.stop_meter_wh = m.energy_wh;
                }
            }
            Input::Token(token) => self.on_token(token, now, effects),
            Input::AuthResult { token, accepted } => {
                if self.pending_auth.as_deref() != Some(token.as_str()) {
                    return Ok(()); // an answer to a request overtaken by events
                }
                self.pending_auth = None;
                if !accepted {
                    tracing::info!(evse = self.spec.id, token, "token not authorized");
                    return Ok(());
                }
                self.authorized(token, now, effects);
            }
            Input::RemoteStart(token) => {
                match &self.state {
                    State::Faulted(f) => {
                        return Err(Refusal::NotPermitted(format!(
                            "EVSE is faulted ({})",
                            f.as_str()
                        )));
                    }
                    State::Session { .. } | State::Recovering { record: Some(_) } => {
                        return Err(Refusal::Busy("a session is active".into()));
                    }
                    _ if !self.operative => {
                        return Err(Refusal::NotPermitted("EVSE is unavailable".into()));
                    }
                    _ => {}
                }
                self.authorized(token, now, effects);
            }
            Input::Stop(reason) => match &self.state {
                State::Session { .. } => self.end_session(reason, None, now, effects),
                State::Authorized { .. } => self.state = State::Available,
                _ => return Err(Refusal::NotPermitted("no active session".into())),
            },
            Input::SetLimit(limit) => self.limit = limit,
            Input::SetAvailable(operative) => {
                self.operative = operative;
                // An EV plugged in while inoperative is noticed now: no new
                // board status may come, since the pilot has not changed.
                self.follow_pilot(now, effects);
            }
            Input::LinkDown => {
                self.board = None;
                if !matches!(self.state, State::Faulted(Fault::LinkLost)) {
                    self.enter_fault(Fault::LinkLost, now, effects);
                }
            }
            Input::DcDemand {
                voltage_v,
                current_a,
            } => {
                let valid = voltage_v.is_finite()
                    && current_a.is_finite()
                    && voltage_v >= 0.0
                    && current_a >= 0.0;
                if !valid {
                    return Err(Refusal::NotPermitted(format!(
                        "an invalid DC demand: {voltage_v} V {current_a} A"
                    )));
                }
                self.dc_demand = Some(DcTarget {
                    voltage_v,
                    current_a,
                });
            }
            Input::PowerFault(why) => {
                if matches!(self.state, State::Session { .. }) {
                    tracing::error!(evse = self.spec.id, why, "power output fault");
                    self.end_session(StopReason::Other, Some(Fault::PowerModules), now, effects);
                }
            }
            Input::MeterStarted { session, energy_wh } => {
                let active = match &mut self.state {
                    State::Session { record, .. } => Some(record),
                    State::Recovering { record } => record.as_mut(),
                    _ => None,
                };
                if let Some(record) = active.filter(|r| r.id == session) {
                    record.start_meter_wh = energy_wh;
                    record.stop_meter_wh = record.stop_meter_wh.max(energy_wh);
                    effects.push(Effect::SessionUpdated(record.clone()));
                }
            }
            Input::Tick => self.on_tick(now, effects),
        }
        Ok(())
    }

    /// Follow the EV: plug-in, unplug, and recovery after a restart.
    fn follow_pilot(&mut self, now: Now, effects: &mut Vec<Effect>) {
        let Some(cp) = self.board.as_ref().map(|b| b.cp) else {
            return;
        };
        // A fault takes precedence: check_faults ends the session with it
        // (CP E and F are faults, not an unplug).
        if self.detect_fault(now).is_some() {
            return;
        }
        let connected = cp.ev_connected();
        match &mut self.state {
            State::Recovering { record } => match record.take() {
                Some(record) if connected => {
                    tracing::info!(
                        evse = self.spec.id,
                        session = record.id,
                        "resuming session after restart"
                    );
                    let lock_deadline = self.spec.socket.then_some(now.mono + LOCK_TIMEOUT);
                    self.state = State::Session {
                        record,
                        lock_deadline,
                    };
                }
                Some(record) => {
                    tracing::info!(
                        evse = self.spec.id,
                        session = record.id,
                        "EV left while the service was down"
                    );
                    self.state = State::Session {
                        record,
                        lock_deadline: None,
                    };
                    self.end_session(StopReason::EvDisconnected, None, now, effects);
                }
                None => {
                    self.state = if connected {
                        State::Occupied
                    } else {
                        State::Available
                    }
                }
            },
            State::Available if connected && self.operative => {
                self.state = State::Occupied;
                if self.spec.free_vend {
                    self.start_session("FreeVend".into(), now, effects);
                }
            }
            State::Authorized { token, .. } if connected => {
                let token = std::mem::take(token);
                self.start_session(token, now, effects);
            }
            State::Occupied | State::Finishing if !connected => self.state = State::Available,
            State::Session { .. } if !connected => {
                self.end_session(StopReason::EvDisconnected, None, now, effects);
            }
            _ => {}
        }
    }

    fn on_token(&mut self, token: String, now: Now, effects: &mut Vec<Effect>) {
        match &self.state {
            // The same card again ends its own session (OCPP 1.6 §3.5.2).
            State::Session { record, .. } if record.token.eq_ignore_ascii_case(&token) => {
                self.end_session(StopReason::Local, None, now, effects);
            }
            State::Authorized { token: t, .. } if t.eq_ignore_ascii_case(&token) => {
                self.state = State::Available;
            }
            State::Available | State::Occupied | State::Finishing if self.operative => {
                self.pending_auth = Some(token.clone());
                effects.push(Effect::Authorize(token));
            }
            _ => tracing::info!(evse = self.spec.id, token, "token ignored in this state"),
        }
    }

    fn authorized(&mut self, token: String, now: Now, effects: &mut Vec<Effect>) {
        match self.state {
            State::Available | State::Authorized { .. } => {
                let deadline = now.mono + self.spec.connection_timeout;
                self.state = State::Authorized { token, deadline };
            }
            State::Occupied | State::Finishing => self.start_session(token, now, effects),
            _ => {}
        }
    }

    fn on_tick(&mut self, now: Now, effects: &mut Vec<Effect>) {
        if let Some(limit) = self.limit
            && limit.expires.is_some_and(|at| at <= now.mono)
        {
            tracing::info!(evse = self.spec.id, "charging limit expired");
            self.limit = None;
        }
        match &self.state {
            State::Authorized { deadline, .. } if *deadline <= now.mono => {
                tracing::info!(
                    evse = self.spec.id,
                    "authorization expired: no EV plugged in"
                );
                self.state = State::Available;
            }
            State::Session {
                lock_deadline: Some(at),
                ..
            } if *at <= now.mono => {
                self.enter_fault(Fault::LockFailure, now, effects);
            }
            _ => {}
        }
    }

    /// Detect faults from the latest board status; enter or leave Faulted.
    fn check_faults(&mut self, now: Now, effects: &mut Vec<Effect>) {
        let detected = self.detect_fault(now);
        match (&self.state, detected) {
            (State::Faulted(current), Some(f)) if *current == f => {}
            (State::Faulted(Fault::LockFailure), None) if self.lock_failed_by_timeout() => {}
            (_, Some(f)) => self.enter_fault(f, now, effects),
            (State::Faulted(f), None) if self.board.is_some() => {
                tracing::info!(evse = self.spec.id, fault = f.as_str(), "fault cleared");
                let connected = self.board.as_ref().is_some_and(|b| b.cp.ev_connected());
                self.state = if connected {
                    State::Occupied
                } else {
                    State::Available
                };
            }
            _ => {}
        }
        if let State::Session { lock_deadline, .. } = &mut self.state
            && self
                .board
                .as_ref()
                .is_some_and(|b| b.lock == LockState::Locked)
        {
            *lock_deadline = None;
        }
    }

    /// A lock that timed out stays faulted until its feedback reads unlocked.
    fn lock_failed_by_timeout(&self) -> bool {
        self.board
            .as_ref()
            .is_some_and(|b| b.lock != LockState::Unlocked)
    }

    fn detect_fault(&self, now: Now) -> Option<Fault> {
        let board = self.board.as_ref()?;
        if board.rcd_tripped {
            return Some(Fault::RcdTripped);
        }
        if board.contactors_closed
            && !self.contactors_commanded
            && now.mono.duration_since(self.contactors_commanded_at) >= WELD_GRACE
        {
            return Some(Fault::ContactorWelded);
        }
        if board.diode_fault {
            return Some(Fault::DiodeFault);
        }
        match board.cp {
            CpState::E => return Some(Fault::CpError),
            CpState::F => return Some(Fault::BoardUnavailable),
            _ => {}
        }
        if board.lock == LockState::Fault {
            return Some(Fault::LockFailure);
        }
        None
    }

    fn enter_fault(&mut self, fault: Fault, now: Now, effects: &mut Vec<Effect>) {
        tracing::error!(
            evse = self.spec.id,
            fault = fault.as_str(),
            "fault: contactors open"
        );
        if matches!(self.state, State::Session { .. }) {
            self.end_session(StopReason::Other, Some(fault), now, effects);
        } else if let State::Recovering {
            record: Some(record),
        } = &self.state
        {
            self.state = State::Session {
                record: record.clone(),
                lock_deadline: None,
            };
            self.end_session(StopReason::Other, Some(fault), now, effects);
        }
        self.pending_auth = None;
        self.state = State::Faulted(fault);
    }

    fn start_session(&mut self, token: String, now: Now, effects: &mut Vec<Effect>) {
        let meter = self.meter.map_or(0.0, |m| m.energy_wh);
        let record = SessionRecord {
            id: format!("{}-{}", self.spec.id, now.wall_ms),
            evse: self.spec.id,
            token,
            started_ms: now.wall_ms,
            ended_ms: 0,
            start_meter_wh: meter,
            stop_meter_wh: meter,
            stop_reason: String::new(),
            fault: String::new(),
            stop_token: String::new(),
            reservation_id: 0,
        };
        tracing::info!(
            evse = self.spec.id,
            session = record.id,
            token = record.token,
            "session started"
        );
        effects.push(Effect::SessionStarted(record.clone()));
        let lock_deadline = self.spec.socket.then_some(now.mono + LOCK_TIMEOUT);
        self.state = State::Session {
            record,
            lock_deadline,
        };
    }

    fn end_session(
        &mut self,
        reason: StopReason,
        fault: Option<Fault>,
        now: Now,
        effects: &mut Vec<Effect>,
    ) {
        let State::Session { record, .. } = &mut self.state else {
            return;
        };
        let mut record = std::mem::replace(
            record,
            SessionRecord {
                id: String::new(),
                evse: 0,
                token: String::new(),
                started_ms: 0,
                ended_ms: 0,
                start_meter_wh: 0.0,
                stop_meter_wh: 0.0,
                stop_reason: String::new(),
                fault: String::new(),
                stop_token: String::new(),
                reservation_id: 0,
            },
        );
        if let Some(m) = self.meter {
            record.stop_meter_wh = m.energy_wh.max(record.start_meter_wh);
        }
        record.ended_ms = now.wall_ms.max(record.started_ms + 1);
        record.stop_reason = reason.as_str().into();
        record.fault = fault.map(|f| f.as_str().to_owned()).unwrap_or_default();
        tracing::info!(
            evse = self.spec.id,
            session = record.id,
            reason = record.stop_reason,
            energy_wh = record.energy_wh(),
            "session ended"
        );
        effects.push(Effect::SessionEnded(record));
        let connected = self.board.as_ref().is_some_and(|b| b.cp.ev_connected());
        self.state = if connected {
            State::Finishing
        } else {
            State::Available
        };
    }

    /// The current the EVSE may offer (A): the lowest of its rating, the
    /// cable's (PP) and the charging limit.
    pub fn offered_current(&self) -> f64 {
        let mut amps = self.spec.max_current_a;
        if self.spec.socket
            && let Some(cable) = self.board.as_ref().and_then(|b| b.cable_rating_a)
        {
            amps = amps.min(f64::from(cable));
        }
        if let Some(limit) = self.limit {
            let limit_a = match limit.unit {
                LimitUnit::Amps => limit.value,
                LimitUnit::Watts => {
                    limit.value / (self.spec.nominal_voltage_v * f64::from(self.spec.phases))
                }
            };
            amps = amps.min(limit_a);
        }
        amps.max(0.0)
    }

    fn lock_confirmed(&self) -> bool {
        !self.spec.socket
            || self
                .board
                .as_ref()
                .is_some_and(|b| b.lock == LockState::Locked)
    }

    /// What the board must drive now.
    pub fn outputs(&self) -> Outputs {
        let in_session = matches!(self.state, State::Session { .. });
        let pwm = if in_session && self.lock_confirmed() {
            match self.spec.kind {
                Kind::Ac => {
                    PwmOutput::for_current(self.offered_current()).unwrap_or(PwmOutput::Off)
                }
                Kind::Dc => PwmOutput::DIGITAL,
            }
        } else {
            PwmOutput::Off
        };
        let ev_ready = self.board.as_ref().is_some_and(|b| b.cp.ev_ready());
        let contactors = in_session && ev_ready && pwm != PwmOutput::Off;
        let lock = self.spec.socket
            && (in_session
                || matches!(self.state, State::Faulted(Fault::ContactorWelded))
                || matches!(self.state, State::Recovering { record: Some(_) }));
        let dc = match (self.spec.kind, self.dc_demand) {
            (Kind::Dc, Some(demand)) if contactors && demand.voltage_v > 0.0 => Some(DcTarget {
                voltage_v: demand.voltage_v,
                current_a: self.dc_current(demand),
            }),
            _ => None,
        };
        Outputs {
            pwm,
            contactors,
            lock,
            dc,
        }
    }

    /// The DC current: the EV's request within the EVSE's rating and the
    /// charging limit (a W limit at the EV's voltage).
    fn dc_current(&self, demand: DcTarget) -> f64 {
        let mut amps = demand.current_a.min(self.spec.max_current_a);
        if let Some(limit) = self.limit {
            amps = amps.min(match limit.unit {
                LimitUnit::Amps => limit.value,
                LimitUnit::Watts => limit.value / demand.voltage_v,
            });
        }
        amps.max(0.0)
    }

    pub fn status(&self) -> ConnectorStatus {
        match &self.state {
            State::Faulted(_) => ConnectorStatus::Faulted,
            State::Available | State::Recovering { record: None } if !self.operative => {
                ConnectorStatus::Unavailable
            }
            State::Available | State::Recovering { record: None } => ConnectorStatus::Available,
            State::Authorized { .. } | State::Occupied => ConnectorStatus::Preparing,
            State::Finishing => ConnectorStatus::Finishing,
            State::Recovering { record: Some(_) } => ConnectorStatus::Charging,
            State::Session { .. } => {
                let outputs = self.outputs();
                let cp = self.board.as_ref().map(|b| b.cp);
                if !self.lock_confirmed() {
                    ConnectorStatus::Preparing
                } else if outputs.pwm == PwmOutput::Off {
                    ConnectorStatus::SuspendedEvse
                } else if cp == Some(CpState::B) {
                    ConnectorStatus::SuspendedEv
                } else if self.board.as_ref().is_some_and(|b| b.contactors_closed) {
                    ConnectorStatus::Charging
                } else {
                    // EV ready, contactors closing: energy does not flow yet.
                    ConnectorStatus::Preparing
                }
            }
        }
    }

    pub fn fault(&self) -> Option<Fault> {
        match self.state {
            State::Faulted(f) => Some(f),
            _ => None,
        }
    }

    /// The active session, live (its stop reading is the latest meter value).
    pub fn session(&self) -> Option<&SessionRecord> {
        match &self.state {
            State::Session { record, .. } => Some(record),
            State::Recovering { record } => record.as_ref(),
            _ => None,
        }
    }

    pub fn cp_state(&self) -> Option<CpState> {
        self.board.as_ref().map(|b| b.cp)
    }

    pub fn limit(&self) -> Option<Limit> {
        self.limit
    }

    pub fn measurement(&self) -> Option<Measurement> {
        self.meter
    }

    /// The earliest time at which [`Input::Tick`] must be delivered.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut deadlines = vec![];
        match &self.state {
            State::Authorized { deadline, .. } => deadlines.push(*deadline),
            State::Session {
                lock_deadline: Some(at),
                ..
            } => deadlines.push(*at),
            _ => {}
        }
        if let Some(at) = self.limit.and_then(|l| l.expires) {
            deadlines.push(at);
        }
        // Not once the weld is detected, nor while a tripped RCD masks it: a
        // Tick could change nothing, and a past deadline would spin the service.
        if !self.contactors_commanded
            && self.fault() != Some(Fault::ContactorWelded)
            && self
                .board
                .as_ref()
                .is_some_and(|b| b.contactors_closed && !b.rcd_tripped)
        {
            deadlines.push(self.contactors_commanded_at + WELD_GRACE);
        }
        deadlines.into_iter().min()
    }
}

#[cfg(test)]
mod tests;
