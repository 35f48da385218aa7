//! An attachment event as the server sends it: the body recorded in the event log
//! (encoded once, when the event was recorded) and the id the log gave it. A watch
//! sends the bytes on as they are, however many subscribers there are: no decode
//! and encode per delivery.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{DecodeContext, WireType};

/// `AttachmentEvent`, pre-encoded but for `event_id` (field 1).
#[derive(Clone, PartialEq, Default, Debug)]
pub struct RawEvent {
    pub event_id: String,
    /// The encoded event without `event_id`.
    pub body: Bytes,
}

impl Message for RawEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.event_id.is_empty() {
            prost::encoding::string::encode(1, &self.event_id, buf);
        }
        buf.put_slice(&self.body);
    }

    /// Decoding (which the server never does) keeps `event_id` apart and every
    /// other field, checked, in the body.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if tag == 1 {
            return prost::encoding::string::merge(wire_type, &mut self.event_id, buf, ctx);
        }
        let mut field = super::AttachmentEvent::default();
        field.merge_field(tag, wire_type, buf, ctx)?;
        let mut body = BytesMut::from(&self.body[..]);
        field.encode_raw(&mut body);
        self.body = body.freeze();
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        let id = if self.event_id.is_empty() {
            0
        } else {
            prost::encoding::string::encoded_len(1, &self.event_id)
        };
        id + self.body.len()
    }

    fn clear(&mut self) {
        self.event_id.clear();
        self.body = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{AttachmentEvent, AttachmentEventType};

    #[test]
    fn encodes_as_the_event_with_its_id() {
        let e = AttachmentEvent {
            r#type: AttachmentEventType::Added as i32,
            work_order_id: 1001,
            caller: "api_key:x".into(),
            ..Default::default()
        };
        let raw = RawEvent {
            event_id: "ab-7".into(),
            body: Bytes::from(e.encode_to_vec()),
        };
        let back = AttachmentEvent::decode(raw.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.event_id, "ab-7");
        assert_eq!(
            (back.work_order_id, back.caller.as_str()),
            (1001, "api_key:x")
        );
        let again = RawEvent::decode(raw.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            AttachmentEvent::decode(again.encode_to_vec().as_slice()).unwrap(),
            back
        );
    }
}
