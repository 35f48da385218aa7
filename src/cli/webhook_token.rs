//! `webhook-token check`: does a token CorrigoPro sent verify with this
//! certificate, and why not? For setting up the webhook: it reads one token
//! (or a whole `Authorization: Bearer …` value) from stdin and says which
//! reading verifies, what the token claims, and the verdict the gateway would
//! give now. It never prints the signature.
//!
//! Exit codes: 0 the token verifies now; 2 it is refused (the reason is
//! printed); 1 the certificate file cannot be used or stdin cannot be read.
//! (Wrong arguments exit 2 too, with the usage, as for every subcommand.)

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use attachment_gateway::config::{SignatureAlgorithm, SignedPart};
use attachment_gateway::webhooks::refusal::Refused;
use attachment_gateway::webhooks::signature::{
    self as verify, Certificate, Inspection, TokenRules, readings,
};
use attachment_gateway::webhooks::token::{Claims, MAX_TOKEN_BYTES, Shape};
use clap::{Args, Subcommand};
use serde_json::json;

use super::output::terminal_safe;

#[derive(Debug, Subcommand)]
pub enum WebhookToken {
    /// Check one token from stdin against CorrigoPro's certificate.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// CorrigoPro's certificate (PEM), from the integration's settings page
    /// (several certificates in one file: any of them).
    #[arg(long, value_name = "FILE")]
    certificate: PathBuf,
    /// The audience the token must name (`webhooks.audience`).
    #[arg(long, default_value = "CorrigoProDirect")]
    audience: String,
    /// The name claim the token must carry (`webhooks.expected_name`).
    #[arg(long, value_name = "NAME")]
    expected_name: Option<String>,
    /// What the signature covers (`webhooks.signed_part`).
    #[arg(long, default_value = "auto", value_parser = ["auto", "data-text", "data-bytes"])]
    signed_part: String,
    /// The signature's algorithm (`webhooks.signature_algorithm`).
    #[arg(long, default_value = "auto", value_parser = ["auto", "rsa-sha256", "rsa-sha512", "rsa-sha1"])]
    signature_algorithm: String,
    /// Tolerance on the token's dates (`webhooks.clock_skew`).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    clock_skew: Duration,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn part(s: &str) -> SignedPart {
    match s {
        "data-text" => SignedPart::DataText,
        "data-bytes" => SignedPart::DataBytes,
        _ => SignedPart::Auto,
    }
}

fn algorithm(s: &str) -> SignatureAlgorithm {
    match s {
        "rsa-sha256" => SignatureAlgorithm::RsaSha256,
        "rsa-sha512" => SignatureAlgorithm::RsaSha512,
        "rsa-sha1" => SignatureAlgorithm::RsaSha1,
        _ => SignatureAlgorithm::Auto,
    }
}

/// The token in what was read: after an optional `Authorization:` header name
/// and `Bearer ` scheme.
fn token_of(input: &[u8]) -> &[u8] {
    let t = input.trim_ascii();
    match t.split_at_checked(14) {
        Some((head, rest)) if head.eq_ignore_ascii_case(b"authorization:") => rest.trim_ascii(),
        _ => t,
    }
}

pub fn run(cmd: WebhookToken) -> ExitCode {
    match cmd {
        WebhookToken::Check(args) => check(&args),
    }
}

fn check(args: &CheckArgs) -> ExitCode {
    let certs = match verify::certificates_from_file(&args.certificate) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", terminal_safe(&e.to_string()));
            return ExitCode::from(1);
        }
    };
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin()
        .take(MAX_TOKEN_BYTES as u64 * 2)
        .read_to_end(&mut input)
    {
        eprintln!("error: cannot read the token from stdin: {e}");
        return ExitCode::from(1);
    }
    let rules = TokenRules {
        audience: args.audience.clone(),
        expected_name: args.expected_name.clone(),
        readings: readings(
            part(&args.signed_part),
            algorithm(&args.signature_algorithm),
        ),
        skew: args.clock_skew,
    };
    let now = SystemTime::now();
    let i = verify::inspect(token_of(&input), &certs, &rules, now);
    if args.json {
        println!("{}", as_json(&i, &certs, now));
    } else {
        print!("{}", as_text(&i, &certs, now));
    }
    match i.verdict {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(2),
    }
}

fn when(t: SystemTime, now: SystemTime) -> String {
    let secs = Duration::from_secs;
    match t.duration_since(now) {
        Ok(d) => format!(
            "{} (in {})",
            httpdate::fmt_http_date(t),
            humantime::format_duration(secs(d.as_secs()))
        ),
        Err(e) => format!(
            "{} ({} ago)",
            httpdate::fmt_http_date(t),
            humantime::format_duration(secs(e.duration().as_secs()))
        ),
    }
}

fn shape(c: &Claims) -> &'static str {
    match (c.shape, c.gzip) {
        (Shape::Identity, false) => "claims identity, plain JSON",
        (Shape::Identity, true) => "claims identity, gzip JSON",
        (Shape::Flat, false) => "flat claims, plain JSON",
        (Shape::Flat, true) => "flat claims, gzip JSON",
    }
}

fn verdict(v: &Result<(), Refused>) -> String {
    match v {
        Ok(()) => "verifies now".into(),
        Err(r) => format!("refused: {r} ({})", r.label()),
    }
}

fn as_text(i: &Inspection, certs: &[Certificate], now: SystemTime) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| out.push_str(&format!("{k:<10} {}\n", terminal_safe(v)));
    match &i.verified_by {
        Some((r, c)) => {
            let cert = certs.get(*c).map_or("", |c| c.subject.as_str());
            line(
                "signature",
                &format!(
                    "verifies: {}, {} (certificate {} of {}: {cert})",
                    r.part_label(),
                    r.algorithm_label(),
                    c + 1,
                    certs.len()
                ),
            );
            line(
                "",
                &format!(
                    "to try only this reading: webhooks.signed_part = \"{}\", webhooks.signature_algorithm = \"{}\"",
                    r.part_label(),
                    r.algorithm_label()
                ),
            );
        }
        None if !i.tried.is_empty() => {
            let tried: Vec<String> = i
                .tried
                .iter()
                .map(|r| format!("{}/{}", r.part_label(), r.algorithm_label()))
                .collect();
            line(
                "signature",
                &format!(
                    "does not verify with the {} certificate(s) under any reading tried ({})",
                    certs.len(),
                    tried.join(", ")
                ),
            );
        }
        None => {}
    }
    if let Ok(c) = &i.claims {
        let unverified = if i.verified_by.is_some() {
            ""
        } else {
            " (as the unverified token claims)"
        };
        line("token", &format!("{}{unverified}", shape(c)));
        line("audience", c.audience.as_deref().unwrap_or("(none)"));
        line("name", c.name.as_deref().unwrap_or("(none)"));
        line(
            "issued",
            &c.issued.map_or("(not stated)".into(), |t| when(t, now)),
        );
        line("expires", &when(c.expires, now));
    }
    line("verdict", &verdict(&i.verdict));
    out
}

fn as_json(i: &Inspection, certs: &[Certificate], now: SystemTime) -> serde_json::Value {
    let unix = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let claims = i.claims.as_ref().ok().map(|c| {
        json!({
            "shape": shape(c),
            "audience": c.audience, "name": c.name,
            "issued": c.issued.map(httpdate::fmt_http_date),
            "expires": httpdate::fmt_http_date(c.expires),
            "expires_unix": unix(c.expires),
            "verified": i.verified_by.is_some(),
        })
    });
    json!({
        "verifies": i.verdict.is_ok(),
        "reason": i.verdict.err().map(Refused::label),
        "verdict": verdict(&i.verdict),
        "reading": i.verified_by.map(|(r, c)| json!({
            "signed_part": r.part_label(),
            "signature_algorithm": r.algorithm_label(),
            "certificate": certs.get(c).map(|c| c.subject.clone()),
        })),
        "claims": claims,
        "checked_at_unix": unix(now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_found_in_a_header_line_a_bearer_value_or_alone() {
        assert_eq!(token_of(b"  Authorization: Bearer abc\r\n"), b"Bearer abc");
        assert_eq!(token_of(b"authorization:abc"), b"abc");
        assert_eq!(token_of(b"abc\n"), b"abc");
    }
}
