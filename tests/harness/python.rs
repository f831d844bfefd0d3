//! Independent protocol peers written in Python (`tests/peers/*.py`), run
//! from a venv with the pinned packages of `tests/requirements.txt`.
//!
//! The venv is `<workspace>/target/test-venv`, created on first use and
//! created afresh whenever `tests/requirements.txt` changes (its hash is
//! kept in the venv). Test threads and test processes share it: creation
//! runs under `flock` on `target/test-venv.lock`, so exactly one of them
//! builds it while the others wait. pip's progress goes to stderr.
//!
//! `EVOS_TEST_PYTHON=/path/to/python` uses that interpreter instead (it must
//! already have the packages); nothing is created then.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Instant;

use super::DEADLINE;

/// The workspace root (the `evos` package is the root package).
fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A Python interpreter with `tests/requirements.txt` installed: the test
/// venv (created if needed) or `EVOS_TEST_PYTHON`. Panics if neither works.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PYTHON.get_or_init(find_or_create) {
        Ok(python) => python.clone(),
        Err(message) => panic!("{message}"),
    }
}

fn find_or_create() -> Result<PathBuf, String> {
    if let Some(python) = std::env::var_os("EVOS_TEST_PYTHON").filter(|p| !p.is_empty()) {
        let python = PathBuf::from(python);
        let imports = Command::new(&python)
            .args(["-c", "import pymodbus, ocpp, websockets"])
            .status()
            .map_err(|e| format!("EVOS_TEST_PYTHON={}: cannot run it: {e}", python.display()))?;
        if !imports.success() {
            return Err(format!(
                "EVOS_TEST_PYTHON={}: it lacks the packages of tests/requirements.txt \
                 (`pip install -r tests/requirements.txt`), or unset it to let the tests \
                 create target/test-venv",
                python.display()
            ));
        }
        return Ok(python);
    }

    let target = workspace().join("target");
    let venv = target.join("test-venv");
    let python = venv.join("bin").join("python");
    let requirements = workspace().join("tests").join("requirements.txt");
    let text = fs::read(&requirements)
        .map_err(|e| format!("cannot read {}: {e}", requirements.display()))?;
    let stamp = format!("fnv1a64 {:016x}\n", fnv1a64(&text));
    let stamp_path = venv.join("evos-requirements.hash");
    // `exists` follows the symlink: a venv whose base interpreter is gone
    // is made again.
    let ready = || fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) && python.exists();
    if ready() {
        return Ok(python);
    }

    fs::create_dir_all(&target).map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    let lock_path = target.join("test-venv.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    flock_exclusive(&lock).map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    // Another process may have made it while this one waited.
    if ready() {
        return Ok(python);
    }

    // Straight to stderr, past libtest's capture: the wait is explained.
    let _ = writeln!(
        std::io::stderr(),
        "evos tests: creating the Python venv {} from {} ...",
        venv.display(),
        requirements.display()
    );
    let _ = fs::remove_file(&stamp_path);
    let base = "python3";
    run(
        Command::new(base)
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
        &format!("`{base} -m venv --clear {}`", venv.display()),
    )
    .map_err(|e| {
        format!(
            "cannot create the test venv: {e}.\nThe end-to-end tests need python3 (3.11) with \
             venv and pip (Debian: apt-get install python3-venv), or EVOS_TEST_PYTHON set to a \
             python that has tests/requirements.txt installed."
        )
    })?;
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(&requirements),
        &format!(
            "`{} -m pip install -r {}`",
            python.display(),
            requirements.display()
        ),
    )
    .map_err(|e| format!("cannot install the test peers' packages: {e} (is PyPI reachable?)"))?;
    let partial = venv.join("evos-requirements.hash.tmp");
    fs::write(&partial, &stamp)
        .and_then(|()| fs::rename(&partial, &stamp_path))
        .map_err(|e| format!("cannot write {}: {e}", stamp_path.display()))?;
    let _ = writeln!(
        std::io::stderr(),
        "evos tests: Python venv ready: {}",
        python.display()
    );
    Ok(python)
    // `lock` closes here, releasing the flock.
}

/// Run `command` with its output on our stderr; Err names what failed.
fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("{what}: {e}"))?;
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .status()
        .map_err(|e| format!("{what} did not start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

fn flock_exclusive(file: &File) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a file descriptor this `File` owns for the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// FNV-1a, 64 bit: stable across Rust releases, unlike `DefaultHasher`.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A running peer script. It printed `LISTENING <port>`; it is killed on
/// drop (and exits by itself when its stdin closes, should the test process
/// die without dropping it).
pub struct PeerProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    port: u16,
}

impl PeerProcess {
    /// Start `tests/peers/SCRIPT ARGS` and wait until it reports
    /// `LISTENING <port>` on stdout, at most [`DEADLINE`].
    pub fn spawn(script: &str, args: &[&str]) -> PeerProcess {
        let path = workspace().join("tests").join("peers").join(script);
        let mut child = Command::new(python())
            .arg(&path)
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let name = format!("{script} {}", args.join(" "));
        let mut peer = PeerProcess {
            name,
            stdin: child.stdin.take(),
            child,
            lines,
            port: 0,
        };
        let line = peer.next_line("LISTENING <port>", |l| l.starts_with("LISTENING "));
        peer.port = line["LISTENING ".len()..]
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{}: bad ready line `{line}`", peer.name));
        peer
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send one control command and wait for its answer, at most
    /// [`DEADLINE`]. Returns what follows `OK` (empty for a plain `OK`);
    /// panics on `ERR …`.
    pub fn send(&mut self, command: &str) -> String {
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("{}: already stopped", self.name));
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: cannot send `{command}`: {e}", self.name));
        let line = self.next_line(&format!("the answer to `{command}`"), |l| {
            l == "OK" || l.starts_with("OK ") || l.starts_with("ERR")
        });
        if line.starts_with("ERR") {
            panic!("{}: `{command}` was refused: {line}", self.name);
        }
        line.strip_prefix("OK")
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// Kill the peer now (SIGKILL) and reap it; dropping does the same.
    pub fn kill(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn next_line(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(line) => eprintln!("{}: {line}", self.name),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{}: no {what} within {DEADLINE:?}", self.name)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    panic!(
                        "{}: exited before {what} ({status:?}); its stderr is above",
                        self.name
                    )
                }
            }
        }
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `tests/peers/modbus_meter.py ARGS`: an Eastron SDM630 on Modbus TCP (see
/// the script for its options and control commands). Pass `--port 0` for
/// any free port; [`PeerProcess::port`] tells which.
pub fn spawn_modbus_meter(args: &[&str]) -> PeerProcess {
    PeerProcess::spawn("modbus_meter.py", args)
}
