//! The scopes a caller may hold: `attachments.read` and `attachments.write`. A
//! leaf: the settings check scope names with it, and authentication grants them.

/// The scopes a caller holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes {
    pub read: bool,
    pub write: bool,
}

impl Scopes {
    pub const READ: &'static str = "attachments.read";
    pub const WRITE: &'static str = "attachments.write";

    pub fn all() -> Self {
        Self {
            read: true,
            write: true,
        }
    }

    /// One scope name; `None` when unknown.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            Self::READ => Some(Self {
                read: true,
                write: false,
            }),
            Self::WRITE => Some(Self {
                read: false,
                write: true,
            }),
            _ => None,
        }
    }

    /// The known scopes among `names`; unknown ones are ignored (tokens may carry
    /// scopes meant for other services).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        names
            .into_iter()
            .filter_map(Self::parse)
            .fold(Self::default(), |a, b| Self {
                read: a.read || b.read,
                write: a.write || b.write,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse() {
        let s = Scopes::from_names(["attachments.read", "other.thing"]);
        assert!(s.read && !s.write);
        assert_eq!(Scopes::parse("attachments.admin"), None);
    }
}
