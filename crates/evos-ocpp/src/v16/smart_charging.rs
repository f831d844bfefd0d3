//! OCPP 1.6 Smart Charging (edition 2, §3.13) as pure domain logic: the
//! installed charging profiles (§7.8–7.14, §7.37), SetChargingProfile (§5.16),
//! ClearChargingProfile (§5.5) and GetCompositeSchedule (§5.7), and the limit
//! the station must enforce at a given instant.
//!
//! Times are Unix milliseconds, durations seconds. The station glue converts
//! the wire types to these and back; the only I/O here is this module's own
//! state file, replaced atomically on every change.
//!
//! How an instant's limit on a connector is found:
//! - per purpose, the profile with the highest stack level among those
//!   *active* at that instant wins (§3.13.2): active means within
//!   validFrom/validTo and inside its schedule (after its start, before
//!   start + duration); a period runs until the next one or the schedule's
//!   end, so when a higher profile ends the lower one shows through;
//! - TxProfile beats TxDefaultProfile (§3.13.1); a TxDefaultProfile on the
//!   connector itself overrides the station-wide one on connector 0;
//! - the result is capped by the ChargePointMaxProfile (§3.13.1).
//!   ChargePointMax limits the whole station; we take min(connector's limit,
//!   ChargePointMax), which is exact while one connector is charging and
//!   conservative with several. For connector 0 the answer is the
//!   ChargePointMax alone (simplification: no sum over connectors).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const DAY_MS: i64 = 86_400_000;
/// Bound on the segments of one composite schedule, so a CSMS asking for a
/// century of a daily profile cannot pin the CPU; the answer's duration is
/// shortened to what was computed.
const MAX_SEGMENTS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum SmartChargingError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid electrical parameters: {0}")]
    Electrical(&'static str),
}

/// ChargingProfilePurposeType (§7.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    ChargePointMax,
    TxDefault,
    Tx,
}

/// ChargingProfileKindType (§7.9) with its RecurrencyKindType (§7.37).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Absolute,
    Recurring(Recurrency),
    Relative,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recurrency {
    Daily,
    Weekly,
}

impl Recurrency {
    /// Recurrences are fixed 24 h / 7 d steps from startSchedule (a UTC
    /// instant), so daylight-saving changes do not shift them.
    fn period_ms(self) -> i64 {
        match self {
            Recurrency::Daily => DAY_MS,
            Recurrency::Weekly => 7 * DAY_MS,
        }
    }
}

/// ChargingRateUnitType (§7.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateUnit {
    A,
    W,
}

/// ChargingSchedulePeriod (§7.14): from `start_s` after the schedule's start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Period {
    pub start_s: u32,
    pub limit: f64,
    pub number_phases: Option<u8>,
}

/// ChargingSchedule (§7.13).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub duration_s: Option<u32>,
    pub start_ms: Option<i64>,
    pub unit: RateUnit,
    pub periods: Vec<Period>,
    pub min_rate: Option<f64>,
}

/// ChargingProfile (§7.8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub id: i32,
    pub transaction_id: Option<i32>,
    pub stack_level: u32,
    pub purpose: Purpose,
    pub kind: Kind,
    pub valid_from_ms: Option<i64>,
    pub valid_to_ms: Option<i64>,
    pub schedule: Schedule,
}

/// ChargingProfileStatus (§7.11); a rejection carries why, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetResult {
    Accepted,
    Rejected(&'static str),
    /// Never produced here; for the glue when smart charging is disabled.
    NotSupported,
}

/// ClearChargingProfile.req (§5.5); all `None` clears everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClearCriteria {
    pub id: Option<i32>,
    pub connector: Option<u32>,
    pub purpose: Option<Purpose>,
    pub stack_level: Option<u32>,
}

/// The supply, from station config: converts A ⇄ W as
/// watts = amps per phase × phases × voltage (phase-to-neutral).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Electrical {
    pub voltage_v: f64,
    pub phases: u8,
    /// Per-phase current the station can deliver: the composite's limit
    /// where no profile applies.
    pub max_current_a: f64,
}

impl Electrical {
    /// `limit` in `from` as `to`, with the period's phases (default: the
    /// supply's). Converted values are rounded to 0.1, the schema's
    /// `multipleOf` for limits.
    pub fn convert(
        &self,
        limit: f64,
        from: RateUnit,
        to: RateUnit,
        number_phases: Option<u8>,
    ) -> f64 {
        if from == to {
            return limit;
        }
        let watts_per_amp = f64::from(number_phases.unwrap_or(self.phases)) * self.voltage_v;
        let converted = match to {
            RateUnit::W => limit * watts_per_amp,
            RateUnit::A => limit / watts_per_amp,
        };
        (converted * 10.0).round() / 10.0
    }
}

/// The limit in force: (limit, unit, numberPhases).
pub type InForce = (f64, RateUnit, Option<u8>);

/// A period of the composite schedule (§7.14), `start_s` after `start_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct CompositePeriod {
    pub start_s: u32,
    pub limit: f64,
    pub number_phases: Option<u8>,
}

/// GetCompositeSchedule.conf's chargingSchedule (§5.7, §7.13).
#[derive(Debug, Clone, PartialEq)]
pub struct Composite {
    pub start_ms: i64,
    pub duration_s: u32,
    pub unit: RateUnit,
    pub periods: Vec<CompositePeriod>,
    pub min_rate: Option<f64>,
}

/// The station's advertised bounds (configuration keys
/// ChargeProfileMaxStackLevel, ChargingScheduleMaxPeriods,
/// MaxChargingProfilesInstalled, §9.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_stack_level: u32,
    pub max_periods: usize,
    pub max_profiles: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Installed {
    connector: u32,
    profile: Profile,
}

#[derive(Serialize, Deserialize, Default)]
struct State {
    profiles: Vec<Installed>,
}

/// The installed profiles, per connector (0 = the whole station), persisted
/// to one JSON file.
#[derive(Debug)]
pub struct ProfileStore {
    path: PathBuf,
    connectors: u32,
    limits: Limits,
    electrical: Electrical,
    installed: Vec<Installed>,
}

/// One profile's period in force at an instant.
#[derive(Clone, Copy)]
struct Active<'a> {
    profile: &'a Profile,
    period: &'a Period,
}

/// What a query is about: the running transaction (which TxProfiles apply)
/// and where Relative schedules start.
struct Ctx {
    tx: Option<i32>,
    relative_start_ms: i64,
}

impl Ctx {
    /// §7.9 Relative: the schedule starts at the transaction start; without
    /// a transaction, at the time of the query.
    fn new(now_ms: i64, tx: Option<(i32, i64)>) -> Ctx {
        Ctx {
            tx: tx.map(|(id, _)| id),
            relative_start_ms: tx.map_or(now_ms, |(_, start)| start),
        }
    }
}

impl Profile {
    fn valid_at(&self, t: i64) -> bool {
        self.valid_from_ms.is_none_or(|from| t >= from) && self.valid_to_ms.is_none_or(|to| t < to)
    }

    /// Start of the schedule instance relevant at `t`. §7.13: an Absolute
    /// schedule without startSchedule is relative to the start of charging.
    /// Recurring: the latest recurrence start ≤ t, stepping back whole
    /// recurrences when `t` is before startSchedule.
    fn instance_start(&self, t: i64, relative_start_ms: i64) -> Option<i64> {
        match self.kind {
            Kind::Absolute => Some(self.schedule.start_ms.unwrap_or(relative_start_ms)),
            Kind::Relative => Some(relative_start_ms),
            Kind::Recurring(r) => {
                let start = self.schedule.start_ms?;
                let period = r.period_ms();
                let k = t.saturating_sub(start).div_euclid(period);
                Some(start.saturating_add(k.saturating_mul(period)))
            }
        }
    }

    /// How long one instance runs: the duration, else forever (Absolute,
    /// Relative) or until the next recurrence.
    fn instance_len_ms(&self) -> Option<i64> {
        let duration = self.schedule.duration_s.map(|d| i64::from(d) * 1000);
        match self.kind {
            Kind::Recurring(r) => Some(duration.map_or(r.period_ms(), |d| d.min(r.period_ms()))),
            _ => duration,
        }
    }

    fn period_at(&self, t: i64, relative_start_ms: i64) -> Option<&Period> {
        if !self.valid_at(t) {
            return None;
        }
        let start = self.instance_start(t, relative_start_ms)?;
        if t < start {
            return None;
        }
        let offset = t - start;
        if self.instance_len_ms().is_some_and(|len| offset >= len) {
            return None;
        }
        self.schedule
            .periods
            .iter()
            .rev()
            .find(|p| i64::from(p.start_s) * 1000 <= offset)
    }

    /// The first instant after `t` at which this profile's contribution may
    /// change: a validity edge, period start, schedule end or recurrence.
    fn next_event(&self, t: i64, relative_start_ms: i64) -> Option<i64> {
        let mut next: Option<i64> = None;
        let mut consider = |x: i64| {
            if x > t && next.is_none_or(|n| x < n) {
                next = Some(x);
            }
        };
        self.valid_from_ms.into_iter().for_each(&mut consider);
        self.valid_to_ms.into_iter().for_each(&mut consider);
        if let Some(start) = self.instance_start(t, relative_start_ms) {
            for p in &self.schedule.periods {
                consider(start.saturating_add(i64::from(p.start_s) * 1000));
            }
            if let Some(len) = self.instance_len_ms() {
                consider(start.saturating_add(len));
            }
            if let Kind::Recurring(r) = self.kind {
                consider(start.saturating_add(r.period_ms()));
            }
        }
        next
    }
}

/// The highest-stack-level profile active at `t` (§3.13.2).
fn top<'a>(profiles: impl Iterator<Item = &'a Profile>, t: i64, ctx: &Ctx) -> Option<Active<'a>> {
    profiles
        .filter_map(|profile| {
            profile
                .period_at(t, ctx.relative_start_ms)
                .map(|period| Active { profile, period })
        })
        .max_by_key(|a| a.profile.stack_level)
}

/// The two sides of an instant: the transaction's limit (Tx or TxDefault)
/// and the station's (ChargePointMax).
#[derive(Clone, Copy)]
struct Sides<'a> {
    tx: Option<Active<'a>>,
    station: Option<Active<'a>>,
}

impl<'a> Sides<'a> {
    fn any_in_amps(&self) -> bool {
        [self.tx, self.station]
            .iter()
            .flatten()
            .any(|a| a.profile.schedule.unit == RateUnit::A)
    }

    fn is_empty(&self) -> bool {
        self.tx.is_none() && self.station.is_none()
    }
}

impl ProfileStore {
    /// Loads the profiles saved at `path` (none if the file does not exist).
    /// Profiles for connectors beyond `connectors` are dropped.
    pub fn open(
        path: &Path,
        connectors: u32,
        limits: Limits,
        electrical: Electrical,
    ) -> Result<ProfileStore, SmartChargingError> {
        if !(electrical.voltage_v.is_finite() && electrical.voltage_v > 0.0) {
            return Err(SmartChargingError::Electrical("voltage must be positive"));
        }
        if !(1..=3).contains(&electrical.phases) {
            return Err(SmartChargingError::Electrical("phases must be 1 to 3"));
        }
        if !(electrical.max_current_a.is_finite() && electrical.max_current_a >= 0.0) {
            return Err(SmartChargingError::Electrical(
                "maximum current must be ≥ 0",
            ));
        }
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<State>(&bytes).map_err(|source| {
                SmartChargingError::Parse {
                    path: path.to_owned(),
                    source,
                }
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(source) => {
                return Err(SmartChargingError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut installed = state.profiles;
        installed.retain(|i| {
            let keep = i.connector <= connectors;
            if !keep {
                tracing::warn!(
                    id = i.profile.id,
                    connector = i.connector,
                    "dropping profile of unknown connector"
                );
            }
            keep
        });
        Ok(ProfileStore {
            path: path.to_owned(),
            connectors,
            limits,
            electrical,
            installed,
        })
    }

    /// The installed profiles with their connectors.
    pub fn profiles(&self) -> impl Iterator<Item = (u32, &Profile)> {
        self.installed.iter().map(|i| (i.connector, &i.profile))
    }

    fn validate(
        &self,
        connector: u32,
        p: &Profile,
        active_tx: Option<i32>,
    ) -> Result<(), &'static str> {
        if connector > self.connectors {
            return Err("unknown connector");
        }
        match p.purpose {
            // §7.10: ChargePointMaxProfile only on connector 0.
            Purpose::ChargePointMax if connector != 0 => {
                return Err("ChargePointMaxProfile only on connector 0");
            }
            Purpose::Tx if connector == 0 => return Err("TxProfile not on connector 0"),
            // §5.16: a TxProfile without a transaction on the connector is
            // discarded; §7.8: transactionId matches it to one transaction.
            Purpose::Tx => match (active_tx, p.transaction_id) {
                (None, _) => return Err("TxProfile without an active transaction"),
                (Some(active), Some(given)) if active != given => {
                    return Err("TxProfile for another transaction");
                }
                _ => {}
            },
            _ if p.transaction_id.is_some() => {
                return Err("transactionId only valid for a TxProfile");
            }
            _ => {}
        }
        if p.stack_level > self.limits.max_stack_level {
            return Err("stack level above ChargeProfileMaxStackLevel");
        }
        if matches!(p.kind, Kind::Recurring(_)) && p.schedule.start_ms.is_none() {
            return Err("Recurring profile without startSchedule");
        }
        if let (Some(from), Some(to)) = (p.valid_from_ms, p.valid_to_ms)
            && from >= to
        {
            return Err("validFrom not before validTo");
        }
        let periods = &p.schedule.periods;
        if periods.is_empty() {
            return Err("no schedule periods");
        }
        if periods.len() > self.limits.max_periods {
            return Err("more periods than ChargingScheduleMaxPeriods");
        }
        if periods[0].start_s != 0 {
            return Err("first period does not start at 0");
        }
        if periods.windows(2).any(|w| w[1].start_s <= w[0].start_s) {
            return Err("period starts not increasing");
        }
        if periods
            .iter()
            .any(|q| !(q.limit.is_finite() && q.limit >= 0.0))
        {
            return Err("negative or non-finite limit");
        }
        if periods
            .iter()
            .any(|q| q.number_phases.is_some_and(|n| !(1..=3).contains(&n)))
        {
            return Err("numberPhases not 1 to 3");
        }
        if p.schedule
            .min_rate
            .is_some_and(|m| !(m.is_finite() && m >= 0.0))
        {
            return Err("negative or non-finite minChargingRate");
        }
        Ok(())
    }

    /// SetChargingProfile (§5.16), or the profile of RemoteStartTransaction
    /// once its transaction runs. `active_tx`: the transaction running on
    /// `connector`. Replaces the profile with the same id, and the one with
    /// the same stack level and purpose on the same connector (§3.13.2).
    pub fn set(
        &mut self,
        connector: u32,
        mut profile: Profile,
        active_tx: Option<i32>,
    ) -> SetResult {
        if let Err(why) = self.validate(connector, &profile, active_tx) {
            return SetResult::Rejected(why);
        }
        if profile.purpose == Purpose::Tx {
            // Pin it to the transaction so transaction_ended finds it.
            profile.transaction_id = active_tx;
        }
        let previous = self.installed.clone();
        self.installed.retain(|i| {
            !(i.profile.id == profile.id
                || (i.connector == connector
                    && i.profile.stack_level == profile.stack_level
                    && i.profile.purpose == profile.purpose))
        });
        if self.installed.len() >= self.limits.max_profiles {
            self.installed = previous;
            return SetResult::Rejected("MaxChargingProfilesInstalled reached");
        }
        self.installed.push(Installed { connector, profile });
        if let Err(e) = self.persist() {
            tracing::error!(error = %e, "cannot save charging profiles");
            self.installed = previous;
            return SetResult::Rejected("cannot save the profile");
        }
        SetResult::Accepted
    }

    /// ClearChargingProfile (§5.5): by id alone, or else every profile
    /// matching all the given criteria. Returns whether any matched
    /// (Accepted, else Unknown).
    pub fn clear(&mut self, criteria: &ClearCriteria) -> bool {
        let matches = |i: &Installed| match criteria.id {
            Some(id) => i.profile.id == id,
            None => {
                criteria.connector.is_none_or(|c| c == i.connector)
                    && criteria.purpose.is_none_or(|p| p == i.profile.purpose)
                    && criteria
                        .stack_level
                        .is_none_or(|s| s == i.profile.stack_level)
            }
        };
        let before = self.installed.len();
        self.installed.retain(|i| !matches(i));
        let cleared = self.installed.len() != before;
        if cleared {
            self.persist_or_log();
        }
        cleared
    }

    /// A transaction on `connector` ended: its TxProfiles are dropped
    /// (§3.13.1: a TxProfile applies to its transaction only). With no id,
    /// every TxProfile on the connector goes.
    pub fn transaction_ended(&mut self, connector: u32, transaction_id: Option<i32>) {
        let before = self.installed.len();
        self.installed.retain(|i| {
            !(i.connector == connector
                && i.profile.purpose == Purpose::Tx
                && (transaction_id.is_none()
                    || i.profile.transaction_id.is_none()
                    || i.profile.transaction_id == transaction_id))
        });
        if self.installed.len() != before {
            self.persist_or_log();
        }
    }

    fn persist(&self) -> std::io::Result<()> {
        let state = State {
            profiles: self.installed.clone(),
        };
        let json = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?;
        evos_service::persist::write_atomic(&self.path, &json)
    }

    /// Clearing must happen whether or not the disk cooperates; a failure
    /// only means the old profiles may return after a restart.
    fn persist_or_log(&self) {
        if let Err(e) = self.persist() {
            tracing::error!(error = %e, path = %self.path.display(), "cannot save charging profiles");
        }
    }

    /// The profiles that can matter for `connector`.
    fn relevant<'a>(
        &'a self,
        connector: u32,
        ctx: &'a Ctx,
    ) -> impl Iterator<Item = &'a Installed> + 'a {
        self.installed
            .iter()
            .filter(move |i| match i.profile.purpose {
                Purpose::ChargePointMax => i.connector == 0,
                _ if connector == 0 => false,
                Purpose::TxDefault => i.connector == 0 || i.connector == connector,
                Purpose::Tx => {
                    i.connector == connector
                        && ctx
                            .tx
                            .is_some_and(|tx| i.profile.transaction_id.is_none_or(|id| id == tx))
                }
            })
    }

    fn sides<'a>(&'a self, connector: u32, t: i64, ctx: &'a Ctx) -> Sides<'a> {
        let of = |purpose: Purpose, on: u32| {
            self.relevant(connector, ctx)
                .filter(move |i| i.profile.purpose == purpose && i.connector == on)
                .map(|i| &i.profile)
        };
        let station = top(of(Purpose::ChargePointMax, 0), t, ctx);
        if connector == 0 {
            return Sides { tx: None, station };
        }
        let tx = top(of(Purpose::Tx, connector), t, ctx)
            .or_else(|| top(of(Purpose::TxDefault, connector), t, ctx))
            .or_else(|| top(of(Purpose::TxDefault, 0), t, ctx));
        Sides { tx, station }
    }

    /// The lower of the two sides. Compared per phase in A unless both are
    /// in W, so the choice does not depend on the unit of the answer; on a
    /// tie the transaction's side governs (its phases, its minChargingRate).
    fn governing<'a>(&self, sides: Sides<'a>) -> Option<Active<'a>> {
        match (sides.tx, sides.station) {
            (Some(tx), Some(station)) => {
                let unit = if sides.any_in_amps() {
                    RateUnit::A
                } else {
                    RateUnit::W
                };
                let value = |a: Active| {
                    self.electrical.convert(
                        a.period.limit,
                        a.profile.schedule.unit,
                        unit,
                        a.period.number_phases,
                    )
                };
                Some(if value(station) < value(tx) {
                    station
                } else {
                    tx
                })
            }
            (tx, station) => tx.or(station),
        }
    }

    fn next_event(&self, connector: u32, t: i64, ctx: &Ctx) -> Option<i64> {
        self.relevant(connector, ctx)
            .filter_map(|i| i.profile.next_event(t, ctx.relative_start_ms))
            .min()
    }

    fn value_in(&self, a: Active, unit: RateUnit) -> f64 {
        self.electrical.convert(
            a.period.limit,
            a.profile.schedule.unit,
            unit,
            a.period.number_phases,
        )
    }

    /// GetCompositeSchedule (§3.13.5, §5.7): the limit on `connector` from
    /// `now_ms` for `duration_s`, in `unit` (None: A if any governing
    /// profile is in A, else W). `tx`: the running transaction's id and
    /// start. Intervals no profile covers get the station's maximum, since
    /// a 1.6 schedule cannot leave a gap. None for an unknown connector or
    /// when no profile applies in the window.
    pub fn composite(
        &self,
        connector: u32,
        now_ms: i64,
        duration_s: u32,
        unit: Option<RateUnit>,
        tx: Option<(i32, i64)>,
    ) -> Option<Composite> {
        if connector > self.connectors {
            return None;
        }
        let ctx = Ctx::new(now_ms, tx);
        let mut end = now_ms.saturating_add(i64::from(duration_s) * 1000);
        let mut segments: Vec<(i64, Sides)> = Vec::new();
        let mut t = now_ms;
        loop {
            segments.push((t, self.sides(connector, t, &ctx)));
            match self.next_event(connector, t, &ctx) {
                Some(next) if next < end => {
                    if segments.len() == MAX_SEGMENTS {
                        end = next;
                        break;
                    }
                    t = next;
                }
                _ => break,
            }
        }
        if segments.iter().all(|(_, s)| s.is_empty()) {
            return None;
        }
        let unit = unit.unwrap_or(if segments.iter().any(|(_, s)| s.any_in_amps()) {
            RateUnit::A
        } else {
            RateUnit::W
        });
        let fill = self
            .electrical
            .convert(self.electrical.max_current_a, RateUnit::A, unit, None);

        let mut min_rate = None;
        let mut periods: Vec<CompositePeriod> = Vec::new();
        for (t, sides) in &segments {
            let governing = self.governing(*sides);
            let (limit, number_phases) = match governing {
                Some(a) => (self.value_in(a, unit), a.period.number_phases),
                None => (fill, None),
            };
            if min_rate.is_none()
                && let Some(a) = governing
                && let Some(rate) = a.profile.schedule.min_rate
            {
                min_rate = Some(self.electrical.convert(
                    rate,
                    a.profile.schedule.unit,
                    unit,
                    a.period.number_phases,
                ));
            }
            // Boundaries off whole seconds start their period at the second
            // before; a later segment in the same second wins it.
            let start_s = u32::try_from((t - now_ms) / 1000).unwrap_or(u32::MAX);
            let period = CompositePeriod {
                start_s,
                limit,
                number_phases,
            };
            match periods.last_mut() {
                Some(last) if last.start_s == start_s => *last = period,
                _ => periods.push(period),
            }
        }
        periods.dedup_by(|later, earlier| {
            later.limit == earlier.limit && later.number_phases == earlier.number_phases
        });
        Some(Composite {
            start_ms: now_ms,
            duration_s: u32::try_from((end - now_ms) / 1000).unwrap_or(u32::MAX),
            unit,
            periods,
            min_rate,
        })
    }

    /// The limit in force on `connector` at `now_ms` — (limit, unit,
    /// numberPhases), in A if any governing profile is in A — or None when
    /// no profile applies; and the next instant it may change (the next
    /// period start, validity edge, schedule end or recurrence of any
    /// relevant profile), for pushing to evse.
    pub fn limit_at(
        &self,
        connector: u32,
        now_ms: i64,
        tx: Option<(i32, i64)>,
    ) -> (Option<InForce>, Option<i64>) {
        if connector > self.connectors {
            return (None, None);
        }
        let ctx = Ctx::new(now_ms, tx);
        let sides = self.sides(connector, now_ms, &ctx);
        let unit = if sides.any_in_amps() {
            RateUnit::A
        } else {
            RateUnit::W
        };
        let limit = self
            .governing(sides)
            .map(|a| (self.value_in(a, unit), unit, a.period.number_phases));
        (limit, self.next_event(connector, now_ms, &ctx))
    }
}

#[cfg(test)]
mod tests;
