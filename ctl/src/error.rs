//! What can go wrong, and which exit status each failure gets: 64 for a usage error caught
//! before any call, 1 for an operation that failed at or on the way to the control plane.

use std::fmt;

use dtable_core::{BucketError, NodeError};

/// Exit status of a usage error (EX_USAGE), shared with every dtable-cluster binary.
pub const EXIT_USAGE: u8 = dtable_core::cli::EXIT_CONFIG;

/// Exit status of a failed operation.
pub const EXIT_FAILED: u8 = 1;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A flag or environment variable has a value the CLI cannot use (a malformed URL, an
    /// unreadable certificate or token file).
    #[error("invalid {flag}: {reason}")]
    Usage {
        /// The flag, e.g. `--ca`.
        flag: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The base UUID given to `lookup` is malformed; caught before any call.
    #[error(transparent)]
    BadUuid(#[from] BucketError),
    /// The node id given to an intent is malformed; caught before any call.
    #[error(transparent)]
    BadNode(#[from] NodeError),
    /// No control plane answered: every URL was unreachable, timed out or unavailable.
    #[error("UNAVAILABLE: no control plane answered: {}", Attempts(.attempts))]
    Unreachable {
        /// Each URL tried and why it did not answer.
        attempts: Vec<Attempt>,
    },
    /// A control plane answered with an error status.
    #[error("{}: {} (control plane {url})", code_name(.status.code()), .status.message())]
    Rpc {
        /// The control plane that answered.
        url: String,
        /// Its answer.
        status: tonic::Status,
    },
    /// Writing the output failed (a closed pipe is not reported: the reader left).
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CtlError {
    /// The process exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage { .. } | CtlError::BadUuid(_) | CtlError::BadNode(_) => EXIT_USAGE,
            CtlError::Unreachable { .. } | CtlError::Rpc { .. } | CtlError::Output(_) => {
                EXIT_FAILED
            }
        }
    }

    /// Shorthand for a usage error naming `flag`.
    pub fn usage(flag: &'static str, reason: impl Into<String>) -> CtlError {
        CtlError::Usage {
            flag,
            reason: reason.into(),
        }
    }
}

/// One control plane that did not answer, and why.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The URL tried.
    pub url: String,
    /// Why it did not answer, one line.
    pub reason: String,
}

/// Formats a list of attempts as `url: reason; url: reason`.
struct Attempts<'a>(&'a [Attempt]);

impl fmt::Display for Attempts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", a.url, a.reason)?;
        }
        Ok(())
    }
}

/// The canonical upper-case name of a gRPC status code, as gRPC's documentation spells it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An error and its sources on one line, `outer: inner: innermost`, skipping a source whose
/// text the line already ends with (hyper and tonic often repeat their source).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_errors_name_code_message_and_url() {
        let e = CtlError::Rpc {
            url: "http://cp:5580".to_owned(),
            status: tonic::Status::not_found("no such node"),
        };
        assert_eq!(
            e.to_string(),
            "NOT_FOUND: no such node (control plane http://cp:5580)"
        );
        assert_eq!(e.exit_code(), EXIT_FAILED);
    }

    #[test]
    fn unreachable_lists_every_attempt() {
        let e = CtlError::Unreachable {
            attempts: vec![
                Attempt {
                    url: "http://a:1".to_owned(),
                    reason: "connection refused".to_owned(),
                },
                Attempt {
                    url: "http://b:2".to_owned(),
                    reason: "no answer within 1s".to_owned(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "UNAVAILABLE: no control plane answered: http://a:1: connection refused; \
             http://b:2: no answer within 1s"
        );
        assert_eq!(e.exit_code(), EXIT_FAILED);
    }

    #[test]
    fn usage_errors_exit_64() {
        assert_eq!(CtlError::usage("--ca", "unreadable").exit_code(), 64);
        let bad = dtable_core::Bucket::of_base("nope").unwrap_err();
        assert_eq!(CtlError::from(bad).exit_code(), 64);
    }
}
