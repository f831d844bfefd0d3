//! Which modules feed which EVSE output, and how much each output may draw.
//!
//! Modules are wired either to one output ("home" modules) or to a pool
//! that a contactor matrix switches between outputs. The pool is split
//! among the outputs with an active session, so one car alone gets every
//! pooled module and two cars share them; the split changes only when a
//! session starts or ends, never because a module faulted (moving modules
//! means opening contactors under no load, which only a session change
//! justifies). Power is then shared by water-filling: no output gets more
//! than it asks for, the rest goes to the others, and no module, no output
//! and no pool limit is ever exceeded.

use std::collections::BTreeMap;

/// A module as the allocator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleView {
    pub address: u8,
    /// Answering and free of faults that stop it.
    pub usable: bool,
    pub max_current_a: f64,
    pub max_power_w: f64,
    /// 1.0 normally; less while the module derates itself.
    pub derate: f64,
}

/// An EVSE output and what it asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputView {
    pub evse: u32,
    /// Modules wired only to this output.
    pub home: Vec<u8>,
    /// A session is active: this output takes a share of the pool.
    pub active: bool,
    /// Power the EV asks for (its requested voltage × current), W.
    pub demand_w: f64,
}

/// Modules per EVSE output (pool modules of idle outputs are unassigned).
pub type Assignment = BTreeMap<u32, Vec<u8>>;

/// Split `pool` among the active outputs: round-robin in address order over
/// the outputs in EVSE order, so the result depends only on which outputs
/// are active.
pub fn assign(outputs: &[OutputView], pool: &[u8]) -> Assignment {
    let mut assignment: Assignment = outputs.iter().map(|o| (o.evse, o.home.clone())).collect();
    let mut active: Vec<u32> = outputs
        .iter()
        .filter(|o| o.active)
        .map(|o| o.evse)
        .collect();
    active.sort_unstable();
    if active.is_empty() {
        return assignment;
    }
    let mut pool = pool.to_vec();
    pool.sort_unstable();
    // Contiguous blocks rather than alternating, so a change moves as few
    // modules as possible.
    let per = pool.len() / active.len();
    let extra = pool.len() % active.len();
    let mut next = 0;
    for (i, evse) in active.iter().enumerate() {
        let take = per + usize::from(i < extra);
        if let Some(modules) = assignment.get_mut(evse) {
            modules.extend_from_slice(&pool[next..next + take]);
        }
        next += take;
    }
    assignment
}

/// What the modules assigned to an output can deliver together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub current_a: f64,
    pub power_w: f64,
    pub usable_modules: usize,
}

pub fn capacity(modules: &[&ModuleView]) -> Capacity {
    let usable = modules.iter().filter(|m| m.usable);
    Capacity {
        current_a: usable.clone().map(|m| m.max_current_a * m.derate).sum(),
        power_w: usable.clone().map(|m| m.max_power_w * m.derate).sum(),
        usable_modules: usable.count(),
    }
}

/// An output still wanting power: (evse, most it can take, W).
type Open = (u32, f64);

/// Power budgets per output: each gets at most its demand and its
/// modules' capacity, the pool's limit is shared by water-filling (equal
/// shares, what one output leaves unused goes to the others).
pub fn budgets(requests: &[(u32, f64, f64)], pool_max_w: f64) -> BTreeMap<u32, f64> {
    // (evse, demand, capacity) → cap = min(demand, capacity)
    let mut open: Vec<Open> = requests
        .iter()
        .map(|(evse, demand, capacity)| (*evse, demand.min(*capacity).max(0.0)))
        .collect();
    let mut budget: BTreeMap<u32, f64> = open.iter().map(|(e, _)| (*e, 0.0)).collect();
    let mut left = pool_max_w.max(0.0);
    while !open.is_empty() && left > 1e-9 {
        let share = left / open.len() as f64;
        let (satisfied, hungry): (Vec<Open>, Vec<Open>) =
            open.into_iter().partition(|(_, cap)| *cap <= share);
        if satisfied.is_empty() {
            for (evse, _) in &hungry {
                *budget.entry(*evse).or_default() += share;
            }
            break;
        }
        for (evse, cap) in &satisfied {
            *budget.entry(*evse).or_default() += cap;
            left -= cap;
        }
        open = hungry;
    }
    budget
}

/// Split an output current over its usable modules, each within its own
/// limit (the modules are paralleled and share the load equally).
pub fn split_current(total_a: f64, modules: &[&ModuleView]) -> BTreeMap<u8, f64> {
    let usable: Vec<&&ModuleView> = modules.iter().filter(|m| m.usable).collect();
    let mut split: BTreeMap<u8, f64> = modules.iter().map(|m| (m.address, 0.0)).collect();
    if usable.is_empty() || total_a <= 0.0 {
        return split;
    }
    let each = total_a / usable.len() as f64;
    for m in usable {
        split.insert(m.address, each.min(m.max_current_a * m.derate));
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(evse: u32, active: bool) -> OutputView {
        OutputView {
            evse,
            home: Vec::new(),
            active,
            demand_w: 0.0,
        }
    }

    fn module(address: u8) -> ModuleView {
        ModuleView {
            address,
            usable: true,
            max_current_a: 30.0,
            max_power_w: 30_000.0,
            derate: 1.0,
        }
    }

    #[test]
    fn one_car_gets_the_whole_pool_two_cars_share_it() {
        let pool = [1, 2, 3, 4];
        let one = assign(&[output(1, true), output(2, false)], &pool);
        assert_eq!(one[&1], [1, 2, 3, 4]);
        assert_eq!(one[&2], [] as [u8; 0]);
        let two = assign(&[output(1, true), output(2, true)], &pool);
        assert_eq!(two[&1], [1, 2]);
        assert_eq!(two[&2], [3, 4]);
        let second_only = assign(&[output(1, false), output(2, true)], &pool);
        assert_eq!(second_only[&2], [1, 2, 3, 4]);
        let idle = assign(&[output(1, false), output(2, false)], &pool);
        assert!(idle.values().all(Vec::is_empty));
    }

    #[test]
    fn home_modules_stay_home_and_odd_pools_split_deterministically() {
        let mut a = output(1, true);
        a.home = vec![9];
        let mut b = output(2, true);
        b.home = vec![10];
        let split = assign(&[b.clone(), a.clone()], &[5, 3, 1]);
        assert_eq!(split[&1], [9, 1, 3]);
        assert_eq!(split[&2], [10, 5]);
        b.active = false;
        let alone = assign(&[a, b], &[5, 3, 1]);
        assert_eq!(alone[&1], [9, 1, 3, 5]);
        assert_eq!(alone[&2], [10]);
    }

    #[test]
    fn capacity_counts_usable_modules_and_derating() {
        let mut hot = module(2);
        hot.derate = 0.5;
        let mut dead = module(3);
        dead.usable = false;
        let all = [module(1), hot, dead];
        let refs: Vec<&ModuleView> = all.iter().collect();
        let c = capacity(&refs);
        assert_eq!(c.usable_modules, 2);
        assert_eq!(c.current_a, 45.0);
        assert_eq!(c.power_w, 45_000.0);
    }

    #[test]
    fn budgets_never_exceed_demand_capacity_or_pool() {
        // Both want more than half of 100 kW: equal shares.
        let b = budgets(
            &[(1, 80_000.0, 120_000.0), (2, 90_000.0, 120_000.0)],
            100_000.0,
        );
        assert_eq!(b[&1], 50_000.0);
        assert_eq!(b[&2], 50_000.0);
        // One asks little: the other gets the rest.
        let b = budgets(
            &[(1, 20_000.0, 120_000.0), (2, 90_000.0, 120_000.0)],
            100_000.0,
        );
        assert_eq!(b[&1], 20_000.0);
        assert_eq!(b[&2], 80_000.0);
        // Capacity bounds before the pool does.
        let b = budgets(
            &[(1, 90_000.0, 30_000.0), (2, 90_000.0, 120_000.0)],
            100_000.0,
        );
        assert_eq!(b[&1], 30_000.0);
        assert_eq!(b[&2], 70_000.0);
        // Plenty for all.
        let b = budgets(
            &[(1, 10_000.0, 60_000.0), (2, 5_000.0, 60_000.0)],
            100_000.0,
        );
        assert_eq!((b[&1], b[&2]), (10_000.0, 5_000.0));
    }

    #[test]
    fn current_is_split_equally_within_each_modules_limit() {
        let mut hot = module(2);
        hot.derate = 0.5;
        let mut dead = module(3);
        dead.usable = false;
        let all = [module(1), hot, dead];
        let refs: Vec<&ModuleView> = all.iter().collect();
        let s = split_current(40.0, &refs);
        assert_eq!(s[&1], 20.0);
        assert_eq!(s[&2], 15.0, "a derating module gets no more than it can");
        assert_eq!(s[&3], 0.0);
        assert!(split_current(-1.0, &refs).values().all(|a| *a == 0.0));
    }

    proptest::proptest! {
        #[test]
        fn budgets_respect_every_limit(
            requests in proptest::collection::vec((0.0f64..200_000.0, 0.0f64..200_000.0), 1..5),
            pool in 0.0f64..400_000.0,
        ) {
            let requests: Vec<(u32, f64, f64)> = requests
                .iter()
                .enumerate()
                .map(|(i, (d, c))| (i as u32 + 1, *d, *c))
                .collect();
            let b = budgets(&requests, pool);
            let total: f64 = b.values().sum();
            proptest::prop_assert!(total <= pool + 1e-6);
            for (evse, demand, capacity) in &requests {
                proptest::prop_assert!(b[evse] <= demand.min(*capacity) + 1e-6);
                proptest::prop_assert!(b[evse] >= 0.0);
            }
            // Nothing is left unused while someone still wants more.
            let wanting = requests.iter().any(|(e, d, c)| b[e] + 1e-6 < d.min(*c));
            if wanting {
                proptest::prop_assert!(total >= pool - 1e-6);
            }
        }
    }
}
