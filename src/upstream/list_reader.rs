//! The list answer (a bare JSON array of attachment objects) read in one pass: each
//! object's entries written as a `Struct` body ([`crate::proto::struct_wire`]), the typed fields
//! picked up on the way.

use std::fmt;

use bytes::Bytes;
use serde::Deserializer;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::model::{UpstreamAttachment, fields};
use super::struct_json;
use crate::proto::struct_wire::{Discard, Picks, RawStruct, Scalar, Wire, write_struct_body};

// ------------------------------------------------------------------ attachments

use fields::{DOCUMENT_TYPE, ID, MIME_TYPE, NAME, SIZE, SUBTYPE};
const SLOTS: [&[&str]; 6] = [ID, NAME, MIME_TYPE, SIZE, DOCUMENT_TYPE, SUBTYPE];
/// The longest slot name ("AttachmentId").
const KEY_MAX: usize = 12;
/// Bit n is set when some slot name is n bytes long.
const SLOT_LENGTHS: u32 = {
    let mut bits = 0u32;
    let mut i = 0;
    while i < SLOTS.len() {
        let mut j = 0;
        while j < SLOTS[i].len() {
            bits |= 1 << SLOTS[i][j].len();
            j += 1;
        }
        i += 1;
    }
    bits
};

/// A key that feeds a typed field: which one, how preferred its name is, and the
/// key itself (a slot name's length, so at most [`KEY_MAX`] bytes).
#[derive(Clone, Copy)]
struct Candidate {
    slot: u8,
    rank: u8,
    len: u8,
    key: [u8; KEY_MAX],
}

impl Candidate {
    fn key(&self) -> &[u8] {
        &self.key[..usize::from(self.len)]
    }
}

/// The best candidate so far for each slot: the earliest name in the slot's list
/// wins; among keys matching the same name, the smallest key in byte order; a
/// repeated key, its last value. The same choice as looking the key up in the
/// decoded map.
#[derive(Default)]
struct AttachmentPicks {
    best: [Option<(Candidate, Scalar)>; 6],
}

impl Picks for AttachmentPicks {
    type Slot = Candidate;

    fn slot(&self, key: &str) -> Option<Candidate> {
        // Most keys are no slot's: rule them out by length first.
        if key.len() > KEY_MAX || SLOT_LENGTHS & (1 << key.len()) == 0 {
            return None;
        }
        // Slot names are unique across slots, so the first match is the only one.
        SLOTS.iter().enumerate().find_map(|(slot, names)| {
            let rank = names.iter().position(|n| n.eq_ignore_ascii_case(key))?;
            let mut c = Candidate {
                // Both below 8, and the length at most KEY_MAX (checked above).
                slot: slot as u8,
                rank: rank as u8,
                len: key.len() as u8,
                key: [0; KEY_MAX],
            };
            c.key[..key.len()].copy_from_slice(key.as_bytes());
            Some(c)
        })
    }

    fn offer(&mut self, c: Candidate, value: Scalar) {
        let best = &mut self.best[usize::from(c.slot)];
        let better = match best {
            None => true,
            Some((b, _)) => c.rank < b.rank || (c.rank == b.rank && c.key() <= b.key()),
        };
        if better {
            *best = Some((c, value));
        }
    }
}

impl AttachmentPicks {
    /// The typed fields, as `model`'s tree reader derives them; `None` without an
    /// id. `raw` is filled in once the whole answer is read.
    fn finish(self) -> Option<UpstreamAttachment> {
        let [id, name, mime_type, size, document_type, subtype] = self.best;
        let s = |v: Option<(Candidate, Scalar)>| v.and_then(|(_, v)| scalar_string(v));
        let attachment_id = s(id).unwrap_or_default();
        if attachment_id.is_empty() {
            return None;
        }
        Some(UpstreamAttachment {
            attachment_id,
            name: s(name).unwrap_or_default(),
            mime_type: s(mime_type).unwrap_or_default(),
            size_bytes: size.and_then(|(_, v)| scalar_u64(&v)).unwrap_or(0),
            document_type: s(document_type),
            subtype: s(subtype).unwrap_or_default(),
            raw: RawStruct::default(),
        })
    }
}
// ------------------------------------------------------------------ typed fields only

/// Reads one attachment object for its typed fields alone (the BASIC view): the
/// same keys, values and choices as [`write_struct_body`] with [`AttachmentPicks`],
/// and the same input refused, with nothing written.
fn pick_fields<'de, A: MapAccess<'de>>(
    mut map: A,
    picks: &mut AttachmentPicks,
) -> Result<(), A::Error> {
    while let Some(candidate) = map.next_key_seed(PickKey { picks: &*picks })? {
        match candidate {
            Some(c) => {
                let value = map.next_value_seed(ScalarSeed)?;
                picks.offer(c, value);
            }
            None => map.next_value_seed(Discard)?,
        }
    }
    Ok(())
}

/// A key, looked up among the slots.
struct PickKey<'p> {
    picks: &'p AttachmentPicks,
}

impl<'de> DeserializeSeed<'de> for PickKey<'_> {
    type Value = Option<Candidate>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Candidate>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for PickKey<'_> {
    type Value = Option<Candidate>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<Candidate>, E> {
        Ok(self.picks.slot(v))
    }
}

/// A slot's value, as [`ValueSeed`] reports it for a slot's key.
struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScalarSeed {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Num(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Num(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Num(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar, A::Error> {
        Discard.visit_seq(seq).map(|()| Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar, A::Error> {
        Discard.visit_map(map).map(|()| Scalar::Other)
    }
}

// ------------------------------------------------------------------ the answer

/// Where the attachments read so far go: the typed fields, and the range of the
/// shared buffer that holds each one's `Struct` body.
struct Sink<'b> {
    wire: &'b mut Wire,
    /// Whether each object's `Struct` body is written; when not, only the typed
    /// fields are read.
    keep_raw: bool,
    items: &'b mut Vec<UpstreamAttachment>,
    ranges: &'b mut Vec<std::ops::Range<usize>>,
}

/// Reads one element of the list: an object with an id is kept, anything else is
/// validated and skipped, as the tree reader skips it.
struct ElementSeed<'s, 'b> {
    sink: &'s mut Sink<'b>,
}

impl<'de> DeserializeSeed<'de> for ElementSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ElementSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an attachment object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let mut picks = AttachmentPicks::default();
        if !self.sink.keep_raw {
            pick_fields(map, &mut picks)?;
            self.sink.items.extend(picks.finish());
            return Ok(());
        }
        let start = self.sink.wire.position();
        write_struct_body(self.sink.wire, map, &mut picks)?;
        match picks.finish() {
            Some(a) => {
                self.sink.items.push(a);
                self.sink.ranges.push(start..self.sink.wire.position());
            }
            None => self.sink.wire.truncate(start),
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        // Read through as values are elsewhere (numbers parsed), not with
        // `IgnoredAny`, which lets `[[1e999], ...]` through where the tree
        // reader refuses it.
        Discard.visit_seq(seq)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

struct ArrayVisitor<'s, 'b> {
    sink: &'s mut Sink<'b>,
}

impl<'de> Visitor<'de> for ArrayVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of attachments")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(ElementSeed {
                sink: &mut *self.sink,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// Reads a JSON array of attachment objects in one pass, each object's entries
/// written as a `Struct` body into one shared buffer (kept as `raw` when
/// `keep_raw`). Elements that are not objects, and objects without an id, are
/// skipped.
pub fn read_attachments(
    body: &[u8],
    keep_raw: bool,
) -> Result<Vec<UpstreamAttachment>, serde_json::Error> {
    let mut wire = Wire::with_capacity(if keep_raw {
        body.len() + body.len() / 4
    } else {
        0
    });
    let (mut items, mut ranges) = (Vec::new(), Vec::new());
    let mut sink = Sink {
        wire: &mut wire,
        keep_raw,
        items: &mut items,
        ranges: &mut ranges,
    };
    // One UTF-8 check of the whole body spares serde_json one per string. A body
    // that is not UTF-8 is refused whole, as the tree reader refuses it: read from
    // bytes, serde_json would not check the strings of the elements it skips.
    let text = std::str::from_utf8(body).map_err(|e| {
        <serde_json::Error as de::Error>::custom(format_args!(
            "invalid UTF-8 at byte {}",
            e.valid_up_to()
        ))
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_seq(ArrayVisitor { sink: &mut sink })?;
    de.end()?;
    let mut bounds: Vec<usize> = ranges.iter().flat_map(|r| [r.start, r.end]).collect();
    let bytes = Bytes::from(wire.finish(&mut bounds));
    for (item, b) in items.iter_mut().zip(bounds.chunks_exact(2)) {
        item.raw = RawStruct::from(bytes.slice(b[0]..b[1]));
    }
    Ok(items)
}

/// The value's text form for a string field: a string as is, a whole number
/// without a fraction.
pub fn scalar_string(v: Scalar) -> Option<String> {
    match v {
        Scalar::Str(s) => Some(s),
        Scalar::Num(n) => Some(struct_json::number_text(n)),
        Scalar::Other => None,
    }
}

/// A non-negative whole number, from a number or a numeric string.
pub fn scalar_u64(v: &Scalar) -> Option<u64> {
    match v {
        Scalar::Num(n) => struct_json::number_u64(*n),
        Scalar::Str(s) => s.trim().parse().ok(),
        Scalar::Other => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use prost_types::value::Kind;

    fn decoded(a: &UpstreamAttachment) -> prost_types::Struct {
        a.raw.to_struct().expect("valid protobuf")
    }

    fn read_attachments_full(body: &[u8]) -> Result<Vec<UpstreamAttachment>, serde_json::Error> {
        read_attachments(body, true)
    }

    #[test]
    fn without_raw_reads_the_same_typed_fields_and_refuses_the_same_input() {
        for body in [
            &br#"[{"AttachmentId": "a", "Name": "n", "Size": 3, "x": {"y": ["z"]}}, {"Id": "b"}, 7]"#[..],
            b"[{\"a\": 1}",
            b"[{\"Id\": \"\xff\"}]",
        ] {
            let full = read_attachments_full(body).map(|l| {
                l.into_iter()
                    .map(|a| UpstreamAttachment {
                        raw: RawStruct::default(),
                        ..a
                    })
                    .collect::<Vec<_>>()
            });
            let basic = read_attachments(body, false);
            assert_eq!(basic.as_ref().ok(), full.as_ref().ok());
            assert_eq!(basic.is_err(), full.is_err());
        }
    }

    #[test]
    fn writes_what_the_tree_reader_reads() {
        let long = "x".repeat(300);
        let body = format!(
            r#"[{{"AttachmentId": "a", "n": 1.5, "neg": -3, "big": 18446744073709551615,
                "t": true, "f": false, "z": null, "s": "{long}", "e": "", "": "empty key",
                "l": [1, "two", [null], {{"k": []}}], "o": {{"inner": {{"deep": "{long}"}}}},
                "esc": "a\"b\\u00e9"}}, 7, "skip", [1, 2], null, {{}}, {{"Id": "b"}}]"#
        );
        let items = read_attachments_full(body.as_bytes()).unwrap();
        assert_eq!(
            items.len(),
            2,
            "non-objects and objects without an id are skipped"
        );
        let tree = super::super::struct_json::parse(body.as_bytes()).unwrap();
        let Some(Kind::ListValue(list)) = tree.kind else {
            panic!("array")
        };
        let objects: Vec<_> = list
            .values
            .into_iter()
            .filter_map(|v| match v.kind {
                Some(Kind::StructValue(s)) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(decoded(&items[0]), objects[0]);
        assert_eq!(decoded(&items[1]), objects[2]);
        assert_eq!(items[0].attachment_id, "a");
        assert_eq!(items[1].attachment_id, "b");
        // And the bytes are prost's own, entry for entry (prost orders the map by
        // key; two entries in key order here, so the order cannot differ).
        let one =
            read_attachments_full(br#"[{"Id": "x", "k": {"a": [1, "b", null, true]}}]"#).unwrap();
        assert_eq!(one[0].raw.as_bytes(), decoded(&one[0]).encode_to_vec());
    }

    #[test]
    fn picks_fields_as_the_map_lookup_does() {
        let items = read_attachments_full(
            br#"[{"id": "second", "ATTACHMENTID": "upper", "attachmentId": "lower",
                  "SIZE": "12", "FileSize": 3, "name": 5, "Name": "later wins", "Name": "last",
                  "contenttype": 7, "DocumentType": "Picture"}]"#,
        )
        .unwrap();
        let a = &items[0];
        // "ATTACHMENTID" < "attachmentId" in byte order; "Id" ranks after.
        assert_eq!(a.attachment_id, "upper");
        assert_eq!(a.size_bytes, 12);
        // "Name" < "name"; the repeated "Name" keeps its last value.
        assert_eq!(a.name, "last");
        assert_eq!(a.mime_type, "7");
        assert_eq!(a.document_type.as_deref(), Some("Picture"));
        assert_eq!(scalar_string(Scalar::Num(5.0)).as_deref(), Some("5"));
    }

    #[test]
    fn refuses_what_is_not_a_json_array() {
        assert!(read_attachments_full(b"[{\"a\": 1}").is_err());
        assert!(read_attachments_full(b"[] []").is_err());
        assert!(read_attachments_full(b"{}").is_err());
        assert!(read_attachments_full(b"[{\"a\": 1e999}]").is_err());
        // Not UTF-8: in a string, and outside one.
        assert!(read_attachments_full(b"[{\"a\": \"\xff\"}]").is_err());
        assert!(read_attachments_full(b"[{\"a\": 1}\xff]").is_err());
        // Found by the fuzz target: a bad string inside an element that is skipped.
        assert!(read_attachments_full(b"[[\"m\xa2[\"\r\r\r]]").is_err());
        assert!(read_attachments(b"[7, \"\xff\"]", false).is_err());
    }

    #[test]
    fn deep_nesting_and_long_values_write_what_the_tree_reader_reads() {
        // Lists 40 deep, each holding a 150-byte string: every level's length
        // needs two bytes, and each is widened once, at the end.
        let mut nested = String::from("\"deepest\"");
        for i in 0..40 {
            nested = format!("[\"{}\", {nested}]", "x".repeat(150 + i));
        }
        let long = "y".repeat(20_000);
        let body = format!(
            r#"[{{"Id": "a", "deep": {nested}, "Name": "n.txt"}}, {{"nothing": 1}}, {{"Id": "b", "long": "{long}", "o": {{"p": {{"q": "{long}"}}}}}}]"#
        );
        let fast = read_attachments_full(body.as_bytes()).expect("one pass");
        let tree = crate::upstream::answers::parse_list_tree(body.as_bytes()).expect("tree");
        assert_eq!(fast.len(), 2);
        for (f, t) in fast.iter().zip(&tree) {
            assert_eq!(decoded(f), decoded(t));
            assert_eq!((&f.attachment_id, &f.name), (&t.attachment_id, &t.name));
            // Entries keep the JSON's order (prost's sorts them), but every length
            // is written in as few bytes as prost writes it.
            assert_eq!(f.raw.as_bytes().len(), decoded(f).encoded_len());
        }
    }

    #[test]
    fn a_raw_struct_decodes_and_reencodes_the_same() {
        let items =
            read_attachments_full(br#"[{"Id": "i", "a": {"b": [1, 2, 3]}, "c": "d"}]"#).unwrap();
        let raw = &items[0].raw;
        let again = RawStruct::decode(raw.as_bytes()).unwrap();
        assert_eq!(again.to_struct().unwrap(), raw.to_struct().unwrap());
        assert_eq!(
            RawStruct::from(&raw.to_struct().unwrap())
                .to_struct()
                .unwrap(),
            raw.to_struct().unwrap()
        );
    }
}
