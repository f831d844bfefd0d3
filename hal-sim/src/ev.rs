//! Simulated electric vehicles: how an EV answers the control pilot
//! (IEC 61851-1 Annex A: S2 closed → state C when it wants energy and a
//! charging current is offered) and how its battery fills.

/// A DC EV lowers its current over this much state of charge (%) before
/// its target…
pub const TAPER_PERCENT: f64 = 10.0;
/// …down to this fraction of its maximum.
pub const TAPER_FLOOR: f64 = 0.2;

/// A kind of car `Sim1.Plug` can plug in.
#[derive(Debug, Clone, PartialEq)]
pub struct EvProfile {
    pub name: &'static str,
    pub dc: bool,
    /// AC: phases the on-board charger uses.
    pub phases: u8,
    /// AC: the most current the on-board charger draws per phase (A).
    pub max_current_a: f64,
    /// DC: battery voltage (V).
    pub battery_voltage_v: f64,
    pub capacity_wh: f64,
    pub initial_soc: f64,
    /// The EV stops charging (opens S2 → state B) at this SoC.
    pub target_soc: f64,
    /// Cable rating coded on PP (A), for socket outlets.
    pub cable_a: u8,
}

pub const PROFILES: &[EvProfile] = &[
    EvProfile {
        name: "ac-11kw",
        dc: false,
        phases: 3,
        max_current_a: 16.0,
        battery_voltage_v: 0.0,
        capacity_wh: 60_000.0,
        initial_soc: 20.0,
        target_soc: 100.0,
        cable_a: 32,
    },
    EvProfile {
        name: "ac-22kw",
        dc: false,
        phases: 3,
        max_current_a: 32.0,
        battery_voltage_v: 0.0,
        capacity_wh: 77_000.0,
        initial_soc: 35.0,
        target_soc: 100.0,
        cable_a: 32,
    },
    EvProfile {
        name: "ac-7kw-1ph",
        dc: false,
        phases: 1,
        max_current_a: 32.0,
        battery_voltage_v: 0.0,
        capacity_wh: 40_000.0,
        initial_soc: 50.0,
        target_soc: 100.0,
        cable_a: 32,
    },
    // Nearly full: stops on its own soon, to exercise Charging → SuspendedEV.
    EvProfile {
        name: "ac-nearly-full",
        dc: false,
        phases: 3,
        max_current_a: 16.0,
        battery_voltage_v: 0.0,
        capacity_wh: 10_000.0,
        initial_soc: 99.5,
        target_soc: 100.0,
        cable_a: 20,
    },
    EvProfile {
        name: "dc-400v",
        dc: true,
        phases: 0,
        max_current_a: 200.0,
        battery_voltage_v: 400.0,
        capacity_wh: 80_000.0,
        initial_soc: 30.0,
        target_soc: 80.0,
        cable_a: 0,
    },
];

pub fn profile(name: &str) -> Option<&'static EvProfile> {
    PROFILES.iter().find(|p| p.name == name)
}

/// A car plugged in.
#[derive(Debug, Clone)]
pub struct Ev {
    pub profile: &'static EvProfile,
    pub soc: f64,
}

impl Ev {
    pub fn new(profile: &'static EvProfile) -> Self {
        Ev {
            profile,
            soc: profile.initial_soc,
        }
    }

    pub fn wants_energy(&self) -> bool {
        self.soc < self.profile.target_soc
    }

    /// Whether the EV closes S2 (state C) given what the EVSE offers.
    pub fn ready(&self, offered_a: f64, digital: bool) -> bool {
        self.wants_energy()
            && if self.profile.dc {
                digital
            } else {
                offered_a >= 6.0
            }
    }

    /// AC current per phase the EV draws: the lower of the offer and its
    /// charger's maximum.
    pub fn ac_current(&self, offered_a: f64) -> f64 {
        if self.profile.dc {
            0.0
        } else {
            offered_a.min(self.profile.max_current_a)
        }
    }

    /// DC: the battery's voltage (its profile's, or
    /// [`DEFAULT_DC_VOLTAGE_V`](crate::meter::DEFAULT_DC_VOLTAGE_V) where
    /// the profile gives none).
    pub fn battery_voltage_v(&self) -> f64 {
        if self.profile.battery_voltage_v > 0.0 {
            self.profile.battery_voltage_v
        } else {
            crate::meter::DEFAULT_DC_VOLTAGE_V
        }
    }

    /// DC: the current the EV asks for (whole amperes): its maximum, less
    /// over the last [`TAPER_PERCENT`] of state of charge before its
    /// target (down to [`TAPER_FLOOR`] of the maximum), 0 once it wants no
    /// more energy.
    pub fn dc_demand_a(&self) -> f64 {
        if !self.profile.dc || !self.wants_energy() {
            return 0.0;
        }
        let headroom = self.profile.target_soc - self.soc;
        let factor = (headroom / TAPER_PERCENT).clamp(TAPER_FLOOR, 1.0);
        (self.profile.max_current_a * factor).round()
    }

    pub fn absorb(&mut self, energy_wh: f64) {
        self.soc = (self.soc + energy_wh / self.profile.capacity_wh * 100.0).min(100.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ac_car_follows_the_offer() {
        let ev = Ev::new(profile("ac-11kw").unwrap());
        assert!(!ev.ready(0.0, false), "no PWM offer: stays in B");
        assert!(ev.ready(10.0, false));
        assert_eq!(ev.ac_current(10.0), 10.0);
        assert_eq!(ev.ac_current(32.0), 16.0);
    }

    #[test]
    fn full_car_stops() {
        let mut ev = Ev::new(profile("ac-nearly-full").unwrap());
        assert!(ev.wants_energy());
        ev.absorb(100.0);
        assert!(!ev.wants_energy());
        assert!(!ev.ready(16.0, false));
    }

    #[test]
    fn dc_car_asks_for_its_maximum_then_tapers_near_its_target() {
        let mut ev = Ev::new(profile("dc-400v").unwrap());
        assert_eq!(ev.battery_voltage_v(), 400.0);
        assert_eq!(ev.dc_demand_a(), 200.0, "30 % of an 80 % target");
        ev.soc = 75.0;
        assert_eq!(ev.dc_demand_a(), 100.0, "half-way through the taper");
        ev.soc = 79.9;
        assert_eq!(ev.dc_demand_a(), 40.0, "the floor");
        ev.soc = 80.0;
        assert_eq!(ev.dc_demand_a(), 0.0, "full: nothing");
        let ac = Ev::new(profile("ac-11kw").unwrap());
        assert_eq!(ac.dc_demand_a(), 0.0);
    }

    #[test]
    fn dc_car_needs_digital_communication() {
        let ev = Ev::new(profile("dc-400v").unwrap());
        assert!(!ev.ready(16.0, false));
        assert!(ev.ready(0.0, true));
    }
}
