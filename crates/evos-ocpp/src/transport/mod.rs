//! The WebSocket link to the CSMS: OCPP-J 1.6 §3 (connection URL, the
//! `ocpp1.6` subprotocol), the WebSocketPingInterval key (OCPP 1.6 §9.1)
//! and the Security Whitepaper ed. 2 §2 (security profiles 1–3).
//!
//! | profile | transport | station authenticates with               |
//! |---------|-----------|------------------------------------------|
//! | 0       | `ws://`   | nothing (plain OCPP-J 1.6; development)  |
//! | 1       | `ws://`   | HTTP Basic `station_id:password`         |
//! | 2       | `wss://`  | HTTP Basic, server verified by `ca_file` |
//! | 3       | `wss://`  | client certificate, server by `ca_file`  |
//!
//! Version-independent: 2.0.1 differs only in the subprotocol name.

mod backoff;
mod tls;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::error::{ProtocolError, TlsError};
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri, header};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing::{debug, warn};

pub use backoff::Backoff;

/// Largest message and frame accepted from the CSMS. Big enough for a full
/// SendLocalList or GetConfiguration, small enough for a charger's RAM.
pub const MAX_MESSAGE_SIZE: usize = 4 << 20;

/// How long [`Link::close`] and the answer to a peer's close wait for the
/// closing handshake.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Characters kept as they are in the station id path segment: RFC 3986
/// "unreserved" (OCPP-J 1.6 §3.1.1 asks for percent-encoding).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Where and how to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// `ws://` or `wss://` endpoint; the station id is appended as `/` +
    /// the percent-encoded id.
    pub csms_url: String,
    pub station_id: String,
    /// `ocpp1.6`.
    pub subprotocol: String,
    /// 0 = none (plain ws, no auth: development only), 1 = basic auth over
    /// ws, 2 = TLS + basic auth, 3 = TLS with a client certificate.
    pub security_profile: u8,
    /// Profiles 1–2: HTTP Basic password for user `station_id`.
    pub basic_auth_password: Option<String>,
    /// PEM trust store for `wss://` (profiles 2–3); the only roots trusted.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain, profile 3.
    pub client_cert: Option<PathBuf>,
    /// PEM PKCS#8, SEC1 or PKCS#1 key, profile 3.
    pub client_key: Option<PathBuf>,
    /// Bound on TCP connect, TLS and WebSocket handshakes together.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for TransportConfig {
    // By hand, so that the password never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("csms_url", &self.csms_url)
            .field("station_id", &self.station_id)
            .field("subprotocol", &self.subprotocol)
            .field("security_profile", &self.security_profile)
            .field(
                "basic_auth_password",
                &self.basic_auth_password.as_ref().map(|_| "<redacted>"),
            )
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl TransportConfig {
    /// Checks the settings against each other; errors name the config key.
    pub fn validate(&self) -> Result<(), TransportError> {
        let profile = self.security_profile;
        if profile > 3 {
            return Err(TransportError::config(
                "ocpp.security_profile",
                format!("{profile} is not a security profile (0-3)"),
            ));
        }
        if self.station_id.is_empty() {
            return Err(TransportError::config("ocpp.station_id", "empty"));
        }
        if self.subprotocol.is_empty() || HeaderValue::from_str(&self.subprotocol).is_err() {
            return Err(TransportError::config(
                "ocpp.subprotocol",
                "empty or not a header value",
            ));
        }
        let uri: Uri = self.csms_url.parse().map_err(|e| {
            TransportError::config("ocpp.csms_url", format!("{:?}: {e}", self.csms_url))
        })?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(TransportError::config("ocpp.csms_url", "no host"));
        }
        if uri.query().is_some() {
            return Err(TransportError::config(
                "ocpp.csms_url",
                "has a query; the station id is appended to the path",
            ));
        }
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => {
                return Err(TransportError::config(
                    "ocpp.csms_url",
                    "must start with ws:// or wss://",
                ));
            }
        };
        if tls != self.is_tls() {
            let want = if profile >= 2 { "wss://" } else { "ws://" };
            return Err(TransportError::config(
                "ocpp.csms_url",
                format!("security profile {profile} needs a {want} URL"),
            ));
        }
        if matches!(profile, 1 | 2) {
            if self
                .basic_auth_password
                .as_deref()
                .is_none_or(str::is_empty)
            {
                return Err(TransportError::config(
                    "ocpp.basic_auth_password",
                    format!("security profile {profile} needs a password"),
                ));
            }
            // RFC 7617: the user-id of Basic authentication cannot hold a colon.
            if self.station_id.contains(':') {
                return Err(TransportError::config(
                    "ocpp.station_id",
                    "contains ':', which HTTP Basic authentication cannot carry",
                ));
            }
        }
        if tls && self.ca_file.is_none() {
            return Err(TransportError::config(
                "ocpp.ca_file",
                format!("security profile {profile} needs the CSMS's CA certificates"),
            ));
        }
        if profile == 3 {
            if self.client_cert.is_none() {
                return Err(TransportError::config(
                    "ocpp.client_cert",
                    "security profile 3 needs a client certificate",
                ));
            }
            if self.client_key.is_none() {
                return Err(TransportError::config(
                    "ocpp.client_key",
                    "security profile 3 needs the client certificate's key",
                ));
            }
        }
        if self.connect_timeout.is_zero() {
            return Err(TransportError::config("ocpp.connect_timeout", "zero"));
        }
        Ok(())
    }

    /// Profiles 2 and 3 run over TLS.
    fn is_tls(&self) -> bool {
        self.security_profile >= 2
    }

    /// The URL connected to: `csms_url` + `/` + the percent-encoded station id.
    pub fn url(&self) -> String {
        let base = self.csms_url.trim_end_matches('/');
        let id = utf8_percent_encode(&self.station_id, PATH_SEGMENT);
        format!("{base}/{id}")
    }

    /// The HTTP upgrade request, with subprotocol and authorization.
    fn request(&self) -> Result<Request, TransportError> {
        let mut request = self
            .url()
            .into_client_request()
            .map_err(|e| TransportError::config("ocpp.csms_url", e.to_string()))?;
        let headers = request.headers_mut();
        let protocol = HeaderValue::from_str(&self.subprotocol)
            .map_err(|e| TransportError::config("ocpp.subprotocol", e.to_string()))?;
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        if matches!(self.security_profile, 1 | 2)
            && let Some(password) = &self.basic_auth_password
        {
            let credentials = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{password}", self.station_id));
            let mut value = HeaderValue::from_str(&format!("Basic {credentials}"))
                .map_err(|e| TransportError::config("ocpp.basic_auth_password", e.to_string()))?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        Ok(request)
    }
}

/// Why the link could not be made or broke.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A setting is wrong or a file it names is unusable.
    #[error("{key}: {reason}")]
    Config { key: &'static str, reason: String },
    /// No TCP connection (DNS, refused, unreachable).
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    /// Connecting took longer than `connect_timeout`.
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    /// TLS failed: untrusted server certificate, client certificate refused, …
    #[error("TLS: {0}")]
    Tls(#[source] rustls::Error),
    /// The CSMS answered the upgrade with this HTTP status instead of 101
    /// (e.g. 400 wrong subprotocol, 401 bad credentials, 404 unknown station).
    #[error("the CSMS refused the connection with HTTP {status}")]
    Refused { status: u16 },
    /// The CSMS upgraded without (or with another) `Sec-WebSocket-Protocol`.
    #[error("the CSMS did not agree to the subprotocol {wanted}")]
    SubprotocolNotAgreed { wanted: String },
    /// The CSMS closed the connection, with a close frame or without.
    #[error("closed by the CSMS (code {code:?}): {reason}")]
    Closed { code: Option<u16>, reason: String },
    /// Nothing arrived within the deadline after our ping.
    #[error("no answer within {0:?} of our ping: connection dead")]
    Dead(Duration),
    /// Reading or writing the established connection failed.
    #[error("I/O: {0}")]
    Io(#[source] io::Error),
    /// The CSMS broke the WebSocket protocol (or sent a message over
    /// [`MAX_MESSAGE_SIZE`]).
    #[error("WebSocket: {0}")]
    Protocol(String),
}

impl TransportError {
    fn config(key: &'static str, reason: impl Into<String>) -> Self {
        TransportError::Config {
            key,
            reason: reason.into(),
        }
    }

    fn closed(code: Option<u16>, reason: impl Into<String>) -> Self {
        TransportError::Closed {
            code,
            reason: reason.into(),
        }
    }

    fn from_io(e: io::Error) -> Self {
        // tokio-rustls reports TLS failures, including alerts the server
        // sends after the handshake (TLS 1.3 client-certificate refusals),
        // as io::Error wrapping a rustls::Error.
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => TransportError::Tls(tls.clone()),
            None => TransportError::Io(e),
        }
    }

    fn from_ws(e: WsError, subprotocol: &str) -> Self {
        match e {
            WsError::ConnectionClosed | WsError::AlreadyClosed => {
                TransportError::closed(None, "connection closed")
            }
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                TransportError::closed(None, "without a closing handshake")
            }
            WsError::Io(e) => TransportError::from_io(e),
            WsError::Tls(TlsError::Rustls(e)) => TransportError::Tls(*e),
            WsError::Tls(e) => TransportError::config("ocpp.csms_url", e.to_string()),
            WsError::Http(response) => TransportError::Refused {
                status: response.status().as_u16(),
            },
            WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(_)) => {
                TransportError::SubprotocolNotAgreed {
                    wanted: subprotocol.to_owned(),
                }
            }
            WsError::Url(e) => TransportError::config("ocpp.csms_url", e.to_string()),
            other => TransportError::Protocol(other.to_string()),
        }
    }
}

/// Any byte stream the link can run over: TCP, or an in-memory pipe in tests.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// An open WebSocket to the CSMS.
pub struct Link {
    ws: WebSocketStream<MaybeTlsStream<Box<dyn Io>>>,
    subprotocol: String,
    ping_interval: Option<Duration>,
    pong_timeout: Option<Duration>,
    next_ping: Option<Instant>,
    /// Since when we wait for a sign of life after a ping fell due.
    ping_due: Option<Instant>,
    ping_sent: bool,
    /// The peer's close, once seen: repeated to later `recv` calls.
    closed: Option<(Option<u16>, String)>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("subprotocol", &self.subprotocol)
            .field("ping_interval", &self.ping_interval)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Connects over TCP (and TLS for `wss://`), all within
    /// `connect_timeout`. Pings are off until [`set_ping_interval`](Self::set_ping_interval).
    ///
    /// When the CSMS upgrades without agreeing to the subprotocol the
    /// handshake fails, as RFC 6455 §4.1 says, and the socket is closed
    /// (dropped) before [`TransportError::SubprotocolNotAgreed`] returns.
    pub async fn connect(cfg: &TransportConfig) -> Result<Link, TransportError> {
        cfg.validate()?;
        let uri: Uri = cfg
            .csms_url
            .parse()
            .map_err(|e| TransportError::config("ocpp.csms_url", format!("{e}")))?;
        let host = uri.host().unwrap_or_default();
        // IPv6 literals come bracketed in URLs but not in socket addresses.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let port = uri
            .port_u16()
            .unwrap_or(if cfg.is_tls() { 443 } else { 80 });
        let limit = cfg.connect_timeout;
        timeout(limit, async {
            debug!(url = %cfg.url(), "connecting");
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(TransportError::Connect)?;
            // OCPP messages are small and answered one at a time: no batching.
            if let Err(e) = tcp.set_nodelay(true) {
                debug!("TCP_NODELAY: {e}");
            }
            Link::connect_over(cfg, tcp).await
        })
        .await
        .map_err(|_| TransportError::Timeout(limit))?
    }

    /// The TLS (for `wss://`) and WebSocket handshakes over an already
    /// connected stream, without a time limit: for tests and for callers
    /// that open the stream themselves (e.g. through a proxy).
    pub async fn connect_over<S>(cfg: &TransportConfig, stream: S) -> Result<Link, TransportError>
    where
        S: Io + 'static,
    {
        cfg.validate()?;
        let request = cfg.request()?;
        let connector = if cfg.is_tls() {
            Connector::Rustls(tls::client_config(cfg)?)
        } else {
            Connector::Plain
        };
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_SIZE))
            .max_frame_size(Some(MAX_MESSAGE_SIZE));
        let stream: Box<dyn Io> = Box::new(stream);
        let (ws, _response) = tokio_tungstenite::client_async_tls_with_config(
            request,
            stream,
            Some(ws_config),
            Some(connector),
        )
        .await
        .map_err(|e| TransportError::from_ws(e, &cfg.subprotocol))?;
        debug!(url = %cfg.url(), "connected");
        Ok(Link {
            ws,
            subprotocol: cfg.subprotocol.clone(),
            ping_interval: None,
            pong_timeout: None,
            next_ping: None,
            ping_due: None,
            ping_sent: false,
            closed: None,
        })
    }

    /// Sends one text frame.
    pub async fn send(&mut self, text: &str) -> Result<(), TransportError> {
        if let Some((code, reason)) = &self.closed {
            return Err(TransportError::closed(*code, reason.clone()));
        }
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| self.error(e))
    }

    /// The next text message. Answers the CSMS's pings, sends ours every
    /// ping interval, and fails with [`TransportError::Dead`] when nothing
    /// at all (pong or any frame) arrives within the pong timeout after a
    /// ping fell due. Fails with [`TransportError::Closed`] once the CSMS
    /// closes. Binary messages are not OCPP-J and are skipped.
    ///
    /// Cancel-safe: all timer state lives in `self`, a message is only taken
    /// off the socket when it is returned, and a ping interrupted before it
    /// was written is sent on the next call.
    pub async fn recv(&mut self) -> Result<String, TransportError> {
        enum Event {
            Message(Option<Result<Message, WsError>>),
            Timer,
        }
        loop {
            if let Some((code, reason)) = &self.closed {
                return Err(TransportError::closed(*code, reason.clone()));
            }
            self.send_due_ping().await?;
            let wake = self.wake_at();
            let event = tokio::select! {
                biased;
                message = self.ws.next() => Event::Message(message),
                () = sleep_until_some(wake) => Event::Timer,
            };
            let message = match event {
                Event::Timer => {
                    self.on_timer(Instant::now())?;
                    continue;
                }
                Event::Message(message) => message,
            };
            // Any frame shows the connection is alive.
            self.ping_due = None;
            match message {
                Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
                Some(Ok(Message::Binary(data))) => {
                    warn!(len = data.len(), "binary WebSocket message ignored");
                }
                // tungstenite queues the pong and sends it on the next read.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = match frame {
                        Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_owned()),
                        None => (None, String::new()),
                    };
                    debug!(?code, %reason, "closed by the CSMS");
                    self.closed = Some((code, reason.clone()));
                    // Send tungstenite's queued close reply: a clean close
                    // lets the CSMS tell a restart from a failure.
                    let _ = timeout(CLOSE_TIMEOUT, self.ws.flush()).await;
                    return Err(TransportError::closed(code, reason));
                }
                Some(Err(e)) => return Err(self.error(e)),
                None => return Err(TransportError::closed(None, "connection ended")),
            }
        }
    }

    /// OCPP key WebSocketPingInterval: `None` or zero disables our pings
    /// (the CSMS's pings are still answered). Pings start one interval from
    /// now.
    pub fn set_ping_interval(&mut self, interval: Option<Duration>) {
        self.ping_interval = interval.filter(|d| !d.is_zero());
        self.next_ping = self.ping_interval.map(|d| after(Instant::now(), d));
        if self.ping_interval.is_none() {
            self.ping_due = None;
        }
    }

    /// How long to wait for any frame after a ping; `None` (the default)
    /// means one ping interval, so a link is declared dead at the moment the
    /// next ping would be due.
    pub fn set_pong_timeout(&mut self, timeout: Option<Duration>) {
        self.pong_timeout = timeout.filter(|d| !d.is_zero());
    }

    /// Closes cleanly (close frame 1000, then waits up to [`CLOSE_TIMEOUT`]
    /// for the CSMS to finish the closing handshake).
    pub async fn close(mut self) {
        let _ = timeout(CLOSE_TIMEOUT, async {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            if self.ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        })
        .await;
    }

    fn error(&self, e: WsError) -> TransportError {
        TransportError::from_ws(e, &self.subprotocol)
    }

    fn current_pong_timeout(&self) -> Duration {
        self.pong_timeout
            .or(self.ping_interval)
            .unwrap_or(Duration::MAX)
    }

    fn dead_at(&self) -> Option<Instant> {
        Some(after(self.ping_due?, self.current_pong_timeout()))
    }

    fn wake_at(&self) -> Option<Instant> {
        match (self.next_ping, self.dead_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_timer(&mut self, now: Instant) -> Result<(), TransportError> {
        if self.dead_at().is_some_and(|dead| now >= dead) {
            return Err(TransportError::Dead(self.current_pong_timeout()));
        }
        if let (Some(next), Some(interval)) = (self.next_ping, self.ping_interval)
            && now >= next
        {
            let following = after(next, interval);
            // After a stall (suspend, busy CPU) skip missed pings rather than burst.
            self.next_ping = Some(if following > now {
                following
            } else {
                after(now, interval)
            });
            if self.ping_due.is_none() {
                self.ping_due = Some(now);
                self.ping_sent = false;
            }
        }
        Ok(())
    }

    async fn send_due_ping(&mut self) -> Result<(), TransportError> {
        if self.ping_due.is_none() || self.ping_sent {
            return Ok(());
        }
        let dead = self.dead_at().unwrap_or_else(far_future);
        match timeout_at(dead, self.ws.send(Message::Ping(Default::default()))).await {
            Err(_) => Err(TransportError::Dead(self.current_pong_timeout())),
            Ok(Err(e)) => Err(self.error(e)),
            Ok(Ok(())) => {
                self.ping_sent = true;
                Ok(())
            }
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `t + d`, or about 30 years on where that overflows (a huge interval).
fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or_else(far_future)
}

/// An instant no timer reaches.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(profile: u8, url: &str) -> TransportConfig {
        TransportConfig {
            csms_url: url.into(),
            station_id: "CP 1/ü".into(),
            subprotocol: "ocpp1.6".into(),
            security_profile: profile,
            basic_auth_password: Some("0123456789abcdef".into()),
            ca_file: Some("/ca.pem".into()),
            client_cert: Some("/c.pem".into()),
            client_key: Some("/k.pem".into()),
            connect_timeout: Duration::from_secs(10),
        }
    }

    fn key(c: &TransportConfig) -> &'static str {
        match c.validate() {
            Err(TransportError::Config { key, .. }) => key,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn url_appends_the_percent_encoded_id() {
        let c = cfg(0, "ws://csms:9000/ocpp/");
        assert_eq!(c.url(), "ws://csms:9000/ocpp/CP%201%2F%C3%BC");
        let c = TransportConfig {
            station_id: "AZaz09-._~".into(),
            ..cfg(0, "ws://csms/ocpp")
        };
        assert_eq!(c.url(), "ws://csms/ocpp/AZaz09-._~");
    }

    #[test]
    fn validate_names_the_key() {
        for profile in 0..=3 {
            let url = if profile >= 2 {
                "wss://csms"
            } else {
                "ws://csms"
            };
            assert!(cfg(profile, url).validate().is_ok(), "{profile}");
        }
        assert_eq!(key(&cfg(4, "ws://csms")), "ocpp.security_profile");
        assert_eq!(key(&cfg(2, "ws://csms")), "ocpp.csms_url");
        assert_eq!(key(&cfg(3, "ws://csms")), "ocpp.csms_url");
        assert_eq!(key(&cfg(1, "wss://csms")), "ocpp.csms_url");
        assert_eq!(key(&cfg(0, "http://csms")), "ocpp.csms_url");
        assert_eq!(key(&cfg(0, "csms")), "ocpp.csms_url");
        assert_eq!(key(&cfg(0, "ws://csms/x?a=1")), "ocpp.csms_url");
        let no_password = TransportConfig {
            basic_auth_password: None,
            ..cfg(1, "ws://csms")
        };
        assert_eq!(key(&no_password), "ocpp.basic_auth_password");
        let empty_password = TransportConfig {
            basic_auth_password: Some(String::new()),
            ..cfg(2, "wss://csms")
        };
        assert_eq!(key(&empty_password), "ocpp.basic_auth_password");
        let colon = TransportConfig {
            station_id: "a:b".into(),
            ..cfg(1, "ws://csms")
        };
        assert_eq!(key(&colon), "ocpp.station_id");
        let no_ca = TransportConfig {
            ca_file: None,
            ..cfg(2, "wss://csms")
        };
        assert_eq!(key(&no_ca), "ocpp.ca_file");
        let no_cert = TransportConfig {
            client_cert: None,
            ..cfg(3, "wss://csms")
        };
        assert_eq!(key(&no_cert), "ocpp.client_cert");
        let no_key = TransportConfig {
            client_key: None,
            ..cfg(3, "wss://csms")
        };
        assert_eq!(key(&no_key), "ocpp.client_key");
        let no_id = TransportConfig {
            station_id: String::new(),
            ..cfg(0, "ws://csms")
        };
        assert_eq!(key(&no_id), "ocpp.station_id");
        let no_timeout = TransportConfig {
            connect_timeout: Duration::ZERO,
            ..cfg(0, "ws://csms")
        };
        assert_eq!(key(&no_timeout), "ocpp.connect_timeout");
    }

    #[test]
    fn authorization_only_for_profiles_1_and_2() {
        for (profile, url, expected) in [
            (0, "ws://csms", None),
            // base64("CP 1/ü:0123456789abcdef")
            (
                1,
                "ws://csms",
                Some("Basic Q1AgMS/DvDowMTIzNDU2Nzg5YWJjZGVm"),
            ),
            (
                2,
                "wss://csms",
                Some("Basic Q1AgMS/DvDowMTIzNDU2Nzg5YWJjZGVm"),
            ),
            (3, "wss://csms", None),
        ] {
            let request = cfg(profile, url).request().unwrap();
            let auth = request
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap());
            assert_eq!(auth, expected, "{profile}");
            assert_eq!(request.headers()[header::SEC_WEBSOCKET_PROTOCOL], "ocpp1.6");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", cfg(1, "ws://csms"));
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn missing_files_are_config_errors() {
        let c = TransportConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..cfg(2, "wss://csms")
        };
        match tls::client_config(&c) {
            Err(TransportError::Config { key, .. }) => assert_eq!(key, "ocpp.ca_file"),
            other => panic!("{other:?}"),
        }
    }
}
