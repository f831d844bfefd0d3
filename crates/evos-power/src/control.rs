//! The output setpoint of one EVSE: the lowest of every limit, ramped.
//!
//! The EV asks for a voltage and a current (through `evse`, which already
//! folds in its smart-charging limit and the cable's rating); the modules
//! assigned to the output bound current and power, and the pool's share
//! bounds power. Current rises at the configured ramp rate and falls at
//! once: a lower limit is a limit now, not after a ramp.

/// Everything that bounds one output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// What `evse` asks for (EV request, smart-charging limit and cable
    /// folded in), A.
    pub requested_a: f64,
    /// The requested output voltage, V.
    pub voltage_v: f64,
    /// What the assigned, usable modules deliver together, A.
    pub modules_a: f64,
    /// The output's power budget (module capacity and pool share), W.
    pub budget_w: f64,
    /// The modules' voltage range, V.
    pub min_voltage_v: f64,
    pub max_voltage_v: f64,
}

impl Limits {
    /// The current this output may carry now, A.
    pub fn allowed_current_a(&self) -> f64 {
        let by_power = if self.voltage_v > 0.0 {
            self.budget_w / self.voltage_v
        } else {
            0.0
        };
        self.requested_a.min(self.modules_a).min(by_power).max(0.0)
    }

    /// The voltage to set, within the modules' range; `None` when the EV
    /// asks for a voltage the modules cannot make.
    pub fn voltage_v(&self) -> Option<f64> {
        (self.voltage_v >= self.min_voltage_v && self.voltage_v <= self.max_voltage_v)
            .then_some(self.voltage_v)
    }
}

/// Current ramp, A/s upwards; downwards at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ramp {
    pub rate_a_per_s: f64,
}

impl Ramp {
    /// The next setpoint from `present` towards `allowed` after `dt_s`.
    pub fn step(&self, present_a: f64, allowed_a: f64, dt_s: f64) -> f64 {
        if allowed_a <= present_a {
            allowed_a
        } else {
            (present_a + self.rate_a_per_s * dt_s.max(0.0)).min(allowed_a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            requested_a: 200.0,
            voltage_v: 400.0,
            modules_a: 120.0,
            budget_w: 60_000.0,
            min_voltage_v: 150.0,
            max_voltage_v: 1000.0,
        }
    }

    #[test]
    fn the_lowest_limit_wins() {
        // 60 kW at 400 V: 150 A; modules: 120 A; request 200 A.
        assert_eq!(limits().allowed_current_a(), 120.0);
        let l = Limits {
            requested_a: 50.0,
            ..limits()
        };
        assert_eq!(l.allowed_current_a(), 50.0);
        let l = Limits {
            budget_w: 20_000.0,
            ..limits()
        };
        assert_eq!(l.allowed_current_a(), 50.0);
        let l = Limits {
            voltage_v: 0.0,
            ..limits()
        };
        assert_eq!(l.allowed_current_a(), 0.0);
        let l = Limits {
            requested_a: -3.0,
            ..limits()
        };
        assert_eq!(l.allowed_current_a(), 0.0);
    }

    #[test]
    fn voltage_outside_the_modules_range_is_refused() {
        assert_eq!(limits().voltage_v(), Some(400.0));
        let l = Limits {
            voltage_v: 1100.0,
            ..limits()
        };
        assert_eq!(l.voltage_v(), None);
        let l = Limits {
            voltage_v: 100.0,
            ..limits()
        };
        assert_eq!(l.voltage_v(), None);
    }

    #[test]
    fn current_ramps_up_and_drops_at_once() {
        let ramp = Ramp { rate_a_per_s: 20.0 };
        assert_eq!(ramp.step(0.0, 100.0, 0.5), 10.0);
        assert_eq!(ramp.step(95.0, 100.0, 0.5), 100.0);
        assert_eq!(ramp.step(100.0, 30.0, 0.1), 30.0);
        assert_eq!(ramp.step(10.0, 100.0, -1.0), 10.0);
    }

    proptest::proptest! {
        #[test]
        fn the_setpoint_never_exceeds_any_limit(
            requested in -10.0f64..500.0,
            voltage in 0.0f64..1000.0,
            modules in 0.0f64..500.0,
            budget in 0.0f64..400_000.0,
            present in 0.0f64..500.0,
            dt in 0.0f64..2.0,
        ) {
            let l = Limits { requested_a: requested, voltage_v: voltage, modules_a: modules, budget_w: budget, ..limits() };
            let next = Ramp { rate_a_per_s: 50.0 }.step(present, l.allowed_current_a(), dt);
            proptest::prop_assert!(next <= requested.max(0.0) + 1e-9);
            proptest::prop_assert!(next <= modules + 1e-9);
            proptest::prop_assert!(next * voltage <= budget + 1e-6);
            proptest::prop_assert!(next >= 0.0);
            if next > present {
                proptest::prop_assert!(next <= present + 50.0 * dt + 1e-9, "upwards only at the ramp rate");
            }
        }
    }
}
