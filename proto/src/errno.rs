//! The error numbers a filesystem operation can fail with, as Linux numbers
//! them. They cross the wire as these numbers and reach the mount unchanged.

use serde::{Deserialize, Serialize};

macro_rules! errnos {
    ($($name:ident = $value:literal, $text:literal;)*) => {
        /// A POSIX error, with Linux's number.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
        #[serde(try_from = "i32", into = "i32")]
        #[repr(i32)]
        pub enum Errno {
            $(#[error($text)] $name = $value,)*
        }

        impl Errno {
            /// The Linux error number.
            pub fn code(self) -> i32 {
                self as i32
            }
        }

        impl TryFrom<i32> for Errno {
            type Error = UnknownErrno;
            fn try_from(code: i32) -> Result<Errno, UnknownErrno> {
                match code {
                    $($value => Ok(Errno::$name),)*
                    other => Err(UnknownErrno(other)),
                }
            }
        }
    };
}

errnos! {
    EPERM = 1, "operation not permitted";
    ENOENT = 2, "no such file or directory";
    EINTR = 4, "interrupted system call";
    EIO = 5, "input/output error";
    ENXIO = 6, "no such device or address";
    EBADF = 9, "bad file descriptor";
    EAGAIN = 11, "resource temporarily unavailable";
    EACCES = 13, "permission denied";
    EBUSY = 16, "device or resource busy";
    EEXIST = 17, "file exists";
    EXDEV = 18, "invalid cross-device link";
    ENOTDIR = 20, "not a directory";
    EISDIR = 21, "is a directory";
    EINVAL = 22, "invalid argument";
    EFBIG = 27, "file too large";
    ENOSPC = 28, "no space left on device";
    EROFS = 30, "read-only file system";
    EMLINK = 31, "too many links";
    ERANGE = 34, "result too large";
    EDEADLK = 35, "resource deadlock avoided";
    ENAMETOOLONG = 36, "file name too long";
    ENOLCK = 37, "no locks available";
    ENOSYS = 38, "function not implemented";
    ENOTEMPTY = 39, "directory not empty";
    ELOOP = 40, "too many levels of symbolic links";
    ENODATA = 61, "no data available";
    EOVERFLOW = 75, "value too large for defined data type";
    EOPNOTSUPP = 95, "operation not supported";
    ETIMEDOUT = 110, "connection timed out";
    ESTALE = 116, "stale file handle";
    E2BIG = 7, "argument list too long";
}

impl From<Errno> for i32 {
    fn from(errno: Errno) -> i32 {
        errno.code()
    }
}

/// A number that is not one of the errors Aspen uses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error number {0}")]
pub struct UnknownErrno(pub i32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for errno in [Errno::ENOENT, Errno::ENOTEMPTY, Errno::E2BIG, Errno::ESTALE] {
            assert_eq!(Errno::try_from(errno.code()).unwrap(), errno);
        }
        assert_eq!(Errno::ENOTEMPTY.code(), 39);
        assert!(Errno::try_from(0).is_err());
        assert!(Errno::try_from(-5).is_err());
    }
}
