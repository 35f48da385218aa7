//! JSON read into `google.protobuf.Struct` values (a `prost_types` tree): the
//! reader for list answers of any shape other than a bare array (which
//! `list_reader` writes straight into wire bytes), and the reference the fuzz
//! target and a proptest hold that one-pass reader to.

use std::collections::BTreeMap;
use std::fmt;

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde::Deserializer;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// A JSON value as a protobuf `Value`.
pub struct ProtoValue(pub Value);

struct ValueVisitor;

fn value(kind: Kind) -> ProtoValue {
    ProtoValue(Value { kind: Some(kind) })
}

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = ProtoValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<ProtoValue, E> {
        Ok(value(Kind::BoolValue(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<ProtoValue, E> {
        Ok(value(Kind::NumberValue(v as f64)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<ProtoValue, E> {
        Ok(value(Kind::NumberValue(v as f64)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<ProtoValue, E> {
        Ok(value(Kind::NumberValue(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<ProtoValue, E> {
        Ok(value(Kind::StringValue(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<ProtoValue, E> {
        Ok(value(Kind::StringValue(v)))
    }

    fn visit_unit<E>(self) -> Result<ProtoValue, E> {
        Ok(value(Kind::NullValue(0)))
    }

    fn visit_none<E>(self) -> Result<ProtoValue, E> {
        Ok(value(Kind::NullValue(0)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ProtoValue, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(ProtoValue(v)) = seq.next_element()? {
            values.push(v);
        }
        Ok(value(Kind::ListValue(ListValue { values })))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ProtoValue, A::Error> {
        let mut fields = BTreeMap::new();
        while let Some(k) = map.next_key::<String>()? {
            let ProtoValue(v) = map.next_value()?;
            fields.insert(k, v);
        }
        Ok(value(Kind::StructValue(Struct { fields })))
    }
}

impl<'de> de::Deserialize<'de> for ProtoValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

impl<'de> DeserializeSeed<'de> for ValueVisitor {
    type Value = ProtoValue;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ProtoValue, D::Error> {
        d.deserialize_any(self)
    }
}

/// Parses JSON text into a protobuf `Value`.
pub fn parse(body: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<ProtoValue>(body).map(|p| p.0)
}

/// Looks a key up ignoring case, trying each name in turn.
pub fn get_ci<'a>(obj: &'a Struct, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|n| {
        obj.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v)
    })
}

/// A string, or a number written as one (whole numbers without a fraction).
pub fn as_string(v: &Value) -> Option<String> {
    match v.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        Kind::NumberValue(n) => Some(number_text(*n)),
        _ => None,
    }
}

/// A number's text: whole numbers without a fraction.
pub fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// A non-negative whole number, from a number or a numeric string.
pub fn as_u64(v: &Value) -> Option<u64> {
    match v.kind.as_ref()? {
        Kind::NumberValue(n) => number_u64(*n),
        Kind::StringValue(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A number as a non-negative whole number (the fraction dropped).
pub fn number_u64(n: f64) -> Option<u64> {
    (n >= 0.0 && n.is_finite()).then_some(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_json_kind() {
        let v = parse(br#"{"a": 1, "b": "x", "c": [true, null, 2.5], "d": {"e": -3}}"#).unwrap();
        let Some(Kind::StructValue(s)) = v.kind else {
            panic!("object")
        };
        assert_eq!(as_u64(&s.fields["a"]), Some(1));
        assert_eq!(as_string(&s.fields["b"]).as_deref(), Some("x"));
        let Some(Kind::ListValue(l)) = &s.fields["c"].kind else {
            panic!("list")
        };
        assert_eq!(l.values.len(), 3);
        assert_eq!(get_ci(&s, &["D"]).map(|_| ()), Some(()));
        assert!(parse(b"{nope").is_err());
    }
}
