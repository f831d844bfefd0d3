//! `evos ocmf verify RECORD --pubkey KEY`: a user-side transparency check
//! of OCMF signed meter values (see `evos_meter::ocmf`).
//!
//! RECORD is a file (one record per line, or a single record laid out over
//! several lines) or the record itself; KEY is a file (PEM or hex) or hex. Every record is checked and described; the
//! exit status is 0 only when all of them verify.

use std::path::Path;

use anyhow::{Context, Result, bail};
use evos_meter::ocmf::{self, OcmfError, Payload, PublicKey, Verified};

#[derive(clap::Args)]
pub struct OcmfArgs {
    #[command(subcommand)]
    command: OcmfCommand,
}

#[derive(clap::Subcommand)]
enum OcmfCommand {
    /// Check the signature of OCMF records and show what they say.
    Verify(VerifyArgs),
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The record (`OCMF|{...}|{...}`), or a file holding records, one per
    /// line (or a single record over several lines).
    record: String,
    /// The signer's public key, or a file holding it: hex of the DER
    /// SubjectPublicKeyInfo, a PEM "PUBLIC KEY" block, or hex of the raw
    /// uncompressed point.
    #[arg(long, value_name = "KEY")]
    pubkey: String,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

pub fn main(args: OcmfArgs) -> Result<i32> {
    match args.command {
        OcmfCommand::Verify(args) => verify(&args),
    }
}

fn verify(args: &VerifyArgs) -> Result<i32> {
    let key = read_key(&args.pubkey)?;
    let records = read_records(&args.record)?;
    let results: Vec<Result<Verified, OcmfError>> = records
        .iter()
        .map(|record| ocmf::verify_with_key(record, &key))
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json_report(&results))?);
    } else {
        for (i, result) in results.iter().enumerate() {
            if i > 0 {
                println!();
            }
            let name = if results.len() == 1 {
                "OCMF record".to_owned()
            } else {
                format!("OCMF record {} of {}", i + 1, results.len())
            };
            match result {
                Ok(verified) => print!("{}", describe(&name, verified)),
                Err(e) => println!("{name}: signature INVALID: {e}"),
            }
        }
    }
    let failed: Vec<usize> = (1..)
        .zip(&results)
        .filter_map(|(n, r)| r.is_err().then_some(n))
        .collect();
    if failed.is_empty() {
        return Ok(0);
    }
    for (n, result) in (1..).zip(&results) {
        if let Err(e) = result {
            if results.len() == 1 {
                eprintln!("evos ocmf: {e}");
            } else {
                eprintln!("evos ocmf: record {n}: {e}");
            }
        }
    }
    if results.len() > 1 {
        eprintln!(
            "evos ocmf: {} of {} records failed verification",
            failed.len(),
            results.len()
        );
    }
    Ok(1)
}

/// KEY: a file's content when a file of that name exists, else the text.
fn read_key(arg: &str) -> Result<PublicKey> {
    let path = Path::new(arg);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the public key file {arg}"))?;
        return PublicKey::parse(&text).with_context(|| format!("public key file {arg}"));
    }
    PublicKey::parse(arg).map_err(|e| {
        if arg.contains('/') || arg.ends_with(".pem") || arg.ends_with(".hex") {
            anyhow::anyhow!("{e} (and there is no file {arg})")
        } else {
            e.into()
        }
    })
}

/// RECORD: the records in a file when a file of that name exists, else the
/// argument itself.
fn read_records(arg: &str) -> Result<Vec<String>> {
    let path = Path::new(arg);
    if !arg.starts_with("OCMF|") && path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the record file {arg}"))?;
        let records = split_records(&text);
        if records.is_empty() {
            bail!("{arg} holds no OCMF record");
        }
        return Ok(records.into_iter().map(str::to_owned).collect());
    }
    let record = arg.trim();
    if !record.starts_with("OCMF|") && !record.contains('{') {
        bail!(
            "{:?} is neither a file nor an OCMF record (\"OCMF|{{...}}|{{...}}\")",
            arg
        );
    }
    Ok(vec![record.to_owned()])
}

/// One record per non-empty line; but a file with at most one line starting
/// `OCMF|` is one record, which may be laid out over several lines (its
/// line breaks are part of the signed payload, so they are kept).
fn split_records(text: &str) -> Vec<&str> {
    let starts = text
        .lines()
        .filter(|line| line.trim_start().starts_with("OCMF|"))
        .count();
    if starts <= 1 {
        return Some(text.trim())
            .filter(|t| !t.is_empty())
            .into_iter()
            .collect();
    }
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect()
}

fn or_dash(value: Option<&str>) -> &str {
    match value {
        Some(v) if !v.is_empty() => v,
        _ => "-",
    }
}

fn transaction_name(tx: Option<&str>) -> &'static str {
    match tx {
        Some("B") => "begin",
        Some("C") => "charging",
        Some("X") => "exception",
        Some("E") => "end",
        Some("L") => "end (local stop)",
        Some("R") => "end (remote stop)",
        Some("A") => "end (aborted by error)",
        Some("P") => "end (power failure)",
        Some("S") => "suspended",
        Some("T") => "tariff change",
        None => "no transaction",
        Some(_) => "unknown",
    }
}

fn status_name(status: Option<&str>) -> &'static str {
    match status {
        Some("G") => "good",
        Some("N") => "not present",
        Some("T") => "timeout",
        Some("D") => "disconnected",
        Some("R") => "removed",
        Some("M") => "MANIPULATED",
        Some("X") => "exchanged",
        Some("I") => "incompatible",
        Some("O") => "out of range",
        Some("S") => "substitute value",
        Some("E") => "other error",
        Some("F") => "read error",
        _ => "unknown",
    }
}

fn time_status_name(letter: Option<ocmf::TimeStatus>) -> &'static str {
    match letter {
        Some(ocmf::TimeStatus::Synchronized) => "clock synchronized",
        Some(ocmf::TimeStatus::Unsynchronized) => "clock NOT synchronized",
        Some(ocmf::TimeStatus::Informative) => "informative clock",
        Some(ocmf::TimeStatus::Relative) => "relative time",
        None => "clock status unknown",
    }
}

fn describe(name: &str, verified: &Verified) -> String {
    use std::fmt::Write;
    let p: &Payload = &verified.payload;
    let mut out = String::new();
    let _ = writeln!(out, "{name}: signature valid ({})", verified.algorithm);
    let gi = or_dash(p.gateway_identification.as_deref());
    let signer = if verified.signed_by_charger {
        format!("the charger's station key (GI \"{gi}\"): NOT a calibrated meter's signature")
    } else {
        format!("the meter's or gateway's own key (GI \"{gi}\")")
    };
    let _ = writeln!(out, "  signed by       {signer}");
    let _ = writeln!(
        out,
        "  gateway         serial {}, version {}, OCMF {}",
        or_dash(p.gateway_serial.as_deref()),
        or_dash(p.gateway_version.as_deref()),
        or_dash(p.format_version.as_deref()),
    );
    let _ = writeln!(
        out,
        "  meter           vendor {}, model {}, serial {}{}",
        or_dash(p.meter_vendor.as_deref()),
        or_dash(p.meter_model.as_deref()),
        or_dash(Some(&p.meter_serial)),
        p.meter_firmware
            .as_deref()
            .map(|f| format!(", firmware {f}"))
            .unwrap_or_default(),
    );
    let _ = writeln!(out, "  pagination      {}", p.pagination);
    let assigned = match p.identification_status {
        Some(true) => "assigned",
        Some(false) => "not assigned",
        None => "no transaction",
    };
    let mut identification = format!(
        "{assigned}, type {}, id {}",
        or_dash(p.identification_type.as_deref()),
        or_dash(p.identification_data.as_deref()),
    );
    if let Some(level) = &p.identification_level {
        let _ = write!(identification, ", level {level}");
    }
    if let Some(flags) = p.identification_flags.as_ref().filter(|f| !f.is_empty()) {
        let _ = write!(identification, ", flags {}", flags.join(" "));
    }
    let _ = writeln!(out, "  identification  {identification}");
    let _ = writeln!(out, "  readings");
    for r in p.resolved_readings() {
        let value = match (&r.value, &r.unit) {
            (Some(v), Some(u)) => format!("{v} {u}"),
            (Some(v), None) => v.to_string(),
            _ => "(no value)".into(),
        };
        let mut details = vec![
            or_dash(r.identification.as_deref()).to_owned(),
            or_dash(r.current_type.as_deref()).to_owned(),
            format!("meter {}", status_name(r.status.as_deref())),
            time_status_name(r.time_status()).to_owned(),
        ];
        if let Some(flags) = r.error_flags.as_deref().filter(|f| !f.is_empty()) {
            details.push(format!("ERROR FLAGS {flags}"));
        }
        let _ = writeln!(
            out,
            "    {}  {} {:<7} {value}  ({})",
            or_dash(r.time.as_deref()),
            or_dash(r.transaction.as_deref()),
            transaction_name(r.transaction.as_deref()),
            details.join(", "),
        );
    }
    if let Some(delivered) = p.energy_delivered() {
        let _ = writeln!(out, "  energy          {delivered} delivered (end - begin)");
    }
    out
}

fn json_report(results: &[Result<Verified, OcmfError>]) -> serde_json::Value {
    use serde_json::json;
    (1..)
        .zip(results)
        .map(|(n, result)| match result {
            Ok(v) => json!({
                "record": n,
                "valid": true,
                "algorithm": v.algorithm,
                "signed_by_charger": v.signed_by_charger,
                "payload": serde_json::to_value(&v.payload).unwrap_or_default(),
                // Exactly as signed (numbers keep their written decimals).
                "payload_text": v.payload_text,
                "energy_delivered": v.payload.energy_delivered().map(|d| json!({
                    "value": format!("{:.*}", d.decimals, d.value),
                    "unit": d.unit,
                })),
            }),
            Err(e) => json!({
                "record": n,
                "valid": false,
                "error": e.to_string(),
            }),
        })
        .collect()
}
