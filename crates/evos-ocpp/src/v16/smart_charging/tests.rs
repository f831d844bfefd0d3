use super::*;
use proptest::prelude::*;
use tempfile::TempDir;

/// 2023-11-15T00:00:00Z.
const D0: i64 = 19_676 * DAY_MS;
const H: i64 = 3_600_000;
const MIN: i64 = 60_000;
const ELEC: Electrical = Electrical {
    voltage_v: 230.0,
    phases: 3,
    max_current_a: 32.0,
};
const LIMITS: Limits = Limits {
    max_stack_level: 10,
    max_periods: 8,
    max_profiles: 16,
};

fn open(dir: &TempDir) -> ProfileStore {
    ProfileStore::open(&dir.path().join("profiles.json"), 2, LIMITS, ELEC).unwrap()
}

fn profile(
    id: i32,
    purpose: Purpose,
    stack_level: u32,
    kind: Kind,
    start_ms: Option<i64>,
    periods: &[(u32, f64)],
) -> Profile {
    Profile {
        id,
        transaction_id: None,
        stack_level,
        purpose,
        kind,
        valid_from_ms: None,
        valid_to_ms: None,
        schedule: Schedule {
            duration_s: None,
            start_ms,
            unit: RateUnit::A,
            periods: periods
                .iter()
                .map(|&(start_s, limit)| Period {
                    start_s,
                    limit,
                    number_phases: None,
                })
                .collect(),
            min_rate: None,
        },
    }
}

fn absolute(
    id: i32,
    purpose: Purpose,
    stack_level: u32,
    start_ms: i64,
    periods: &[(u32, f64)],
) -> Profile {
    profile(
        id,
        purpose,
        stack_level,
        Kind::Absolute,
        Some(start_ms),
        periods,
    )
}

fn duration(mut p: Profile, s: u32) -> Profile {
    p.schedule.duration_s = Some(s);
    p
}

fn valid(mut p: Profile, from: Option<i64>, to: Option<i64>) -> Profile {
    p.valid_from_ms = from;
    p.valid_to_ms = to;
    p
}

fn watts(mut p: Profile) -> Profile {
    p.schedule.unit = RateUnit::W;
    p
}

fn limits_of(c: &Composite) -> Vec<(u32, f64)> {
    c.periods.iter().map(|p| (p.start_s, p.limit)).collect()
}

/// One composite query over a set of installed profiles.
struct Case {
    name: &'static str,
    /// (connector, profile, transaction running there)
    installed: Vec<(u32, Profile, Option<i32>)>,
    connector: u32,
    now_ms: i64,
    duration_s: u32,
    unit: Option<RateUnit>,
    tx: Option<(i32, i64)>,
    /// None: no profile applies in the window.
    expect: Option<(RateUnit, Vec<(u32, f64)>)>,
}

#[test]
fn composite_schedules_period_by_period() {
    use Purpose::*;
    let always = D0 - DAY_MS;
    let night = duration(
        profile(
            1,
            TxDefault,
            0,
            Kind::Recurring(Recurrency::Daily),
            Some(D0 - 2 * H),
            &[(0, 10.0), (14_400, 6.0)],
        ),
        8 * 3600,
    );
    let weekly = duration(
        profile(
            1,
            TxDefault,
            0,
            Kind::Recurring(Recurrency::Weekly),
            Some(D0 + 8 * H),
            &[(0, 6.0)],
        ),
        10 * 3600,
    );
    let relative = duration(
        profile(
            1,
            TxDefault,
            0,
            Kind::Relative,
            None,
            &[(0, 6.0), (600, 16.0)],
        ),
        3600,
    );
    let tx_over_default = || {
        vec![
            (1, absolute(1, TxDefault, 5, always, &[(0, 16.0)]), None),
            (
                1,
                duration(profile(2, Tx, 0, Kind::Relative, None, &[(0, 10.0)]), 3600),
                Some(7),
            ),
        ]
    };
    let mixed_units = || {
        vec![
            (
                0,
                watts(absolute(1, ChargePointMax, 0, always, &[(0, 11_040.0)])),
                None,
            ),
            (1, absolute(2, TxDefault, 0, always, &[(0, 20.0)]), None),
        ]
    };
    let cases = vec![
        Case {
            name: "single absolute profile, unlimited around it",
            installed: vec![(
                1,
                duration(
                    absolute(
                        1,
                        TxDefault,
                        0,
                        D0 + H,
                        &[(0, 16.0), (1800, 10.0), (3600, 20.0)],
                    ),
                    7200,
                ),
                None,
            )],
            connector: 1,
            now_ms: D0,
            duration_s: 4 * 3600,
            unit: None,
            tx: None,
            expect: Some((
                RateUnit::A,
                vec![
                    (0, 32.0),
                    (3600, 16.0),
                    (5400, 10.0),
                    (7200, 20.0),
                    (10_800, 32.0),
                ],
            )),
        },
        Case {
            name: "higher stack level wins only while valid and scheduled",
            installed: vec![
                (1, absolute(1, TxDefault, 0, always, &[(0, 16.0)]), None),
                (
                    1,
                    valid(
                        absolute(2, TxDefault, 1, always, &[(0, 8.0)]),
                        Some(D0 + H),
                        Some(D0 + 2 * H),
                    ),
                    None,
                ),
                (
                    1,
                    duration(absolute(3, TxDefault, 2, D0 + 30 * MIN, &[(0, 6.0)]), 600),
                    None,
                ),
            ],
            connector: 1,
            now_ms: D0,
            duration_s: 3 * 3600,
            unit: None,
            tx: None,
            expect: Some((
                RateUnit::A,
                vec![
                    (0, 16.0),
                    (1800, 6.0),
                    (2400, 16.0),
                    (3600, 8.0),
                    (7200, 16.0),
                ],
            )),
        },
        Case {
            name: "TxProfile beats a TxDefaultProfile of higher stack level",
            installed: tx_over_default(),
            connector: 1,
            now_ms: D0,
            duration_s: 2 * 3600,
            unit: None,
            tx: Some((7, D0)),
            expect: Some((RateUnit::A, vec![(0, 10.0), (3600, 16.0)])),
        },
        Case {
            name: "TxProfile of another transaction does not apply",
            installed: tx_over_default(),
            connector: 1,
            now_ms: D0,
            duration_s: 2 * 3600,
            unit: None,
            tx: Some((8, D0)),
            expect: Some((RateUnit::A, vec![(0, 16.0)])),
        },
        Case {
            name: "TxProfile does not apply without a transaction",
            installed: tx_over_default(),
            connector: 1,
            now_ms: D0,
            duration_s: 2 * 3600,
            unit: None,
            tx: None,
            expect: Some((RateUnit::A, vec![(0, 16.0)])),
        },
        Case {
            name: "ChargePointMax caps the connector",
            installed: vec![
                (
                    0,
                    absolute(1, ChargePointMax, 0, always, &[(0, 20.0)]),
                    None,
                ),
                (
                    1,
                    absolute(
                        2,
                        TxDefault,
                        0,
                        D0,
                        &[(0, 32.0), (1800, 10.0), (3600, 25.0)],
                    ),
                    None,
                ),
            ],
            connector: 1,
            now_ms: D0,
            duration_s: 2 * 3600,
            unit: None,
            tx: None,
            expect: Some((RateUnit::A, vec![(0, 20.0), (1800, 10.0), (3600, 20.0)])),
        },
        Case {
            name: "connector 0 is the ChargePointMax alone",
            installed: vec![
                (
                    0,
                    absolute(1, ChargePointMax, 0, always, &[(0, 20.0)]),
                    None,
                ),
                (0, absolute(2, TxDefault, 0, D0, &[(0, 10.0)]), None),
            ],
            connector: 0,
            now_ms: D0,
            duration_s: 3600,
            unit: None,
            tx: None,
            expect: Some((RateUnit::A, vec![(0, 20.0)])),
        },
        Case {
            name: "a connector's TxDefault overrides connector 0's while it applies",
            installed: vec![
                (0, absolute(1, TxDefault, 5, always, &[(0, 16.0)]), None),
                (
                    1,
                    valid(
                        absolute(2, TxDefault, 0, always, &[(0, 20.0)]),
                        None,
                        Some(D0 + H),
                    ),
                    None,
                ),
            ],
            connector: 1,
            now_ms: D0,
            duration_s: 2 * 3600,
            unit: None,
            tx: None,
            expect: Some((RateUnit::A, vec![(0, 20.0), (3600, 16.0)])),
        },
        Case {
            name: "connector 0's TxDefault applies to other connectors",
            installed: vec![
                (0, absolute(1, TxDefault, 5, always, &[(0, 16.0)]), None),
                (1, absolute(2, TxDefault, 0, always, &[(0, 20.0)]), None),
            ],
            connector: 2,
            now_ms: D0,
            duration_s: 3600,
            unit: None,
            tx: None,
            expect: Some((RateUnit::A, vec![(0, 16.0)])),
        },
        Case {
            name: "recurring daily across midnight",
            installed: vec![(1, night.clone(), None)],
            connector: 1,
            now_ms: D0 - 3 * H,
            duration_s: 26 * 3600,
            unit: None,
            tx: None,
            expect: Some((
                RateUnit::A,
                vec![
                    (0, 32.0),
                    (3600, 10.0),
                    (18_000, 6.0),
                    (32_400, 32.0),
                    (90_000, 10.0),
                ],
            )),
        },
        Case {
            name: "recurring daily before startSchedule steps back whole days",
            installed: vec![(1, night, None)],
            connector: 1,
            now_ms: D0 - 3 * H - 3 * DAY_MS,
            duration_s: 26 * 3600,
            unit: None,
            tx: None,
            expect: Some((
                RateUnit::A,
                vec![
                    (0, 32.0),
                    (3600, 10.0),
                    (18_000, 6.0),
                    (32_400, 32.0),
                    (90_000, 10.0),
                ],
            )),
        },
        Case {
            name: "recurring weekly, start of an occurrence",
            installed: vec![(1, weekly.clone(), None)],
            connector: 1,
            now_ms: D0 + 7 * DAY_MS + 7 * H,
            duration_s: 2 * 3600,
            unit: None,
            tx: None,
            expect: Some((RateUnit::A, vec![(0, 32.0), (3600, 6.0)])),
        },
        Case {
            name: "recurring weekly, end of an occurrence",
            installed: vec![(1, weekly.clone(), None)],
            connector: 1,
            now_ms: D0 + 14 * DAY_MS + 17 * H,
            duration_s: 2 * 3600,
            unit: None,
            tx: None,
            expect: Some((RateUnit::A, vec![(0, 6.0), (3600, 32.0)])),
        },
        Case {
            name: "recurring weekly, not on the other days",
            installed: vec![(1, weekly, None)],
            connector: 1,
            now_ms: D0 + DAY_MS + 8 * H,
            duration_s: 2 * 3600,
            unit: None,
            tx: None,
            expect: None,
        },
        Case {
            name: "relative anchored to the transaction start",
            installed: vec![(1, relative.clone(), None)],
            connector: 1,
            now_ms: D0 + 5 * MIN,
            duration_s: 3600,
            unit: None,
            tx: Some((1, D0)),
            expect: Some((RateUnit::A, vec![(0, 6.0), (300, 16.0), (3300, 32.0)])),
        },
        Case {
            name: "relative without a transaction starts now",
            installed: vec![(1, relative, None)],
            connector: 1,
            now_ms: D0 + 5 * MIN,
            duration_s: 3600,
            unit: None,
            tx: None,
            expect: Some((RateUnit::A, vec![(0, 6.0), (600, 16.0)])),
        },
        Case {
            name: "absolute without startSchedule is relative to the transaction",
            installed: vec![(
                1,
                duration(
                    profile(1, TxDefault, 0, Kind::Absolute, None, &[(0, 6.0)]),
                    600,
                ),
                None,
            )],
            connector: 1,
            now_ms: D0,
            duration_s: 3600,
            unit: None,
            tx: Some((1, D0 - 5 * MIN)),
            expect: Some((RateUnit::A, vec![(0, 6.0), (300, 32.0)])),
        },
        Case {
            name: "validFrom and validTo cut the schedule",
            installed: vec![(
                1,
                valid(
                    absolute(1, TxDefault, 0, D0, &[(0, 10.0)]),
                    Some(D0 + 10 * MIN),
                    Some(D0 + 20 * MIN),
                ),
                None,
            )],
            connector: 1,
            now_ms: D0,
            duration_s: 3600,
            unit: None,
            tx: None,
            expect: Some((RateUnit::A, vec![(0, 32.0), (600, 10.0), (1200, 32.0)])),
        },
        Case {
            name: "W profiles answer in W, the gap at the 3-phase maximum",
            installed: vec![(
                1,
                watts(duration(
                    absolute(1, TxDefault, 0, D0, &[(0, 11_000.0)]),
                    600,
                )),
                None,
            )],
            connector: 1,
            now_ms: D0,
            duration_s: 1200,
            unit: None,
            tx: None,
            expect: Some((RateUnit::W, vec![(0, 11_000.0), (600, 22_080.0)])),
        },
        Case {
            name: "W profile asked in A (3 phases)",
            installed: vec![(
                1,
                watts(absolute(1, TxDefault, 0, D0, &[(0, 11_040.0)])),
                None,
            )],
            connector: 1,
            now_ms: D0,
            duration_s: 600,
            unit: Some(RateUnit::A),
            tx: None,
            expect: Some((RateUnit::A, vec![(0, 16.0)])),
        },
        Case {
            name: "mixed units prefer A; W ChargePointMax converted per phase",
            installed: mixed_units(),
            connector: 1,
            now_ms: D0,
            duration_s: 600,
            unit: None,
            tx: None,
            expect: Some((RateUnit::A, vec![(0, 16.0)])),
        },
        Case {
            name: "mixed units asked in W",
            installed: mixed_units(),
            connector: 1,
            now_ms: D0,
            duration_s: 600,
            unit: Some(RateUnit::W),
            tx: None,
            expect: Some((RateUnit::W, vec![(0, 11_040.0)])),
        },
        Case {
            name: "no profiles",
            installed: vec![],
            connector: 1,
            now_ms: D0,
            duration_s: 600,
            unit: None,
            tx: None,
            expect: None,
        },
        Case {
            name: "unknown connector",
            installed: vec![(
                0,
                absolute(1, ChargePointMax, 0, always, &[(0, 20.0)]),
                None,
            )],
            connector: 3,
            now_ms: D0,
            duration_s: 600,
            unit: None,
            tx: None,
            expect: None,
        },
    ];
    for case in cases {
        let dir = TempDir::new().unwrap();
        let mut store = open(&dir);
        for (connector, p, active_tx) in case.installed {
            assert_eq!(
                store.set(connector, p, active_tx),
                SetResult::Accepted,
                "{}",
                case.name
            );
        }
        let got = store.composite(
            case.connector,
            case.now_ms,
            case.duration_s,
            case.unit,
            case.tx,
        );
        match (case.expect, got) {
            (None, got) => assert_eq!(got, None, "{}", case.name),
            (Some(_), None) => panic!("{}: no composite", case.name),
            (Some((unit, periods)), Some(got)) => {
                assert_eq!(got.start_ms, case.now_ms, "{}", case.name);
                assert_eq!(got.duration_s, case.duration_s, "{}", case.name);
                assert_eq!(got.unit, unit, "{}", case.name);
                assert_eq!(limits_of(&got), periods, "{}", case.name);
            }
        }
    }
}

#[test]
fn conversion_uses_the_period_phases() {
    assert_eq!(ELEC.convert(16.0, RateUnit::A, RateUnit::W, None), 11_040.0);
    assert_eq!(
        ELEC.convert(16.0, RateUnit::A, RateUnit::W, Some(3)),
        11_040.0
    );
    assert_eq!(
        ELEC.convert(16.0, RateUnit::A, RateUnit::W, Some(1)),
        3680.0
    );
    assert_eq!(
        ELEC.convert(3680.0, RateUnit::W, RateUnit::A, Some(1)),
        16.0
    );
    assert_eq!(ELEC.convert(11_000.0, RateUnit::W, RateUnit::A, None), 15.9);
    assert_eq!(
        ELEC.convert(11_000.0, RateUnit::W, RateUnit::W, None),
        11_000.0
    );

    // A one-phase W profile with a minimum rate, asked in A.
    let dir = TempDir::new().unwrap();
    let mut store = open(&dir);
    let mut p = watts(absolute(
        1,
        Purpose::TxDefault,
        0,
        D0,
        &[(0, 3680.0), (600, 2300.0)],
    ));
    p.schedule.periods[0].number_phases = Some(1);
    p.schedule.min_rate = Some(1380.0);
    assert_eq!(store.set(1, p, None), SetResult::Accepted);
    let got = store
        .composite(1, D0, 1200, Some(RateUnit::A), None)
        .unwrap();
    assert_eq!(
        got.periods,
        vec![
            CompositePeriod {
                start_s: 0,
                limit: 16.0,
                number_phases: Some(1)
            },
            CompositePeriod {
                start_s: 600,
                limit: 3.3,
                number_phases: None
            },
        ]
    );
    assert_eq!(got.min_rate, Some(6.0));
    let got = store.composite(1, D0, 1200, None, None).unwrap();
    assert_eq!(got.unit, RateUnit::W);
    assert_eq!(got.min_rate, Some(1380.0));
    assert_eq!(
        store.limit_at(1, D0, None).0,
        Some((3680.0, RateUnit::W, Some(1)))
    );
}

#[test]
fn replace_by_id_and_by_stack_level_and_purpose() {
    use Purpose::*;
    let dir = TempDir::new().unwrap();
    let mut store = open(&dir);
    let ids = |s: &ProfileStore| {
        let mut v: Vec<(u32, i32)> = s.profiles().map(|(c, p)| (c, p.id)).collect();
        v.sort();
        v
    };
    assert_eq!(
        store.set(1, absolute(1, TxDefault, 0, D0, &[(0, 10.0)]), None),
        SetResult::Accepted
    );
    // Same id, another stack level: replaced.
    assert_eq!(
        store.set(1, absolute(1, TxDefault, 3, D0, &[(0, 12.0)]), None),
        SetResult::Accepted
    );
    assert_eq!(ids(&store), vec![(1, 1)]);
    assert_eq!(
        store.limit_at(1, D0, None).0,
        Some((12.0, RateUnit::A, None))
    );
    // Same id on another connector: moved there.
    assert_eq!(
        store.set(2, absolute(1, TxDefault, 3, D0, &[(0, 13.0)]), None),
        SetResult::Accepted
    );
    assert_eq!(ids(&store), vec![(2, 1)]);
    // Same stack level and purpose on the same connector: replaced.
    assert_eq!(
        store.set(2, absolute(2, TxDefault, 3, D0, &[(0, 14.0)]), None),
        SetResult::Accepted
    );
    assert_eq!(ids(&store), vec![(2, 2)]);
    // ...but not on another connector, nor with another purpose.
    assert_eq!(
        store.set(1, absolute(3, TxDefault, 3, D0, &[(0, 15.0)]), None),
        SetResult::Accepted
    );
    assert_eq!(
        store.set(1, absolute(4, Tx, 3, D0, &[(0, 15.0)]), Some(9)),
        SetResult::Accepted
    );
    assert_eq!(ids(&store), vec![(1, 3), (1, 4), (2, 2)]);
}

#[test]
fn rejections() {
    use Purpose::*;
    let ok = || absolute(1, TxDefault, 0, D0, &[(0, 10.0), (60, 8.0)]);
    let mut with_tx = ok();
    with_tx.transaction_id = Some(3);
    let mut tx_other = absolute(1, Tx, 0, D0, &[(0, 10.0)]);
    tx_other.transaction_id = Some(4);
    let mut bad_phases = ok();
    bad_phases.schedule.periods[0].number_phases = Some(4);
    let mut negative_min = ok();
    negative_min.schedule.min_rate = Some(-1.0);
    let cases: Vec<(&str, u32, Profile, Option<i32>, &str)> = vec![
        (
            "tx without transaction",
            1,
            absolute(1, Tx, 0, D0, &[(0, 10.0)]),
            None,
            "TxProfile without an active transaction",
        ),
        (
            "tx of another transaction",
            1,
            tx_other,
            Some(3),
            "TxProfile for another transaction",
        ),
        (
            "tx on connector 0",
            0,
            absolute(1, Tx, 0, D0, &[(0, 10.0)]),
            Some(3),
            "TxProfile not on connector 0",
        ),
        (
            "max on connector 1",
            1,
            absolute(1, ChargePointMax, 0, D0, &[(0, 10.0)]),
            None,
            "ChargePointMaxProfile only on connector 0",
        ),
        (
            "transactionId on TxDefault",
            1,
            with_tx,
            Some(3),
            "transactionId only valid for a TxProfile",
        ),
        ("unknown connector", 3, ok(), None, "unknown connector"),
        (
            "stack level too high",
            1,
            absolute(1, TxDefault, 11, D0, &[(0, 10.0)]),
            None,
            "stack level above ChargeProfileMaxStackLevel",
        ),
        (
            "too many periods",
            1,
            absolute(
                1,
                TxDefault,
                0,
                D0,
                &(0..9).map(|i| (i * 60, 10.0)).collect::<Vec<_>>(),
            ),
            None,
            "more periods than ChargingScheduleMaxPeriods",
        ),
        (
            "no periods",
            1,
            absolute(1, TxDefault, 0, D0, &[]),
            None,
            "no schedule periods",
        ),
        (
            "first period not at 0",
            1,
            absolute(1, TxDefault, 0, D0, &[(10, 10.0)]),
            None,
            "first period does not start at 0",
        ),
        (
            "periods not increasing",
            1,
            absolute(1, TxDefault, 0, D0, &[(0, 10.0), (60, 8.0), (60, 6.0)]),
            None,
            "period starts not increasing",
        ),
        (
            "negative limit",
            1,
            absolute(1, TxDefault, 0, D0, &[(0, -1.0)]),
            None,
            "negative or non-finite limit",
        ),
        (
            "NaN limit",
            1,
            absolute(1, TxDefault, 0, D0, &[(0, f64::NAN)]),
            None,
            "negative or non-finite limit",
        ),
        ("phases 4", 1, bad_phases, None, "numberPhases not 1 to 3"),
        (
            "negative min rate",
            1,
            negative_min,
            None,
            "negative or non-finite minChargingRate",
        ),
        (
            "recurring without start",
            1,
            profile(
                1,
                TxDefault,
                0,
                Kind::Recurring(Recurrency::Daily),
                None,
                &[(0, 10.0)],
            ),
            None,
            "Recurring profile without startSchedule",
        ),
        (
            "validFrom after validTo",
            1,
            valid(ok(), Some(D0 + H), Some(D0)),
            None,
            "validFrom not before validTo",
        ),
    ];
    for (name, connector, p, active_tx, why) in cases {
        let dir = TempDir::new().unwrap();
        let mut store = open(&dir);
        assert_eq!(
            store.set(connector, p, active_tx),
            SetResult::Rejected(why),
            "{name}"
        );
        assert_eq!(store.profiles().count(), 0, "{name}");
    }
}

#[test]
fn too_many_profiles_rejected_but_replacement_allowed() {
    let dir = TempDir::new().unwrap();
    let limits = Limits {
        max_profiles: 2,
        ..LIMITS
    };
    let mut store = ProfileStore::open(&dir.path().join("p.json"), 2, limits, ELEC).unwrap();
    assert_eq!(
        store.set(
            1,
            absolute(1, Purpose::TxDefault, 0, D0, &[(0, 10.0)]),
            None
        ),
        SetResult::Accepted
    );
    assert_eq!(
        store.set(
            1,
            absolute(2, Purpose::TxDefault, 1, D0, &[(0, 10.0)]),
            None
        ),
        SetResult::Accepted
    );
    assert_eq!(
        store.set(
            1,
            absolute(3, Purpose::TxDefault, 2, D0, &[(0, 10.0)]),
            None
        ),
        SetResult::Rejected("MaxChargingProfilesInstalled reached")
    );
    assert_eq!(
        store.set(1, absolute(2, Purpose::TxDefault, 2, D0, &[(0, 9.0)]), None),
        SetResult::Accepted
    );
    assert_eq!(store.profiles().count(), 2);
}

#[test]
fn unsaved_profile_is_rejected_and_not_applied() {
    let dir = TempDir::new().unwrap();
    let mut store =
        ProfileStore::open(&dir.path().join("missing/p.json"), 2, LIMITS, ELEC).unwrap();
    assert_eq!(
        store.set(
            1,
            absolute(1, Purpose::TxDefault, 0, D0, &[(0, 10.0)]),
            None
        ),
        SetResult::Rejected("cannot save the profile")
    );
    assert_eq!(store.profiles().count(), 0);
}

#[test]
fn clear_by_each_criterion() {
    use Purpose::*;
    let install = |store: &mut ProfileStore| {
        let all = [
            (0, absolute(1, ChargePointMax, 0, D0, &[(0, 30.0)]), None),
            (0, absolute(2, TxDefault, 1, D0, &[(0, 20.0)]), None),
            (1, absolute(3, TxDefault, 2, D0, &[(0, 16.0)]), None),
            (1, absolute(4, Tx, 1, D0, &[(0, 10.0)]), Some(5)),
            (2, absolute(5, TxDefault, 1, D0, &[(0, 12.0)]), None),
        ];
        for (c, p, tx) in all {
            assert_eq!(store.set(c, p, tx), SetResult::Accepted);
        }
    };
    let c = |id, connector, purpose, stack_level| ClearCriteria {
        id,
        connector,
        purpose,
        stack_level,
    };
    let cases: Vec<(&str, ClearCriteria, Vec<i32>)> = vec![
        ("by id", c(Some(3), None, None, None), vec![1, 2, 4, 5]),
        (
            "id ignores the other criteria",
            c(Some(3), Some(2), Some(Tx), Some(7)),
            vec![1, 2, 4, 5],
        ),
        (
            "unknown id",
            c(Some(9), None, None, None),
            vec![1, 2, 3, 4, 5],
        ),
        ("by connector", c(None, Some(1), None, None), vec![1, 2, 5]),
        (
            "by connector 0",
            c(None, Some(0), None, None),
            vec![3, 4, 5],
        ),
        (
            "by purpose",
            c(None, None, Some(TxDefault), None),
            vec![1, 4],
        ),
        ("by stack level", c(None, None, None, Some(1)), vec![1, 3]),
        (
            "all criteria together",
            c(None, Some(2), Some(TxDefault), Some(1)),
            vec![1, 2, 3, 4],
        ),
        (
            "criteria matching nothing",
            c(None, Some(2), Some(Tx), None),
            vec![1, 2, 3, 4, 5],
        ),
        ("everything", c(None, None, None, None), vec![]),
    ];
    for (name, criteria, left) in cases {
        let dir = TempDir::new().unwrap();
        let mut store = open(&dir);
        install(&mut store);
        let matched = store.clear(&criteria);
        assert_eq!(matched, left.len() != 5, "{name}");
        let mut ids: Vec<i32> = store.profiles().map(|(_, p)| p.id).collect();
        ids.sort();
        assert_eq!(ids, left, "{name}");
        // Persisted.
        let mut ids: Vec<i32> = open(&dir).profiles().map(|(_, p)| p.id).collect();
        ids.sort();
        assert_eq!(ids, left, "{name} after reopen");
    }
}

#[test]
fn transaction_end_drops_its_tx_profiles() {
    use Purpose::*;
    let dir = TempDir::new().unwrap();
    let mut store = open(&dir);
    assert_eq!(
        store.set(1, absolute(1, TxDefault, 0, D0, &[(0, 16.0)]), None),
        SetResult::Accepted
    );
    assert_eq!(
        store.set(1, absolute(2, Tx, 0, D0, &[(0, 10.0)]), Some(7)),
        SetResult::Accepted
    );
    assert_eq!(
        store.set(2, absolute(3, Tx, 0, D0, &[(0, 8.0)]), Some(8)),
        SetResult::Accepted
    );
    assert_eq!(
        store
            .profiles()
            .find(|(_, p)| p.id == 2)
            .unwrap()
            .1
            .transaction_id,
        Some(7)
    );
    assert_eq!(
        store.limit_at(1, D0, Some((7, D0))).0,
        Some((10.0, RateUnit::A, None))
    );

    store.transaction_ended(1, Some(99));
    assert_eq!(store.profiles().count(), 3, "another transaction's end");
    store.transaction_ended(1, Some(7));
    let mut ids: Vec<i32> = open(&dir).profiles().map(|(_, p)| p.id).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 3]);
    assert_eq!(
        store.limit_at(1, D0, Some((7, D0))).0,
        Some((16.0, RateUnit::A, None))
    );
    store.transaction_ended(2, None);
    assert_eq!(
        store.profiles().map(|(_, p)| p.id).collect::<Vec<_>>(),
        vec![1]
    );
}

#[test]
fn profiles_survive_reopen() {
    use Purpose::*;
    let dir = TempDir::new().unwrap();
    let mut store = open(&dir);
    let mut daily = profile(
        1,
        TxDefault,
        2,
        Kind::Recurring(Recurrency::Daily),
        Some(D0),
        &[(0, 10.0), (3600, 20.0)],
    );
    daily.schedule.periods[1].number_phases = Some(1);
    daily.schedule.min_rate = Some(6.0);
    daily = valid(duration(daily, 7200), Some(D0), Some(D0 + 30 * DAY_MS));
    let max = watts(absolute(2, ChargePointMax, 0, D0, &[(0, 22_000.0)]));
    let tx = absolute(3, Tx, 1, D0, &[(0, 8.0)]);
    assert_eq!(store.set(1, daily.clone(), None), SetResult::Accepted);
    assert_eq!(store.set(0, max.clone(), None), SetResult::Accepted);
    assert_eq!(store.set(1, tx.clone(), Some(4)), SetResult::Accepted);
    let before = store.composite(1, D0, 86_400, None, Some((4, D0)));
    drop(store);

    let reopened = open(&dir);
    let mut got: Vec<(u32, Profile)> = reopened.profiles().map(|(c, p)| (c, p.clone())).collect();
    got.sort_by_key(|(_, p)| p.id);
    let tx = Profile {
        transaction_id: Some(4),
        ..tx
    };
    assert_eq!(got, vec![(1, daily), (0, max), (1, tx)]);
    assert_eq!(
        reopened.composite(1, D0, 86_400, None, Some((4, D0))),
        before
    );

    // Fewer connectors now: the profiles of the missing one are dropped.
    let fewer = ProfileStore::open(&dir.path().join("profiles.json"), 0, LIMITS, ELEC).unwrap();
    assert_eq!(
        fewer.profiles().map(|(_, p)| p.id).collect::<Vec<_>>(),
        vec![2]
    );
}

#[test]
fn open_rejects_bad_files_and_bad_electrical() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("profiles.json");
    std::fs::write(&path, b"{not json").unwrap();
    assert!(matches!(
        ProfileStore::open(&path, 2, LIMITS, ELEC),
        Err(SmartChargingError::Parse { .. })
    ));
    let other = dir.path().join("other.json");
    for bad in [
        Electrical {
            voltage_v: 0.0,
            ..ELEC
        },
        Electrical { phases: 0, ..ELEC },
        Electrical { phases: 4, ..ELEC },
        Electrical {
            max_current_a: f64::NAN,
            ..ELEC
        },
    ] {
        assert!(matches!(
            ProfileStore::open(&other, 2, LIMITS, bad),
            Err(SmartChargingError::Electrical(_))
        ));
    }
}

#[test]
fn limit_at_and_its_next_change() {
    use Purpose::*;
    let dir = TempDir::new().unwrap();
    let mut store = open(&dir);
    let daily = duration(
        profile(
            1,
            TxDefault,
            0,
            Kind::Recurring(Recurrency::Daily),
            Some(D0 + 22 * H),
            &[(0, 10.0), (3600, 8.0)],
        ),
        4 * 3600,
    );
    let upper = valid(
        absolute(2, TxDefault, 1, D0, &[(0, 6.0)]),
        Some(D0 + 23 * H + 30 * MIN),
        Some(D0 + 24 * H + 10 * MIN),
    );
    let max = absolute(3, ChargePointMax, 0, D0 + 25 * H, &[(0, 7.0)]);
    assert_eq!(store.set(1, daily, None), SetResult::Accepted);
    assert_eq!(store.set(1, upper, None), SetResult::Accepted);
    assert_eq!(store.set(0, max, None), SetResult::Accepted);
    let a = |l: f64| Some((l, RateUnit::A, None));
    let cases: Vec<(i64, Option<InForce>, Option<i64>)> = vec![
        // Yesterday's occurrence runs until 02:00.
        (D0, a(8.0), Some(D0 + 2 * H)),
        (D0 + 2 * H, None, Some(D0 + 22 * H)),
        (D0 + 22 * H, a(10.0), Some(D0 + 23 * H)),
        (D0 + 23 * H, a(8.0), Some(D0 + 23 * H + 30 * MIN)),
        (D0 + 23 * H + 30 * MIN, a(6.0), Some(D0 + 24 * H + 10 * MIN)),
        (D0 + 24 * H + 10 * MIN, a(8.0), Some(D0 + 25 * H)),
        (D0 + 25 * H, a(7.0), Some(D0 + 26 * H)),
        (D0 + 26 * H, a(7.0), Some(D0 + 46 * H)),
        (D0 + 46 * H - 1, a(7.0), Some(D0 + 46 * H)),
        (D0 + 46 * H, a(7.0), Some(D0 + 47 * H)),
    ];
    for (t, limit, next) in cases {
        assert_eq!(
            store.limit_at(1, t, None),
            (limit, next),
            "at D0 + {} s",
            (t - D0) / 1000
        );
    }
    assert_eq!(store.limit_at(0, D0 + 25 * H, None), (a(7.0), None));
    assert_eq!(store.limit_at(3, D0, None), (None, None));
}

#[test]
fn huge_composite_is_bounded() {
    let dir = TempDir::new().unwrap();
    let mut store = open(&dir);
    let daily = duration(
        profile(
            1,
            Purpose::TxDefault,
            0,
            Kind::Recurring(Recurrency::Daily),
            Some(D0),
            &[(0, 10.0), (3600, 8.0)],
        ),
        7200,
    );
    assert_eq!(store.set(1, daily, None), SetResult::Accepted);
    let got = store.composite(1, D0, u32::MAX, None, None).unwrap();
    assert!(got.duration_s < u32::MAX);
    assert!(got.duration_s > 365 * 86_400);
    assert_eq!(got.periods.len(), MAX_SEGMENTS);
}

fn arb_profile() -> impl Strategy<Value = (u32, Profile)> {
    let purpose = prop_oneof![
        Just((0u32, Purpose::ChargePointMax)),
        Just((0, Purpose::TxDefault)),
        Just((1, Purpose::TxDefault)),
        Just((1, Purpose::Tx)),
    ];
    let kind = prop_oneof![
        Just(Kind::Absolute),
        Just(Kind::Relative),
        Just(Kind::Recurring(Recurrency::Daily)),
        Just(Kind::Recurring(Recurrency::Weekly)),
    ];
    let periods =
        proptest::collection::vec((1u32..3600, 0u32..130, proptest::option::of(1u8..=3)), 1..5);
    let seconds = |lo: i64, hi: i64| (lo..hi).prop_map(|s| D0 + s * 1000);
    (
        (purpose, kind, 0u32..4, any::<bool>()),
        proptest::option::of(seconds(-3 * 3600, 3 * 3600)),
        proptest::option::of(60u32..10_000),
        (
            proptest::option::of(seconds(-3 * 3600, 3 * 3600)),
            proptest::option::of(1i64..20_000),
        ),
        periods,
        proptest::option::of(0u32..20),
    )
        .prop_map(
            |(
                (purpose, kind, stack_level, in_watts),
                start,
                duration_s,
                (from, valid_for),
                steps,
                min_rate,
            )| {
                let (connector, purpose) = purpose;
                let mut at = 0;
                let periods = steps
                    .into_iter()
                    .enumerate()
                    .map(|(i, (step, half_amps, number_phases))| {
                        if i > 0 {
                            at += step;
                        }
                        let amps = f64::from(half_amps) / 2.0;
                        Period {
                            start_s: at,
                            limit: if in_watts { amps * 230.0 } else { amps },
                            number_phases,
                        }
                    })
                    .collect();
                let start_ms = match kind {
                    Kind::Recurring(_) => Some(start.unwrap_or(D0)),
                    _ => start,
                };
                let profile = Profile {
                    id: 0,
                    transaction_id: None,
                    stack_level,
                    purpose,
                    kind,
                    valid_from_ms: from,
                    valid_to_ms: from.zip(valid_for).map(|(f, d)| f + d * 1000),
                    schedule: Schedule {
                        duration_s,
                        start_ms,
                        unit: if in_watts { RateUnit::W } else { RateUnit::A },
                        periods,
                        min_rate: min_rate.map(f64::from),
                    },
                };
                (connector, profile)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// At every sampled second, the limit in force is the composite's
    /// period covering it, and it holds until the announced next change.
    #[test]
    fn limit_at_matches_the_composite(
        profiles in proptest::collection::vec(arb_profile(), 0..6),
        now_s in -3600i64..3600,
        tx_age_s in 0i64..7200,
        duration_s in 1u32..(6 * 3600),
        samples in proptest::collection::vec(0.0f64..1.0, 24),
    ) {
        let dir = TempDir::new().unwrap();
        let limits = Limits { max_stack_level: 10, max_periods: 8, max_profiles: 16 };
        let mut store = ProfileStore::open(&dir.path().join("p.json"), 1, limits, ELEC).unwrap();
        for (id, (connector, mut p)) in profiles.into_iter().enumerate() {
            p.id = i32::try_from(id).unwrap();
            let result = store.set(connector, p, Some(5));
            prop_assert_eq!(result, SetResult::Accepted);
        }
        let now = D0 + now_s * 1000;
        let tx = Some((5, now - tx_age_s * 1000));
        let composite = store.composite(1, now, duration_s, None, tx);
        for f in samples {
            let t = now + (f * f64::from(duration_s)) as i64 * 1000;
            let (limit, next) = store.limit_at(1, t, tx);
            let Some(c) = &composite else {
                prop_assert_eq!(limit, None);
                continue;
            };
            let period = c.periods.iter().rev().find(|p| c.start_ms + i64::from(p.start_s) * 1000 <= t).unwrap();
            match limit {
                Some((l, unit, phases)) => {
                    prop_assert_eq!(ELEC.convert(l, unit, c.unit, phases), period.limit, "at {}", t);
                    prop_assert_eq!(phases, period.number_phases);
                }
                None => {
                    prop_assert_eq!(period.limit, ELEC.convert(ELEC.max_current_a, RateUnit::A, c.unit, None));
                    prop_assert_eq!(period.number_phases, None);
                }
            }
            if let Some(next) = next {
                prop_assert!(next > t);
                prop_assert_eq!(store.limit_at(1, next - 1, tx).0, limit);
            }
        }
    }
}
