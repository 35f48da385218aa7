//! What became of a write whose answer was lost after it was sent: decided from
//! what the upstream lists now and what the gateway knew before the attempt,
//! never by running the write again blindly.
//!
//! - **An upload** may have created an attachment. Its candidates are the listed
//!   attachments with the same name, size and media type (a field the list does
//!   not state is not held against a candidate). One that carries the attempt's
//!   `MessageId` is ours, whatever else is listed. Otherwise the candidates that
//!   were already there before the attempt (`preexisting`, listed while the
//!   body was being sent) are someone else's: exactly one new candidate is ours;
//!   none means the upload was not applied; several mean the gateway cannot
//!   tell (and says which). Without a list from before the attempt, a single
//!   candidate might be an older identical file: the gateway cannot tell.
//! - **A delete** came true when the attachment is not listed.
//! - **An update** came true when the listed fields are the ones asked for.

use crate::store::writes::{UpdateAttempt, UploadAttempt};
use crate::upstream::model::UpstreamAttachment;

/// At most this many candidate ids are kept from before an attempt (a work
/// order with more identical files than this cannot be told apart anyway).
pub const MAX_PREEXISTING: usize = 64;

/// What the upstream's list says of an upload attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// The one attachment the attempt created.
    Ours(UpstreamAttachment),
    /// No attachment the attempt could have created.
    Absent,
    /// Several could be (or one that may be older): their ids.
    Ambiguous(Vec<String>),
}

fn same_media_type(listed: &str, sent: &str) -> bool {
    listed.is_empty()
        || listed
            .split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(sent.trim()))
}

/// Whether a listed attachment could be the upload `a` sent.
pub fn is_candidate(listed: &UpstreamAttachment, a: &UploadAttempt) -> bool {
    listed.name == a.name
        && (listed.size_bytes == 0 || listed.size_bytes == a.size_bytes)
        && same_media_type(&listed.mime_type, &a.mime_type)
}

/// The candidates' ids in `listed`, to keep from before an attempt.
/// `None` past [`MAX_PREEXISTING`]: a list cut short would make an older file
/// look new, so such an upload is one the gateway cannot tell.
pub fn candidates_before(listed: &[UpstreamAttachment], a: &UploadAttempt) -> Option<Vec<String>> {
    bounded(listed.iter().filter(|l| is_candidate(l, a)))
}

fn bounded<'a>(ids: impl Iterator<Item = &'a UpstreamAttachment>) -> Option<Vec<String>> {
    let ids: Vec<String> = ids
        .take(MAX_PREEXISTING + 1)
        .map(|l| l.attachment_id.clone())
        .collect();
    (ids.len() <= MAX_PREEXISTING).then_some(ids)
}

/// The ids in `listed` that an upload named `name` of media type `mime_type`
/// could be taken for, whatever their size: kept from a list taken before an
/// attempt whose size is not known yet (a superset of its candidates, so every
/// one of them is known to be older).
pub fn same_name_before(
    listed: &[UpstreamAttachment],
    name: &str,
    mime_type: &str,
) -> Option<Vec<String>> {
    bounded(
        listed
            .iter()
            .filter(|l| l.name == name && same_media_type(&l.mime_type, mime_type)),
    )
}

/// The `MessageId` an attachment object carries, if the upstream lists one.
fn message_id_of(listed: &UpstreamAttachment) -> Option<String> {
    let s = listed.raw.to_struct().ok()?;
    let v = crate::upstream::struct_json::get_ci(&s, &["MessageId"])?;
    crate::upstream::struct_json::as_string(v)
}

/// Finds the attachment an upload attempt (sent with `message_id`) created,
/// if it can be told.
pub fn upload(listed: &[UpstreamAttachment], a: &UploadAttempt, message_id: &str) -> Found {
    let candidates: Vec<&UpstreamAttachment> =
        listed.iter().filter(|l| is_candidate(l, a)).collect();
    // One listed with our message id, unless it was there before the attempt
    // (message ids are the callers' own, not unique upstream).
    let older = |l: &UpstreamAttachment| {
        a.preexisting
            .as_ref()
            .is_some_and(|before| before.contains(&l.attachment_id))
    };
    if let Some(ours) = candidates
        .iter()
        .find(|l| !older(l) && message_id_of(l).is_some_and(|m| m == message_id))
    {
        return Found::Ours((*ours).clone());
    }
    let fresh: Vec<&UpstreamAttachment> = match &a.preexisting {
        Some(before) => candidates
            .into_iter()
            .filter(|l| !before.contains(&l.attachment_id))
            .collect(),
        None if candidates.is_empty() => return Found::Absent,
        None => {
            return Found::Ambiguous(candidates.iter().map(|l| l.attachment_id.clone()).collect());
        }
    };
    match fresh.as_slice() {
        [] => Found::Absent,
        [one] => Found::Ours((*one).clone()),
        many => Found::Ambiguous(many.iter().map(|l| l.attachment_id.clone()).collect()),
    }
}

/// Whether a delete of `attachment_id` came true.
pub fn deleted(listed: &[UpstreamAttachment], attachment_id: &str) -> bool {
    !listed
        .iter()
        .any(|l| l.attachment_id.eq_ignore_ascii_case(attachment_id))
}

/// What the list says of an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updated {
    /// The listed fields are the ones asked for.
    Yes,
    /// They are not (yet): running the update again sets them.
    No,
    /// The attachment is not listed.
    Gone,
}

/// Whether an update came true.
pub fn updated(listed: &[UpstreamAttachment], u: &UpdateAttempt) -> Updated {
    let Some(l) = listed
        .iter()
        .find(|l| l.attachment_id.eq_ignore_ascii_case(&u.attachment_id))
    else {
        return Updated::Gone;
    };
    let type_matches = match (&u.document_type, &l.document_type) {
        (None, _) | (Some(_), None) => true,
        (Some(want), Some(have)) => want.eq_ignore_ascii_case(have),
    };
    if l.name == u.name && type_matches {
        Updated::Yes
    } else {
        Updated::No
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::struct_wire::RawStruct;

    fn listed(id: &str, name: &str, size: u64, mime: &str) -> UpstreamAttachment {
        UpstreamAttachment {
            attachment_id: id.into(),
            name: name.into(),
            mime_type: mime.into(),
            size_bytes: size,
            document_type: None,
            subtype: String::new(),
            raw: RawStruct::default(),
        }
    }

    fn attempt(preexisting: Option<Vec<&str>>) -> UploadAttempt {
        UploadAttempt {
            name: "leak.jpg".into(),
            mime_type: "image/jpeg".into(),
            size_bytes: 1000,
            sha256: "ab".repeat(32),
            preexisting: preexisting.map(|v| v.into_iter().map(String::from).collect()),
        }
    }

    #[test]
    fn one_new_candidate_is_ours_and_an_older_identical_file_is_not() {
        let now = vec![
            listed("old", "leak.jpg", 1000, "image/jpeg"),
            listed("new", "leak.jpg", 1000, "image/jpeg; charset=binary"),
            listed("other", "leak.jpg", 999, "image/jpeg"),
            listed("x", "notes.txt", 1000, "text/plain"),
        ];
        let a = attempt(Some(vec!["old"]));
        assert!(matches!(upload(&now, &a, "m-1"), Found::Ours(l) if l.attachment_id == "new"));
        // Nothing new: not applied.
        assert_eq!(upload(&now[..1], &a, "m-1"), Found::Absent);
        // Two new: cannot tell, both named.
        let mut two = now.clone();
        two.push(listed("new2", "leak.jpg", 0, ""));
        assert_eq!(
            upload(&two, &a, "m-1"),
            Found::Ambiguous(vec!["new".into(), "new2".into()])
        );
        // Without a list from before, one candidate may be an older file.
        assert_eq!(
            upload(&now[1..2], &attempt(None), "m-1"),
            Found::Ambiguous(vec!["new".into()])
        );
        assert_eq!(upload(&now[2..], &attempt(None), "m-1"), Found::Absent);
    }

    #[test]
    fn a_listed_message_id_proves_it_whatever_else_is_there() {
        let raw = RawStruct::from(&prost_types::Struct {
            fields: [(
                "MessageId".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("m-1".into())),
                },
            )]
            .into(),
        });
        let mut ours = listed("mine", "leak.jpg", 1000, "image/jpeg");
        ours.raw = raw;
        let now = vec![
            listed("a", "leak.jpg", 1000, "image/jpeg"),
            ours,
            listed("b", "leak.jpg", 1000, "image/jpeg"),
        ];
        assert!(
            matches!(upload(&now, &attempt(None), "m-1"), Found::Ours(l) if l.attachment_id == "mine")
        );
        // Unless it was there before the attempt: another write's, of the
        // same message id (ids are the callers' own).
        assert_eq!(
            upload(&now, &attempt(Some(vec!["a", "mine", "b"])), "m-1"),
            Found::Absent
        );
    }

    #[test]
    fn a_list_from_before_past_its_bound_tells_nothing() {
        let now: Vec<_> = (0..=MAX_PREEXISTING)
            .map(|i| listed(&format!("twin-{i}"), "leak.jpg", 1000, "image/jpeg"))
            .collect();
        let a = attempt(None);
        assert_eq!(candidates_before(&now, &a), None);
        assert_eq!(same_name_before(&now, "leak.jpg", "image/jpeg"), None);
        let fits = &now[..MAX_PREEXISTING];
        assert_eq!(
            candidates_before(fits, &a).map(|v| v.len()),
            Some(MAX_PREEXISTING)
        );
    }

    #[test]
    fn deletes_and_updates_are_read_off_the_list() {
        let now = vec![listed("a", "renamed.jpg", 1, "image/jpeg")];
        assert!(deleted(&now, "b"));
        assert!(!deleted(&now, "A"), "ids compared as GUIDs are: case aside");
        assert!(!deleted(&now, "a"));
        let u = |name: &str| UpdateAttempt {
            attachment_id: "a".into(),
            name: name.into(),
            document_type: Some("Picture".into()),
        };
        assert_eq!(updated(&now, &u("renamed.jpg")), Updated::Yes);
        assert_eq!(updated(&now, &u("old.jpg")), Updated::No);
        let gone = UpdateAttempt {
            attachment_id: "zz".into(),
            ..u("x")
        };
        assert_eq!(updated(&now, &gone), Updated::Gone);
    }
}
