//! How reconciling one path of a member pair ends: the outcome the pair's
//! loop acts on, apart from the code that produces it (`apply`) and the
//! loop that reads it (`pair`).

use zookeeper_client::Error;

/// How an attempt at one path ended.
#[derive(Debug)]
pub enum Applied {
    /// Both members agree on the path (or it is not the route's).
    Done,
    /// Something changed under the decision (a concurrent write, a stamp
    /// just written, a parent just created): read and decide again.
    Again,
    /// The destination's node still has children the delete must wait for.
    Defer,
}

/// Why a path could not be finished now.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The lease is gone: the lead ends, nothing else may be written.
    #[error("lease lost")]
    LeaseLost,
    /// An ensemble did not answer or the session ended: retried as a whole.
    #[error("{member}: {source}")]
    Interrupted { member: String, source: Error },
    /// The node's data and its origin record do not fit in one request.
    #[error(
        "{member}: {bytes} bytes of data do not fit in one request with the origin record (max_request_bytes = {max})"
    )]
    TooLarge { member: String, bytes: usize, max: usize },
    /// The path itself is refused (no permission, data the server refuses):
    /// parked and retried later; the other paths go on.
    #[error("{member}: {source}")]
    Refused { member: String, source: Error },
}

impl PathError {
    pub fn kind(&self) -> &'static str {
        match self {
            PathError::LeaseLost => "fenced",
            PathError::TooLarge { .. } => "too_large",
            PathError::Interrupted { source, .. } | PathError::Refused { source, .. } => crate::zk::error_kind(source),
        }
    }
}

/// Adding an op fails only for a path zkbridge built wrongly.
impl From<Error> for PathError {
    fn from(source: Error) -> Self {
        PathError::Refused {
            member: "request".into(),
            source,
        }
    }
}
