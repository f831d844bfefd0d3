//! The transport against an in-process CSMS (tokio-tungstenite, tokio-rustls)
//! on 127.0.0.1: connection URL and subprotocol (OCPP-J 1.6 §3), HTTP
//! refusals, security profiles 1–3 (Security Whitepaper ed. 2) with a PKI
//! made here by rcgen, close by the peer. Pings and dead-connection detection
//! run over an in-memory pipe under tokio's paused clock, so their timing is
//! exact.

// tungstenite's handshake callback returns a whole http::Response as its error.
#![allow(clippy::result_large_err)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evos_ocpp::transport::{Io, Link, TransportConfig, TransportError};
use futures_util::{SinkExt as _, StreamExt as _};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{self, header};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const STATION: &str = "CP/1 ü";
const ENCODED: &str = "CP%2F1%20%C3%BC";
const PASSWORD: &str = "0123456789abcdef";
/// Guards against a hang in a broken build; never reached when things work.
const GUARD: Duration = Duration::from_secs(20);

// ---- the test PKI -------------------------------------------------------

struct Pki {
    dir: TempDir,
    /// The CA the station trusts, which also signs its client certificate.
    ca: CertifiedIssuer<'static, KeyPair>,
    /// A second CA nobody trusts.
    rogue: CertifiedIssuer<'static, KeyPair>,
}

struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, names: &[&str], cn: &str) -> Leaf {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    Leaf {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

impl Pki {
    fn new() -> Self {
        let pki = Pki {
            dir: TempDir::new().unwrap(),
            ca: ca("Test CSMS Root"),
            rogue: ca("Rogue Root"),
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem()).unwrap();
        let client = leaf(&pki.ca, &[], STATION);
        std::fs::write(pki.path("client.pem"), &client.cert_pem).unwrap();
        std::fs::write(pki.path("client.key"), &client.key_pem).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server(&self, issuer: &CertifiedIssuer<'static, KeyPair>, client_auth: bool) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = leaf(issuer, &["localhost", "127.0.0.1"], "csms");
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_auth {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca.der().clone()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder.with_single_cert(cert.chain, cert.key).unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

// ---- the in-process CSMS ------------------------------------------------

type ServerWs = WebSocketStream<Box<dyn Io>>;

/// What the CSMS saw of the upgrade request.
#[derive(Debug, Clone, Default)]
struct Seen {
    path: String,
    protocol: Option<String>,
    authorization: Option<String>,
}

impl Seen {
    fn of(request: &Request) -> Self {
        let header = |name| {
            request
                .headers()
                .get(name)
                .map(|v: &http::HeaderValue| v.to_str().unwrap().to_owned())
        };
        Seen {
            path: request.uri().path().to_owned(),
            protocol: header(header::SEC_WEBSOCKET_PROTOCOL),
            authorization: header(header::AUTHORIZATION),
        }
    }
}

type Answer = Box<dyn FnOnce(&Seen, Response) -> Result<Response, ErrorResponse> + Send>;

/// Upgrades with `ocpp1.6` when it was asked for.
fn agree() -> Answer {
    Box::new(|seen, mut response| {
        if seen
            .protocol
            .as_deref()
            .is_some_and(|p| p.split(',').any(|p| p.trim() == "ocpp1.6"))
        {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, "ocpp1.6".parse().unwrap());
        }
        Ok(response)
    })
}

fn refuse(status: u16) -> ErrorResponse {
    http::Response::builder().status(status).body(None).unwrap()
}

/// Accepts one connection (over TLS when `tls` is given) and upgrades it
/// as `answer` decides.
struct Csms {
    port: u16,
    task: JoinHandle<(Option<Seen>, Result<ServerWs, String>)>,
}

impl Csms {
    async fn start(tls: Option<TlsAcceptor>, answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let stream: Box<dyn Io> = match tls {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(s) => Box::new(s),
                    Err(e) => return (None, Err(format!("TLS: {e}"))),
                },
                None => Box::new(tcp),
            };
            let seen = Arc::new(Mutex::new(None));
            let slot = seen.clone();
            let callback = move |request: &Request, response: Response| {
                let s = Seen::of(request);
                let answer = answer(&s, response);
                *slot.lock().unwrap() = Some(s);
                answer
            };
            let ws = tokio_tungstenite::accept_hdr_async(stream, callback)
                .await
                .map_err(|e| e.to_string());
            let seen = seen.lock().unwrap().take();
            (seen, ws)
        });
        Csms { port, task }
    }

    async fn accepted(self) -> (Option<Seen>, Result<ServerWs, String>) {
        tokio::time::timeout(GUARD, self.task)
            .await
            .expect("CSMS finishes")
            .unwrap()
    }
}

fn config(url: String, profile: u8) -> TransportConfig {
    TransportConfig {
        csms_url: url,
        station_id: STATION.into(),
        subprotocol: "ocpp1.6".into(),
        security_profile: profile,
        basic_auth_password: Some(PASSWORD.into()),
        ca_file: None,
        client_cert: None,
        client_key: None,
        connect_timeout: GUARD,
    }
}

fn tls_config(pki: &Pki, url: String, profile: u8) -> TransportConfig {
    TransportConfig {
        ca_file: Some(pki.path("ca.pem")),
        client_cert: Some(pki.path("client.pem")),
        client_key: Some(pki.path("client.key")),
        ..config(url, profile)
    }
}

fn basic(password: &str) -> String {
    use base64::Engine as _;
    let credentials = format!("{STATION}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

/// One text each way over an established link.
async fn exchange(link: &mut Link, ws: &mut ServerWs) {
    link.send(r#"[2,"1","Heartbeat",{}]"#).await.unwrap();
    let got = ws.next().await.unwrap().unwrap();
    assert_eq!(got, Message::text(r#"[2,"1","Heartbeat",{}]"#));
    ws.send(Message::text(r#"[3,"1",{}]"#)).await.unwrap();
    assert_eq!(link.recv().await.unwrap(), r#"[3,"1",{}]"#);
}

// ---- connection URL, subprotocol, refusals -------------------------------

#[tokio::test]
async fn path_carries_the_encoded_id_and_the_subprotocol_is_agreed() {
    let csms = Csms::start(None, agree()).await;
    let cfg = config(format!("ws://127.0.0.1:{}/ocpp/", csms.port), 0);
    let mut link = Link::connect(&cfg).await.unwrap();
    let (seen, ws) = csms.accepted().await;
    let seen = seen.unwrap();
    assert_eq!(seen.path, format!("/ocpp/{ENCODED}"));
    assert_eq!(seen.protocol.as_deref(), Some("ocpp1.6"));
    // Profile 0 sends no credentials.
    assert_eq!(seen.authorization, None);
    let mut ws = ws.unwrap();
    exchange(&mut link, &mut ws).await;
    // The CSMS reads the close, answers it as it reads on, and hangs up.
    let csms = async move {
        let close = ws.next().await;
        let end = ws.next().await;
        (close, end)
    };
    let ((), (close, end)) = tokio::join!(link.close(), csms);
    assert!(
        matches!(&close, Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::Normal),
        "{close:?}"
    );
    assert!(end.is_none(), "{end:?}");
}

#[tokio::test]
async fn http_400_is_a_refusal() {
    let csms = Csms::start(None, Box::new(|_, _| Err(refuse(400)))).await;
    let cfg = config(format!("ws://127.0.0.1:{}", csms.port), 0);
    let err = Link::connect(&cfg).await.unwrap_err();
    assert!(
        matches!(err, TransportError::Refused { status: 400 }),
        "{err:?}"
    );
    assert!(csms.accepted().await.1.is_err());
}

#[tokio::test]
async fn upgrade_without_the_subprotocol_is_not_agreed_and_the_socket_closes() {
    let csms = Csms::start(None, Box::new(|_, response| Ok(response))).await;
    let cfg = config(format!("ws://127.0.0.1:{}", csms.port), 0);
    let err = Link::connect(&cfg).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::SubprotocolNotAgreed { wanted } if wanted == "ocpp1.6"),
        "{err:?}"
    );
    // The CSMS upgraded, then sees the station hang up rather than a dangling socket.
    let mut ws = csms.accepted().await.1.unwrap();
    let end = tokio::time::timeout(GUARD, ws.next()).await.unwrap();
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
}

#[tokio::test]
async fn upgrade_with_another_subprotocol_is_not_agreed() {
    let csms = Csms::start(
        None,
        Box::new(|_, mut response| {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, "ocpp2.0.1".parse().unwrap());
            Ok(response)
        }),
    )
    .await;
    let cfg = config(format!("ws://127.0.0.1:{}", csms.port), 0);
    let err = Link::connect(&cfg).await.unwrap_err();
    assert!(
        matches!(err, TransportError::SubprotocolNotAgreed { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let err = Link::connect(&config(format!("ws://127.0.0.1:{port}"), 0))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Connect(_)), "{err:?}");
}

#[tokio::test]
async fn a_csms_that_never_answers_times_out() {
    // The kernel completes the TCP handshake from the backlog; nobody answers the upgrade.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = TransportConfig {
        connect_timeout: Duration::from_millis(200),
        ..config(format!("ws://127.0.0.1:{port}"), 0)
    };
    let err = Link::connect(&cfg).await.unwrap_err();
    assert!(
        matches!(err, TransportError::Timeout(d) if d == Duration::from_millis(200)),
        "{err:?}"
    );
    drop(listener);
}

#[tokio::test]
async fn invalid_config_is_refused_before_connecting() {
    let err = Link::connect(&config("wss://127.0.0.1:1".into(), 1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Config {
                key: "ocpp.csms_url",
                ..
            }
        ),
        "{err:?}"
    );
}

// ---- security profiles ----------------------------------------------------

fn check_password(expected: String) -> Answer {
    Box::new(move |seen, response| {
        if seen.authorization.as_deref() == Some(expected.as_str()) {
            agree()(seen, response)
        } else {
            Err(refuse(401))
        }
    })
}

#[tokio::test]
async fn profile_1_sends_basic_auth() {
    let csms = Csms::start(None, check_password(basic(PASSWORD))).await;
    let cfg = config(format!("ws://127.0.0.1:{}", csms.port), 1);
    let mut link = Link::connect(&cfg).await.unwrap();
    let (seen, ws) = csms.accepted().await;
    assert_eq!(seen.unwrap().authorization, Some(basic(PASSWORD)));
    exchange(&mut link, &mut ws.unwrap()).await;
}

#[tokio::test]
async fn profile_1_wrong_password_is_a_401_refusal() {
    let csms = Csms::start(None, check_password(basic(PASSWORD))).await;
    let cfg = TransportConfig {
        basic_auth_password: Some("fedcba9876543210".into()),
        ..config(format!("ws://127.0.0.1:{}", csms.port), 1)
    };
    let err = Link::connect(&cfg).await.unwrap_err();
    assert!(
        matches!(err, TransportError::Refused { status: 401 }),
        "{err:?}"
    );
}

#[tokio::test]
async fn profile_2_verifies_the_csms_and_sends_basic_auth() {
    let pki = Pki::new();
    let csms = Csms::start(
        Some(pki.server(&pki.ca, false)),
        check_password(basic(PASSWORD)),
    )
    .await;
    let cfg = tls_config(&pki, format!("wss://localhost:{}/ocpp", csms.port), 2);
    let mut link = Link::connect(&cfg).await.unwrap();
    let (seen, ws) = csms.accepted().await;
    let seen = seen.unwrap();
    assert_eq!(seen.path, format!("/ocpp/{ENCODED}"));
    assert_eq!(seen.authorization, Some(basic(PASSWORD)));
    exchange(&mut link, &mut ws.unwrap()).await;
}

#[tokio::test]
async fn profile_2_rejects_a_csms_certificate_from_another_ca() {
    let pki = Pki::new();
    let csms = Csms::start(Some(pki.server(&pki.rogue, false)), agree()).await;
    let cfg = tls_config(&pki, format!("wss://localhost:{}", csms.port), 2);
    let err = Link::connect(&cfg).await.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Tls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{err:?}"
    );
    assert!(csms.accepted().await.1.is_err());
}

#[tokio::test]
async fn profile_3_mutual_tls_with_a_client_certificate() {
    let pki = Pki::new();
    let csms = Csms::start(Some(pki.server(&pki.ca, true)), agree()).await;
    // An IP address host: verified against the certificate's IP SAN.
    let cfg = tls_config(&pki, format!("wss://127.0.0.1:{}", csms.port), 3);
    let mut link = Link::connect(&cfg).await.unwrap();
    let (seen, ws) = csms.accepted().await;
    // Profile 3 authenticates by certificate only.
    assert_eq!(seen.unwrap().authorization, None);
    exchange(&mut link, &mut ws.unwrap()).await;
}

#[tokio::test]
async fn profile_3_server_refuses_a_station_without_a_client_certificate() {
    let pki = Pki::new();
    let csms = Csms::start(Some(pki.server(&pki.ca, true)), agree()).await;
    // Profile 2 settings: the same trust store, no client certificate.
    let cfg = tls_config(&pki, format!("wss://localhost:{}", csms.port), 2);
    let err = Link::connect(&cfg).await.unwrap_err();
    assert!(matches!(err, TransportError::Tls(_)), "{err:?}");
    let (seen, ws) = csms.accepted().await;
    assert!(seen.is_none());
    assert!(ws.err().unwrap().starts_with("TLS"));
}

#[tokio::test]
async fn profile_3_unreadable_key_is_a_config_error() {
    let pki = Pki::new();
    std::fs::write(pki.path("client.key"), "not a key").unwrap();
    let csms = Csms::start(Some(pki.server(&pki.ca, true)), agree()).await;
    let cfg = tls_config(&pki, format!("wss://localhost:{}", csms.port), 3);
    let err = Link::connect(&cfg).await.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Config {
                key: "ocpp.client_key",
                ..
            }
        ),
        "{err:?}"
    );
}

// ---- close ------------------------------------------------------------------

#[tokio::test]
async fn close_by_the_csms_is_closed_with_its_code() {
    let csms = Csms::start(None, agree()).await;
    let mut link = Link::connect(&config(format!("ws://127.0.0.1:{}", csms.port), 0))
        .await
        .unwrap();
    let mut ws = csms.accepted().await.1.unwrap();
    let frame = CloseFrame {
        code: CloseCode::Away,
        reason: "restart".into(),
    };
    ws.close(Some(frame)).await.unwrap();
    let err = link.recv().await.unwrap_err();
    assert!(
        matches!(&err, TransportError::Closed { code: Some(1001), reason } if reason == "restart"),
        "{err:?}"
    );
    // The station answered the close: the closing handshake completed.
    assert!(matches!(ws.next().await, Some(Ok(Message::Close(_)))));
    // Later calls keep reporting it.
    assert!(matches!(
        link.recv().await,
        Err(TransportError::Closed {
            code: Some(1001),
            ..
        })
    ));
    assert!(matches!(
        link.send("[]").await,
        Err(TransportError::Closed { .. })
    ));
}

#[tokio::test]
async fn dropped_tcp_is_closed_without_code() {
    let csms = Csms::start(None, agree()).await;
    let mut link = Link::connect(&config(format!("ws://127.0.0.1:{}", csms.port), 0))
        .await
        .unwrap();
    drop(csms.accepted().await.1.unwrap());
    let err = link.recv().await.unwrap_err();
    assert!(
        matches!(err, TransportError::Closed { code: None, .. }),
        "{err:?}"
    );
}

// ---- pings, over an in-memory pipe with the paused clock ---------------------

const INTERVAL: Duration = Duration::from_secs(10);

/// A link and the CSMS end of it, over `tokio::io::duplex`.
async fn piped() -> (Link, ServerWs) {
    let (station, csms) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let csms: Box<dyn Io> = Box::new(csms);
        tokio_tungstenite::accept_hdr_async(csms, |r: &Request, resp| agree()(&Seen::of(r), resp))
            .await
            .unwrap()
    });
    let link = Link::connect_over(&config("ws://csms.test/ocpp".into(), 0), station)
        .await
        .unwrap();
    (link, server.await.unwrap())
}

/// Reads until `n` pings arrived, answering them; returns when each came.
async fn ping_times(ws: &mut ServerWs, n: usize) -> Vec<Instant> {
    let mut times = Vec::new();
    while times.len() < n {
        match ws.next().await.unwrap().unwrap() {
            Message::Ping(_) => times.push(Instant::now()),
            other => panic!("unexpected {other:?}"),
        }
    }
    times
}

#[tokio::test(start_paused = true)]
async fn pings_go_out_at_the_interval() {
    let (mut link, mut ws) = piped().await;
    link.set_ping_interval(Some(INTERVAL));
    let start = Instant::now();
    let csms = tokio::spawn(async move {
        let times = ping_times(&mut ws, 3).await;
        ws.send(Message::text("done")).await.unwrap();
        times
    });
    // The CSMS's pongs (sent by tungstenite as it reads) keep the link alive.
    assert_eq!(link.recv().await.unwrap(), "done");
    let times = csms.await.unwrap();
    let offsets: Vec<_> = times.iter().map(|t| *t - start).collect();
    assert_eq!(offsets, [INTERVAL, 2 * INTERVAL, 3 * INTERVAL]);
}

#[tokio::test(start_paused = true)]
async fn no_pings_when_disabled() {
    let (mut link, mut ws) = piped().await;
    link.set_ping_interval(Some(INTERVAL));
    link.set_ping_interval(Some(Duration::ZERO));
    let start = Instant::now();
    let csms = tokio::spawn(async move {
        tokio::time::sleep(10 * INTERVAL).await;
        ws.send(Message::text("late")).await.unwrap();
        ws
    });
    assert_eq!(link.recv().await.unwrap(), "late");
    assert_eq!(start.elapsed(), 10 * INTERVAL);
    // Nothing but that text was exchanged: the CSMS has no ping to read.
    let mut ws = csms.await.unwrap();
    link.send("x").await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("x"));
}

#[tokio::test(start_paused = true)]
async fn a_csms_that_stops_answering_is_dead() {
    let (mut link, _ws) = piped().await;
    // The CSMS never reads again, so it never answers our ping.
    link.set_ping_interval(Some(INTERVAL));
    let start = Instant::now();
    let err = link.recv().await.unwrap_err();
    assert!(
        matches!(err, TransportError::Dead(d) if d == INTERVAL),
        "{err:?}"
    );
    // Ping at one interval, dead one (default pong timeout) later.
    assert_eq!(start.elapsed(), 2 * INTERVAL);
}

#[tokio::test(start_paused = true)]
async fn pong_timeout_can_be_shorter() {
    let (mut link, _ws) = piped().await;
    link.set_ping_interval(Some(INTERVAL));
    link.set_pong_timeout(Some(Duration::from_secs(3)));
    let start = Instant::now();
    let err = link.recv().await.unwrap_err();
    assert!(matches!(err, TransportError::Dead(_)), "{err:?}");
    assert_eq!(start.elapsed(), INTERVAL + Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn any_frame_counts_as_an_answer() {
    let (mut link, mut ws) = piped().await;
    link.set_ping_interval(Some(INTERVAL));
    let start = Instant::now();
    // The CSMS never reads (so sends no pong) but talks at 15 s.
    let csms = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(15)).await;
        ws.send(Message::text("status")).await.unwrap();
        ws
    });
    assert_eq!(link.recv().await.unwrap(), "status");
    // Pinged again at 20 s, dead at 30 s.
    let err = link.recv().await.unwrap_err();
    assert!(matches!(err, TransportError::Dead(_)), "{err:?}");
    assert_eq!(start.elapsed(), 3 * INTERVAL);
    drop(csms.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_huge_interval_does_not_overflow() {
    let (mut link, mut ws) = piped().await;
    link.set_ping_interval(Some(Duration::MAX));
    link.set_pong_timeout(Some(Duration::MAX));
    let csms = tokio::spawn(async move {
        tokio::time::sleep(INTERVAL).await;
        ws.send(Message::text("hello")).await.unwrap();
        ws
    });
    assert_eq!(link.recv().await.unwrap(), "hello");
    drop(csms.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn csms_pings_are_answered() {
    let (mut link, mut ws) = piped().await;
    let station = tokio::spawn(async move {
        let r = link.recv().await;
        (link, r)
    });
    ws.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Pong(data) => assert_eq!(&data[..], b"hi"),
        other => panic!("{other:?}"),
    }
    ws.send(Message::text("after")).await.unwrap();
    let (_link, r) = station.await.unwrap();
    assert_eq!(r.unwrap(), "after");
}

#[tokio::test(start_paused = true)]
async fn recv_is_cancel_safe_in_select() {
    let (mut link, mut ws) = piped().await;
    link.set_ping_interval(Some(INTERVAL));
    let start = Instant::now();
    let csms = tokio::spawn(async move {
        let times = ping_times(&mut ws, 2).await;
        for i in 0..3 {
            ws.send(Message::text(format!("m{i}"))).await.unwrap();
        }
        // Stop answering: the next ping goes unanswered.
        (times, ws)
    });
    // recv is dropped every 3 s by a competing branch, as in the service loop.
    let mut got = Vec::new();
    let err = loop {
        tokio::select! {
            r = link.recv() => match r {
                Ok(text) => got.push(text),
                Err(e) => break e,
            },
            () = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
    };
    assert_eq!(got, ["m0", "m1", "m2"]);
    assert!(matches!(err, TransportError::Dead(_)), "{err:?}");
    let (times, _ws) = csms.await.unwrap();
    let offsets: Vec<_> = times.iter().map(|t| *t - start).collect();
    assert_eq!(offsets, [INTERVAL, 2 * INTERVAL]);
    // The third ping (30 s) is never answered: dead at 40 s.
    assert_eq!(start.elapsed(), 4 * INTERVAL);
}

// ---- back-off -----------------------------------------------------------------

#[test]
fn backoff_grows_is_capped_jitters_and_resets() {
    use evos_ocpp::transport::Backoff;
    let s = Duration::from_secs(1);
    let mut b = Backoff::new(2 * s, 30 * s);
    let mut seen = Vec::new();
    for ceiling in [2, 4, 8, 16, 30, 30, 30] {
        let d = b.next_delay();
        assert!(
            d >= ceiling * s / 2 && d <= ceiling * s,
            "{d:?} vs {ceiling}"
        );
        seen.push(d);
    }
    b.reset();
    let d = b.next_delay();
    assert!(d >= s && d <= 2 * s, "{d:?}");
    // Equal jitter: the capped delays are not all the same.
    let capped: Vec<_> = (0..20).map(|_| b.next_delay()).skip(4).collect();
    assert!(capped.iter().any(|d| *d != capped[0]));
}
