//! The independent OCPP 1.6J CSMS of the end-to-end tests
//! (`tests/peers/csms16.py`, on the mobilityhouse `ocpp` package) and the
//! test PKI for security profiles 2 and 3 (OCPP 1.6 Security Whitepaper
//! edition 2, §2).
//!
//! The peer prints every station → CSMS CALL as an `EVENT` line, and
//! connection changes as `CONNECT` / `DISCONNECT` / `REFUSED` lines, in the
//! order they happen; [`Csms`] keeps them all and waits on the lines as they
//! come (never by polling). Commands (`call`, `raw`, `offline`, …) are
//! answered by one `OK`/`ERR` line each.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::DEADLINE;

/// The station identity the tests use (also the client certificate's CN).
pub const STATION_ID: &str = "EVOS-E2E-1";

/// Files of a CSMS TLS identity.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require client certificates issued by this CA (security profile 3).
    pub client_ca: Option<PathBuf>,
}

/// How the CSMS peer behaves (see the script's docs).
#[derive(Debug, Clone)]
pub struct CsmsOptions {
    /// BootNotification answers in turn; the last one repeats.
    pub boot: Vec<String>,
    /// BootNotification.conf interval when Accepted (the heartbeat interval).
    pub interval: u32,
    /// BootNotification.conf interval when Pending / Rejected.
    pub retry: u32,
    /// `TAG[:PARENT][=STATUS]`: the tags the CSMS knows; others are Invalid.
    pub accept: Vec<String>,
    /// Require HTTP Basic auth with this password (profiles 1 and 2).
    pub password: Option<String>,
    pub tls: Option<ServerTls>,
    pub first_tx: i64,
}

impl Default for CsmsOptions {
    fn default() -> Self {
        CsmsOptions {
            boot: vec!["Accepted".into()],
            interval: 300,
            retry: 1,
            accept: vec![super::TOKEN.into()],
            password: None,
            tls: None,
            first_tx: 1,
        }
    }
}

/// One line the peer printed (other than a command's answer).
#[derive(Debug, Clone)]
pub struct Line {
    /// `EVENT`, `CONNECT`, `DISCONNECT` or `REFUSED`.
    pub kind: String,
    pub value: Value,
}

enum Out {
    Answer(String),
    Line(Line),
}

/// A CALLERROR: (errorCode, errorDescription).
pub type CallError = (String, String);

pub struct Csms {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    out: Receiver<Out>,
    answers: std::collections::VecDeque<String>,
    history: Vec<Line>,
    port: u16,
    tls: bool,
}

/// Run a blocking wait without starving the tokio workers (the tests run on
/// the multi-thread runtime; zbus needs its tasks served meanwhile).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl Csms {
    pub fn start(opts: &CsmsOptions) -> Csms {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/csms16.py");
        let mut args: Vec<String> = vec![
            "--boot".into(),
            opts.boot.join(","),
            "--interval".into(),
            opts.interval.to_string(),
            "--retry".into(),
            opts.retry.to_string(),
            "--accept".into(),
            opts.accept.join(","),
            "--first-tx".into(),
            opts.first_tx.to_string(),
        ];
        if let Some(p) = &opts.password {
            args.extend(["--password".into(), p.clone()]);
        }
        if let Some(tls) = &opts.tls {
            args.extend([
                "--cert".into(),
                tls.cert.display().to_string(),
                "--key".into(),
                tls.key.display().to_string(),
            ]);
            if let Some(ca) = &tls.client_ca {
                args.extend(["--client-ca".into(), ca.display().to_string()]);
            }
        }
        let mut child = Command::new(super::python::python())
            .arg(&script)
            .args(&args)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, out) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (kind, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                let item = match kind {
                    "EVENT" | "CONNECT" | "DISCONNECT" | "REFUSED" => {
                        match serde_json::from_str(rest) {
                            Ok(value) => Out::Line(Line {
                                kind: kind.into(),
                                value,
                            }),
                            Err(e) => {
                                eprintln!("csms16: unreadable line ({e}): {line}");
                                continue;
                            }
                        }
                    }
                    "OK" | "ERR" | "LISTENING" => Out::Answer(line),
                    _ => {
                        eprintln!("csms16: {line}");
                        continue;
                    }
                };
                if sender.send(item).is_err() {
                    break;
                }
            }
        });
        let mut csms = Csms {
            name: format!("csms16.py {}", args.join(" ")),
            stdin: child.stdin.take(),
            child,
            out,
            answers: Default::default(),
            history: Vec::new(),
            port: 0,
            tls: opts.tls.is_some(),
        };
        let line = csms.answer("LISTENING <port>");
        csms.port = line
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: bad ready line `{line}`", csms.name));
        csms
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL the station is configured with (the station id is appended).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Take what the peer printed so far, waiting at most until `until` for
    /// one more item; false when nothing came in time.
    fn pump(&mut self, until: Option<Instant>) -> bool {
        let first = match until {
            None => match self.out.try_recv() {
                Ok(item) => item,
                Err(_) => return false,
            },
            Some(until) => {
                let left = until.saturating_duration_since(Instant::now());
                match blocking(|| self.out.recv_timeout(left)) {
                    Ok(item) => item,
                    Err(RecvTimeoutError::Timeout) => return false,
                    Err(RecvTimeoutError::Disconnected) => {
                        let status = self.child.try_wait();
                        panic!(
                            "{}: the peer exited ({status:?}); its stderr is above",
                            self.name
                        )
                    }
                }
            }
        };
        let take = |item: Out, this: &mut Self| match item {
            Out::Answer(a) => this.answers.push_back(a),
            Out::Line(l) => this.accept_line(l),
        };
        take(first, self);
        while let Ok(item) = self.out.try_recv() {
            take(item, self);
        }
        true
    }

    fn accept_line(&mut self, line: Line) {
        if line.kind == "EVENT"
            && let Some(error) = line.value.get("error").and_then(Value::as_str)
        {
            // The library validated the station's CALL against the official
            // schema: a failure is a station bug, whatever the test waits on.
            panic!(
                "the station sent a CALL that fails the OCPP 1.6 JSON schema: {error}\n  payload: {}",
                line.value
            );
        }
        self.history.push(line);
    }

    fn answer(&mut self, what: &str) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(a) = self.answers.pop_front() {
                return a;
            }
            if !self.pump(Some(until)) {
                panic!("{}: no {what} within {DEADLINE:?}", self.name);
            }
        }
    }

    /// Send one command; Ok(text after `OK`) or Err(the `ERR` line).
    pub fn command(&mut self, command: &str) -> Result<String, String> {
        assert!(!command.contains('\n'), "one line per command");
        let stdin = self.stdin.as_mut().expect("peer running");
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: cannot send a command: {e}", self.name));
        let short: String = command.chars().take(80).collect();
        let line = self.answer(&format!("answer to `{short}`"));
        match line.strip_prefix("OK") {
            Some(rest) => Ok(rest.trim().to_owned()),
            None => Err(line),
        }
    }

    fn ok(&mut self, command: &str) -> String {
        self.command(command).unwrap_or_else(|e| {
            let short: String = command.chars().take(120).collect();
            panic!("{}: `{short}` failed: {e}", self.name)
        })
    }

    /// A CSMS → station CALL through the library (request and answer
    /// schema-validated). Err((code, description)) for a CALLERROR; panics
    /// when the station's answer fails the schema or never comes.
    pub fn call(&mut self, action: &str, payload: Value) -> Result<Value, CallError> {
        let text = self.ok(&format!("call {action} {payload}"));
        let v: Value = serde_json::from_str(&text).expect("call answer is JSON");
        if let Some(why) = v.get("invalid") {
            panic!(
                "the station's answer to {action} {payload} fails the OCPP 1.6 schema: {why}\n  answer: {}",
                v["result"]
            );
        }
        match v.get("error") {
            Some(code) => Err((
                code.as_str().unwrap_or_default().to_owned(),
                v["description"].as_str().unwrap_or_default().to_owned(),
            )),
            None => Ok(v["result"].clone()),
        }
    }

    /// `call` that must succeed: the answer's payload.
    pub fn call_ok(&mut self, action: &str, payload: Value) -> Value {
        let what = format!("{action} {payload}");
        self.call(action, payload)
            .unwrap_or_else(|e| panic!("the station answered {what} with CALLERROR {e:?}"))
    }

    /// Send `text` as one frame, bypassing the library, and return the
    /// station's answer frame (parsed), or None when none came within the
    /// peer's raw timeout (or the connection closed).
    pub fn raw(&mut self, text: &str) -> Option<Value> {
        let answer = self.ok(&format!("raw {text}"));
        let v: Value = serde_json::from_str(&answer).expect("raw answer is JSON");
        v["reply"].as_str().map(|frame| {
            serde_json::from_str(frame).unwrap_or_else(|e| {
                panic!("the station answered with a frame that is not JSON ({e}): {frame}")
            })
        })
    }

    /// Send `text` as one frame and wait for nothing.
    pub fn raw_send(&mut self, text: &str) {
        self.ok(&format!("rawsend {text}"));
    }

    /// CALLRESULT/CALLERRORs the station sent that answer nothing we asked.
    pub fn stray(&mut self) -> Vec<String> {
        let text = self.ok("stray");
        serde_json::from_str(&text).expect("stray is a JSON list")
    }

    /// Drop the connection (no close handshake) and turn every new opening
    /// handshake down until [`Csms::online`].
    pub fn offline(&mut self) {
        self.ok("offline");
    }

    pub fn online(&mut self) {
        self.ok("online");
    }

    /// Close the connection with a close handshake (the station reconnects).
    pub fn close(&mut self) {
        self.ok("close");
    }

    /// Change an answer at run time (`boot`, `interval`, `retry`, `accept`,
    /// `password`, `txid`, `datatransfer`, `noreply`).
    pub fn set(&mut self, key: &str, value: &str) {
        self.ok(&format!("set {key} {value}"));
    }

    /// How many lines were seen so far: a mark to wait for later lines only.
    pub fn mark(&mut self) -> usize {
        self.pump(None);
        self.history.len()
    }

    /// Every line so far.
    pub fn history(&mut self) -> &[Line] {
        self.pump(None);
        &self.history
    }

    /// Every station → CSMS CALL so far, in order.
    pub fn events(&mut self) -> Vec<Value> {
        self.pump(None);
        self.history
            .iter()
            .filter(|l| l.kind == "EVENT")
            .map(|l| l.value.clone())
            .collect()
    }

    /// The station → CSMS CALLs at or after mark `since`, in order.
    pub fn events_since(&mut self, since: usize) -> Vec<Value> {
        self.pump(None);
        self.history
            .iter()
            .skip(since)
            .filter(|l| l.kind == "EVENT")
            .map(|l| l.value.clone())
            .collect()
    }

    /// The CALLs of `action` so far (payloads), in order.
    pub fn payloads(&mut self, action: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["action"] == action)
            .map(|e| e["payload"].clone())
            .collect()
    }

    /// The first line at or after `since` of `kind` for which `pred` holds,
    /// waiting for it at most `within`; its index and value.
    pub fn wait_line(
        &mut self,
        since: usize,
        kind: &str,
        within: Duration,
        pred: impl FnMut(&Value) -> bool,
    ) -> (usize, Value) {
        self.wait_line_named(since, kind, kind, within, pred)
    }

    fn wait_line_named(
        &mut self,
        since: usize,
        kind: &str,
        what: &str,
        within: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> (usize, Value) {
        let until = Instant::now() + within;
        let mut from = since;
        self.pump(None);
        loop {
            for (i, l) in self.history.iter().enumerate().skip(from) {
                if l.kind == kind && pred(&l.value) {
                    return (i, l.value.clone());
                }
            }
            from = from.max(self.history.len());
            if !self.pump(Some(until)) {
                let seen: Vec<String> = self.history[since.min(self.history.len())..]
                    .iter()
                    .map(|l| {
                        let mut s = format!("{} {}", l.kind, l.value);
                        s.truncate(300);
                        s
                    })
                    .collect();
                panic!(
                    "no matching {what} within {within:?}; seen since the mark:\n  {}",
                    seen.join("\n  ")
                );
            }
        }
    }

    /// The first `action` CALL at or after mark `since` whose payload
    /// satisfies `pred`, within [`DEADLINE`]: (index, the whole event).
    pub fn wait_event_since(
        &mut self,
        since: usize,
        action: &str,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> (usize, Value) {
        self.wait_line_named(since, "EVENT", &format!("{action} CALL"), DEADLINE, |e| {
            e["action"] == action && pred(&e["payload"])
        })
    }

    /// The payload of the first `action` CALL since the start for which
    /// `pred` holds, within [`DEADLINE`].
    pub fn wait_event(&mut self, action: &str, pred: impl FnMut(&Value) -> bool) -> Value {
        self.wait_event_since(0, action, pred).1["payload"].clone()
    }

    /// The payload of the next `action` CALL after mark `since`.
    pub fn next_event(&mut self, since: usize, action: &str) -> Value {
        self.wait_event_since(since, action, |_| true).1["payload"].clone()
    }

    /// Assert that no line of `kind` comes at or after `since` during
    /// `within` (a bounded wait for an absence: what a refused TLS
    /// handshake leaves, since the peer never sees it as a connection).
    pub fn assert_no_line(&mut self, since: usize, kind: &str, within: Duration) {
        let until = Instant::now() + within;
        loop {
            if let Some(l) = self.history.iter().skip(since).find(|l| l.kind == kind) {
                panic!("unexpected {kind}: {}", l.value);
            }
            if Instant::now() >= until || !self.pump(Some(until)) {
                if let Some(l) = self.history.iter().skip(since).find(|l| l.kind == kind) {
                    panic!("unexpected {kind}: {}", l.value);
                }
                return;
            }
        }
    }

    /// The first CONNECT at or after `since`.
    pub fn wait_connect(&mut self, since: usize) -> Value {
        self.wait_line(since, "CONNECT", DEADLINE, |_| true).1
    }

    /// Wait until the station is registered: a BootNotification answered
    /// Accepted and the StatusNotifications that follow it (§4.9: connector
    /// 0 and each connector), at or after mark `since`.
    pub fn wait_accepted(&mut self, since: usize) -> usize {
        let (i, _) = self.wait_line(since, "EVENT", DEADLINE, |e| {
            e["action"] == "BootNotification" && e["reply"]["status"] == "Accepted"
        });
        let (j, _) = self.wait_event_since(i, "StatusNotification", |p| p["connectorId"] == 1);
        j + 1
    }

    /// Kill the peer now (SIGKILL).
    pub fn kill(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Csms {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A test PKI made at test time: a CSMS CA with a server certificate for
/// 127.0.0.1/localhost and a station client certificate (CN = the station
/// id), and a rogue CA with the same two, to prove that only the right CA is
/// trusted.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub rogue_ca: PathBuf,
    pub rogue_server_cert: PathBuf,
    pub rogue_server_key: PathBuf,
    pub rogue_client_cert: PathBuf,
    pub rogue_client_key: PathBuf,
}

impl Pki {
    pub fn new(station_id: &str) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca = |cn: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let leaf = |issuer: &Issuer<'_, KeyPair>, cn: &str, sans: Vec<String>, server: bool| {
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![if server {
                ExtendedKeyUsagePurpose::ServerAuth
            } else {
                ExtendedKeyUsagePurpose::ClientAuth
            }];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let server_names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let (ca_pem, issuer) = ca("evos e2e CSMS CA");
        let (server_pem, server_key) = leaf(&issuer, "127.0.0.1", server_names.clone(), true);
        let (client_pem, client_key) = leaf(&issuer, station_id, vec![], false);
        let (rogue_pem, rogue) = ca("rogue CA");
        let (rogue_server_pem, rogue_server_key) = leaf(&rogue, "127.0.0.1", server_names, true);
        let (rogue_client_pem, rogue_client_key) = leaf(&rogue, station_id, vec![], false);
        Pki {
            ca: write("ca.pem", ca_pem),
            server_cert: write("server.pem", server_pem),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_pem),
            client_key: write("client.key", client_key),
            rogue_ca: write("rogue-ca.pem", rogue_pem),
            rogue_server_cert: write("rogue-server.pem", rogue_server_pem),
            rogue_server_key: write("rogue-server.key", rogue_server_key),
            rogue_client_cert: write("rogue-client.pem", rogue_client_pem),
            rogue_client_key: write("rogue-client.key", rogue_client_key),
            dir,
        }
    }

    pub fn server(&self, mutual: bool) -> ServerTls {
        ServerTls {
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
            client_ca: mutual.then(|| self.ca.clone()),
        }
    }
}

/// A station with the ocpp service and its CSMS peer.
pub struct OcppStack {
    pub stack: super::Stack,
    pub csms: Csms,
}

impl OcppStack {
    /// Start the CSMS with `opts`, then the station configured by `tweak`
    /// (from [`super::OcppOptions::new`] for the CSMS's URL), and wait until
    /// the station is registered (BootNotification Accepted and the
    /// StatusNotifications after it).
    pub async fn start(
        opts: CsmsOptions,
        tweak: impl FnOnce(super::OcppOptions) -> super::OcppOptions,
    ) -> OcppStack {
        let mut s = Self::start_unregistered(opts, tweak).await;
        s.csms.wait_accepted(0);
        s
    }

    /// As [`OcppStack::start`], without waiting for anything.
    pub async fn start_unregistered(
        opts: CsmsOptions,
        tweak: impl FnOnce(super::OcppOptions) -> super::OcppOptions,
    ) -> OcppStack {
        let csms = Csms::start(&opts);
        let ocpp = tweak(super::OcppOptions::new(&csms.url()));
        let stack = super::Stack::start_ocpp(&ocpp).await;
        OcppStack { stack, csms }
    }

    /// A plain station (no password, TLS) with the default CSMS.
    pub async fn plain() -> OcppStack {
        Self::start(CsmsOptions::default(), |o| o).await
    }

    pub async fn plug(&self) {
        self.stack.sim().await.plug(1, "ac-11kw").await.unwrap();
    }

    pub async fn unplug(&self) {
        self.stack.sim().await.unplug(1).await.unwrap();
    }

    pub async fn swipe(&self, tag: &str) {
        self.stack.sim().await.swipe(1, tag).await.unwrap();
    }

    /// Wait for StatusNotification `status` of connector 1 after `since`.
    pub fn wait_status(&mut self, since: usize, status: &str) -> usize {
        self.csms
            .wait_event_since(since, "StatusNotification", |p| {
                p["connectorId"] == 1 && p["status"] == status
            })
            .0
    }

    /// Wait for the StartTransaction after `since`: (its index, the
    /// transactionId the CSMS gave, its payload).
    pub fn wait_start(&mut self, since: usize) -> (usize, i64, Value) {
        let (i, e) = self
            .csms
            .wait_event_since(since, "StartTransaction", |_| true);
        let tx = e["reply"]["transactionId"]
            .as_i64()
            .expect("the CSMS answered with a transactionId");
        (i, tx, e["payload"].clone())
    }

    /// Wait for the StopTransaction of `tx` after `since`: (index, payload).
    pub fn wait_stop(&mut self, since: usize, tx: i64) -> (usize, Value) {
        let (i, e) = self
            .csms
            .wait_event_since(since, "StopTransaction", |p| p["transactionId"] == tx);
        (i, e["payload"].clone())
    }

    /// Plug in, present [`super::TOKEN`], wait until the transaction runs
    /// and the connector is Charging: (mark after it, transactionId).
    pub async fn charging(&mut self) -> (usize, i64) {
        let since = self.csms.mark();
        self.plug().await;
        self.swipe(super::TOKEN).await;
        let (i, tx, _) = self.wait_start(since);
        // Either order (OCTT TC_003: "step 5 and step 7 may be reversed").
        let j = self.wait_status(since, "Charging");
        (i.max(j) + 1, tx)
    }
}

/// Milliseconds since the Unix epoch of an OCPP dateTime (RFC 3339; the
/// station sends UTC with `Z`, an offset is honoured too).
pub fn unix_ms(text: &str) -> i64 {
    let bad = || panic!("not an RFC 3339 dateTime: {text:?}");
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        bad();
    }
    let num = |r: std::ops::Range<usize>| -> i64 {
        match text.get(r).and_then(|s| s.parse().ok()) {
            Some(v) => v,
            None => bad(),
        }
    };
    let (y, mo, d) = (num(0..4), num(5..7), num(8..10));
    let (h, mi, s) = (num(11..13), num(14..16), num(17..19));
    let mut i = 19;
    let mut ms = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &text[start..i];
        let mut frac: String = digits.chars().take(3).collect();
        while frac.len() < 3 {
            frac.push('0');
        }
        ms = frac.parse().unwrap_or_else(|_| bad());
    }
    let offset_min = match b.get(i) {
        Some(b'Z' | b'z') => 0,
        Some(sign @ (b'+' | b'-')) => {
            let v = num(i + 1..i + 3) * 60 + num(i + 4..i + 6);
            if *sign == b'-' { -v } else { v }
        }
        _ => bad(),
    };
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + h * 3600 + mi * 60 + s) - offset_min * 60) * 1000 + ms
}

/// An OCPP dateTime (UTC, milliseconds) for Unix milliseconds.
pub fn iso(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// Now, Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Assert `frame` is a CALLERROR answering `id` with `code`.
#[track_caller]
pub fn assert_call_error(frame: &Option<Value>, id: &str, codes: &[&str], what: &str) {
    let Some(f) = frame else {
        panic!("{what}: no answer from the station (expected CALLERROR {codes:?})")
    };
    assert_eq!(f[0], 4, "{what}: expected a CALLERROR {codes:?}, got {f}");
    assert_eq!(
        f[1], id,
        "{what}: the CALLERROR must carry the CALL's unique id: {f}"
    );
    assert!(
        codes.iter().any(|c| f[2] == *c),
        "{what}: expected errorCode {codes:?}, got {f}"
    );
    assert!(
        f[3].is_string() && f[4].is_object(),
        "{what}: a CALLERROR has 5 elements: {f}"
    );
}

impl OcppStack {
    /// Wait until the ocpp service's `QueuedMessages` satisfies `pred`
    /// (on its PropertiesChanged), at most [`DEADLINE`].
    pub async fn wait_queued(&self, what: &str, pred: impl Fn(u32) -> bool) -> u32 {
        use futures_util::StreamExt;
        let ocpp = self.stack.ocpp().await;
        let mut changes = ocpp.receive_queued_messages_changed().await;
        let found = tokio::time::timeout(DEADLINE, async {
            loop {
                let n = ocpp.queued_messages().await.unwrap();
                if pred(n) {
                    return n;
                }
                changes.next().await.expect("property stream");
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("QueuedMessages never became {what} within {DEADLINE:?}"))
    }

    /// Wait until the ocpp service's `ConnectionState` is `want`.
    pub async fn wait_connection(&self, want: &str) {
        use futures_util::StreamExt;
        let ocpp = self.stack.ocpp().await;
        let mut changes = ocpp.receive_connection_state_changed().await;
        let found = tokio::time::timeout(DEADLINE, async {
            while ocpp.connection_state().await.unwrap() != want {
                changes.next().await.expect("property stream");
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "ConnectionState never became {want} within {DEADLINE:?}"
        );
    }

    /// Wait for `n` Meter1 Reading signals of EVSE 1 (broadcast: ocpp,
    /// subscribed since its start, gets the same ones).
    pub async fn wait_readings(&self, n: usize) {
        use futures_util::StreamExt;
        let meter = self.stack.meter().await;
        let mut readings = meter.receive_reading().await.unwrap();
        for _ in 0..n {
            tokio::time::timeout(DEADLINE, readings.next())
                .await
                .unwrap_or_else(|_| panic!("no Meter1 Reading within {DEADLINE:?}"))
                .expect("signal stream");
        }
    }

    /// Wait until EVSE 1's status is `want` (on the bus, whatever the CSMS
    /// heard).
    pub async fn wait_evse(&self, want: &str) {
        super::wait_status(&self.stack.evse().await, want).await;
    }
}
