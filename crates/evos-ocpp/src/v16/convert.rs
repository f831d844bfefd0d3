//! Between the OCPP 1.6 wire types (§7) and the domain types of
//! [`local_auth`](super::local_auth) and [`smart_charging`](super::smart_charging),
//! which keep times as Unix milliseconds and carry no serde quirks.

use crate::v16::local_auth::{AuthStatus, IdTagInfo};
use crate::v16::messages as m;
use crate::v16::smart_charging::{
    Composite, Kind, Period, Profile, Purpose, RateUnit, Recurrency, Schedule,
};
use crate::wire::{CiString, DateTime};

/// An id tag as sent (CiString20).
pub fn id_tag(tag: &str) -> Result<CiString<20>, String> {
    CiString::new(tag).map_err(|_| format!("id tag {tag:?} is longer than 20 characters"))
}

pub fn id_tag_info(info: &m::IdTagInfo) -> IdTagInfo {
    IdTagInfo {
        status: match info.status {
            m::AuthorizationStatus::Accepted => AuthStatus::Accepted,
            m::AuthorizationStatus::Blocked => AuthStatus::Blocked,
            m::AuthorizationStatus::Expired => AuthStatus::Expired,
            m::AuthorizationStatus::Invalid => AuthStatus::Invalid,
            m::AuthorizationStatus::ConcurrentTx => AuthStatus::ConcurrentTx,
        },
        expiry_ms: info.expiry_date.map(|d| d.unix_ms()),
        parent: info.parent_id_tag.as_ref().map(|p| p.as_str().to_owned()),
    }
}

pub fn purpose(p: m::ChargingProfilePurposeType) -> Purpose {
    match p {
        m::ChargingProfilePurposeType::ChargePointMaxProfile => Purpose::ChargePointMax,
        m::ChargingProfilePurposeType::TxDefaultProfile => Purpose::TxDefault,
        m::ChargingProfilePurposeType::TxProfile => Purpose::Tx,
    }
}

pub fn rate_unit(u: m::ChargingRateUnitType) -> RateUnit {
    match u {
        m::ChargingRateUnitType::A => RateUnit::A,
        m::ChargingRateUnitType::W => RateUnit::W,
    }
}

fn wire_unit(u: RateUnit) -> m::ChargingRateUnitType {
    match u {
        RateUnit::A => m::ChargingRateUnitType::A,
        RateUnit::W => m::ChargingRateUnitType::W,
    }
}

/// A charging profile as the CSMS sent it, checked for what the schema
/// cannot say (§7.8: a Recurring profile needs a recurrencyKind and a
/// startSchedule).
pub fn profile(p: &m::ChargingProfile) -> Result<Profile, String> {
    let kind = match p.charging_profile_kind {
        m::ChargingProfileKindType::Absolute => Kind::Absolute,
        m::ChargingProfileKindType::Relative => Kind::Relative,
        m::ChargingProfileKindType::Recurring => Kind::Recurring(match p.recurrency_kind {
            Some(m::RecurrencyKindType::Daily) => Recurrency::Daily,
            Some(m::RecurrencyKindType::Weekly) => Recurrency::Weekly,
            None => return Err("a Recurring profile needs recurrencyKind".into()),
        }),
    };
    let s = &p.charging_schedule;
    if matches!(kind, Kind::Recurring(_)) && s.start_schedule.is_none() {
        return Err("a Recurring profile needs startSchedule".into());
    }
    let periods = s
        .charging_schedule_period
        .iter()
        .map(|period| {
            Ok(Period {
                start_s: u32::try_from(period.start_period)
                    .map_err(|_| format!("negative startPeriod {}", period.start_period))?,
                limit: period.limit,
                number_phases: period
                    .number_phases
                    .map(|n| u8::try_from(n).map_err(|_| format!("numberPhases {n} out of range")))
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let stack_level =
        u32::try_from(p.stack_level).map_err(|_| "negative stackLevel".to_string())?;
    Ok(Profile {
        id: p.charging_profile_id,
        transaction_id: p.transaction_id,
        stack_level,
        purpose: purpose(p.charging_profile_purpose),
        kind,
        valid_from_ms: p.valid_from.map(|d| d.unix_ms()),
        valid_to_ms: p.valid_to.map(|d| d.unix_ms()),
        schedule: Schedule {
            duration_s: s
                .duration
                .map(|d| u32::try_from(d).map_err(|_| format!("negative duration {d}")))
                .transpose()?,
            start_ms: s.start_schedule.map(|d| d.unix_ms()),
            unit: rate_unit(s.charging_rate_unit),
            periods,
            min_rate: s.min_charging_rate,
        },
    })
}

/// GetCompositeSchedule.conf's scheduleStart and chargingSchedule.
pub fn composite(c: &Composite) -> (DateTime, m::ChargingSchedule) {
    let start = DateTime::from_unix_ms(c.start_ms);
    (
        start,
        m::ChargingSchedule {
            duration: Some(c.duration_s.min(i32::MAX as u32) as i32),
            start_schedule: Some(start),
            charging_rate_unit: wire_unit(c.unit),
            charging_schedule_period: c
                .periods
                .iter()
                .map(|p| m::ChargingSchedulePeriod {
                    start_period: p.start_s.min(i32::MAX as u32) as i32,
                    // One decimal is what §7.13 allows for the limit.
                    limit: (p.limit * 10.0).round() / 10.0,
                    number_phases: p.number_phases.map(i32::from),
                })
                .collect(),
            min_charging_rate: c.min_rate,
        },
    )
}
