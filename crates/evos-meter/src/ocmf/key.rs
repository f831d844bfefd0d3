//! Keys: the station's signing key (PKCS#8 PEM on disk, with the
//! transaction pagination counter beside it) and public keys given as text
//! (spec "Relation of Serial Numbers, Charge Point and Public Key": the
//! public key reaches the checker out of band).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

use super::OcmfError;

/// DER SubjectPublicKeyInfo up to the point, for id-ecPublicKey on
/// prime256v1 (secp256r1, P-256); the 65-byte uncompressed point follows.
const SPKI_P256_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// The same for secp384r1 (P-384); the 97-byte uncompressed point follows.
const SPKI_P384_PREFIX: [u8; 23] = [
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];

/// The curves OCMF names (table 23) that evos can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// secp256r1, NIST P-256, prime256v1.
    P256,
    /// secp384r1, NIST P-384.
    P384,
}

impl Curve {
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "secp256r1 (P-256)",
            Curve::P384 => "secp384r1 (P-384)",
        }
    }

    fn point_len(self) -> usize {
        match self {
            Curve::P256 => 65,
            Curve::P384 => 97,
        }
    }

    fn spki_prefix(self) -> &'static [u8] {
        match self {
            Curve::P256 => &SPKI_P256_PREFIX,
            Curve::P384 => &SPKI_P384_PREFIX,
        }
    }
}

/// An EC public key: its curve and uncompressed point (`04 || X || Y`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub curve: Curve,
    pub point: Vec<u8>,
}

impl PublicKey {
    /// A public key given as text: a PEM `PUBLIC KEY` block, hex of the DER
    /// SubjectPublicKeyInfo, or hex of the raw uncompressed point (65 bytes
    /// for P-256, 97 for P-384; 64 bytes of bare X || Y are taken as P-256).
    /// Hex may be either case and hold whitespace or `:` separators.
    pub fn parse(text: &str) -> Result<PublicKey, OcmfError> {
        let bad = |why: String| OcmfError::BadPublicKey(why);
        let text = text.trim();
        if text.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if text.contains("-----BEGIN") {
            let (label, der) = pem_decode(text).map_err(bad)?;
            if label != "PUBLIC KEY" {
                return Err(bad(format!(
                    "expected a PEM \"PUBLIC KEY\" block, found \"{label}\""
                )));
            }
            return PublicKey::from_spki(&der);
        }
        let hex = text.strip_prefix("0x").unwrap_or(text);
        let bytes = hex_decode(hex).map_err(|why| {
            bad(format!(
                "{why}; expected hex (DER SubjectPublicKeyInfo or raw point) or a PEM \"PUBLIC KEY\" block"
            ))
        })?;
        match bytes.len() {
            65 | 97 if bytes[0] == 0x04 => Ok(PublicKey {
                curve: if bytes.len() == 65 { Curve::P256 } else { Curve::P384 },
                point: bytes,
            }),
            64 => {
                let mut point = Vec::with_capacity(65);
                point.push(0x04);
                point.extend_from_slice(&bytes);
                Ok(PublicKey {
                    curve: Curve::P256,
                    point,
                })
            }
            33 | 49 if matches!(bytes[0], 0x02 | 0x03) => Err(bad(
                "compressed points are not supported; give the uncompressed point or the SubjectPublicKeyInfo".into(),
            )),
            _ if bytes.first() == Some(&0x30) => PublicKey::from_spki(&bytes),
            n => Err(bad(format!(
                "{n} bytes is neither a SubjectPublicKeyInfo nor an uncompressed P-256/P-384 point (65/97 bytes starting 04)"
            ))),
        }
    }

    /// From DER SubjectPublicKeyInfo: id-ecPublicKey with a named curve.
    pub fn from_spki(der: &[u8]) -> Result<PublicKey, OcmfError> {
        for curve in [Curve::P256, Curve::P384] {
            let prefix = curve.spki_prefix();
            if der.len() == prefix.len() + curve.point_len()
                && der.starts_with(prefix)
                && der[prefix.len()] == 0x04
            {
                return Ok(PublicKey {
                    curve,
                    point: der[prefix.len()..].to_vec(),
                });
            }
        }
        Err(OcmfError::BadPublicKey(format!(
            "the {}-byte SubjectPublicKeyInfo is not an uncompressed EC key on secp256r1 or secp384r1",
            der.len()
        )))
    }

    /// DER SubjectPublicKeyInfo.
    pub fn to_spki(&self) -> Vec<u8> {
        let mut der = self.curve.spki_prefix().to_vec();
        der.extend_from_slice(&self.point);
        der
    }
}

/// The station's signing key: ECDSA on P-256 with SHA-256 (OCMF
/// `ECDSA-secp256r1-SHA256`), plus the pagination counter (`PG`, context
/// `T`) of the records it signs.
///
/// The counter lives beside the key file, in `<key file>.pagination`, holds
/// the last number used, and is written (atomically) before a record with
/// the next number is returned, so numbers are never reused after a restart.
/// The key file's directory must therefore be writable.
pub struct StationKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    pagination: Mutex<Pagination>,
}

struct Pagination {
    /// `None`: kept in memory only (tests).
    path: Option<PathBuf>,
    last: u64,
}

impl StationKey {
    /// Load a PKCS#8 PEM key (`-----BEGIN PRIVATE KEY-----`), or create one
    /// when the file does not exist: generated with the system's random
    /// source and written atomically with mode 0600 (never readable by
    /// others, not even for a moment). Missing directories are created.
    pub fn load_or_create(path: &Path) -> Result<StationKey, OcmfError> {
        let rng = SystemRandom::new();
        let key_error = |reason: String| OcmfError::Key {
            path: path.to_path_buf(),
            reason,
        };
        let pair = match std::fs::read_to_string(path) {
            Ok(text) => load_pem(&text, &rng).map_err(key_error)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                    .map_err(|_| key_error("cannot generate a key".into()))?;
                let pem = pem_encode("PRIVATE KEY", pkcs8.as_ref());
                let created = write_new_secret(path, pem.as_bytes())
                    .map_err(|e| key_error(format!("cannot create it: {e}")))?;
                if created {
                    tracing::info!(path = %path.display(), "created a new OCMF station key");
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                        .map_err(|e| key_error(format!("generated key rejected: {e}")))?
                } else {
                    // Someone else created it meanwhile: theirs wins.
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| key_error(format!("cannot read it: {e}")))?;
                    load_pem(&text, &rng).map_err(key_error)?
                }
            }
            Err(e) => return Err(key_error(format!("cannot read it: {e}"))),
        };
        warn_if_readable_by_others(path);
        let pagination = Pagination::open(pagination_path(path))?;
        Ok(StationKey {
            pair,
            rng,
            pagination: Mutex::new(pagination),
        })
    }

    /// A fresh key that lives in memory only, pagination included.
    #[cfg(test)]
    pub(crate) fn ephemeral() -> StationKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        StationKey {
            pair,
            rng,
            pagination: Mutex::new(Pagination {
                path: None,
                last: 0,
            }),
        }
    }

    /// The public key as a value.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            curve: Curve::P256,
            point: self.pair.public_key().as_ref().to_vec(),
        }
    }

    /// Hex (upper case) of the DER SubjectPublicKeyInfo: what OCMF
    /// transparency software takes.
    pub fn public_key_hex(&self) -> String {
        hex_upper(&self.public_key().to_spki())
    }

    /// The public key as a PEM `PUBLIC KEY` block.
    pub fn public_key_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &self.public_key().to_spki())
    }

    /// The next pagination number, persisted before it is handed out.
    pub(crate) fn next_pagination(&self) -> Result<u64, OcmfError> {
        let mut pagination = self
            .pagination
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = pagination
            .last
            .checked_add(1)
            .ok_or_else(|| OcmfError::InvalidInput("the pagination counter is exhausted".into()))?;
        if let Some(path) = &pagination.path {
            evos_service::persist::write_atomic(path, format!("{next}\n").as_bytes()).map_err(
                |e| OcmfError::Io {
                    path: path.clone(),
                    reason: e.to_string(),
                },
            )?;
        }
        pagination.last = next;
        Ok(next)
    }

    /// DER-encoded ECDSA signature over `message` (SHA-256 inside).
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, OcmfError> {
        self.pair
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| OcmfError::Crypto)
    }
}

impl std::fmt::Debug for StationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StationKey")
            .field("public_key", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

fn pagination_path(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".pagination");
    PathBuf::from(name)
}

impl Pagination {
    /// Reads the counter, or starts it at 0 and writes it at once, so that a
    /// directory where it cannot be kept shows up now, not at the first
    /// transaction.
    fn open(path: PathBuf) -> Result<Pagination, OcmfError> {
        let io = |e: std::io::Error| OcmfError::Io {
            path: path.clone(),
            reason: e.to_string(),
        };
        let last = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| OcmfError::Io {
                path: path.clone(),
                reason: format!(
                    "the OCMF pagination counter holds {:?}, not a number; \
                     set it to the last PG number used (or above)",
                    text.trim()
                ),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                evos_service::persist::write_atomic(&path, b"0\n").map_err(io)?;
                0
            }
            Err(e) => return Err(io(e)),
        };
        Ok(Pagination {
            path: Some(path),
            last,
        })
    }
}

fn load_pem(text: &str, rng: &SystemRandom) -> Result<EcdsaKeyPair, String> {
    let (label, der) = pem_decode(text)?;
    if label != "PRIVATE KEY" {
        return Err(format!(
            "expected a PKCS#8 PEM \"PRIVATE KEY\" block, found \"{label}\""
        ));
    }
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der, rng)
        .map_err(|e| format!("not a PKCS#8 ECDSA P-256 key ({e})"))
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the OCMF station key is readable by others; chmod 600 it"
        );
    }
}

/// Writes a new secret file atomically with mode 0600: a temporary file
/// created 0600, synced, then linked to `path` (which fails if `path`
/// appeared meanwhile: `Ok(false)`, the existing file is kept).
fn write_new_secret(path: &Path, contents: &[u8]) -> std::io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} has no file name", path.display())))?;
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    let placed = written.and_then(|()| match std::fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        // File systems without hard links: rename, which replaces.
        Err(_) => std::fs::rename(&tmp, path).map(|()| true),
    });
    let _ = std::fs::remove_file(&tmp);
    let created = placed?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(created)
}

/// PEM with 64-character lines.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = BASE64.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// The first PEM block in `text`: (label, DER).
pub(crate) fn pem_decode(text: &str) -> Result<(String, Vec<u8>), String> {
    let start = text
        .find("-----BEGIN ")
        .ok_or("no \"-----BEGIN\" line (not PEM)")?;
    let rest = &text[start + "-----BEGIN ".len()..];
    let label_end = rest.find("-----").ok_or("unterminated PEM BEGIN line")?;
    let label = &rest[..label_end];
    let body_and_end = &rest[label_end + "-----".len()..];
    let end_line = format!("-----END {label}-----");
    let body_end = body_and_end
        .find(&end_line)
        .ok_or_else(|| format!("no \"{end_line}\" line"))?;
    let body: String = body_and_end[..body_end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = BASE64
        .decode(body.as_bytes())
        .map_err(|e| format!("bad base64 in the PEM \"{label}\" block: {e}"))?;
    Ok((label.to_owned(), der))
}

pub(crate) fn hex_upper(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        hex.push(DIGITS[usize::from(b >> 4)] as char);
        hex.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    hex
}

/// Hex of either case; ASCII whitespace and `:` between bytes are ignored.
pub(crate) fn hex_decode(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b':')
        .collect();
    if digits.is_empty() {
        return Err("no hex digits".into());
    }
    if let Some(bad) = digits.iter().find(|b| !b.is_ascii_hexdigit()) {
        return Err(format!("{:?} is not a hex digit", char::from(*bad)));
    }
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits ({})", digits.len()));
    }
    let value = |b: u8| match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    };
    Ok(digits
        .chunks(2)
        .map(|pair| value(pair[0]) << 4 | value(pair[1]))
        .collect())
}
