//! The power controller, without I/O: what every module should be told in
//! each control step, given the outputs' targets, the modules' replies and
//! the sharing rules. The service feeds it time, targets and decoded
//! replies, and sends the commands it returns.
//!
//! Bus load is kept low (125 kbit/s is shared by every module): a
//! setpoint is sent when it changes and repeated once a second as the
//! modules' keep-alive; one module is polled per step, round-robin.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Config;
use crate::control::{Limits, Ramp};
use crate::module::{Module, ModuleEvent, Ratings};
use crate::protocol::{Command, Reply, Target};
use crate::sharing::{self, Assignment, ModuleView, OutputView};

/// A setpoint is repeated this often even when unchanged.
const KEEP_ALIVE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("no power output for EVSE {0}")]
    UnknownOutput(u32),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone)]
struct Output {
    evse: u32,
    home: Vec<u8>,
    enabled: bool,
    target_v: f64,
    target_a: f64,
    setpoint_a: f64,
    last_step: Option<Instant>,
}

/// What was last sent to a module, to send only changes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sent {
    voltage_v: f64,
    current_a: f64,
    on: bool,
    at: Instant,
}

/// What Power1 shows for one output.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OutputSnapshot {
    pub enabled: bool,
    pub target_v: f64,
    pub target_a: f64,
    /// The current commanded now (ramped, limited), A.
    pub setpoint_a: f64,
    /// Measured by the modules: mean voltage, summed current.
    pub voltage_v: f64,
    pub current_a: f64,
    /// (max V, max A, max W) of the assigned, usable modules.
    pub capabilities: (f64, f64, f64),
    pub modules: Vec<u8>,
    /// "module N: reason" for every fault of an assigned module.
    pub faults: Vec<String>,
    /// Non-empty when the output cannot deliver at all while enabled.
    pub fault: String,
}

pub struct Controller {
    timeout: Duration,
    ramp: Ramp,
    pool: Vec<u8>,
    pool_max_w: f64,
    modules: BTreeMap<u8, Module>,
    outputs: BTreeMap<u32, Output>,
    assignment: Assignment,
    sent: BTreeMap<u8, Sent>,
    rated_by_module: Vec<u8>,
    next_poll: usize,
}

/// One step's result.
#[derive(Debug, Default)]
pub struct Step {
    pub commands: Vec<(Target, Command)>,
    pub events: Vec<(u8, ModuleEvent)>,
    /// The assignment changed (a session started or ended).
    pub reassigned: bool,
}

impl Controller {
    pub fn new(config: &Config, module_timeout: Duration) -> Self {
        let modules = config
            .modules
            .iter()
            .map(|m| {
                let ratings = Ratings {
                    min_voltage_v: m.min_voltage_v,
                    max_voltage_v: m.max_voltage_v,
                    max_current_a: m.max_current_a,
                    max_power_w: m.max_power_w,
                };
                (m.address, Module::new(m.address, ratings))
            })
            .collect();
        let outputs: BTreeMap<u32, Output> = config
            .outputs
            .iter()
            .map(|o| {
                let output = Output {
                    evse: o.evse,
                    home: o.modules.clone(),
                    enabled: false,
                    target_v: 0.0,
                    target_a: 0.0,
                    setpoint_a: 0.0,
                    last_step: None,
                };
                (o.evse, output)
            })
            .collect();
        let mut controller = Controller {
            timeout: module_timeout,
            ramp: Ramp {
                rate_a_per_s: config.ramp_a_per_s,
            },
            pool: config.pool.clone(),
            pool_max_w: config.pool_max_power_w,
            modules,
            outputs,
            assignment: Assignment::new(),
            sent: BTreeMap::new(),
            rated_by_module: Vec::new(),
            next_poll: 0,
        };
        controller.assignment = sharing::assign(&controller.output_views(), &controller.pool);
        controller
    }

    fn output(&mut self, evse: u32) -> Result<&mut Output, Refusal> {
        self.outputs
            .get_mut(&evse)
            .ok_or(Refusal::UnknownOutput(evse))
    }

    pub fn outputs(&self) -> impl Iterator<Item = u32> + '_ {
        self.outputs.keys().copied()
    }

    pub fn set_target(&mut self, evse: u32, voltage_v: f64, current_a: f64) -> Result<(), Refusal> {
        if !(voltage_v.is_finite() && current_a.is_finite() && voltage_v >= 0.0 && current_a >= 0.0)
        {
            return Err(Refusal::Invalid(format!(
                "target {voltage_v} V {current_a} A: both must be finite and ≥ 0"
            )));
        }
        let output = self.output(evse)?;
        output.target_v = voltage_v;
        output.target_a = current_a;
        Ok(())
    }

    pub fn set_enabled(&mut self, evse: u32, enabled: bool) -> Result<(), Refusal> {
        let output = self.output(evse)?;
        output.enabled = enabled;
        if !enabled {
            output.setpoint_a = 0.0;
        }
        Ok(())
    }

    /// A decoded reply from module `address`.
    pub fn on_reply(&mut self, address: u8, reply: Reply, now: Instant) -> Vec<ModuleEvent> {
        if matches!(reply, Reply::Capabilities { .. }) && !self.rated_by_module.contains(&address) {
            self.rated_by_module.push(address);
        }
        match self.modules.get_mut(&address) {
            Some(module) => module.heard(reply, now, self.timeout),
            None => Vec::new(),
        }
    }

    fn output_views(&self) -> Vec<OutputView> {
        self.outputs
            .values()
            .map(|o| OutputView {
                evse: o.evse,
                home: o.home.clone(),
                active: o.enabled,
                demand_w: if o.enabled {
                    o.target_v * o.target_a
                } else {
                    0.0
                },
            })
            .collect()
    }

    fn views(&self, addresses: &[u8], now: Instant) -> Vec<ModuleView> {
        addresses
            .iter()
            .filter_map(|a| self.modules.get(a))
            .map(|m| m.view(now, self.timeout))
            .collect()
    }

    /// One control step at `now`.
    pub fn step(&mut self, now: Instant) -> Step {
        let mut step = Step::default();
        for module in self.modules.values_mut() {
            if let Some(event) = module.check(now, self.timeout) {
                step.events.push((module.address, event));
            }
        }
        let assignment = sharing::assign(&self.output_views(), &self.pool);
        step.reassigned = assignment != self.assignment;
        self.assignment = assignment;

        // Power budgets across outputs: demand, capacity, pool.
        let mut requests = Vec::new();
        for (evse, addresses) in &self.assignment {
            let views = self.views(addresses, now);
            let refs: Vec<&ModuleView> = views.iter().collect();
            let capacity = sharing::capacity(&refs);
            let demand = self.outputs[evse].target_v * self.outputs[evse].target_a;
            let demand = if self.outputs[evse].enabled {
                demand
            } else {
                0.0
            };
            requests.push((*evse, demand, capacity.power_w));
        }
        let budgets = sharing::budgets(&requests, self.pool_max_w);

        let mut wanted: BTreeMap<u8, (f64, f64, bool)> = BTreeMap::new();
        let evses: Vec<u32> = self.outputs.keys().copied().collect();
        for evse in evses {
            let addresses = self.assignment.get(&evse).cloned().unwrap_or_default();
            let views = self.views(&addresses, now);
            let refs: Vec<&ModuleView> = views.iter().collect();
            let capacity = sharing::capacity(&refs);
            let usable: Vec<&Module> = addresses
                .iter()
                .filter_map(|a| self.modules.get(a))
                .filter(|m| m.view(now, self.timeout).usable)
                .collect();
            let min_v = usable
                .iter()
                .map(|m| m.ratings.min_voltage_v)
                .fold(0.0, f64::max);
            let max_v = usable
                .iter()
                .map(|m| m.ratings.max_voltage_v)
                .fold(f64::INFINITY, f64::min);
            let output = &self.outputs[&evse];
            let limits = Limits {
                requested_a: if output.enabled { output.target_a } else { 0.0 },
                voltage_v: output.target_v,
                modules_a: capacity.current_a,
                budget_w: budgets.get(&evse).copied().unwrap_or(0.0),
                min_voltage_v: min_v,
                max_voltage_v: max_v,
            };
            let voltage = limits.voltage_v();
            let allowed = if voltage.is_some() {
                limits.allowed_current_a()
            } else {
                0.0
            };
            let dt = output
                .last_step
                .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
            let setpoint = self.ramp.step(output.setpoint_a, allowed, dt);
            let split = sharing::split_current(setpoint, &refs);
            let on = output.enabled && setpoint > 0.0;
            for address in &addresses {
                let current = split.get(address).copied().unwrap_or(0.0);
                wanted.insert(
                    *address,
                    (voltage.unwrap_or(0.0), current, on && current > 0.0),
                );
            }
            if let Ok(output) = self.output(evse) {
                output.setpoint_a = setpoint;
                output.last_step = Some(now);
            }
        }
        // Modules no output has: off.
        for address in self.modules.keys() {
            wanted.entry(*address).or_insert((0.0, 0.0, false));
        }
        for (address, (voltage_v, current_a, on)) in wanted {
            let due = self.sent.get(&address).is_none_or(|s| {
                s.voltage_v != voltage_v
                    || s.current_a != current_a
                    || s.on != on
                    || now.duration_since(s.at) >= KEEP_ALIVE
            });
            if !due {
                continue;
            }
            let target = Target::Module(address);
            step.commands.push((
                target,
                Command::SetOutput {
                    voltage_v: Some(voltage_v),
                    current_a: Some(current_a),
                },
            ));
            step.commands.push((target, Command::SetOn(on)));
            self.sent.insert(
                address,
                Sent {
                    voltage_v,
                    current_a,
                    on,
                    at: now,
                },
            );
        }
        // One module polled per step.
        let addresses: Vec<u8> = self.modules.keys().copied().collect();
        if !addresses.is_empty() {
            let address = addresses[self.next_poll % addresses.len()];
            self.next_poll = self.next_poll.wrapping_add(1);
            let target = Target::Module(address);
            step.commands.push((target, Command::ReadOutput));
            step.commands.push((target, Command::ReadStatus));
            if !self.rated_by_module.contains(&address) {
                step.commands.push((target, Command::ReadCapabilities));
            }
        }
        step
    }

    pub fn snapshot(&self, evse: u32, now: Instant) -> OutputSnapshot {
        let Some(output) = self.outputs.get(&evse) else {
            return OutputSnapshot::default();
        };
        let addresses = self.assignment.get(&evse).cloned().unwrap_or_default();
        let modules: Vec<&Module> = addresses
            .iter()
            .filter_map(|a| self.modules.get(a))
            .collect();
        let online: Vec<&&Module> = modules
            .iter()
            .filter(|m| m.online(now, self.timeout))
            .collect();
        let usable: Vec<&&Module> = modules
            .iter()
            .filter(|m| m.view(now, self.timeout).usable)
            .collect();
        let mut faults = Vec::new();
        for m in &modules {
            if !m.online(now, self.timeout) {
                faults.push(format!("module {}: not answering", m.address));
            }
            for f in &m.status.faults {
                faults.push(format!("module {}: {}", m.address, f.as_str()));
            }
        }
        let fault = if output.enabled && usable.is_empty() {
            if faults.is_empty() {
                "no module assigned".to_owned()
            } else {
                format!("no module can deliver ({})", faults.join("; "))
            }
        } else {
            String::new()
        };
        OutputSnapshot {
            enabled: output.enabled,
            target_v: output.target_v,
            target_a: output.target_a,
            setpoint_a: output.setpoint_a,
            voltage_v: if online.is_empty() {
                0.0
            } else {
                online.iter().map(|m| m.voltage_v).sum::<f64>() / online.len() as f64
            },
            current_a: online.iter().map(|m| m.current_a).sum(),
            capabilities: (
                usable
                    .iter()
                    .map(|m| m.ratings.max_voltage_v)
                    .fold(0.0, f64::max),
                usable.iter().map(|m| m.ratings.max_current_a).sum(),
                usable.iter().map(|m| m.ratings.max_power_w).sum(),
            ),
            modules: addresses,
            faults,
            fault,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ModuleFault, ModuleStatus};

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn config() -> Config {
        let text = "protocol = \"infypower\"\ncan = \"sim:/tmp/x\"\nramp_a_per_s = 50\npool_max_power_w = 120000\n\
            pool = [1, 2, 3, 4]\n[[output]]\nevse = 1\n[[output]]\nevse = 2\n"
            .to_owned()
            + &(1..=4)
                .map(|a| format!("[[module]]\naddress = {a}\nmax_current_a = 100\nmax_power_w = 30000\n"))
                .collect::<String>();
        let config: Config = toml::from_str(&text).unwrap();
        config.validate().unwrap();
        config
    }

    /// Every module answers once: online.
    fn online(c: &mut Controller, now: Instant) {
        for a in 1..=4 {
            c.on_reply(a, Reply::Ack(Command::SetOn(false)), now);
        }
    }

    /// Output 1 enabled at 400 V / `target_a` on four online modules,
    /// stepped once a second for `seconds` s; returns the start time.
    fn charging(target_a: f64, seconds: u64) -> (Controller, Instant) {
        let t0 = Instant::now();
        let mut c = Controller::new(&config(), TIMEOUT);
        online(&mut c, t0);
        c.set_target(1, 400.0, target_a).unwrap();
        c.set_enabled(1, true).unwrap();
        for s in 0..=seconds {
            c.step(t0 + Duration::from_secs(s));
        }
        (c, t0)
    }

    /// The SetOutput current last commanded per module in `step`.
    fn currents(step: &Step) -> BTreeMap<u8, f64> {
        step.commands
            .iter()
            .filter_map(|(t, c)| match (t, c) {
                (
                    Target::Module(a),
                    Command::SetOutput {
                        current_a: Some(current_a),
                        ..
                    },
                ) => Some((*a, *current_a)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_car_ramps_up_on_the_whole_pool() {
        let t0 = Instant::now();
        let mut c = Controller::new(&config(), TIMEOUT);
        online(&mut c, t0);
        c.set_target(1, 400.0, 200.0).unwrap();
        c.set_enabled(1, true).unwrap();
        let first = c.step(t0);
        assert!(first.reassigned);
        assert_eq!(c.snapshot(1, t0).modules, [1, 2, 3, 4]);
        assert_eq!(
            c.snapshot(1, t0).setpoint_a,
            0.0,
            "no time has passed: no ramp yet"
        );
        let one_s = c.step(t0 + Duration::from_secs(1));
        assert_eq!(c.snapshot(1, t0).setpoint_a, 50.0);
        assert_eq!(
            currents(&one_s),
            BTreeMap::from([(1, 12.5), (2, 12.5), (3, 12.5), (4, 12.5)])
        );
        for s in 2..=5 {
            c.step(t0 + Duration::from_secs(s));
        }
        let snap = c.snapshot(1, t0 + Duration::from_secs(5));
        assert_eq!(snap.setpoint_a, 200.0, "the EV's request");
        assert_eq!(snap.capabilities, (1000.0, 400.0, 120_000.0));
        assert_eq!(snap.fault, "");
    }

    #[test]
    fn a_second_car_takes_half_the_pool_and_the_first_drops_at_once() {
        let (mut c, t0) = charging(200.0, 5);
        c.set_target(2, 400.0, 200.0).unwrap();
        c.set_enabled(2, true).unwrap();
        let t = t0 + Duration::from_millis(5100);
        let step = c.step(t);
        assert!(step.reassigned);
        assert_eq!(c.snapshot(1, t).modules, [1, 2]);
        assert_eq!(c.snapshot(2, t).modules, [3, 4]);
        // Two modules: 60 kW at 400 V is 150 A, at once.
        assert_eq!(c.snapshot(1, t).setpoint_a, 150.0);
        let sent = currents(&step);
        assert_eq!((sent[&1], sent[&2]), (75.0, 75.0));
        // The second output starts from zero and ramps at 50 A/s (100 ms
        // since the last step: 5 A).
        assert_eq!(c.snapshot(2, t).setpoint_a, 5.0);
        let later = t + Duration::from_secs(1);
        c.step(later);
        assert_eq!(c.snapshot(2, later).setpoint_a, 55.0);
        // The pool's 120 kW is never exceeded.
        for s in 2..10 {
            let at = t + Duration::from_secs(s);
            c.step(at);
            let total: f64 = [1, 2]
                .iter()
                .map(|e| c.snapshot(*e, at).setpoint_a * 400.0)
                .sum();
            assert!(total <= 120_000.0 + 1e-6, "{total} W");
        }
        // The first car leaves: the second gets the whole pool again.
        c.set_enabled(1, false).unwrap();
        let end = t + Duration::from_secs(11);
        assert!(c.step(end).reassigned);
        assert_eq!(c.snapshot(2, end).modules, [1, 2, 3, 4]);
    }

    #[test]
    fn a_faulted_module_is_switched_off_and_its_share_dropped() {
        let (mut c, t0) = charging(400.0, 10);
        let t = t0 + Duration::from_secs(10);
        assert_eq!(c.snapshot(1, t).setpoint_a, 300.0, "120 kW at 400 V");
        let short = ModuleStatus {
            on: false,
            derating: false,
            faults: vec![ModuleFault::OutputShort],
            raw: 1,
        };
        let events = c.on_reply(3, Reply::Status(short), t);
        assert_eq!(
            events,
            [ModuleEvent::Faults(vec![ModuleFault::OutputShort])]
        );
        let step = c.step(t + Duration::from_millis(100));
        let sent = currents(&step);
        assert_eq!(sent[&3], 0.0);
        let snap = c.snapshot(1, t);
        assert_eq!(snap.setpoint_a, 225.0, "three modules: 90 kW");
        assert_eq!(snap.faults, ["module 3: output short circuit"]);
        assert_eq!(snap.fault, "", "the others still deliver");
    }

    #[test]
    fn an_output_whose_modules_all_went_silent_is_faulted() {
        let t0 = Instant::now();
        let mut c = Controller::new(&config(), TIMEOUT);
        online(&mut c, t0);
        c.set_target(1, 400.0, 100.0).unwrap();
        c.set_enabled(1, true).unwrap();
        c.step(t0);
        let late = t0 + TIMEOUT * 2;
        let step = c.step(late);
        assert_eq!(step.events.len(), 4);
        assert!(step.events.iter().all(|(_, e)| *e == ModuleEvent::Gone));
        let snap = c.snapshot(1, late);
        assert_eq!(snap.setpoint_a, 0.0);
        assert!(
            snap.fault.starts_with("no module can deliver"),
            "{}",
            snap.fault
        );
        assert!(snap.faults.contains(&"module 2: not answering".to_owned()));
    }

    #[test]
    fn setpoints_always_carry_voltage_and_current() {
        let t0 = Instant::now();
        let mut c = Controller::new(&config(), TIMEOUT);
        online(&mut c, t0);
        c.set_target(1, 400.0, 100.0).unwrap();
        c.set_enabled(1, true).unwrap();
        let mut setpoints = 0;
        for s in 0..3 {
            for (_, command) in c.step(t0 + Duration::from_secs(s)).commands {
                if let Command::SetOutput {
                    voltage_v,
                    current_a,
                } = command
                {
                    assert!(voltage_v.is_some() && current_a.is_some(), "{command:?}");
                    setpoints += 1;
                }
            }
        }
        assert!(setpoints >= 4, "{setpoints}");
    }

    #[test]
    fn voltage_and_current_read_one_frame_each_both_show() {
        // A register protocol (UUGreen) answers an output read with the
        // voltage and the current in a reply each.
        let t0 = Instant::now();
        let mut c = Controller::new(&config(), TIMEOUT);
        online(&mut c, t0);
        c.set_target(1, 400.0, 100.0).unwrap();
        c.set_enabled(1, true).unwrap();
        c.step(t0);
        for a in 1..=4 {
            c.on_reply(
                a,
                Reply::Output {
                    voltage_v: Some(400.0),
                    current_a: None,
                },
                t0,
            );
            c.on_reply(
                a,
                Reply::Output {
                    voltage_v: None,
                    current_a: Some(25.0),
                },
                t0,
            );
        }
        let snap = c.snapshot(1, t0);
        assert_eq!((snap.voltage_v, snap.current_a), (400.0, 100.0));
        // A later voltage alone keeps the current.
        c.on_reply(
            1,
            Reply::Output {
                voltage_v: Some(404.0),
                current_a: None,
            },
            t0,
        );
        let snap = c.snapshot(1, t0);
        assert_eq!((snap.voltage_v, snap.current_a), (401.0, 100.0));
    }

    #[test]
    fn setpoints_are_sent_on_change_and_once_a_second_and_one_module_polled_per_step() {
        let t0 = Instant::now();
        let mut c = Controller::new(&config(), TIMEOUT);
        online(&mut c, t0);
        let first = c.step(t0);
        assert_eq!(
            currents(&first).len(),
            4,
            "everyone hears an (off) setpoint first"
        );
        let quiet = c.step(t0 + Duration::from_millis(100));
        assert!(currents(&quiet).is_empty(), "nothing changed");
        let polls: Vec<_> = quiet
            .commands
            .iter()
            .filter(|(_, c)| matches!(c, Command::ReadStatus))
            .collect();
        assert_eq!(polls.len(), 1);
        let again = c.step(t0 + Duration::from_millis(1000));
        assert_eq!(currents(&again).len(), 4, "the keep-alive repeat");
        assert_eq!(c.set_target(9, 1.0, 1.0), Err(Refusal::UnknownOutput(9)));
        assert!(matches!(
            c.set_target(1, f64::NAN, 1.0),
            Err(Refusal::Invalid(_))
        ));
    }
}
