//! Exit codes: 0 ok, 1 failure (including "not root"), 2 bad usage (clap),
//! 3 the kernel cannot run kat (no BTF, a symbol or hook missing) or
//! cannot do what was asked of it (`--conntrack` before Linux 5.11).

use std::fmt;

#[derive(Debug)]
pub enum Failure {
    NotRoot(String),
    Unsupported(String),
    /// Arguments clap accepted but that do not make sense together.
    Usage(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NotRoot(m) | Failure::Unsupported(m) | Failure::Usage(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Failure {}

pub const SUCCESS: u8 = 0;
pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;
pub const UNSUPPORTED: u8 = 3;

/// Every exit code and what it means, for the man pages' EXIT STATUS.
pub const CODES: [(u8, &str); 4] = [
    (SUCCESS, "success"),
    (
        FAILURE,
        "failure, including not running as root or without the capabilities kat needs",
    ),
    (
        USAGE,
        "bad usage: arguments kat cannot parse, or that do not make sense together",
    ),
    (
        UNSUPPORTED,
        "this kernel cannot run kat (no BTF, a symbol or hook missing) or cannot do what was asked (conntrack expiries before Linux 5.11)",
    ),
];

/// The exit code an error ends kat with.
pub fn code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<Failure>() {
        Some(Failure::Unsupported(_)) => UNSUPPORTED,
        Some(Failure::Usage(_)) => USAGE,
        Some(Failure::NotRoot(_)) | None => FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_failure() {
        let unsupported = anyhow::Error::from(Failure::Unsupported("no BTF".into()));
        assert_eq!(code(&unsupported), UNSUPPORTED);
        // Context added on the way up keeps the code.
        assert_eq!(code(&unsupported.context("loading")), UNSUPPORTED);
        assert_eq!(code(&Failure::NotRoot("root".into()).into()), FAILURE);
        assert_eq!(code(&Failure::Usage("--since".into()).into()), USAGE);
        assert_eq!(code(&anyhow::anyhow!("anything else")), FAILURE);
    }
}
