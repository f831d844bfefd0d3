//! `org.evos.Security1`: certificates for TLS and ISO 15118 Plug & Charge
//! (declared; built by the security issue). Modeled on EVerest's
//! evse-security API.

use zbus::proxy;

pub const BUS_NAME: &str = "org.evos.Security";
pub const INTERFACE: &str = "org.evos.Security1";
pub const PATH: &str = "/org/evos/Security1";

#[proxy(
    interface = "org.evos.Security1",
    default_service = "org.evos.Security",
    default_path = "/org/evos/Security1"
)]
pub trait Security1 {
    /// Install a CA certificate (PEM) of `kind` (`CSMSRootCertificate`, `V2GRootCertificate`, …).
    fn install_ca_certificate(&self, kind: &str, pem: &str) -> Result<String, crate::Error>;
    /// Delete a certificate by (hash algorithm, issuer name hash, issuer key hash, serial).
    fn delete_certificate(
        &self,
        hash: (String, String, String, String),
    ) -> Result<String, crate::Error>;
    fn installed_certificate_ids(
        &self,
        kinds: Vec<String>,
    ) -> Result<Vec<(String, String, String, String)>, crate::Error>;
    /// Make a key pair and a CSR (PEM) for `usage` (`ChargingStationCertificate`, `V2GCertificate`).
    fn generate_csr(
        &self,
        usage: &str,
        common_name: &str,
        organization: &str,
    ) -> Result<String, crate::Error>;
    fn update_leaf_certificate(&self, usage: &str, chain_pem: &str)
    -> Result<String, crate::Error>;
    /// Verify a chain (PEM) against the store; returns `Valid` or the reason.
    fn verify_certificate(&self, chain_pem: &str, kind: &str) -> Result<String, crate::Error>;
    fn leaf_info(&self, usage: &str) -> Result<(String, String, String), crate::Error>;
}
