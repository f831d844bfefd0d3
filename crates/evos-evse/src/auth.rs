//! Authorization of tokens presented at an EVSE (OCPP 1.6 §3.5 Local
//! Authorization, §4.1 Authorize).
//!
//! Three modes, from config: free vend, a local allow list, or `ocpp`, where
//! every token is put to `org.evos.Ocpp1.Authorize` (evse asks, the OCPP
//! service never calls evse for this, so there is no call cycle). The OCPP
//! service owns the offline rules (local list, authorization cache,
//! LocalAuthorizeOffline, AllowOfflineTxForUnknownId), so evse keeps no
//! fallback of its own: an OCPP service that is absent or silent means
//! `Invalid`.

use std::collections::HashSet;
use std::time::Duration;

use crate::config::{AuthMode, Config};

/// How long evse waits for `Ocpp1.Authorize`; the OCPP service answers from
/// its cache or offline policy well within this when the CSMS is slow.
pub const OCPP_AUTHORIZE_TIMEOUT: Duration = Duration::from_secs(10);

/// OCPP 1.6 AuthorizationStatus (§7.2), as the bus contract defines it.
pub use evos_bus::ocpp::AuthorizationStatus as AuthStatus;

/// The authorizer's answer for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub status: AuthStatus,
    /// parentIdTag; empty when none (or unknown, as with the local modes).
    pub parent: String,
}

impl Authorization {
    fn of(status: AuthStatus) -> Self {
        Authorization {
            status,
            parent: String::new(),
        }
    }
}

/// Decides whether a token may charge.
#[derive(Debug, Clone)]
pub enum Authorizer {
    FreeVend,
    AllowList(HashSet<String>),
    /// `org.evos.Ocpp1.Authorize` on the bus.
    Ocpp(evos_bus::ocpp::Ocpp1Proxy<'static>),
}

impl Authorizer {
    pub async fn new(config: &Config, connection: &zbus::Connection) -> zbus::Result<Self> {
        Ok(match config.auth {
            AuthMode::FreeVend => Authorizer::FreeVend,
            AuthMode::AllowList => {
                Authorizer::AllowList(config.allow_list.iter().cloned().collect())
            }
            AuthMode::Ocpp => Authorizer::Ocpp(
                // Built without properties: the OCPP service may start later.
                evos_bus::ocpp::Ocpp1Proxy::builder(connection)
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build()
                    .await?,
            ),
        })
    }

    pub async fn authorize(&self, evse: u32, token: &str) -> Authorization {
        match self {
            Authorizer::FreeVend => Authorization::of(AuthStatus::Accepted),
            // RFID UIDs are hex; readers differ in case.
            Authorizer::AllowList(list) if list.iter().any(|t| t.eq_ignore_ascii_case(token)) => {
                Authorization::of(AuthStatus::Accepted)
            }
            Authorizer::AllowList(_) => Authorization::of(AuthStatus::Invalid),
            Authorizer::Ocpp(ocpp) => {
                let answer =
                    tokio::time::timeout(OCPP_AUTHORIZE_TIMEOUT, ocpp.authorize(evse, token)).await;
                ocpp_answer(evse, token, answer)
            }
        }
    }
}

/// What an `Ocpp1.Authorize` call yields; every failure is `Invalid`.
fn ocpp_answer(
    evse: u32,
    token: &str,
    answer: Result<Result<(String, String), evos_bus::Error>, tokio::time::error::Elapsed>,
) -> Authorization {
    match answer {
        Ok(Ok((status, parent))) => match AuthStatus::parse(&status) {
            Some(status) => Authorization { status, parent },
            None => {
                tracing::warn!(
                    evse,
                    token,
                    status,
                    "the OCPP service answered an unknown status: Invalid"
                );
                Authorization::of(AuthStatus::Invalid)
            }
        },
        Ok(Err(e)) => {
            tracing::warn!(
                evse,
                token,
                "the OCPP service cannot authorize ({e}): Invalid"
            );
            Authorization::of(AuthStatus::Invalid)
        }
        Err(_) => {
            tracing::warn!(
                evse,
                token,
                "the OCPP service did not answer within {OCPP_AUTHORIZE_TIMEOUT:?}: Invalid"
            );
            Authorization::of(AuthStatus::Invalid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn allow_list_is_case_insensitive_and_exclusive() {
        let auth = Authorizer::AllowList(["04AABB".to_string()].into());
        assert_eq!(
            auth.authorize(1, "04aabb").await.status,
            AuthStatus::Accepted
        );
        assert_eq!(
            auth.authorize(1, "04AABC").await.status,
            AuthStatus::Invalid
        );
        assert_eq!(
            Authorizer::FreeVend.authorize(1, "anything").await,
            Authorization::of(AuthStatus::Accepted)
        );
    }

    #[test]
    fn statuses_parse_in_their_ocpp_spelling_only() {
        for s in ["Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"] {
            assert_eq!(AuthStatus::parse(s).map(AuthStatus::as_str), Some(s));
        }
        assert_eq!(AuthStatus::parse("accepted"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn ocpp_answers_keep_the_parent_and_failures_are_invalid() {
        let ok = |s: &str, p: &str| Ok(Ok((s.to_owned(), p.to_owned())));
        assert_eq!(
            ocpp_answer(1, "T", ok("Accepted", "FLEET")),
            Authorization {
                status: AuthStatus::Accepted,
                parent: "FLEET".into()
            }
        );
        assert_eq!(
            ocpp_answer(1, "T", ok("Blocked", "")).status,
            AuthStatus::Blocked
        );
        assert_eq!(
            ocpp_answer(1, "T", ok("Maybe", "X")),
            Authorization::of(AuthStatus::Invalid)
        );
        let absent = Err(evos_bus::Error::ZBus(zbus::Error::Failure(
            "no ocpp".into(),
        )));
        assert_eq!(
            ocpp_answer(1, "T", Ok(absent)),
            Authorization::of(AuthStatus::Invalid)
        );
        let silent = tokio::time::timeout(
            OCPP_AUTHORIZE_TIMEOUT,
            std::future::pending::<Result<(String, String), evos_bus::Error>>(),
        )
        .await;
        assert_eq!(
            ocpp_answer(1, "T", silent),
            Authorization::of(AuthStatus::Invalid)
        );
    }
}
