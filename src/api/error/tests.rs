use super::*;
use crate::upstream::ApiError;

fn api(status: u16, code: Option<i64>) -> ApiError {
    ApiError {
        http_status: status,
        code,
        ..ApiError::default()
    }
}

#[test]
fn upstream_codes_win_over_http_status() {
    assert_eq!(classify(&api(400, Some(3001))).0, Code::FailedPrecondition);
    assert_eq!(classify(&api(400, Some(3003))).0, Code::NotFound);
    assert_eq!(classify(&api(400, Some(9999))).0, Code::InvalidArgument);
    assert_eq!(classify(&api(418, None)).0, Code::FailedPrecondition);
    assert_eq!(classify(&api(599, None)).0, Code::Unavailable);
    assert_eq!(classify(&api(302, None)).0, Code::Internal);
}

/// One of each kind of error, so every path to a status is walked. The match
/// makes a new kind of error fail to compile here until it is added.
fn one_of_each() -> Vec<Error> {
    let samples = vec![
        Error::invalid("metadata.name", "REQUIRED", "must not be empty"),
        Error::Auth(AuthError::Missing),
        Error::Auth(AuthError::MissingScope {
            caller: "api_key:x".into(),
            needed: "attachments.write",
        }),
        Error::Limited(Refusal {
            limit: "per_caller_rate",
            subject: "caller:api_key:x".into(),
            description: "at most 1 request/s".into(),
            retry_after: Duration::from_millis(500),
        }),
        Error::upstream(UpstreamError::Api(Box::new(api(503, None))), Op::Write),
        Error::upstream(UpstreamError::Timeout, Op::Read),
        Error::upstream(UpstreamError::Connect("refused".into()), Op::Read),
        Error::upstream(UpstreamError::Transport("reset".into()), Op::Write),
        Error::upstream(UpstreamError::Protocol("not JSON".into()), Op::Read),
        Error::upstream(
            UpstreamError::LinkRefused(crate::upstream::link_guard::LinkRefused {
                rule: "private",
                host: "10.0.0.1".into(),
            }),
            Op::Read,
        ),
        Error::upstream(UpstreamError::TokenRejected, Op::Write),
        Error::upstream(
            UpstreamError::CredentialsRejected("token endpoint"),
            Op::Read,
        ),
        Error::Deadline {
            op: Op::Write,
            what: "the upload",
            nothing_applied: true,
        },
        Error::ShuttingDown {
            op: Op::Read,
            nothing_applied: true,
        },
        Error::WriteInProgress {
            retry_after: Duration::from_secs(1),
        },
        Error::LeaseLost,
        Error::OutcomeUnknown {
            cause: "the connection dropped".into(),
            retry_after: Duration::from_secs(2),
        },
        Error::OutcomeAmbiguous {
            candidates: vec!["a".into(), "b".into()],
            this_attempt: false,
        },
        Error::OutcomeAmbiguous {
            candidates: vec!["a".into()],
            this_attempt: true,
        },
        Error::OutcomePending {
            why: "the deadline passed",
            deadline: true,
        },
        Error::ChecksumMismatch {
            expected: "aa".into(),
            actual: "bb".into(),
        },
        Error::MessageIdReused {
            field: "metadata.message_id",
        },
        Error::WriteRecordUnavailable,
        Error::UploadUnconfirmed,
        Error::DownloadTruncated {
            received: 1,
            expected: 2,
        },
        Error::StreamIdle {
            waited: Duration::from_secs(10),
            what: "the metadata message",
        },
        Error::CursorExpired,
        Error::EventLogUnavailable("down".into()),
        Error::WatchInterrupted {
            resume_after: "ab-1".into(),
            why: "down".into(),
        },
        Error::SubscriberStalled {
            resume_after: "ab-1".into(),
        },
        Error::Internal("a broken invariant"),
        Error::Stream(Status::cancelled("reset by the caller")),
        Error::Stream(caller_reset("stream reset")),
    ];
    for e in &samples {
        match e {
            Error::Invalid(_)
            | Error::Auth(_)
            | Error::Limited(_)
            | Error::Upstream { .. }
            | Error::Deadline { .. }
            | Error::ShuttingDown { .. }
            | Error::WriteInProgress { .. }
            | Error::LeaseLost
            | Error::OutcomeUnknown { .. }
            | Error::OutcomeAmbiguous { .. }
            | Error::OutcomePending { .. }
            | Error::ChecksumMismatch { .. }
            | Error::MessageIdReused { .. }
            | Error::WriteRecordUnavailable
            | Error::UploadUnconfirmed
            | Error::DownloadTruncated { .. }
            | Error::StreamIdle { .. }
            | Error::CursorExpired
            | Error::EventLogUnavailable(_)
            | Error::WatchInterrupted { .. }
            | Error::SubscriberStalled { .. }
            | Error::Internal(_)
            | Error::Stream(_) => {}
        }
    }
    samples
}

#[test]
fn every_error_becomes_a_status_with_error_info_and_retry_safe() {
    for e in one_of_each() {
        let code = e.code();
        let text = format!("{e:?}");
        let s = Status::from(e);
        assert_eq!(s.code(), code, "{text}");
        assert_ne!(s.code(), Code::Ok, "{text}");
        let d = s.get_error_details();
        let info = d
            .error_info()
            .unwrap_or_else(|| panic!("no ErrorInfo: {text}"));
        assert_eq!(info.domain, ERROR_DOMAIN, "{text}");
        assert!(!info.reason.is_empty(), "{text}");
        assert!(
            matches!(
                info.metadata.get(RETRY_SAFE).map(String::as_str),
                Some("true" | "unknown" | "false")
            ),
            "retry_safe on {text}: {:?}",
            info.metadata
        );
        if matches!(s.code(), Code::ResourceExhausted) {
            assert!(d.retry_info().is_some(), "RetryInfo on {text}");
        }
        if s.code() == Code::InvalidArgument {
            assert!(d.bad_request().is_some(), "BadRequest on {text}");
        }
    }
}

#[test]
fn tables_have_no_duplicates() {
    for (i, (c, _, _)) in BY_UPSTREAM_CODE.iter().enumerate() {
        assert!(BY_UPSTREAM_CODE[i + 1..].iter().all(|(d, _, _)| d != c));
    }
    for (i, (s, _, _)) in BY_HTTP_STATUS.iter().enumerate() {
        assert!(BY_HTTP_STATUS[i + 1..].iter().all(|(t, _, _)| t != s));
    }
}

#[test]
fn a_caller_reset_body_error_ends_the_call_as_cancelled() {
    let body_error = caller_reset("stream reset");
    assert_eq!(
        body_error.code(),
        Code::Aborted,
        "never CANCELLED in the body"
    );
    let status: Status = Error::Stream(body_error).into();
    assert_eq!(status.code(), Code::Cancelled);
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("info");
    assert_eq!(info.reason, "CALLER_RESET");
}
