//! Deep JSON in `google.protobuf.Struct` values, cut to a depth every caller can
//! decode. Protobuf decoders stop at a nesting depth (prost, Python's and Java's
//! at 100 messages), and each JSON level costs up to three (`Value`, `Struct`,
//! the map entry): an upstream object nested past a few dozen levels would make
//! the answer that carries it undecodable for every caller. So a container at
//! [`MAX_STRUCT_DEPTH`] or deeper is sent as a string holding its compact JSON
//! text; nothing is lost, and the shallow fields stay typed.

use std::collections::BTreeMap;

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

/// Containers at this depth (the entries of an upstream object are at depth 0)
/// become their JSON text. With the messages around them (an event inside a
/// watch response), the deepest `Struct` stays under 60 message levels.
pub const MAX_STRUCT_DEPTH: usize = 16;

/// A JSON value as a protobuf `Value` (numbers as `f64`, as protobuf has them).
pub fn from_json(v: serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.into_iter().map(from_json).collect(),
        }),
        J::Object(o) => Kind::StructValue(Struct {
            fields: o.into_iter().map(|(k, v)| (k, from_json(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// A `Value`'s compact JSON text: keys in order, whole numbers without a
/// fraction, non-finite numbers as `null` (JSON has none).
pub fn json_text(v: &Value) -> String {
    let mut out = String::new();
    write_json(v, &mut out);
    out
}

fn write_json(v: &Value, out: &mut String) {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => out.push_str("null"),
        Some(Kind::BoolValue(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(Kind::NumberValue(n)) if !n.is_finite() => out.push_str("null"),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                out.push_str(&(*n as i64).to_string());
            } else if let Some(x) = serde_json::Number::from_f64(*n) {
                out.push_str(&x.to_string());
            }
        }
        Some(Kind::StringValue(s)) => {
            out.push_str(&serde_json::Value::from(s.as_str()).to_string())
        }
        Some(Kind::ListValue(l)) => {
            out.push('[');
            for (i, x) in l.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(x, out);
            }
            out.push(']');
        }
        Some(Kind::StructValue(s)) => write_object(&s.fields, out),
    }
}

fn write_object(fields: &BTreeMap<String, Value>, out: &mut String) {
    out.push('{');
    for (i, (k, x)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::from(k.as_str()).to_string());
        out.push(':');
        write_json(x, out);
    }
    out.push('}');
}

/// The `Value` sent for a container found at `depth`: itself below
/// [`MAX_STRUCT_DEPTH`], else its JSON text.
pub fn flatten(v: &mut Value, depth: usize) {
    match &mut v.kind {
        Some(Kind::ListValue(_) | Kind::StructValue(_)) if depth >= MAX_STRUCT_DEPTH => {
            v.kind = Some(Kind::StringValue(json_text(v)));
        }
        Some(Kind::ListValue(l)) => l.values.iter_mut().for_each(|x| flatten(x, depth + 1)),
        Some(Kind::StructValue(s)) => s.fields.values_mut().for_each(|x| flatten(x, depth + 1)),
        _ => {}
    }
}

/// Cuts an upstream object (its entries at depth 0) to [`MAX_STRUCT_DEPTH`].
pub fn flatten_struct(s: &mut Struct) {
    s.fields.values_mut().for_each(|x| flatten(x, 0));
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn nested(levels: usize) -> serde_json::Value {
        let mut v = serde_json::json!({"leaf": [1, 2.5, "x\"y", null, true]});
        for i in 0..levels {
            v = serde_json::json!({ format!("k{i}"): v, "n": i });
        }
        v
    }

    #[test]
    fn a_deep_object_is_cut_to_text_that_holds_all_of_it() {
        let Some(Kind::StructValue(mut s)) = from_json(nested(60)).kind else {
            panic!("object")
        };
        flatten_struct(&mut s);
        // Walk down to the cut: its text is the JSON of what was below it.
        let mut at = &s;
        let mut depth = 0;
        let text = loop {
            let key = at
                .fields
                .keys()
                .find(|k| k.starts_with('k'))
                .unwrap()
                .clone();
            match &at.fields[&key].kind {
                Some(Kind::StructValue(inner)) => {
                    at = inner;
                    depth += 1;
                }
                Some(Kind::StringValue(t)) => break t.clone(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(depth, MAX_STRUCT_DEPTH);
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            text.contains(r#""leaf":[1,2.5,"x\"y",null,true]"#),
            "{text}"
        );
        assert!(back.is_object());
        // Wrapped in the messages of a watch response, it still decodes.
        let event = crate::proto::AttachmentEvent {
            attachment: Some(crate::proto::Attachment {
                upstream: Some(s),
                ..Default::default()
            }),
            ..Default::default()
        };
        let resp = crate::proto::WatchAttachmentsResponse {
            payload: Some(crate::proto::watch_attachments_response::Payload::Event(
                event,
            )),
        };
        crate::proto::WatchAttachmentsResponse::decode(resp.encode_to_vec().as_slice())
            .expect("decodes");
    }

    #[test]
    fn numbers_and_strings_are_written_as_json() {
        let v = from_json(serde_json::json!([1, -2, 1.5, 1e300, "é\n", {"b": 1, "a": {}}]));
        assert_eq!(json_text(&v), r#"[1,-2,1.5,1e+300,"é\n",{"a":{},"b":1}]"#);
        let nan = Value {
            kind: Some(Kind::NumberValue(f64::NAN)),
        };
        assert_eq!(json_text(&nan), "null");
    }
}
