//! Simulated electric vehicles: how an EV answers the control pilot
//! (IEC 61851-1 Annex A: S2 closed → state C when it wants energy and a
//! charging current is offered) and how its battery fills.

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
    fn dc_car_needs_digital_communication() {
        let ev = Ev::new(profile("dc-400v").unwrap());
        assert!(!ev.ready(16.0, false));
        assert!(ev.ready(0.0, true));
    }
}
