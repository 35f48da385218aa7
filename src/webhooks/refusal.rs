//! Why a webhook request was refused: a fixed set of reasons (metric labels, and
//! the 401's body), and whether finding out cost a check.

/// Why a request was refused (a metric label, and the 401's body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no bearer credential")]
    Missing,
    #[error("the credential is not a token of the expected shape")]
    Malformed,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token was issued for another integration")]
    WrongName,
    #[error("the shared secret does not match")]
    BadSecret,
}

impl Refused {
    /// Whether the same credential would be refused again whenever it came
    /// (a token not valid *yet* is not: time makes it good).
    pub fn is_for_good(self) -> bool {
        !matches!(self, Self::NotYetValid | Self::Missing)
    }

    /// The metric label of the refusal.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "refused_missing",
            Self::Malformed => "refused_malformed",
            Self::BadSignature => "refused_bad_signature",
            Self::Expired => "refused_expired",
            Self::NotYetValid => "refused_not_yet_valid",
            Self::WrongAudience => "refused_wrong_audience",
            Self::WrongName => "refused_wrong_name",
            Self::BadSecret => "refused_bad_secret",
        }
    }
}

/// A refusal, and whether it cost a signature (or secret) check: only those
/// spend the failure budget, so a flood of garbage locks nobody out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Refused,
    pub checked: bool,
}

impl Refusal {
    pub(crate) fn cheap(reason: Refused) -> Self {
        Self {
            reason,
            checked: false,
        }
    }

    pub(crate) fn checked(reason: Refused) -> Self {
        Self {
            reason,
            checked: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_time_cannot_undo_are_remembered() {
        assert!(!Refused::NotYetValid.is_for_good(), "time makes it good");
        assert!(!Refused::Missing.is_for_good(), "nothing to remember it by");
        for r in [
            Refused::Malformed,
            Refused::BadSignature,
            Refused::Expired,
            Refused::WrongAudience,
            Refused::WrongName,
            Refused::BadSecret,
        ] {
            assert!(r.is_for_good(), "{r:?}");
        }
    }
}
