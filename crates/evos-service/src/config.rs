//! Reading the one evos TOML file (`/etc/evos/evos.toml`, `--config` on a
//! desktop). Each service owns the type of its section; the binary composes
//! them. Unknown keys are errors (`deny_unknown_fields` on every section),
//! and every error names the key it is about.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: key `{key}`: {why}")]
    Invalid {
        path: PathBuf,
        key: String,
        why: String,
    },
}

/// A semantic check failed for `key` (the dotted path, e.g. `evse.evse[0].phases`).
#[derive(Debug, thiserror::Error)]
#[error("key `{key}`: {why}")]
pub struct Invalid {
    pub key: String,
    pub why: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, why: impl Into<String>) -> Self {
        Invalid {
            key: key.into(),
            why: why.into(),
        }
    }
}

/// Parse `text` (from `path`, for messages) into `T`.
pub fn parse<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        // toml's message already quotes the offending key and line; fold it
        // onto one line so it reads as one log line.
        message: fold(&e.to_string()),
    })
}

/// Read and parse the file at `path`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Attach the file name to a semantic error.
pub fn invalid(path: &Path, e: Invalid) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        key: e.key,
        why: e.why,
    }
}

fn fold(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "|")
        .collect();
    lines.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        max_current_a: f64,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct File {
        evse: Section,
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse::<File>(
            "[evse]\nmax_current_a = 16\nmax_curent = 3\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("max_curent"), "{msg}");
        assert!(msg.contains("x.toml"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn bad_type_is_named() {
        let err =
            parse::<File>("[evse]\nmax_current_a = \"lots\"\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("max_current_a"), "{err}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = load::<File>(Path::new("/nonexistent/evos.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/evos.toml"), "{err}");
    }
}
