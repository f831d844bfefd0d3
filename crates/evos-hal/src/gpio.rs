//! A board without a safety MCU: the Linux host drives the EVSE hardware
//! itself, through GPIO character-device lines (`linux-embedded-hal`'s
//! `CdevPin`), a sysfs PWM channel for the control pilot, and IIO sysfs ADC
//! channels for the CP and PP voltages.
//!
//! Signals follow IEC 61851-1:2017 Annex A (control pilot: 1 kHz PWM, state
//! detection per Table A.4, diode check) and Annex B / IEC 62196 (proximity
//! pilot resistor coding of the cable's current rating).
//!
//! Each function has a small trait ([`ControlPilot`], [`Contactor`],
//! [`ConnectorLock`], [`ProximityPilot`], [`RcdMonitor`]) with a Linux
//! implementation; [`GpioBoard`] composes them into a [`SafetyBoard`].
//! Nothing here watches the host: unlike a safety MCU, a hung process leaves
//! the outputs as they were, so such a board needs a hardware watchdog (and
//! systemd's `WatchdogSec=`) that cuts the contactor supply.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use embedded_hal::digital::{InputPin, OutputPin};
use linux_embedded_hal::CdevPin;
use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
use serde::Deserialize;

use crate::board::{BoardEvent, BoardStatus, CpState, LockState, PwmOutput, SafetyBoard};
use crate::{HalError, Result};

// ---------------------------------------------------------------------------
// Per-function traits

/// The control pilot: what we drive and what we read back.
pub trait ControlPilot: Send {
    fn set_output(&mut self, output: PwmOutput) -> Result<()>;
    fn read(&mut self) -> Result<CpReading>;
}

/// The main contactor(s).
pub trait Contactor: Send {
    /// `phases == 1` leaves a separate L2/L3 contactor open where there is one.
    fn set(&mut self, closed: bool, phases: u8) -> Result<()>;
    /// What the feedback contact reports (the command, without one).
    fn closed(&mut self) -> Result<bool>;
}

/// The connector lock actuator.
pub trait ConnectorLock: Send {
    fn set(&mut self, locked: bool) -> Result<()>;
    fn state(&mut self) -> Result<LockState>;
}

/// The proximity pilot of a socket outlet.
pub trait ProximityPilot: Send {
    fn read(&mut self) -> Result<PpReading>;
}

/// A residual-current device's trip output (e.g. a 6 mA DC RDC-DD module).
pub trait RcdMonitor: Send {
    fn tripped(&mut self) -> Result<bool>;
}

// ---------------------------------------------------------------------------
// Control pilot evaluation (pure)

/// The CP voltage as measured at the EVSE, in volts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpReading {
    /// The positive plateau (the level, without PWM).
    pub high_v: f64,
    /// The negative plateau of the PWM, where the hardware samples it.
    pub low_v: Option<f64>,
}

/// What a CP reading means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpEvaluation {
    pub state: CpState,
    pub diode_fault: bool,
}

/// The state the positive CP level shows, per IEC 61851-1:2017 Table A.4:
/// A 11–13 V, B 8–10 V, C 5–7 V, D 2–4 V. Between those bands the table lets
/// the EVSE decide; we keep the previous state where it is one of the two
/// neighbours (so noise at a band edge does not toggle) and otherwise take the
/// lower one. Below 2 V, above 13 V, or an unreadable value: E (pilot fault).
pub fn cp_state_from_high(volts: f64, previous: CpState) -> CpState {
    use CpState::*;
    if volts > 13.0 || volts.is_nan() {
        E
    } else if volts >= 11.0 {
        A
    } else if volts >= 10.0 {
        if previous == A { A } else { B }
    } else if volts >= 8.0 {
        B
    } else if volts >= 7.0 {
        if matches!(previous, A | B) { B } else { C }
    } else if volts >= 5.0 {
        C
    } else if volts >= 4.0 {
        if matches!(previous, A | B | C) { C } else { D }
    } else if volts >= 2.0 {
        D
    } else {
        E
    }
}

/// The nominal −12 V level: Table A.4's −11 V to −13 V.
fn is_minus_12v(volts: f64) -> bool {
    (-13.0..=-11.0).contains(&volts)
}

/// Evaluate a reading against what we drive. While we drive −12 V the pilot
/// must show it (state F; anything else is a fault, E). With PWM on and an EV
/// attached, the negative plateau must stay at −12 V: the EV's diode blocks
/// the negative half, so a higher level means the diode is missing or
/// shorted (IEC 61851-1 A.4.4's diode check).
pub fn evaluate_cp(reading: CpReading, output: PwmOutput, previous: CpState) -> CpEvaluation {
    let (high_phase, low_phase) = match output {
        PwmOutput::Off => (true, false),
        PwmOutput::Minus12V | PwmOutput::Duty(0) => (false, true),
        PwmOutput::Duty(d) if d >= 1000 => (true, false),
        PwmOutput::Duty(_) => (true, true),
    };
    if !high_phase {
        let level = reading.low_v.unwrap_or(reading.high_v);
        let state = if is_minus_12v(level) {
            CpState::F
        } else {
            CpState::E
        };
        return CpEvaluation {
            state,
            diode_fault: false,
        };
    }
    let state = cp_state_from_high(reading.high_v, previous);
    let diode_fault =
        low_phase && state.ev_connected() && reading.low_v.is_some_and(|low| !is_minus_12v(low));
    CpEvaluation { state, diode_fault }
}

// ---------------------------------------------------------------------------
// Proximity pilot evaluation (pure)

/// What the proximity pilot shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PpReading {
    /// Open circuit: no plug in the socket.
    NoCable,
    /// A cable rated for this many amperes.
    Rated(u8),
    /// A resistance outside every band (a short, or a broken cable).
    Invalid { ohms: f64 },
}

/// The cable rating coded by the PP resistor Rc (IEC 61851-1:2017 Table B.2,
/// IEC 62196-2): 1.5 kΩ 13 A, 680 Ω 20 A, 220 Ω 32 A, 100 Ω 63 A, each
/// accepted within the band the EVSE must interpret as that rating. Above the
/// 13 A band the pilot is open: no cable.
pub fn pp_rating(ohms: f64) -> PpReading {
    const BANDS: [(f64, f64, u8); 4] = [
        (80.0, 140.0, 63),
        (164.0, 308.0, 32),
        (400.0, 936.0, 20),
        (1100.0, 2460.0, 13),
    ];
    if ohms > 2460.0 {
        return PpReading::NoCable;
    }
    BANDS
        .iter()
        .find(|(lo, hi, _)| (*lo..=*hi).contains(&ohms))
        .map_or(PpReading::Invalid { ohms }, |&(_, _, amps)| {
            PpReading::Rated(amps)
        })
}

/// The PP resistance to PE from the voltage at the PP pin, with a pull-up of
/// `pull_up_ohm` to `supply_v` (the usual EVSE PP circuit); infinite when
/// open.
pub fn pp_resistance(volts: f64, pull_up_ohm: f64, supply_v: f64) -> f64 {
    if volts >= supply_v {
        f64::INFINITY
    } else if volts <= 0.0 {
        0.0
    } else {
        pull_up_ohm * volts / (supply_v - volts)
    }
}

// ---------------------------------------------------------------------------
// Linux building blocks: GPIO lines, sysfs PWM, IIO ADC

/// One digital output; `active` is the logical level (polarity applied).
pub trait DigitalOutput: Send {
    fn set_active(&mut self, active: bool) -> Result<()>;
}

/// One digital input; `true` when the logical level is active.
pub trait DigitalInput: Send {
    fn is_active(&mut self) -> Result<bool>;
}

/// A GPIO line through the character device (`/dev/gpiochipN`).
pub struct GpioLine {
    pin: CdevPin,
    active_low: bool,
    what: String,
}

impl GpioLine {
    /// Request `config`'s line as an output, starting at `active`.
    pub fn output(config: &LineConfig, what: &str, active: bool) -> Result<Self> {
        let physical = active != config.active_low;
        Self::request(config, what, LineRequestFlags::OUTPUT, u8::from(physical))
    }

    /// Request `config`'s line as an input.
    pub fn input(config: &LineConfig, what: &str) -> Result<Self> {
        Self::request(config, what, LineRequestFlags::INPUT, 0)
    }

    fn request(
        config: &LineConfig,
        what: &str,
        flags: LineRequestFlags,
        value: u8,
    ) -> Result<Self> {
        let chip_path = config.chip_path();
        let what = format!("{what} ({}, line {})", chip_path.display(), config.line);
        let err = |e: linux_embedded_hal::gpio_cdev::Error| {
            HalError::io(format!("requesting {what}"), std::io::Error::other(e))
        };
        let mut chip = Chip::new(&chip_path).map_err(err)?;
        let line = match &config.line {
            LineId::Offset(offset) => chip.get_line(*offset).map_err(err)?,
            LineId::Name(name) => chip
                .lines()
                .find(|line| {
                    line.info()
                        .is_ok_and(|info| info.name() == Some(name.as_str()))
                })
                .ok_or_else(|| {
                    HalError::Address(what.clone(), format!("no line named {name:?}"))
                })?,
        };
        // Polarity is ours to apply: requesting ACTIVE_LOW too would make
        // CdevPin invert a second time.
        let handle = line.request(flags, value, "evos").map_err(err)?;
        let pin = CdevPin::new(handle).map_err(err)?;
        Ok(GpioLine {
            pin,
            active_low: config.active_low,
            what,
        })
    }
}

impl DigitalOutput for GpioLine {
    fn set_active(&mut self, active: bool) -> Result<()> {
        let result = if active != self.active_low {
            self.pin.set_high()
        } else {
            self.pin.set_low()
        };
        result.map_err(|e| HalError::io(format!("setting {}", self.what), std::io::Error::other(e)))
    }
}

impl DigitalInput for GpioLine {
    fn is_active(&mut self) -> Result<bool> {
        let high = self.pin.is_high().map_err(|e| {
            HalError::io(format!("reading {}", self.what), std::io::Error::other(e))
        })?;
        Ok(high != self.active_low)
    }
}

/// The CP PWM frequency, 1 kHz (IEC 61851-1 A.2), as a period in ns.
pub const CP_PERIOD_NS: u64 = 1_000_000;

/// A PWM channel through sysfs (`<root>/pwmchipN/pwmM/{period,duty_cycle,
/// enable,polarity}`, root normally `/sys/class/pwm`), driving the CP at
/// 1 kHz. The CP driver maps the PWM's high level to +12 V and its low level
/// to −12 V, so +12 V constant is 100 % duty and −12 V constant is 0 %.
pub struct SysfsPwm {
    dir: PathBuf,
}

impl SysfsPwm {
    /// Export the channel if needed (waiting up to a second for udev to make
    /// it appear), program 1 kHz with the given polarity and drive +12 V.
    /// Blocks briefly; call it at start-up.
    pub fn open(root: &Path, chip: u32, channel: u32, inverted: bool) -> Result<Self> {
        let chip_dir = root.join(format!("pwmchip{chip}"));
        if !chip_dir.is_dir() {
            return Err(HalError::Address(
                chip_dir.display().to_string(),
                "no such PWM chip".into(),
            ));
        }
        let dir = chip_dir.join(format!("pwm{channel}"));
        if !dir.is_dir() {
            write_sysfs(&chip_dir.join("export"), &channel.to_string())?;
            let deadline = Instant::now() + Duration::from_secs(1);
            while !dir.join("duty_cycle").exists() {
                if Instant::now() > deadline {
                    return Err(HalError::Address(
                        dir.display().to_string(),
                        "did not appear after export".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let mut pwm = SysfsPwm { dir };
        // The kernel refuses polarity changes while enabled and a duty cycle
        // longer than the period, hence this order.
        pwm.write("enable", "0")?;
        let polarity = pwm.dir.join("polarity");
        if inverted || polarity.exists() {
            pwm.write("polarity", if inverted { "inversed" } else { "normal" })?;
        }
        pwm.write("duty_cycle", "0")?;
        pwm.write("period", &CP_PERIOD_NS.to_string())?;
        pwm.set(PwmOutput::Off)?;
        pwm.write("enable", "1")?;
        Ok(pwm)
    }

    pub fn set(&mut self, output: PwmOutput) -> Result<()> {
        let duty_ns = match output {
            PwmOutput::Off => CP_PERIOD_NS,
            PwmOutput::Minus12V => 0,
            PwmOutput::Duty(permille) => CP_PERIOD_NS * u64::from(permille.min(1000)) / 1000,
        };
        self.write("duty_cycle", &duty_ns.to_string())
    }

    fn write(&mut self, attribute: &str, value: &str) -> Result<()> {
        write_sysfs(&self.dir.join(attribute), value)
    }
}

/// One write of `value` to an existing attribute (sysfs creates no files, so
/// neither do we: a fake tree in tests behaves the same).
fn write_sysfs(path: &Path, value: &str) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| HalError::io(format!("writing {value} to {}", path.display()), e))
}

fn read_sysfs_number(path: &Path) -> Result<Option<f64>> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            HalError::io(
                format!("reading {}", path.display()),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{:?} is not a number", text.trim()),
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HalError::io(format!("reading {}", path.display()), e)),
    }
}

/// An ADC channel through IIO sysfs: `(in_voltageN_raw + offset) × scale`
/// millivolts (the IIO ABI), then `× gain + offset_v` to undo the board's
/// divider and level shift.
pub struct IioChannel {
    raw: PathBuf,
    scale_mv: f64,
    offset: f64,
    gain: f64,
    offset_v: f64,
}

impl IioChannel {
    /// `root` is normally `/sys/bus/iio/devices`; the config names the
    /// device by directory (`iio:device0`) or by its `name` attribute.
    pub fn open(root: &Path, config: &AdcChannelConfig) -> Result<Self> {
        let dir = find_iio_device(root, &config.device)?;
        let n = config.channel;
        let raw = dir.join(format!("in_voltage{n}_raw"));
        if !raw.exists() {
            return Err(HalError::Address(
                raw.display().to_string(),
                "no such ADC channel".into(),
            ));
        }
        let per_channel_or_shared = |attr: &str| -> Result<Option<f64>> {
            match read_sysfs_number(&dir.join(format!("in_voltage{n}_{attr}")))? {
                Some(v) => Ok(Some(v)),
                None => read_sysfs_number(&dir.join(format!("in_voltage_{attr}"))),
            }
        };
        let scale_mv = per_channel_or_shared("scale")?.ok_or_else(|| {
            HalError::Address(
                dir.display().to_string(),
                format!("neither in_voltage{n}_scale nor in_voltage_scale exists"),
            )
        })?;
        Ok(IioChannel {
            raw,
            scale_mv,
            offset: per_channel_or_shared("offset")?.unwrap_or(0.0),
            gain: config.gain,
            offset_v: config.offset_v,
        })
    }

    /// The signal voltage, in volts.
    pub fn read_volts(&mut self) -> Result<f64> {
        let raw = read_sysfs_number(&self.raw)?.ok_or_else(|| {
            HalError::io(
                format!("reading {}", self.raw.display()),
                std::io::ErrorKind::NotFound.into(),
            )
        })?;
        Ok((raw + self.offset) * self.scale_mv / 1000.0 * self.gain + self.offset_v)
    }
}

fn find_iio_device(root: &Path, device: &str) -> Result<PathBuf> {
    let direct = root.join(device);
    if !device.contains('/') && direct.is_dir() {
        return Ok(direct);
    }
    // IIO device numbers follow probe order; names are stable.
    let entries = std::fs::read_dir(root)
        .map_err(|e| HalError::io(format!("listing {}", root.display()), e))?;
    for entry in entries.flatten() {
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == device {
            return Ok(entry.path());
        }
    }
    Err(HalError::Address(
        device.to_owned(),
        format!(
            "no IIO device of that directory or name under {}",
            root.display()
        ),
    ))
}

// ---------------------------------------------------------------------------
// Linux implementations of the function traits

/// CP through a sysfs PWM and one or two IIO channels (the positive level,
/// and the negative plateau where the board samples it).
pub struct LinuxControlPilot {
    pwm: SysfsPwm,
    high: IioChannel,
    low: Option<IioChannel>,
}

impl LinuxControlPilot {
    pub fn new(pwm: SysfsPwm, high: IioChannel, low: Option<IioChannel>) -> Self {
        LinuxControlPilot { pwm, high, low }
    }
}

impl ControlPilot for LinuxControlPilot {
    fn set_output(&mut self, output: PwmOutput) -> Result<()> {
        self.pwm.set(output)
    }
    fn read(&mut self) -> Result<CpReading> {
        Ok(CpReading {
            high_v: self.high.read_volts()?,
            low_v: self.low.as_mut().map(IioChannel::read_volts).transpose()?,
        })
    }
}

/// Contactor(s) on GPIO lines.
pub struct GpioContactor {
    main: Box<dyn DigitalOutput>,
    phase_switch: Option<Box<dyn DigitalOutput>>,
    feedback: Option<Box<dyn DigitalInput>>,
    commanded: bool,
}

impl GpioContactor {
    /// `main` switches L1 and N (or all phases); `phase_switch`, where fitted,
    /// L2 and L3; `feedback` is active while the contactor is closed.
    pub fn new(
        main: Box<dyn DigitalOutput>,
        phase_switch: Option<Box<dyn DigitalOutput>>,
        feedback: Option<Box<dyn DigitalInput>>,
    ) -> Self {
        if feedback.is_none() {
            tracing::warn!("contactor without feedback: a welded contact will go unnoticed");
        }
        GpioContactor {
            main,
            phase_switch,
            feedback,
            commanded: false,
        }
    }
}

impl Contactor for GpioContactor {
    fn set(&mut self, closed: bool, phases: u8) -> Result<()> {
        if let Some(switch) = &mut self.phase_switch {
            switch.set_active(closed && phases != 1)?;
        }
        self.main.set_active(closed)?;
        self.commanded = closed;
        Ok(())
    }
    fn closed(&mut self) -> Result<bool> {
        match &mut self.feedback {
            Some(feedback) => feedback.is_active(),
            None => Ok(self.commanded),
        }
    }
}

/// A lock actuator on one GPIO line (active = locked) with an optional
/// feedback contact (active = locked).
pub struct GpioLock {
    actuator: Box<dyn DigitalOutput>,
    feedback: Option<Box<dyn DigitalInput>>,
    settle: Duration,
    commanded: bool,
    since: Instant,
}

impl GpioLock {
    /// `settle` is how long the actuator may take before a feedback that
    /// still disagrees counts as a fault.
    pub fn new(
        actuator: Box<dyn DigitalOutput>,
        feedback: Option<Box<dyn DigitalInput>>,
        settle: Duration,
    ) -> Self {
        GpioLock {
            actuator,
            feedback,
            settle,
            commanded: false,
            since: Instant::now(),
        }
    }
}

impl ConnectorLock for GpioLock {
    fn set(&mut self, locked: bool) -> Result<()> {
        self.actuator.set_active(locked)?;
        if locked != self.commanded {
            self.commanded = locked;
            self.since = Instant::now();
        }
        Ok(())
    }
    fn state(&mut self) -> Result<LockState> {
        let as_state = |locked| {
            if locked {
                LockState::Locked
            } else {
                LockState::Unlocked
            }
        };
        let Some(feedback) = &mut self.feedback else {
            return Ok(as_state(self.commanded));
        };
        let actual = feedback.is_active()?;
        if actual != self.commanded && self.since.elapsed() >= self.settle {
            return Ok(LockState::Fault);
        }
        // Still moving, or there: what the contact says.
        Ok(as_state(actual))
    }
}

/// PP through an IIO channel and the EVSE's pull-up.
pub struct AdcProximityPilot {
    adc: IioChannel,
    pull_up_ohm: f64,
    supply_v: f64,
}

impl AdcProximityPilot {
    pub fn new(adc: IioChannel, pull_up_ohm: f64, supply_v: f64) -> Self {
        AdcProximityPilot {
            adc,
            pull_up_ohm,
            supply_v,
        }
    }
}

impl ProximityPilot for AdcProximityPilot {
    fn read(&mut self) -> Result<PpReading> {
        let volts = self.adc.read_volts()?;
        Ok(pp_rating(pp_resistance(
            volts,
            self.pull_up_ohm,
            self.supply_v,
        )))
    }
}

/// An RCD trip output on a GPIO line (active = tripped).
pub struct GpioRcd {
    input: Box<dyn DigitalInput>,
}

impl GpioRcd {
    pub fn new(input: Box<dyn DigitalInput>) -> Self {
        GpioRcd { input }
    }
}

impl RcdMonitor for GpioRcd {
    fn tripped(&mut self) -> Result<bool> {
        self.input.is_active()
    }
}

// ---------------------------------------------------------------------------
// Configuration

/// Which hardware a [`GpioBoard`] uses; deserialised from the evse service's
/// TOML, e.g.
///
/// ```toml
/// pwm = { chip = 0, channel = 0 }
/// cp.high = { device = "ads1015", channel = 0, gain = 4.0, offset_v = -6.0 }
/// cp.low = { device = "ads1015", channel = 1, gain = 4.0, offset_v = -6.0 }
/// pp = { adc = { device = "ads1015", channel = 2 }, pull_up_ohm = 1000.0, supply_v = 3.3 }
/// contactor.main = { chip = "gpiochip0", line = "CONTACTOR_L1" }
/// contactor.feedback = { chip = "gpiochip0", line = 17, active_low = true }
/// lock = { actuator = { chip = "gpiochip0", line = 5 }, feedback = { chip = "gpiochip0", line = 6 } }
/// rcd = { chip = "gpiochip1", line = 3 }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioBoardConfig {
    /// sysfs mount point; PWM is under `class/pwm`, IIO under
    /// `bus/iio/devices`. Tests point it at a fake tree.
    #[serde(default = "default_sysfs_root")]
    pub sysfs_root: PathBuf,
    /// How often inputs are sampled.
    #[serde(default = "default_sample_interval_ms")]
    pub sample_interval_ms: u64,
    pub pwm: PwmConfig,
    pub cp: CpConfig,
    /// Absent on a tethered cable.
    pub pp: Option<PpConfig>,
    pub contactor: ContactorConfig,
    /// Absent on a tethered cable.
    pub lock: Option<LockConfig>,
    /// The RCD's trip output (active = tripped).
    pub rcd: Option<LineConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PwmConfig {
    pub chip: u32,
    pub channel: u32,
    /// Use the PWM's `inversed` polarity (when the CP driver inverts).
    #[serde(default)]
    pub inverted: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpConfig {
    /// The positive level (a peak detector, or a sample in the high phase).
    pub high: AdcChannelConfig,
    /// The negative plateau; without it there is no diode check.
    pub low: Option<AdcChannelConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdcChannelConfig {
    /// `iio:deviceN`, or the device's `name` attribute.
    pub device: String,
    pub channel: u32,
    /// Signal volts = ADC volts × gain + offset_v.
    #[serde(default = "one")]
    pub gain: f64,
    #[serde(default)]
    pub offset_v: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpConfig {
    pub adc: AdcChannelConfig,
    /// The pull-up from the PP pin to `supply_v`.
    pub pull_up_ohm: f64,
    pub supply_v: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactorConfig {
    /// L1 + N, or all phases.
    pub main: LineConfig,
    /// L2 + L3 where a separate contactor allows 1-phase charging.
    pub phase_switch: Option<LineConfig>,
    /// Active while closed (set `active_low` for a mirror contact that pulls
    /// the line low when the contactor closes).
    pub feedback: Option<LineConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockConfig {
    /// Active = locked.
    pub actuator: LineConfig,
    /// Active = locked.
    pub feedback: Option<LineConfig>,
    /// How long the actuator may take.
    #[serde(default = "default_lock_settle_ms")]
    pub settle_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    /// `gpiochipN` (under `/dev`) or a device path.
    pub chip: String,
    pub line: LineId,
    #[serde(default)]
    pub active_low: bool,
}

impl LineConfig {
    fn chip_path(&self) -> PathBuf {
        if self.chip.contains('/') {
            PathBuf::from(&self.chip)
        } else {
            Path::new("/dev").join(&self.chip)
        }
    }
}

/// A line by offset on its chip, or by its name (`gpio-line-names`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum LineId {
    Offset(u32),
    Name(String),
}

impl std::fmt::Display for LineId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineId::Offset(n) => write!(f, "{n}"),
            LineId::Name(name) => write!(f, "{name:?}"),
        }
    }
}

fn default_sysfs_root() -> PathBuf {
    "/sys".into()
}
fn default_sample_interval_ms() -> u64 {
    20
}
fn default_lock_settle_ms() -> u64 {
    1000
}
fn one() -> f64 {
    1.0
}

impl GpioBoardConfig {
    /// Check value ranges serde cannot; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, value: &dyn std::fmt::Display, why: &str| {
            Err(HalError::Address(format!("{key} = {value}"), why.into()))
        };
        if !(5..=1000).contains(&self.sample_interval_ms) {
            return bad(
                "sample_interval_ms",
                &self.sample_interval_ms,
                "must be 5..=1000",
            );
        }
        let mut adcs = vec![("cp.high", &self.cp.high)];
        adcs.extend(self.cp.low.as_ref().map(|a| ("cp.low", a)));
        adcs.extend(self.pp.as_ref().map(|p| ("pp.adc", &p.adc)));
        for (key, adc) in adcs {
            if !adc.gain.is_finite() || adc.gain == 0.0 {
                return bad(
                    &format!("{key}.gain"),
                    &adc.gain,
                    "must be finite and non-zero",
                );
            }
            if !adc.offset_v.is_finite() {
                return bad(&format!("{key}.offset_v"), &adc.offset_v, "must be finite");
            }
        }
        if let Some(pp) = &self.pp {
            if !(pp.pull_up_ohm.is_finite() && pp.pull_up_ohm > 0.0) {
                return bad("pp.pull_up_ohm", &pp.pull_up_ohm, "must be positive");
            }
            if !(pp.supply_v.is_finite() && pp.supply_v > 0.0) {
                return bad("pp.supply_v", &pp.supply_v, "must be positive");
            }
        }
        if let Some(lock) = &self.lock
            && lock.settle_ms > 60_000
        {
            return bad("lock.settle_ms", &lock.settle_ms, "must be at most 60000");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The board

/// The functions a [`GpioBoard`] is made of.
pub struct GpioParts {
    pub cp: Box<dyn ControlPilot>,
    pub contactor: Box<dyn Contactor>,
    pub lock: Option<Box<dyn ConnectorLock>>,
    pub pp: Option<Box<dyn ProximityPilot>>,
    pub rcd: Option<Box<dyn RcdMonitor>>,
}

/// A [`SafetyBoard`] whose hardware the host drives directly. It samples its
/// inputs periodically and reports a [`BoardEvent::Status`] when they change;
/// it has no metering and no token reader, so it sends no other events.
pub struct GpioBoard {
    parts: GpioParts,
    sample_interval: Duration,
    /// Made on first use, so that building a board needs no runtime.
    ticker: Option<tokio::time::Interval>,
    output: PwmOutput,
    lock_commanded: bool,
    cp_state: CpState,
    last_pp: Option<PpReading>,
    /// The previous sample: a change must show in two samples in a row
    /// before it is reported, which filters single-sample glitches.
    previous: Option<BoardStatus>,
    reported: Option<BoardStatus>,
}

impl GpioBoard {
    /// Open the hardware `config` names.
    pub fn open(config: &GpioBoardConfig) -> Result<Self> {
        config.validate()?;
        let iio_root = config.sysfs_root.join("bus/iio/devices");
        let pwm = SysfsPwm::open(
            &config.sysfs_root.join("class/pwm"),
            config.pwm.chip,
            config.pwm.channel,
            config.pwm.inverted,
        )?;
        let high = IioChannel::open(&iio_root, &config.cp.high)?;
        let low = config
            .cp
            .low
            .as_ref()
            .map(|c| IioChannel::open(&iio_root, c))
            .transpose()?;
        if low.is_none() {
            tracing::warn!("no cp.low channel: the CP diode check is off");
        }
        let output = |c: &LineConfig, what| -> Result<Box<dyn DigitalOutput>> {
            Ok(Box::new(GpioLine::output(c, what, false)?))
        };
        let input = |c: &LineConfig, what| -> Result<Box<dyn DigitalInput>> {
            Ok(Box::new(GpioLine::input(c, what)?))
        };
        let c = &config.contactor;
        let contactor = GpioContactor::new(
            output(&c.main, "contactor")?,
            c.phase_switch
                .as_ref()
                .map(|l| output(l, "L2/L3 contactor"))
                .transpose()?,
            c.feedback
                .as_ref()
                .map(|l| input(l, "contactor feedback"))
                .transpose()?,
        );
        let lock = match &config.lock {
            Some(l) => Some(Box::new(GpioLock::new(
                output(&l.actuator, "lock")?,
                l.feedback
                    .as_ref()
                    .map(|f| input(f, "lock feedback"))
                    .transpose()?,
                Duration::from_millis(l.settle_ms),
            )) as Box<dyn ConnectorLock>),
            None => None,
        };
        let pp = match &config.pp {
            Some(p) => Some(Box::new(AdcProximityPilot::new(
                IioChannel::open(&iio_root, &p.adc)?,
                p.pull_up_ohm,
                p.supply_v,
            )) as Box<dyn ProximityPilot>),
            None => None,
        };
        let rcd = match &config.rcd {
            Some(l) => Some(Box::new(GpioRcd::new(input(l, "RCD")?)) as Box<dyn RcdMonitor>),
            None => None,
        };
        let parts = GpioParts {
            cp: Box::new(LinuxControlPilot::new(pwm, high, low)),
            contactor: Box::new(contactor),
            lock,
            pp,
            rcd,
        };
        Ok(Self::from_parts(
            parts,
            Duration::from_millis(config.sample_interval_ms),
        ))
    }

    /// A board from ready parts (other drivers, or fakes in tests). The CP
    /// output is assumed to be +12 V.
    pub fn from_parts(parts: GpioParts, sample_interval: Duration) -> Self {
        GpioBoard {
            parts,
            sample_interval,
            ticker: None,
            output: PwmOutput::Off,
            lock_commanded: false,
            cp_state: CpState::A,
            last_pp: None,
            previous: None,
            reported: None,
        }
    }

    fn sample(&mut self) -> Result<BoardStatus> {
        let reading = self.parts.cp.read()?;
        let cp = evaluate_cp(reading, self.output, self.cp_state);
        self.cp_state = cp.state;
        let cable_rating_a = match &mut self.parts.pp {
            Some(pp) => {
                let reading = pp.read()?;
                if let PpReading::Invalid { ohms } = reading
                    && !matches!(self.last_pp, Some(PpReading::Invalid { .. }))
                {
                    tracing::warn!("proximity pilot reads {ohms:.0} Ω: no valid cable rating");
                }
                self.last_pp = Some(reading);
                match reading {
                    PpReading::Rated(amps) => Some(amps),
                    PpReading::NoCable | PpReading::Invalid { .. } => None,
                }
            }
            None => None,
        };
        let lock = match &mut self.parts.lock {
            Some(lock) => lock.state()?,
            // A tethered cable needs no lock; report what was asked.
            None if self.lock_commanded => LockState::Locked,
            None => LockState::Unlocked,
        };
        Ok(BoardStatus {
            cp: cp.state,
            cable_rating_a,
            contactors_closed: self.parts.contactor.closed()?,
            lock,
            rcd_tripped: match &mut self.parts.rcd {
                Some(rcd) => rcd.tripped()?,
                None => false,
            },
            diode_fault: cp.diode_fault,
        })
    }
}

impl Drop for GpioBoard {
    fn drop(&mut self) {
        // A released GPIO line keeps its level: open the contactors and stop
        // offering current before letting go.
        let _ = self.parts.contactor.set(false, 3);
        let _ = self.parts.cp.set_output(PwmOutput::Off);
    }
}

impl SafetyBoard for GpioBoard {
    async fn set_pwm(&mut self, output: PwmOutput) -> Result<()> {
        self.parts.cp.set_output(output)?;
        self.output = output;
        Ok(())
    }

    async fn set_contactors(&mut self, closed: bool, phases: u8) -> Result<()> {
        self.parts.contactor.set(closed, phases)
    }

    async fn set_lock(&mut self, locked: bool) -> Result<()> {
        if let Some(lock) = &mut self.parts.lock {
            lock.set(locked)?;
        }
        self.lock_commanded = locked;
        Ok(())
    }

    /// Nothing to do: there is no separate controller that would fail safe
    /// when the host stops; the host watchdog plays that part here.
    async fn keep_alive(&mut self) -> Result<()> {
        Ok(())
    }

    async fn next_event(&mut self) -> Result<BoardEvent> {
        loop {
            let period = self.sample_interval;
            let ticker = self.ticker.get_or_insert_with(|| {
                let mut ticker = tokio::time::interval(period);
                // After a stall, sample at the normal pace, not in a burst.
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker
            });
            // Interval::tick is cancel safe, and nothing below awaits.
            ticker.tick().await;
            let status = self.sample()?;
            let stable = self.previous.as_ref() == Some(&status);
            self.previous = Some(status.clone());
            if stable && self.reported.as_ref() != Some(&status) {
                self.reported = Some(status.clone());
                return Ok(BoardEvent::Status(status));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn cp_bands_follow_table_a4() {
        use CpState::*;
        let cases = [
            (13.5, A, E),
            (13.0, B, A),
            (11.0, B, A),
            (10.99, A, A),
            (10.99, B, B),
            (10.0, C, B),
            (9.99, A, B),
            (8.0, C, B),
            (7.99, B, B),
            (7.99, A, B),
            (7.99, C, C),
            (7.0, D, C),
            (6.99, B, C),
            (5.0, B, C),
            (4.99, C, C),
            (4.99, D, D),
            (4.0, A, C),
            (3.99, C, D),
            (2.0, C, D),
            (1.99, D, E),
            (0.0, A, E),
            (-12.0, A, E),
            (f64::NAN, A, E),
        ];
        for (volts, previous, expected) in cases {
            assert_eq!(
                cp_state_from_high(volts, previous),
                expected,
                "{volts} V after {previous}"
            );
        }
    }

    #[test]
    fn diode_check_needs_minus_12v_in_the_low_phase() {
        let pwm = PwmOutput::Duty(533);
        let eval = |high, low| {
            evaluate_cp(
                CpReading {
                    high_v: high,
                    low_v: low,
                },
                pwm,
                CpState::B,
            )
        };
        assert!(!eval(6.0, Some(-12.0)).diode_fault);
        assert!(!eval(6.0, Some(-11.0)).diode_fault);
        assert!(!eval(6.0, Some(-13.0)).diode_fault);
        assert!(eval(6.0, Some(-10.9)).diode_fault);
        assert!(eval(6.0, Some(-6.0)).diode_fault, "no diode: symmetric");
        assert!(!eval(6.0, None).diode_fault, "no low channel, no check");
        assert!(!eval(12.0, Some(-6.0)).diode_fault, "state A: no EV");
        // Without PWM there is no low phase to check.
        let steady = evaluate_cp(
            CpReading {
                high_v: 9.0,
                low_v: Some(9.0),
            },
            PwmOutput::Off,
            CpState::A,
        );
        assert_eq!(
            steady,
            CpEvaluation {
                state: CpState::B,
                diode_fault: false
            }
        );
    }

    #[test]
    fn driving_minus_12v_shows_f_or_a_fault() {
        let eval = |level| {
            evaluate_cp(
                CpReading {
                    high_v: level,
                    low_v: Some(level),
                },
                PwmOutput::Minus12V,
                CpState::B,
            )
            .state
        };
        assert_eq!(eval(-12.0), CpState::F);
        assert_eq!(eval(-11.0), CpState::F);
        assert_eq!(eval(-10.5), CpState::E);
        assert_eq!(eval(0.0), CpState::E);
    }

    #[test]
    fn pp_bands_give_cable_ratings() {
        for (ohms, expected) in [
            (1500.0, PpReading::Rated(13)),
            (1100.0, PpReading::Rated(13)),
            (2460.0, PpReading::Rated(13)),
            (2461.0, PpReading::NoCable),
            (f64::INFINITY, PpReading::NoCable),
            (680.0, PpReading::Rated(20)),
            (400.0, PpReading::Rated(20)),
            (936.0, PpReading::Rated(20)),
            (220.0, PpReading::Rated(32)),
            (164.0, PpReading::Rated(32)),
            (308.0, PpReading::Rated(32)),
            (100.0, PpReading::Rated(63)),
            (80.0, PpReading::Rated(63)),
            (140.0, PpReading::Rated(63)),
            (1000.0, PpReading::Invalid { ohms: 1000.0 }),
            (350.0, PpReading::Invalid { ohms: 350.0 }),
            (150.0, PpReading::Invalid { ohms: 150.0 }),
            (0.0, PpReading::Invalid { ohms: 0.0 }),
        ] {
            assert_eq!(pp_rating(ohms), expected, "{ohms} Ω");
        }
        // 1 kΩ pull-up to 3.3 V: 220 Ω reads 3.3 × 220 / 1220 V.
        let volts = 3.3 * 220.0 / 1220.0;
        assert!((pp_resistance(volts, 1000.0, 3.3) - 220.0).abs() < 1e-9);
        assert_eq!(pp_resistance(3.3, 1000.0, 3.3), f64::INFINITY);
        assert_eq!(pp_resistance(-0.1, 1000.0, 3.3), 0.0);
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn sysfs_pwm_programs_1khz_and_duty() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pwmchip0/pwm1");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["period", "duty_cycle", "enable", "polarity"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let mut pwm = SysfsPwm::open(root.path(), 0, 1, false).unwrap();
        assert_eq!(read(&dir.join("period")), "1000000");
        assert_eq!(read(&dir.join("duty_cycle")), "1000000", "+12 V");
        assert_eq!(read(&dir.join("enable")), "1");
        assert_eq!(read(&dir.join("polarity")), "normal");
        pwm.set(PwmOutput::Duty(266)).unwrap();
        assert_eq!(read(&dir.join("duty_cycle")), "266000");
        pwm.set(PwmOutput::Minus12V).unwrap();
        assert_eq!(read(&dir.join("duty_cycle")), "0");
        pwm.set(PwmOutput::Duty(1500)).unwrap();
        assert_eq!(read(&dir.join("duty_cycle")), "1000000");
    }

    #[test]
    fn sysfs_pwm_exports_a_missing_channel() {
        let root = tempfile::tempdir().unwrap();
        let chip = root.path().join("pwmchip2");
        std::fs::create_dir_all(&chip).unwrap();
        std::fs::write(chip.join("export"), "").unwrap();
        // Play the kernel: create pwm3 once "3" is written to export.
        let kernel = {
            let chip = chip.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    if std::fs::read_to_string(chip.join("export")).is_ok_and(|s| s == "3") {
                        std::fs::create_dir_all(chip.join("pwm3")).unwrap();
                        for f in ["period", "duty_cycle", "enable"] {
                            std::fs::write(chip.join("pwm3").join(f), "").unwrap();
                        }
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        SysfsPwm::open(root.path(), 2, 3, false).unwrap();
        kernel.join().unwrap();
        assert_eq!(read(&chip.join("pwm3/enable")), "1");

        let err = SysfsPwm::open(root.path(), 9, 0, false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("pwmchip9") && err.contains("no such PWM chip"),
            "{err}"
        );
        let err = SysfsPwm::open(root.path(), 2, 3, true)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("polarity"),
            "inversion needs the polarity file: {err}"
        );
    }

    fn fake_iio(root: &Path) -> PathBuf {
        let dev = root.join("iio:device0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("name"), "ads1015\n").unwrap();
        std::fs::write(dev.join("in_voltage_scale"), "0.5\n").unwrap();
        std::fs::write(dev.join("in_voltage0_raw"), "3000\n").unwrap();
        std::fs::write(dev.join("in_voltage1_raw"), "-100\n").unwrap();
        std::fs::write(dev.join("in_voltage1_scale"), "2.0\n").unwrap();
        std::fs::write(dev.join("in_voltage1_offset"), "10\n").unwrap();
        dev
    }

    fn adc(device: &str, channel: u32) -> AdcChannelConfig {
        AdcChannelConfig {
            device: device.into(),
            channel,
            gain: 1.0,
            offset_v: 0.0,
        }
    }

    #[test]
    fn iio_channels_apply_scale_offset_and_board_gain() {
        let root = tempfile::tempdir().unwrap();
        let dev = fake_iio(root.path());
        // Shared scale: 3000 × 0.5 mV = 1.5 V.
        let mut ch0 = IioChannel::open(root.path(), &adc("iio:device0", 0)).unwrap();
        assert!((ch0.read_volts().unwrap() - 1.5).abs() < 1e-9);
        // By name, per-channel scale and offset, board gain: (−100 + 10) × 2 mV
        // = −0.18 V, × 4 − 1 = −1.72 V.
        let mut cfg = adc("ads1015", 1);
        cfg.gain = 4.0;
        cfg.offset_v = -1.0;
        let mut ch1 = IioChannel::open(root.path(), &cfg).unwrap();
        assert!((ch1.read_volts().unwrap() + 1.72).abs() < 1e-9);

        std::fs::write(dev.join("in_voltage0_raw"), "busy\n").unwrap();
        let err = ch0.read_volts().unwrap_err().to_string();
        assert!(
            err.contains("in_voltage0_raw") && err.contains("not a number"),
            "{err}"
        );
        let err = IioChannel::open(root.path(), &adc("iio:device0", 7))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("in_voltage7_raw"), "{err}");
        let err = IioChannel::open(root.path(), &adc("nope", 0))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn linux_control_pilot_reads_through_sysfs() {
        let root = tempfile::tempdir().unwrap();
        let pwm_dir = root.path().join("pwm/pwmchip0/pwm0");
        std::fs::create_dir_all(&pwm_dir).unwrap();
        for f in ["period", "duty_cycle", "enable"] {
            std::fs::write(pwm_dir.join(f), "").unwrap();
        }
        let iio = root.path().join("iio");
        let dev = fake_iio(&iio);
        // A divider to 0..3.3 V around 1.65 V: CP = (adc − 1.65) × 8.
        let cp_cfg = |channel| AdcChannelConfig {
            device: "ads1015".into(),
            channel,
            gain: 8.0,
            offset_v: -13.2,
        };
        std::fs::write(dev.join("in_voltage0_raw"), "5040").unwrap(); // 2.52 V → 6.96 V
        std::fs::write(dev.join("in_voltage2_raw"), "300").unwrap(); // 0.15 V → −12 V
        let mut cp = LinuxControlPilot::new(
            SysfsPwm::open(&root.path().join("pwm"), 0, 0, false).unwrap(),
            IioChannel::open(&iio, &cp_cfg(0)).unwrap(),
            Some(IioChannel::open(&iio, &cp_cfg(2)).unwrap()),
        );
        cp.set_output(PwmOutput::Duty(533)).unwrap();
        assert_eq!(read(&pwm_dir.join("duty_cycle")), "533000");
        let reading = cp.read().unwrap();
        assert!((reading.high_v - 6.96).abs() < 1e-9, "{reading:?}");
        assert!((reading.low_v.unwrap() + 12.0).abs() < 1e-9, "{reading:?}");
        assert_eq!(
            evaluate_cp(reading, PwmOutput::Duty(533), CpState::B),
            CpEvaluation {
                state: CpState::C,
                diode_fault: false
            }
        );
    }

    /// A line shared between a test and the part under test.
    #[derive(Clone, Default)]
    struct FakeLine(Arc<Mutex<bool>>);

    impl FakeLine {
        fn get(&self) -> bool {
            *self.0.lock().unwrap()
        }
        fn put(&self, v: bool) {
            *self.0.lock().unwrap() = v;
        }
    }

    impl DigitalOutput for FakeLine {
        fn set_active(&mut self, active: bool) -> Result<()> {
            self.put(active);
            Ok(())
        }
    }

    impl DigitalInput for FakeLine {
        fn is_active(&mut self) -> Result<bool> {
            Ok(self.get())
        }
    }

    #[test]
    fn contactor_switches_phases_and_reads_feedback() {
        let (main, l23, fb) = (
            FakeLine::default(),
            FakeLine::default(),
            FakeLine::default(),
        );
        let mut c = GpioContactor::new(
            Box::new(main.clone()),
            Some(Box::new(l23.clone())),
            Some(Box::new(fb.clone())),
        );
        c.set(true, 1).unwrap();
        assert!(main.get() && !l23.get());
        assert!(!c.closed().unwrap(), "feedback, not the command");
        fb.put(true);
        assert!(c.closed().unwrap());
        c.set(true, 3).unwrap();
        assert!(main.get() && l23.get());
        c.set(false, 3).unwrap();
        assert!(!main.get() && !l23.get());

        let mut bare = GpioContactor::new(Box::new(FakeLine::default()), None, None);
        bare.set(true, 3).unwrap();
        assert!(bare.closed().unwrap());
    }

    #[test]
    fn lock_reports_fault_when_feedback_disagrees_too_long() {
        let (act, fb) = (FakeLine::default(), FakeLine::default());
        let mut slow = GpioLock::new(
            Box::new(act.clone()),
            Some(Box::new(fb.clone())),
            Duration::from_secs(3600),
        );
        slow.set(true).unwrap();
        assert!(act.get());
        assert_eq!(slow.state().unwrap(), LockState::Unlocked, "still moving");
        fb.put(true);
        assert_eq!(slow.state().unwrap(), LockState::Locked);

        let fb = FakeLine::default();
        let mut stuck = GpioLock::new(
            Box::new(FakeLine::default()),
            Some(Box::new(fb.clone())),
            Duration::ZERO,
        );
        stuck.set(true).unwrap();
        assert_eq!(stuck.state().unwrap(), LockState::Fault);
        fb.put(true);
        assert_eq!(stuck.state().unwrap(), LockState::Locked);
    }

    #[derive(Clone, Default)]
    struct FakeCp(Arc<Mutex<(f64, Option<PwmOutput>)>>);

    impl ControlPilot for FakeCp {
        fn set_output(&mut self, output: PwmOutput) -> Result<()> {
            self.0.lock().unwrap().1 = Some(output);
            Ok(())
        }
        fn read(&mut self) -> Result<CpReading> {
            Ok(CpReading {
                high_v: self.0.lock().unwrap().0,
                low_v: Some(-12.0),
            })
        }
    }

    fn fake_board(cp: &FakeCp, fb: &FakeLine) -> GpioBoard {
        cp.0.lock().unwrap().0 = 12.0;
        GpioBoard::from_parts(
            GpioParts {
                cp: Box::new(cp.clone()),
                contactor: Box::new(GpioContactor::new(
                    Box::new(FakeLine::default()),
                    None,
                    Some(Box::new(fb.clone())),
                )),
                lock: None,
                pp: None,
                rcd: None,
            },
            Duration::from_millis(20),
        )
    }

    async fn next_status(board: &mut GpioBoard, within: Duration) -> Option<BoardStatus> {
        match tokio::time::timeout(within, board.next_event()).await {
            Ok(Ok(BoardEvent::Status(s))) => Some(s),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn board_reports_changes_only() {
        let (cp, fb) = (FakeCp::default(), FakeLine::default());
        let mut board = fake_board(&cp, &fb);
        let first = next_status(&mut board, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(
            first,
            BoardStatus {
                cp: CpState::A,
                cable_rating_a: None,
                contactors_closed: false,
                lock: LockState::Unlocked,
                rcd_tripped: false,
                diode_fault: false,
            }
        );
        assert_eq!(next_status(&mut board, Duration::from_secs(1)).await, None);

        cp.0.lock().unwrap().0 = 9.0;
        let b = next_status(&mut board, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(b.cp, CpState::B);

        board.set_pwm(PwmOutput::Duty(266)).await.unwrap();
        assert_eq!(cp.0.lock().unwrap().1, Some(PwmOutput::Duty(266)));
        board.set_lock(true).await.unwrap();
        fb.put(true);
        let s = next_status(&mut board, Duration::from_millis(100))
            .await
            .unwrap();
        assert!(s.contactors_closed);
        assert_eq!(s.lock, LockState::Locked, "no lock hardware: the command");
        assert_eq!(next_status(&mut board, Duration::from_secs(1)).await, None);
        board.keep_alive().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn single_sample_glitch_is_not_reported() {
        let (cp, fb) = (FakeCp::default(), FakeLine::default());
        let mut board = fake_board(&cp, &fb);
        next_status(&mut board, Duration::from_millis(100))
            .await
            .unwrap();
        // One sample at 6 V, then back: never reported.
        let glitch = {
            let cp = cp.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(25)).await;
                cp.0.lock().unwrap().0 = 6.0;
                tokio::time::sleep(Duration::from_millis(20)).await;
                cp.0.lock().unwrap().0 = 12.0;
            })
        };
        assert_eq!(
            next_status(&mut board, Duration::from_millis(500)).await,
            None
        );
        glitch.await.unwrap();
    }

    #[test]
    fn drop_opens_the_contactor() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let main = FakeLine::default();
        let cp = FakeCp::default();
        let mut board = GpioBoard::from_parts(
            GpioParts {
                cp: Box::new(cp.clone()),
                contactor: Box::new(GpioContactor::new(Box::new(main.clone()), None, None)),
                lock: None,
                pp: None,
                rcd: None,
            },
            Duration::from_millis(20),
        );
        rt.block_on(board.set_contactors(true, 3)).unwrap();
        assert!(main.get());
        drop(board);
        assert!(!main.get());
        assert_eq!(cp.0.lock().unwrap().1, Some(PwmOutput::Off));
    }

    const EXAMPLE: &str = r#"
        sysfs_root = "/tmp/fake-sys"
        sample_interval_ms = 25
        pwm = { chip = 0, channel = 0 }
        cp.high = { device = "ads1015", channel = 0, gain = 4.0, offset_v = -6.0 }
        cp.low = { device = "ads1015", channel = 1, gain = 4.0, offset_v = -6.0 }
        pp = { adc = { device = "ads1015", channel = 2 }, pull_up_ohm = 1000.0, supply_v = 3.3 }
        contactor.main = { chip = "gpiochip0", line = "CONTACTOR_L1" }
        contactor.feedback = { chip = "/dev/gpiochip0", line = 17, active_low = true }
        lock = { actuator = { chip = "gpiochip0", line = 5 }, feedback = { chip = "gpiochip0", line = 6 } }
        rcd = { chip = "gpiochip1", line = 3 }
    "#;

    #[test]
    fn config_parses_from_toml() {
        let config: GpioBoardConfig = toml::from_str(EXAMPLE).unwrap();
        config.validate().unwrap();
        assert_eq!(config.sample_interval_ms, 25);
        assert_eq!(config.cp.high.gain, 4.0);
        assert_eq!(config.pp.as_ref().unwrap().adc.gain, 1.0, "default gain");
        assert_eq!(
            config.contactor.main.line,
            LineId::Name("CONTACTOR_L1".into())
        );
        let feedback = config.contactor.feedback.as_ref().unwrap();
        assert_eq!(feedback.line, LineId::Offset(17));
        assert_eq!(feedback.chip_path(), Path::new("/dev/gpiochip0"));
        assert_eq!(
            config.contactor.main.chip_path(),
            Path::new("/dev/gpiochip0")
        );
        assert_eq!(config.lock.as_ref().unwrap().settle_ms, 1000);

        let minimal: GpioBoardConfig = toml::from_str(
            r#"
            pwm = { chip = 0, channel = 0 }
            cp.high = { device = "iio:device0", channel = 0 }
            contactor.main = { chip = "gpiochip0", line = 4 }
            "#,
        )
        .unwrap();
        assert_eq!(minimal.sysfs_root, Path::new("/sys"));
        assert_eq!(minimal.sample_interval_ms, 20);
        assert!(minimal.pp.is_none() && minimal.lock.is_none() && minimal.rcd.is_none());
    }

    #[test]
    fn config_rejects_unknown_keys_and_bad_values() {
        let typo = EXAMPLE.replace("pull_up_ohm", "pullup_ohm");
        let err = toml::from_str::<GpioBoardConfig>(&typo)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pullup_ohm"), "{err}");

        let mut config: GpioBoardConfig = toml::from_str(EXAMPLE).unwrap();
        config.sample_interval_ms = 1;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("sample_interval_ms = 1"), "{err}");
        config.sample_interval_ms = 20;
        config.cp.low.as_mut().unwrap().gain = 0.0;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("cp.low.gain"), "{err}");
    }

    #[test]
    fn open_reports_missing_sysfs_clearly() {
        let root = tempfile::tempdir().unwrap();
        let mut config: GpioBoardConfig = toml::from_str(EXAMPLE).unwrap();
        config.sysfs_root = root.path().into();
        let err = GpioBoard::open(&config).err().unwrap().to_string();
        assert!(err.contains("pwmchip0"), "{err}");
    }
}
