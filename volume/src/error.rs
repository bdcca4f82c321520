//! One error type for volume I/O and the filesystem core. The errno is chosen here, once;
//! the FUSE adapter and the NBD server only pass it on.

use protocol::{ClientError, ResultCode};

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FsError {
    pub errno: i32,
    pub message: String,
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    pub fn new(errno: i32, message: impl Into<String>) -> FsError {
        FsError {
            errno,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> FsError {
        FsError::new(libc::EINVAL, message)
    }

    pub fn not_found(what: impl std::fmt::Display) -> FsError {
        FsError::new(libc::ENOENT, format!("{what}: not found"))
    }

    /// Maps a cluster failure of `what` to an errno. A missing object behind a volume read
    /// is EIO, never zeros: callers that expect absence check for ENOENT themselves.
    pub fn cluster(what: &str, e: &ClientError) -> FsError {
        let errno = match e.result() {
            Some(ResultCode::NO_VDI) | Some(ResultCode::NO_TAG) => libc::ENOENT,
            Some(ResultCode::VDI_EXIST) => libc::EEXIST,
            Some(ResultCode::INVALID_PARMS) => libc::EINVAL,
            Some(ResultCode::NO_SPACE) => libc::ENOSPC,
            Some(ResultCode::READONLY) => libc::EROFS,
            Some(ResultCode::FULL_VDI) => libc::ENOSPC,
            _ => libc::EIO,
        };
        FsError::new(errno, format!("{what}: {e}"))
    }
}
