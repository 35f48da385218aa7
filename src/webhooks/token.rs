//! CorrigoPro's webhook token, read as CorrigoPro writes it: `<data><---->`
//! `<signature>`, where `<data>` is base64url of JSON (plain, `eyJ…`) or of its
//! gzip (`H4sI…`), and the JSON is a serialized claims identity:
//!
//! ```json
//! {"AuthenticationType": "Bearer",
//!  "NameClaimType": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
//!  "Claims": [{"Type": "…/claims/name", "Value": "<integration>", …},
//!             {"Type": "Aud", "Value": "CorrigoProDirect", …}],
//!  "Properties": {"Dictionary": {".issued": "Wed, 28 Feb 2024 02:03:24 GMT",
//!                                ".expires": "Wed, 28 Feb 2024 02:23:24 GMT"}}}
//! ```
//!
//! The audience is the `Value` of the `Claims` element whose `Type` is `Aud`; the
//! name claim is the one whose `Type` equals `NameClaimType`; the validity is
//! `Properties.Dictionary[".issued"/".expires"]` (RFC 1123). Keys and claim types
//! match case-insensitively. A flat object (`{"Aud": …, ".expires": …}`) is read
//! too. Nothing here is believed before the signature verifies (see
//! [`super::verify`]); this module only takes the bytes apart, within bounds.

use std::io::Read;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::{Map, Value};

use super::refusal::Refused;
use crate::upstream::json::{get_ci, value_str};

/// The separator of a signed token's two parts.
pub const SEPARATOR: &str = "<---->";

/// A token longer than this is refused before any decoding (a real one is about
/// 1.5 KiB: ~800 bytes of JSON and a 2048-bit signature).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Claims larger than this (decompressed) are refused: a gzip bomb stops here.
const MAX_CLAIMS_BYTES: u64 = 64 * 1024;

/// The name claim's type when the identity does not say (`NameClaimType`).
pub const DEFAULT_NAME_CLAIM: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name";

/// A token taken apart: the `<data>` text, the bytes it decodes to, and the
/// signature's bytes.
pub struct Parts<'a> {
    pub data_text: &'a [u8],
    pub data_bytes: Vec<u8>,
    pub signature: Vec<u8>,
}

/// The credential after `Bearer ` (the scheme's case ignored).
pub fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let rest = rest.trim_ascii();
    (!rest.is_empty()).then_some(rest)
}

fn b64url(text: &[u8]) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
}

/// Splits and decodes a token; `Malformed` when it is not of the shape.
pub fn parts(token: &[u8]) -> Result<Parts<'_>, Refused> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Refused::Malformed);
    }
    let sep = SEPARATOR.as_bytes();
    let at = token
        .windows(sep.len())
        .position(|w| w == sep)
        .ok_or(Refused::Malformed)?;
    let (data_text, signature) = (&token[..at], &token[at + sep.len()..]);
    if data_text.is_empty() || signature.is_empty() {
        return Err(Refused::Malformed);
    }
    Ok(Parts {
        data_text,
        data_bytes: b64url(data_text).ok_or(Refused::Malformed)?,
        signature: b64url(signature).ok_or(Refused::Malformed)?,
    })
}

/// How the claims were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A serialized claims identity (`Claims`, `Properties.Dictionary`), as
    /// CorrigoPro writes them.
    Identity,
    /// A flat object of claims (`Aud`, `.expires` at the top).
    Flat,
}

/// What a token says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub shape: Shape,
    /// Whether `<data>` was gzip-compressed.
    pub gzip: bool,
    pub audience: Option<String>,
    /// Who the token was issued for (the name claim: CorrigoPro's identifier of
    /// the integration).
    pub name: Option<String>,
    pub issued: Option<SystemTime>,
    pub expires: SystemTime,
}

/// The JSON `<data>` decodes to: plain, or gzip-compressed (bounded).
fn json_object(decoded: &[u8]) -> Result<(Map<String, Value>, bool), Refused> {
    let gzip = decoded.starts_with(&[0x1f, 0x8b]);
    let parsed = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(decoded)
            .take(MAX_CLAIMS_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|_| Refused::Malformed)?;
        if out.len() as u64 > MAX_CLAIMS_BYTES {
            return Err(Refused::Malformed);
        }
        serde_json::from_slice::<Value>(&out)
    } else {
        serde_json::from_slice::<Value>(decoded)
    };
    match parsed {
        Ok(Value::Object(m)) => Ok((m, gzip)),
        _ => Err(Refused::Malformed),
    }
}

/// A claim's date: RFC 1123 (as CorrigoPro writes them), or RFC 3339. Present
/// but unreadable is `Malformed`, never ignored.
fn date(v: Option<&Value>) -> Result<Option<SystemTime>, Refused> {
    let Some(v) = v else { return Ok(None) };
    let s = value_str(v).ok_or(Refused::Malformed)?;
    let s = s.trim();
    httpdate::parse_http_date(s)
        .ok()
        .or_else(|| humantime::parse_rfc3339_weak(s).ok())
        .map(Some)
        .ok_or(Refused::Malformed)
}

/// The one value of the claims of `claim_type`: `None` when there is none,
/// `Malformed` when several disagree or one is not a string.
fn single_claim(claims: &[Value], claim_type: &str) -> Result<Option<String>, Refused> {
    let mut found: Option<String> = None;
    for c in claims {
        let Value::Object(c) = c else {
            return Err(Refused::Malformed);
        };
        let is_it = get_ci(c, &["Type"])
            .and_then(Value::as_str)
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(claim_type));
        if !is_it {
            continue;
        }
        let value = get_ci(c, &["Value"])
            .and_then(Value::as_str)
            .ok_or(Refused::Malformed)?;
        match &found {
            Some(f) if f != value => return Err(Refused::Malformed),
            Some(_) => {}
            None => found = Some(value.to_string()),
        }
    }
    Ok(found)
}

/// Reads the claims `<data>` decodes to, in either shape.
pub fn claims(decoded: &[u8]) -> Result<Claims, Refused> {
    let (obj, gzip) = json_object(decoded)?;
    if let Some(list) = get_ci(&obj, &["Claims"]) {
        let Value::Array(list) = list else {
            return Err(Refused::Malformed);
        };
        let name_type = match get_ci(&obj, &["NameClaimType"]) {
            Some(Value::String(t)) if !t.trim().is_empty() => t.trim().to_string(),
            Some(Value::String(_)) | None => DEFAULT_NAME_CLAIM.to_string(),
            Some(_) => return Err(Refused::Malformed),
        };
        let dictionary = get_ci(&obj, &["Properties"])
            .and_then(Value::as_object)
            .and_then(|p| get_ci(p, &["Dictionary"]))
            .and_then(Value::as_object);
        let property = |k: &str| dictionary.and_then(|d| get_ci(d, &[k]));
        return Ok(Claims {
            shape: Shape::Identity,
            gzip,
            audience: single_claim(list, "Aud")?,
            name: single_claim(list, &name_type)?,
            issued: date(property(".issued"))?,
            expires: date(property(".expires"))?.ok_or(Refused::Malformed)?,
        });
    }
    let text = |names: &[&str]| -> Result<Option<String>, Refused> {
        match get_ci(&obj, names) {
            None => Ok(None),
            Some(v) => value_str(v).map(Some).ok_or(Refused::Malformed),
        }
    };
    Ok(Claims {
        shape: Shape::Flat,
        gzip,
        audience: text(&["Aud", "aud", "audience"])?,
        name: text(&[DEFAULT_NAME_CLAIM, "name"])?,
        issued: date(get_ci(&obj, &[".issued", "issued", "iat"]))?,
        expires: date(get_ci(&obj, &[".expires", "expires", "exp"]))?.ok_or(Refused::Malformed)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claims identity exactly as CorrigoPro's public example shows it.
    const DOC_EXAMPLE: &str = r##"{"AuthenticationType": "Bearer",
   "NameClaimType": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
   "RoleClaimType": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
   "Claims": [
     {"Type": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name", "Value": "<redacted>",
      "ValueType": "http://www.w3.org/2001/XMLSchema#string",
      "Issuer": "LOCAL AUTHORITY", "OriginalIssuer": "LOCAL AUTHORITY"},
     {"Type": "urn:oauth:scope", "Value": "", "ValueType": "…#string", "Issuer": "LOCAL AUTHORITY", "OriginalIssuer": "LOCAL AUTHORITY"},
     {"Type": "Aud", "Value": "CorrigoProDirect", "ValueType": "…#string", "Issuer": "LOCAL AUTHORITY", "OriginalIssuer": "LOCAL AUTHORITY"}],
   "Properties": {"Dictionary": {".issued": "Wed, 28 Feb 2024 02:03:24 GMT",
                                 ".expires": "Wed, 28 Feb 2024 02:23:24 GMT"}}}"##;

    fn at(s: &str) -> SystemTime {
        httpdate::parse_http_date(s).unwrap()
    }

    #[test]
    fn the_documented_identity_is_read_verbatim() {
        let c = claims(DOC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(c.shape, Shape::Identity);
        assert!(!c.gzip);
        assert_eq!(c.audience.as_deref(), Some("CorrigoProDirect"));
        assert_eq!(c.name.as_deref(), Some("<redacted>"));
        assert_eq!(c.issued, Some(at("Wed, 28 Feb 2024 02:03:24 GMT")));
        assert_eq!(c.expires, at("Wed, 28 Feb 2024 02:23:24 GMT"));
    }

    #[test]
    fn claim_types_and_keys_match_whatever_their_case() {
        let text = DOC_EXAMPLE
            .replace("\"Type\": \"Aud\"", "\"type\": \"AUD\"")
            .replace("\"Properties\"", "\"properties\"")
            .replace(".expires", ".Expires");
        let c = claims(text.as_bytes()).unwrap();
        assert_eq!(c.audience.as_deref(), Some("CorrigoProDirect"));
        assert_eq!(c.expires, at("Wed, 28 Feb 2024 02:23:24 GMT"));
    }

    #[test]
    fn disagreeing_audiences_a_missing_expiry_or_a_bad_date_are_malformed() {
        let two_auds = DOC_EXAMPLE.replace(
            "\"Claims\": [",
            "\"Claims\": [{\"Type\": \"Aud\", \"Value\": \"Other\"},",
        );
        assert_eq!(claims(two_auds.as_bytes()), Err(Refused::Malformed));
        let same_twice = DOC_EXAMPLE.replace(
            "\"Claims\": [",
            "\"Claims\": [{\"Type\": \"aud\", \"Value\": \"CorrigoProDirect\"},",
        );
        assert!(claims(same_twice.as_bytes()).is_ok());
        let no_expiry = DOC_EXAMPLE.replace(".expires", ".other");
        assert_eq!(claims(no_expiry.as_bytes()), Err(Refused::Malformed));
        let bad_date = DOC_EXAMPLE.replace("Wed, 28 Feb 2024 02:03:24 GMT", "yesterday");
        assert_eq!(claims(bad_date.as_bytes()), Err(Refused::Malformed));
        let two_names = DOC_EXAMPLE.replace(
            "\"Claims\": [",
            "\"Claims\": [{\"Type\": \"http://schemas.xmlsoap.org/ws/2005/05/identity/claims/NAME\", \"Value\": \"x\"},",
        );
        assert_eq!(claims(two_names.as_bytes()), Err(Refused::Malformed));
        assert_eq!(claims(b"[1, 2]"), Err(Refused::Malformed));
        assert_eq!(
            claims(br#"{"Claims": {"Type": "Aud"}}"#),
            Err(Refused::Malformed)
        );
    }

    #[test]
    fn the_name_claim_follows_name_claim_type() {
        let text = DOC_EXAMPLE.replacen(
            "\"NameClaimType\": \"http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name\"",
            "\"NameClaimType\": \"urn:oauth:scope\"",
            1,
        );
        assert_eq!(claims(text.as_bytes()).unwrap().name.as_deref(), Some(""));
    }

    #[test]
    fn the_flat_shape_is_still_read() {
        let c = claims(
            br#"{"Aud": "CorrigoProDirect", ".issued": "Wed, 28 Feb 2024 02:03:24 GMT",
                ".expires": "Wed, 28 Feb 2024 02:23:24 GMT",
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name": "n"}"#,
        )
        .unwrap();
        assert_eq!(c.shape, Shape::Flat);
        assert_eq!(c.audience.as_deref(), Some("CorrigoProDirect"));
        assert_eq!(c.name.as_deref(), Some("n"));
    }

    #[test]
    fn shapes_that_are_not_tokens_are_malformed() {
        for t in [
            &b"nonsense"[..],
            b"<---->AAAA",
            b"eyJ9<---->",
            b"e$J9<---->AAAA",
        ] {
            assert!(matches!(parts(t), Err(Refused::Malformed)), "{t:?}");
        }
        assert!(matches!(
            parts(&vec![b'A'; MAX_TOKEN_BYTES + 1]),
            Err(Refused::Malformed)
        ));
        assert_eq!(strip_bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(strip_bearer(b"Basic abc"), None);
        assert_eq!(strip_bearer(b"Bearer   "), None);
    }
}
