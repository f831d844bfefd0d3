//! Authorization of tokens presented at an EVSE.
//!
//! Today: a local allow-list or free vend, from config. The seam for OCPP is
//! [`Authorizer`]: the OCPP service will register itself and answer through
//! `org.evos.Ocpp1.Authorize` (evse asks, never the other way round), with
//! this local decision as the offline fallback.

use std::collections::HashSet;

use crate::config::{AuthMode, Config};

/// OCPP 1.6 AuthorizationStatus values that matter to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStatus {
    Accepted,
    Invalid,
}

impl AuthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthStatus::Accepted => "Accepted",
            AuthStatus::Invalid => "Invalid",
        }
    }
}

/// Decides whether a token may charge.
#[derive(Debug, Clone)]
pub enum Authorizer {
    FreeVend,
    AllowList(HashSet<String>),
}

impl Authorizer {
    pub fn from_config(config: &Config) -> Self {
        match config.auth {
            AuthMode::FreeVend => Authorizer::FreeVend,
            AuthMode::AllowList => {
                Authorizer::AllowList(config.allow_list.iter().cloned().collect())
            }
        }
    }

    pub fn is_free_vend(&self) -> bool {
        matches!(self, Authorizer::FreeVend)
    }

    pub async fn authorize(&self, _evse: u32, token: &str) -> AuthStatus {
        match self {
            Authorizer::FreeVend => AuthStatus::Accepted,
            // RFID UIDs are hex; readers differ in case.
            Authorizer::AllowList(list) if list.iter().any(|t| t.eq_ignore_ascii_case(token)) => {
                AuthStatus::Accepted
            }
            Authorizer::AllowList(_) => AuthStatus::Invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn allow_list_is_case_insensitive_and_exclusive() {
        let auth = Authorizer::AllowList(["04AABB".to_string()].into());
        assert_eq!(auth.authorize(1, "04aabb").await, AuthStatus::Accepted);
        assert_eq!(auth.authorize(1, "04AABC").await, AuthStatus::Invalid);
        assert_eq!(
            Authorizer::FreeVend.authorize(1, "anything").await,
            AuthStatus::Accepted
        );
    }
}
