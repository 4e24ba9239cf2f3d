//! The store error type and the class every caller acts on.
//!
//! A [`StoreError`] always carries an [`ErrorClass`]: `NotFound` (the data is already gone, which
//! a delete counts as done), `Transient` (retry later with backoff) or `Permanent` (an operator
//! has to act; retrying cannot help). Messages are built from redacted location strings only, so
//! credentials embedded in a location URI never reach a log line or an error message.

use std::fmt;
use std::io;

/// What a caller should do about a failed store operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The object does not exist (any more); a delete treats this as success.
    NotFound,
    /// A temporary condition (timeout, 5xx, connection refused, EAGAIN): retry with backoff.
    Transient,
    /// Needs an operator (permission denied, unsupported scheme, outside the store, malformed
    /// URI, size cap exceeded): retrying cannot succeed.
    Permanent,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::NotFound => "not found",
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        })
    }
}

/// Why an operation failed; the [`ErrorClass`] of each kind is fixed or derived from the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object is missing.
    NotFound,
    /// The location string cannot be parsed for its scheme.
    MalformedUri,
    /// The scheme is not one glance_store knows.
    UnknownScheme,
    /// The scheme is known but imaged has no backend for it (rbd, swift, cinder, vsphere).
    BackendNotSupported,
    /// The backend cannot perform this operation (e.g. deleting through `http://`).
    OperationNotSupported,
    /// The location names a backend that is not configured, or the backend's type does not
    /// match the location's scheme.
    UnknownBackend,
    /// A filesystem location resolves outside every configured data directory, uses `..`,
    /// percent-encoded traversal, or a symlink.
    OutsideStore,
    /// The target exists but is not a regular file (a directory, a device, …).
    NotAFile,
    /// Access was refused by the OS or the server.
    PermissionDenied,
    /// The write would create an object that already exists.
    AlreadyExists,
    /// The write exceeded the caller's size cap; nothing was left behind.
    SizeCapExceeded,
    /// No data directory has room for the image.
    NoSpace,
    /// The operation did not finish within its configured timeout.
    Timeout,
    /// Invalid store configuration.
    BadConfiguration,
    /// An I/O error from the OS, classified by errno.
    Io,
    /// An error from a remote service (S3, HTTP), classified by status or transport failure.
    Remote,
}

/// A failed store operation.
///
/// `Display` is `"<message>"` where the message names the redacted location; it never contains
/// credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    class: ErrorClass,
    kind: ErrorKind,
    message: String,
}

impl StoreError {
    /// Builds an error with an explicit class. `message` must already be redacted.
    pub fn new(class: ErrorClass, kind: ErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            class,
            kind,
            message: message.into(),
        }
    }

    /// What the caller should do: count as deleted, retry, or escalate.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// The specific cause.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The message (the same text as `Display`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Shorthand for `class() == ErrorClass::NotFound`.
    pub fn is_not_found(&self) -> bool {
        self.class == ErrorClass::NotFound
    }

    pub(crate) fn not_found(what: impl fmt::Display) -> Self {
        Self::new(
            ErrorClass::NotFound,
            ErrorKind::NotFound,
            format!("{what}: not found"),
        )
    }

    pub(crate) fn permanent(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, kind, message)
    }

    pub(crate) fn timeout(what: impl fmt::Display, after: std::time::Duration) -> Self {
        Self::new(
            ErrorClass::Transient,
            ErrorKind::Timeout,
            format!("{what}: timed out after {after:?}"),
        )
    }

    /// Classifies an OS error; `what` is a redacted description of the operation and target.
    pub(crate) fn from_io(what: impl fmt::Display, err: &io::Error) -> Self {
        let (class, kind) = classify_io(err);
        Self::new(class, kind, format!("{what}: {err}"))
    }
}

/// Maps an OS error to a class. Errors that a later attempt can plausibly get past (EAGAIN,
/// EINTR, EBUSY, ETIMEDOUT, ENOSPC/EDQUOT which operators or pruners resolve, EIO on network
/// filesystems, connection failures) are transient; errors that need a different configuration
/// or a human (EACCES, EPERM, EROFS, EISDIR, ENOTDIR, ELOOP, EINVAL, …) are permanent.
pub(crate) fn classify_io(err: &io::Error) -> (ErrorClass, ErrorKind) {
    use io::ErrorKind as K;
    match err.kind() {
        K::NotFound => return (ErrorClass::NotFound, ErrorKind::NotFound),
        K::PermissionDenied => return (ErrorClass::Permanent, ErrorKind::PermissionDenied),
        K::AlreadyExists => return (ErrorClass::Permanent, ErrorKind::AlreadyExists),
        K::TimedOut => return (ErrorClass::Transient, ErrorKind::Timeout),
        K::WouldBlock
        | K::Interrupted
        | K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::BrokenPipe
        | K::UnexpectedEof => return (ErrorClass::Transient, ErrorKind::Io),
        _ => {}
    }
    match err.raw_os_error() {
        Some(
            libc::EAGAIN
            | libc::EINTR
            | libc::EBUSY
            | libc::ETIMEDOUT
            | libc::EIO
            | libc::ENOSPC
            | libc::EDQUOT
            | libc::ENOMEM
            | libc::EMFILE
            | libc::ENFILE
            | libc::ESTALE
            | libc::ECONNREFUSED
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH,
        ) => (ErrorClass::Transient, ErrorKind::Io),
        Some(libc::EISDIR) => (ErrorClass::Permanent, ErrorKind::NotAFile),
        _ => (ErrorClass::Permanent, ErrorKind::Io),
    }
}

/// Classifies an HTTP status from a remote store.
pub(crate) fn classify_status(status: u16) -> (ErrorClass, ErrorKind) {
    match status {
        404 => (ErrorClass::NotFound, ErrorKind::NotFound),
        401 | 403 => (ErrorClass::Permanent, ErrorKind::PermissionDenied),
        408 | 429 => (ErrorClass::Transient, ErrorKind::Remote),
        500..=599 => (ErrorClass::Transient, ErrorKind::Remote),
        _ => (ErrorClass::Permanent, ErrorKind::Remote),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_classified_by_errno() {
        let cases = [
            (libc::ENOENT, ErrorClass::NotFound),
            (libc::EACCES, ErrorClass::Permanent),
            (libc::EPERM, ErrorClass::Permanent),
            (libc::EROFS, ErrorClass::Permanent),
            (libc::EISDIR, ErrorClass::Permanent),
            (libc::EAGAIN, ErrorClass::Transient),
            (libc::EINTR, ErrorClass::Transient),
            (libc::ETIMEDOUT, ErrorClass::Transient),
            (libc::ECONNREFUSED, ErrorClass::Transient),
            (libc::ENOSPC, ErrorClass::Transient),
        ];
        for (errno, class) in cases {
            let err = io::Error::from_raw_os_error(errno);
            assert_eq!(classify_io(&err).0, class, "errno {errno}");
        }
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify_status(404).0, ErrorClass::NotFound);
        assert_eq!(classify_status(403).0, ErrorClass::Permanent);
        assert_eq!(classify_status(400).0, ErrorClass::Permanent);
        assert_eq!(classify_status(503).0, ErrorClass::Transient);
        assert_eq!(classify_status(500).0, ErrorClass::Transient);
        assert_eq!(classify_status(429).0, ErrorClass::Transient);
    }
}
