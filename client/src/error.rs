//! The one error type of the library, and how gRPC statuses map onto it.

use tonic::{Code, Status};

/// What went wrong talking to the registry.
///
/// Match on the variant to decide what to do: [`Error::Unavailable`] is worth a
/// retry later, [`Error::NotFound`] and [`Error::Rejected`] are answers.
///
/// ```
/// use registry_client::Error;
///
/// fn exit_code(e: &Error) -> i32 {
///     match e {
///         Error::Unavailable { .. } => 69,
///         _ => 1,
///     }
/// }
/// assert_eq!(exit_code(&Error::NotFound("orders/x".into())), 1);
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No endpoint was given.
    #[error("no registry endpoint configured (give at least one, e.g. http://127.0.0.1:7070)")]
    NoEndpoints,
    /// An endpoint is not a valid URI.
    #[error("invalid registry endpoint `{endpoint}`: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was refused.
        reason: String,
    },
    /// No node answered (unreachable, shutting down, or still warming up).
    #[error("no registry node available: {last}")]
    Unavailable {
        /// The last failure seen, for the operator.
        last: String,
    },
    /// The thing asked for does not exist (an instance, a lease).
    #[error("not found: {0}")]
    NotFound(String),
    /// The registry refused a request (invalid field, limit reached...).
    #[error("refused ({code:?}): {reason}")]
    Rejected {
        /// The gRPC code a unary call fails with for this refusal.
        code: Code,
        /// The node's explanation; it names the field and the limit.
        reason: String,
    },
    /// The node answered something the protocol does not allow.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The background task behind a handle has stopped (it was shut down).
    #[error("the handle was shut down")]
    Closed,
}

/// Result with [`Error`].
///
/// ```
/// fn check(port: u32) -> registry_client::Result<u32> {
///     Ok(port)
/// }
/// assert!(check(1).is_ok());
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Maps a status from a node. Statuses that mean "try another node" become
    /// [`Error::Unavailable`].
    pub(crate) fn from_status(status: &Status) -> Self {
        if is_retryable(status) {
            return Self::Unavailable { last: describe(status) };
        }
        match status.code() {
            Code::NotFound => Self::NotFound(status.message().to_string()),
            code => Self::Rejected { code, reason: status.message().to_string() },
        }
    }

    /// A refusal carried inside a session (`Rejected`), by its code number.
    pub(crate) fn rejected(code: i32, reason: String) -> Self {
        match Code::from_i32(code) {
            Code::NotFound => Self::NotFound(reason),
            code => Self::Rejected { code, reason },
        }
    }
}

/// Statuses after which another node (or a later try) may well succeed:
/// unreachable, shutting down, warming up, overloaded or too slow.
pub(crate) fn is_retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled | Code::Aborted
    )
}

/// One line for logs and [`Error::Unavailable`].
pub(crate) fn describe(status: &Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {}", status.code(), status.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warming_up_is_retryable_and_refusals_are_not() {
        let warming = Status::unavailable("node is warming up");
        assert!(matches!(Error::from_status(&warming), Error::Unavailable { .. }));
        assert!(matches!(Error::from_status(&Status::not_found("lease")), Error::NotFound(_)));
        let refused = Error::from_status(&Status::invalid_argument("port: 0"));
        assert!(matches!(refused, Error::Rejected { code: Code::InvalidArgument, .. }));
        assert!(matches!(Error::rejected(Code::NotFound as i32, "x".into()), Error::NotFound(_)));
    }
}
