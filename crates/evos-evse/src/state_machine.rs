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
//!
//! What the OCPP client asks of an EVSE is here too: stop by parent id
//! (OCPP 1.6 §3.5 Local Authorization, StopTransaction §4.10), reservations
//! (§3.11, ReserveNow §5.13, CancelReservation §5.3), UnlockConnector
//! (§5.17), the ConnectionTimeOut key (§9.1 Core Profile) and the stop reasons of
//! StopTransaction (§7.36 Reason).

use std::time::Duration;

use evos_bus::evse::SessionRecord;
use evos_hal::{BoardStatus, CpState, LockState, Measurement, PwmOutput};
use tokio::time::Instant;

use crate::auth::AuthStatus;
use crate::config::Kind;
use crate::reservation::Reservation;

/// The lock must report Locked this soon after it is commanded, and
/// Unlocked this soon after an unlock.
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
    /// Authorized but not plugged in: give up after this (the configured
    /// value; [`Input::SetConnectionTimeout`] changes it at run time).
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

/// OCPP 1.6 ReservationStatus (§7.40), less `Rejected`: every EVSE takes
/// reservations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveStatus {
    Accepted,
    Occupied,
    Faulted,
    Unavailable,
}

impl ReserveStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReserveStatus::Accepted => "Accepted",
            ReserveStatus::Occupied => "Occupied",
            ReserveStatus::Faulted => "Faulted",
            ReserveStatus::Unavailable => "Unavailable",
        }
    }
}

/// OCPP 1.6 UnlockStatus (§7.46).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlockStatus {
    Unlocked,
    UnlockFailed,
    NotSupported,
}

impl UnlockStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UnlockStatus::Unlocked => "Unlocked",
            UnlockStatus::UnlockFailed => "UnlockFailed",
            UnlockStatus::NotSupported => "NotSupported",
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
        parent: String,
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
    /// The authorizer's answer to [`Effect::Authorize`].
    AuthResult {
        token: String,
        status: AuthStatus,
        /// The token's parent id; empty when none or unknown.
        parent: String,
    },
    /// Start a session for a token already authorized elsewhere (remote
    /// start). A reservation held for another token refuses it, unless the
    /// token's parent (asked of the authorizer) is the reservation's.
    RemoteStart(String),
    Stop(StopReason),
    /// ReserveNow; answered with [`Effect::ReserveStatus`].
    Reserve(Reservation),
    /// CancelReservation of this id.
    CancelReservation(i32),
    /// UnlockConnector; answered with [`Effect::Unlock`], now or once the
    /// lock's feedback tells.
    Unlock,
    /// ConnectionTimeOut: for authorizations from now on.
    SetConnectionTimeout(Duration),
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
    /// What an authorization asked for achieved here: the status to report
    /// for a presented token (`Invalid` for one a reservation excludes), or
    /// why a token was not taken. Answers the caller that presented it.
    TokenDecided {
        token: String,
        outcome: Result<AuthStatus, Refusal>,
    },
    SessionStarted(SessionRecord),
    /// The active session's record changed (its meter start); persist it.
    SessionUpdated(SessionRecord),
    SessionEnded(SessionRecord),
    /// The reservation held changed (made, replaced, cancelled, expired or
    /// consumed); persist it.
    Reservation(Option<Reservation>),
    /// The answer to [`Input::Reserve`].
    ReserveStatus(ReserveStatus),
    /// The outcome of [`Input::Unlock`].
    Unlock(UnlockStatus),
    /// Command the lock open again, even if it is commanded open already: an
    /// unlock retries a stuck actuator.
    ReleaseLock,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    NotPermitted(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    NotFound(String),
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

/// What the service kept from before a restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restored {
    /// The session that was active when the service last stopped.
    pub session: Option<SessionRecord>,
    /// The parent id of that session's token; empty when none.
    pub parent: String,
    /// The reservation held, not yet expired.
    pub reservation: Option<Reservation>,
}

/// Why an authorization was asked for.
#[derive(Debug, Clone, PartialEq)]
enum Purpose {
    /// A presented token, to start (or authorize) a session.
    Start,
    /// A token presented during session `0`: does its parent own it?
    Stop(String),
    /// A remote start at a reservation held for another token: the token's
    /// parent may be the reservation's.
    RemoteStart,
}

#[derive(Debug, Clone, PartialEq)]
struct PendingAuth {
    token: String,
    purpose: Purpose,
}

/// A reservation held, with its expiry on the monotonic clock.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    reservation: Reservation,
    expires: Instant,
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
    pending_auth: Option<PendingAuth>,
    contactors_commanded: bool,
    contactors_commanded_at: Instant,
    connection_timeout: Duration,
    /// The parent id of the active session's token (stop by parent id).
    session_parent: String,
    reservation: Option<Held>,
    /// An unlock waits for the lock's feedback until then.
    unlock_deadline: Option<Instant>,
}

/// The monotonic instant of wall-clock time `at_ms`, seen at `now`. A
/// wall-clock step later does not move it.
fn mono_at(at_ms: i64, now: Now) -> Instant {
    let ahead = u64::try_from(at_ms.saturating_sub(now.wall_ms)).unwrap_or(0);
    now.mono + Duration::from_millis(ahead)
}

impl Evse {
    /// A fresh EVSE, with what the service kept from before a restart.
    pub fn new(spec: Spec, restored: Restored, now: Now) -> Self {
        let reservation = restored.reservation.map(|reservation| Held {
            expires: mono_at(reservation.expiry_ms, now),
            reservation,
        });
        Evse {
            connection_timeout: spec.connection_timeout,
            spec,
            state: State::Recovering {
                record: restored.session,
            },
            board: None,
            meter: None,
            limit: None,
            dc_demand: None,
            operative: true,
            pending_auth: None,
            contactors_commanded: false,
            contactors_commanded_at: now.mono,
            session_parent: restored.parent,
            reservation,
            unlock_deadline: None,
        }
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn handle(&mut self, input: Input, now: Now) -> Result<Vec<Effect>, Refusal> {
        let mut effects = Vec::new();
        let result = self.transition(input, now, &mut effects);
        self.check_faults(now, &mut effects);
        self.check_unlock(&mut effects);
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
            Input::AuthResult {
                token,
                status,
                parent,
            } => self.on_auth_result(token, status, parent, now, effects),
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
                match self.excluding_reservation(&token, "") {
                    Some(r) if r.parent.is_empty() => {
                        return Err(Refusal::NotPermitted(format!(
                            "EVSE is reserved for another token (reservation {})",
                            r.id
                        )));
                    }
                    Some(_) => {
                        // Its parent may be the reservation's: ask (§5.13).
                        self.pending_auth = Some(PendingAuth {
                            token: token.clone(),
                            purpose: Purpose::RemoteStart,
                        });
                        effects.push(Effect::Authorize(token));
                    }
                    None => {
                        self.authorized(token, String::new(), now, effects);
                    }
                }
            }
            Input::Stop(reason) => match &self.state {
                State::Session { .. } => self.end_session(reason, None, now, effects),
                State::Authorized { .. } => self.state = State::Available,
                _ => return Err(Refusal::NotPermitted("no active session".into())),
            },
            Input::Reserve(reservation) => {
                let status = self.reserve(reservation, now, effects);
                effects.push(Effect::ReserveStatus(status));
            }
            Input::CancelReservation(id) => match &self.reservation {
                Some(held) if held.reservation.id == id => {
                    tracing::info!(
                        evse = self.spec.id,
                        reservation = id,
                        "reservation cancelled"
                    );
                    self.drop_reservation(now, effects);
                }
                _ => {
                    return Err(Refusal::NotFound(format!(
                        "EVSE {} holds no reservation {id}",
                        self.spec.id
                    )));
                }
            },
            Input::Unlock => self.unlock(now, effects),
            Input::SetConnectionTimeout(timeout) => self.connection_timeout = timeout,
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
                self.free_vend(now, effects);
            }
            State::Authorized { token, parent, .. } if connected => {
                let token = std::mem::take(token);
                let parent = std::mem::take(parent);
                self.start_session(token, parent, now, effects);
            }
            State::Occupied | State::Finishing if !connected => self.state = State::Available,
            State::Session { .. } if !connected => {
                self.end_session(StopReason::EvDisconnected, None, now, effects);
            }
            _ => {}
        }
    }

    /// Free vend starts a session for an EV waiting, unless a reservation
    /// keeps the EVSE for its token.
    fn free_vend(&mut self, now: Now, effects: &mut Vec<Effect>) {
        if self.spec.free_vend
            && self.operative
            && self.reservation.is_none()
            && matches!(self.state, State::Occupied)
        {
            self.start_session("FreeVend".into(), String::new(), now, effects);
        }
    }

    fn on_token(&mut self, token: String, now: Now, effects: &mut Vec<Effect>) {
        match &self.state {
            // The same card again ends its own session (OCPP 1.6 §3.5.2).
            State::Session { record, .. } if record.token.eq_ignore_ascii_case(&token) => {
                self.finish(StopReason::Local, None, token, now, effects);
            }
            // Another card ends it when it has the session's parent id: ask
            // for its parent (§3.5, TC_069).
            State::Session { record, .. } if !self.session_parent.is_empty() => {
                self.pending_auth = Some(PendingAuth {
                    token: token.clone(),
                    purpose: Purpose::Stop(record.id.clone()),
                });
                effects.push(Effect::Authorize(token));
            }
            State::Authorized { token: t, .. } if t.eq_ignore_ascii_case(&token) => {
                self.state = State::Available;
            }
            State::Available | State::Occupied | State::Finishing if self.operative => {
                self.pending_auth = Some(PendingAuth {
                    token: token.clone(),
                    purpose: Purpose::Start,
                });
                effects.push(Effect::Authorize(token));
            }
            _ => tracing::info!(evse = self.spec.id, token, "token ignored in this state"),
        }
    }

    fn on_auth_result(
        &mut self,
        token: String,
        status: AuthStatus,
        parent: String,
        now: Now,
        effects: &mut Vec<Effect>,
    ) {
        let Some(pending) = self.pending_auth.take_if(|p| p.token == token) else {
            return; // an answer to a request overtaken by events
        };
        let outcome = match pending.purpose {
            Purpose::Start if status != AuthStatus::Accepted => {
                tracing::info!(
                    evse = self.spec.id,
                    token,
                    status = status.as_str(),
                    "token not authorized"
                );
                Ok(status)
            }
            Purpose::Start => {
                if let Some(r) = self.excluding_reservation(&token, &parent) {
                    tracing::info!(
                        evse = self.spec.id,
                        token,
                        reservation = r.id,
                        "token refused: the EVSE is reserved for another"
                    );
                    Ok(AuthStatus::Invalid)
                } else if self.authorized(token.clone(), parent, now, effects) {
                    Ok(AuthStatus::Accepted)
                } else {
                    Err(self.not_taken())
                }
            }
            Purpose::Stop(session) => {
                let owns = !parent.is_empty()
                    && parent.eq_ignore_ascii_case(&self.session_parent)
                    && matches!(status, AuthStatus::Accepted | AuthStatus::ConcurrentTx);
                match &self.state {
                    State::Session { record, .. } if record.id == session && owns => {
                        tracing::info!(
                            evse = self.spec.id,
                            token,
                            parent,
                            "session stopped by its parent id"
                        );
                        self.finish(StopReason::Local, None, token.clone(), now, effects);
                        Ok(AuthStatus::Accepted)
                    }
                    State::Session { .. } => Err(Refusal::NotPermitted(format!(
                        "token {token} does not own the session"
                    ))),
                    _ => Err(self.not_taken()),
                }
            }
            Purpose::RemoteStart => {
                if let Some(r) = self.excluding_reservation(&token, &parent) {
                    Err(Refusal::NotPermitted(format!(
                        "EVSE is reserved for another token (reservation {})",
                        r.id
                    )))
                } else if self.authorized(token.clone(), parent, now, effects) {
                    Ok(AuthStatus::Accepted)
                } else {
                    Err(self.not_taken())
                }
            }
        };
        effects.push(Effect::TokenDecided { token, outcome });
    }

    /// The reservation held for someone other than `token` (of `parent`).
    fn excluding_reservation(&self, token: &str, parent: &str) -> Option<Reservation> {
        self.reservation
            .as_ref()
            .filter(|held| !held.reservation.admits(token, parent))
            .map(|held| held.reservation.clone())
    }

    fn not_taken(&self) -> Refusal {
        Refusal::NotPermitted(format!("token not taken while {}", self.status().as_str()))
    }

    /// Authorize a session for `token`: wait for the EV, or start at once.
    /// Returns whether the token was taken.
    fn authorized(
        &mut self,
        token: String,
        parent: String,
        now: Now,
        effects: &mut Vec<Effect>,
    ) -> bool {
        if !self.operative {
            return false;
        }
        match self.state {
            State::Available | State::Authorized { .. } => {
                let deadline = now.mono + self.connection_timeout;
                self.state = State::Authorized {
                    token,
                    parent,
                    deadline,
                };
                true
            }
            State::Occupied | State::Finishing => {
                self.start_session(token, parent, now, effects);
                true
            }
            _ => false,
        }
    }

    /// ReserveNow (§5.13): the checks in the order the spec lists them.
    fn reserve(
        &mut self,
        reservation: Reservation,
        now: Now,
        effects: &mut Vec<Effect>,
    ) -> ReserveStatus {
        if matches!(self.state, State::Faulted(_)) {
            return ReserveStatus::Faulted;
        }
        if !self.operative {
            return ReserveStatus::Unavailable;
        }
        let same_id = self
            .reservation
            .as_ref()
            .map(|held| held.reservation.id == reservation.id);
        let ev_connected = self.board.as_ref().is_some_and(|b| b.cp.ev_connected());
        let free = match &self.state {
            State::Available | State::Recovering { record: None } => !ev_connected,
            // An EV waiting at this very reservation: replacing it is fine.
            State::Occupied => same_id == Some(true),
            _ => false,
        };
        if !free || same_id == Some(false) {
            return ReserveStatus::Occupied;
        }
        tracing::info!(
            evse = self.spec.id,
            reservation = reservation.id,
            token = reservation.token,
            expiry_ms = reservation.expiry_ms,
            "reserved"
        );
        effects.push(Effect::Reservation(Some(reservation.clone())));
        self.reservation = Some(Held {
            expires: mono_at(reservation.expiry_ms, now),
            reservation,
        });
        ReserveStatus::Accepted
    }

    /// The reservation ends unused (cancelled or expired).
    fn drop_reservation(&mut self, now: Now, effects: &mut Vec<Effect>) {
        if self.reservation.take().is_some() {
            effects.push(Effect::Reservation(None));
            // An EV that waited behind the reservation may charge now.
            self.free_vend(now, effects);
        }
    }

    /// UnlockConnector (§5.17): end the session first, then open the lock
    /// and wait for its feedback.
    fn unlock(&mut self, now: Now, effects: &mut Vec<Effect>) {
        if !self.spec.socket {
            // A tethered cable has no lock; the session is not ended either.
            effects.push(Effect::Unlock(UnlockStatus::NotSupported));
            return;
        }
        if let State::Recovering {
            record: Some(record),
        } = &self.state
        {
            self.state = State::Session {
                record: record.clone(),
                lock_deadline: None,
            };
        }
        if matches!(self.state, State::Session { .. }) {
            self.end_session(StopReason::UnlockCommand, None, now, effects);
        }
        if self.outputs().lock {
            // A welded contactor keeps the connector live: it stays locked.
            tracing::warn!(
                evse = self.spec.id,
                "unlock refused: the connector must stay locked"
            );
            effects.push(Effect::Unlock(UnlockStatus::UnlockFailed));
            return;
        }
        effects.push(Effect::ReleaseLock);
        self.unlock_deadline = Some(now.mono + LOCK_TIMEOUT);
    }

    /// An unlock is done once the feedback reads unlocked.
    fn check_unlock(&mut self, effects: &mut Vec<Effect>) {
        if self.unlock_deadline.is_some()
            && self
                .board
                .as_ref()
                .is_some_and(|b| b.lock == LockState::Unlocked)
        {
            self.unlock_deadline = None;
            effects.push(Effect::Unlock(UnlockStatus::Unlocked));
        }
    }

    fn on_tick(&mut self, now: Now, effects: &mut Vec<Effect>) {
        if let Some(limit) = self.limit
            && limit.expires.is_some_and(|at| at <= now.mono)
        {
            tracing::info!(evse = self.spec.id, "charging limit expired");
            self.limit = None;
        }
        if let Some(held) = &self.reservation
            && held.expires <= now.mono
        {
            tracing::info!(
                evse = self.spec.id,
                reservation = held.reservation.id,
                "reservation expired"
            );
            self.drop_reservation(now, effects);
        }
        if self.unlock_deadline.is_some_and(|at| at <= now.mono) {
            tracing::warn!(
                evse = self.spec.id,
                "unlock failed: the lock does not read unlocked"
            );
            self.unlock_deadline = None;
            effects.push(Effect::Unlock(UnlockStatus::UnlockFailed));
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

    fn start_session(
        &mut self,
        token: String,
        parent: String,
        now: Now,
        effects: &mut Vec<Effect>,
    ) {
        let meter = self.meter.map_or(0.0, |m| m.energy_wh);
        let consumed = self
            .reservation
            .take_if(|held| held.reservation.admits(&token, &parent))
            .map(|held| held.reservation.id);
        let mut record = SessionRecord {
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
        if let Some(id) = consumed {
            record.reservation_id = id;
        }
        tracing::info!(
            evse = self.spec.id,
            session = record.id,
            token = record.token,
            reservation = record.reservation_id,
            "session started"
        );
        self.session_parent = parent;
        effects.push(Effect::SessionStarted(record.clone()));
        if consumed.is_some() {
            effects.push(Effect::Reservation(None));
        }
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
        self.finish(reason, fault, String::new(), now, effects);
    }

    /// End the session; `stop_token` is the token that ended it, if one did.
    fn finish(
        &mut self,
        reason: StopReason,
        fault: Option<Fault>,
        stop_token: String,
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
        record.stop_token = stop_token;
        self.session_parent.clear();
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
            // §4.9: Reserved until the reserved identity is presented, even
            // with an EV plugged in.
            State::Available | State::Occupied | State::Recovering { record: None }
                if self.reservation.is_some() && self.operative =>
            {
                ConnectorStatus::Reserved
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

    /// The reservation held, if any.
    pub fn reservation(&self) -> Option<&Reservation> {
        self.reservation.as_ref().map(|held| &held.reservation)
    }

    /// The parent id of the active session's token; empty when none.
    pub fn session_parent(&self) -> &str {
        &self.session_parent
    }

    pub fn connection_timeout(&self) -> Duration {
        self.connection_timeout
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
        deadlines.extend(self.reservation.as_ref().map(|held| held.expires));
        deadlines.extend(self.unlock_deadline);
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
