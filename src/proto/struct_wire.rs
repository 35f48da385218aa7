//! JSON written straight into the protobuf wire bytes of `google.protobuf.Struct`.
//!
//! A JSON object becomes the encoded body of a `Struct` ([`RawStruct`]) in one pass
//! over the JSON text, while a [`Picks`] picks up the values of a few top-level keys
//! on the way. No map, no value tree, no allocation per field: building and then
//! encoding `prost_types::Struct` maps was about a quarter of the gateway's CPU per
//! `ListAttachments` call.
//!
//! The server's generated messages (`crate::proto::wire`) carry `RawStruct` where
//! the contract says `google.protobuf.Struct`; the bytes on the wire are the same
//! as prost would write for the equivalent `prost_types::Struct` (up to the order
//! of map entries and the encoding of default map keys, which protobuf leaves
//! free), so callers decode them with any protobuf library.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{DecodeContext, WireType};
use serde::Deserializer;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::deep::MAX_STRUCT_DEPTH;

/// A `google.protobuf.Struct`, kept as its encoded body (without tag or length).
#[derive(Clone, PartialEq, Default)]
pub struct RawStruct(Bytes);

impl From<Bytes> for RawStruct {
    /// Bytes already encoded as a `Struct` body.
    fn from(b: Bytes) -> Self {
        Self(b)
    }
}

impl RawStruct {
    /// The encoded body.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Decodes the bytes into a `prost_types::Struct`.
    pub fn to_struct(&self) -> Result<prost_types::Struct, prost::DecodeError> {
        prost_types::Struct::decode(self.0.clone())
    }
}

impl From<&prost_types::Struct> for RawStruct {
    fn from(s: &prost_types::Struct) -> Self {
        Self(Bytes::from(s.encode_to_vec()))
    }
}

impl fmt::Debug for RawStruct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_struct() {
            Ok(s) => f.debug_tuple("RawStruct").field(&s).finish(),
            Err(_) => write!(f, "RawStruct(<{} undecodable bytes>)", self.0.len()),
        }
    }
}

impl Message for RawStruct {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    /// Decoding keeps the bytes too: each field is read as a `Struct` field (which
    /// checks it) and written back, so a decoded `RawStruct` encodes the same map.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        let mut field = prost_types::Struct::default();
        field.merge_field(tag, wire_type, buf, ctx)?;
        // Appended in place when the bytes are this value's alone (as they are
        // while it is decoded), so decoding a map is linear, not quadratic.
        let mut bytes = match std::mem::take(&mut self.0).try_into_mut() {
            Ok(owned) => owned,
            Err(shared) => BytesMut::from(&shared[..]),
        };
        field.encode_raw(&mut bytes);
        self.0 = bytes.freeze();
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}
// ------------------------------------------------------------------ the writer

// Field keys (field number << 3 | wire type) of the well-known types.
const STRUCT_FIELDS: u8 = 0x0a; // Struct.fields = 1, map entries
const ENTRY_KEY: u8 = 0x0a; // key = 1
const ENTRY_VALUE: u8 = 0x12; // value = 2
const NULL_VALUE: u8 = 0x08; // Value.null_value = 1, varint
const NUMBER_VALUE: u8 = 0x11; // number_value = 2, fixed64
const STRING_VALUE: u8 = 0x1a; // string_value = 3
const BOOL_VALUE: u8 = 0x20; // bool_value = 4, varint
const STRUCT_VALUE: u8 = 0x2a; // struct_value = 5
const LIST_VALUE: u8 = 0x32; // list_value = 6
const LIST_VALUES: u8 = 0x0a; // ListValue.values = 1

/// A buffer of protobuf wire bytes written front to back, whose length-delimited
/// fields are opened before their length is known. Each gets one byte for its
/// length; the few whose content reaches 128 bytes are noted and widened in one
/// pass at the end ([`Wire::finish`]), so no byte is moved more than once however
/// deep the nesting (widening each as it closed shifted its content once per
/// enclosing level).
pub struct Wire {
    buf: Vec<u8>,
    /// Fields whose length needs more than one byte: the position of their
    /// one-byte placeholder, and their length once widened.
    wide: Vec<(usize, usize)>,
    /// The bytes the widening will add, over every field closed so far.
    extra: usize,
}

/// An open field: where its content starts, and the widening noted before it.
#[derive(Clone, Copy)]
struct Open {
    start: usize,
    extra: usize,
}

impl Wire {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
            wide: Vec::new(),
            extra: 0,
        }
    }

    /// The write position, before widening.
    pub fn position(&self) -> usize {
        self.buf.len()
    }

    fn open(&mut self, key: u8) -> Open {
        self.buf.push(key);
        self.buf.push(0);
        Open {
            start: self.buf.len(),
            extra: self.extra,
        }
    }

    fn close(&mut self, o: Open) {
        // The content's length once the fields inside it are widened.
        let len = self.buf.len() - o.start + (self.extra - o.extra);
        if len < 0x80 {
            self.buf[o.start - 1] = len as u8;
        } else {
            self.wide.push((o.start - 1, len));
            self.extra += prost::encoding::encoded_len_varint(len as u64) - 1;
        }
    }

    /// Takes back a field just opened, with nothing closed inside it.
    fn cancel(&mut self, o: Open) {
        self.buf.truncate(o.start - 2);
    }

    /// Drops everything written from `position` on.
    pub fn truncate(&mut self, position: usize) {
        while let Some(&(at, len)) = self.wide.last() {
            if at < position {
                break;
            }
            self.wide.pop();
            self.extra -= prost::encoding::encoded_len_varint(len as u64) - 1;
        }
        self.buf.truncate(position);
    }

    /// The finished bytes. `positions` (ascending, from [`Wire::position`]) are
    /// moved to where their bytes end up.
    pub fn finish(self, positions: &mut [usize]) -> Vec<u8> {
        let Self {
            buf,
            mut wide,
            extra,
        } = self;
        if wide.is_empty() {
            return buf;
        }
        // Noted as they closed (inner fields first): in position order now.
        wide.sort_unstable_by_key(|&(at, _)| at);
        let mut out = Vec::with_capacity(buf.len() + extra);
        let mut from = 0;
        let mut p = positions.iter_mut().peekable();
        for (at, len) in wide {
            // How far the bytes from `from` up to this placeholder move.
            let shift = out.len() - from;
            while let Some(pos) = p.next_if(|pos| **pos <= at) {
                *pos += shift;
            }
            out.extend_from_slice(&buf[from..at]);
            prost::encoding::encode_varint(len as u64, &mut out);
            from = at + 1;
        }
        let shift = out.len() - from;
        for pos in p {
            *pos += shift;
        }
        out.extend_from_slice(&buf[from..]);
        out
    }
}

fn put_str(buf: &mut Vec<u8>, key: u8, s: &str) {
    if s.len() < 0x80 {
        buf.extend_from_slice(&[key, s.len() as u8]);
    } else {
        buf.push(key);
        prost::encoding::encode_varint(s.len() as u64, buf);
    }
    buf.extend_from_slice(s.as_bytes());
}

/// What a value was, for the typed fields the gateway reads: strings are kept only
/// when asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Str(String),
    Num(f64),
    Other,
}

/// Writes one JSON value as the body of a `google.protobuf.Value`; a container
/// at [`MAX_STRUCT_DEPTH`] or deeper as its JSON text (see [`super::deep`]).
struct ValueSeed<'b> {
    w: &'b mut Wire,
    keep_string: bool,
    depth: usize,
}

impl ValueSeed<'_> {
    /// A container past the depth, read whole and written as its text.
    fn as_text(self, v: serde_json::Value) -> Scalar {
        put_str(
            &mut self.w.buf,
            STRING_VALUE,
            &super::deep::json_text(&super::deep::from_json(v)),
        );
        Scalar::Other
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Scalar;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        self.w.buf.extend_from_slice(&[BOOL_VALUE, u8::from(v)]);
        Ok(Scalar::Other)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        self.visit_f64(v as f64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        self.w.buf.push(NUMBER_VALUE);
        self.w.buf.extend_from_slice(&v.to_le_bytes());
        Ok(Scalar::Num(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        put_str(&mut self.w.buf, STRING_VALUE, v);
        Ok(if self.keep_string {
            Scalar::Str(v.to_string())
        } else {
            Scalar::Other
        })
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        self.w.buf.extend_from_slice(&[NULL_VALUE, 0]);
        Ok(Scalar::Other)
    }

    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        self.visit_unit()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        if self.depth >= MAX_STRUCT_DEPTH {
            let mut items = Vec::new();
            while let Some(v) = seq.next_element::<serde_json::Value>()? {
                items.push(v);
            }
            return Ok(self.as_text(serde_json::Value::Array(items)));
        }
        let list = self.w.open(LIST_VALUE);
        loop {
            let item = self.w.open(LIST_VALUES);
            let seed = ValueSeed {
                w: &mut *self.w,
                keep_string: false,
                depth: self.depth + 1,
            };
            if seq.next_element_seed(seed)?.is_none() {
                // Take back the opened item: the list ended.
                self.w.cancel(item);
                break;
            }
            self.w.close(item);
        }
        self.w.close(list);
        Ok(Scalar::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        if self.depth >= MAX_STRUCT_DEPTH {
            let mut fields = serde_json::Map::new();
            while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                fields.insert(k, v);
            }
            return Ok(self.as_text(serde_json::Value::Object(fields)));
        }
        let body = self.w.open(STRUCT_VALUE);
        write_entries(self.w, map, &mut NoPicks, self.depth + 1)?;
        self.w.close(body);
        Ok(Scalar::Other)
    }
}

/// Writes a map key as the entry's `key` field, and says whether it feeds a slot.
struct KeySeed<'b, P> {
    buf: &'b mut Vec<u8>,
    picks: &'b P,
}

impl<'de, P: Picks> DeserializeSeed<'de> for KeySeed<'_, P> {
    type Value = Option<P::Slot>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<P::Slot>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, P: Picks> Visitor<'de> for KeySeed<'_, P> {
    type Value = Option<P::Slot>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<P::Slot>, E> {
        put_str(self.buf, ENTRY_KEY, v);
        Ok(self.picks.slot(v))
    }
}

/// Which top-level keys of an object to pick values up from, as the object is
/// written.
pub trait Picks {
    /// What a key that feeds a typed field is known by.
    type Slot;
    /// The slot a key feeds, if any.
    fn slot(&self, key: &str) -> Option<Self::Slot>;
    /// The value of a key that feeds a slot.
    fn offer(&mut self, slot: Self::Slot, value: Scalar);
}

/// Picks nothing: nested objects are written whole.
struct NoPicks;

impl Picks for NoPicks {
    type Slot = ();
    fn slot(&self, _: &str) -> Option<()> {
        None
    }
    fn offer(&mut self, _: (), _: Scalar) {}
}

/// Writes a JSON object's entries as a `Struct` body, offering top-level values to
/// `picks` as it goes.
pub fn write_struct_body<'de, A: MapAccess<'de>, P: Picks>(
    w: &mut Wire,
    map: A,
    picks: &mut P,
) -> Result<(), A::Error> {
    write_entries(w, map, picks, 0)
}

/// The entries of an object whose values are at `depth`.
fn write_entries<'de, A: MapAccess<'de>, P: Picks>(
    w: &mut Wire,
    mut map: A,
    picks: &mut P,
    depth: usize,
) -> Result<(), A::Error> {
    loop {
        let entry = w.open(STRUCT_FIELDS);
        let seed = KeySeed {
            buf: &mut w.buf,
            picks: &*picks,
        };
        let candidate = match map.next_key_seed(seed)? {
            Some(c) => c,
            None => {
                w.cancel(entry);
                return Ok(());
            }
        };
        let value = w.open(ENTRY_VALUE);
        let scalar = map.next_value_seed(ValueSeed {
            w: &mut *w,
            keep_string: candidate.is_some(),
            depth,
        })?;
        w.close(value);
        w.close(entry);
        if let Some(c) = candidate {
            picks.offer(c, scalar);
        }
    }
}

/// Reads a value through and drops it. Unlike `IgnoredAny`, numbers are parsed,
/// so a value the writer and the tree reader refuse (a number out of `f64`'s
/// range) is refused here too.
pub struct Discard;

impl<'de> DeserializeSeed<'de> for Discard {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Discard {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
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
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Discard)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(DiscardKey)?.is_some() {
            map.next_value_seed(Discard)?;
        }
        Ok(())
    }
}

/// A key read through and dropped, read as [`KeySeed`] reads it.
struct DiscardKey;

impl<'de> DeserializeSeed<'de> for DiscardKey {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(Discard)
    }
}
