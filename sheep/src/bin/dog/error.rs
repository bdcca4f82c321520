//! The one error type of `dog`: a message for stderr and the exit status that goes with it.

use std::fmt;

use protocol::ClientError;

/// Exit status for a failed command (the original's `EXIT_FAILURE`).
pub const EXIT_FAILURE: i32 = 1;
/// Exit status for bad usage; clap uses the same value for the errors it reports.
pub const EXIT_USAGE: i32 = 2;

/// Why a command stopped. The message is printed as is, on one line, to stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: i32,
    pub msg: String,
}

impl Failure {
    /// A command that could not do its work.
    pub fn new(msg: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_FAILURE,
            msg: msg.into(),
        }
    }

    /// Bad arguments.
    pub fn usage(msg: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_USAGE,
            msg: msg.into(),
        }
    }
}

impl From<sheep::store::farm::Error> for Failure {
    fn from(e: sheep::store::farm::Error) -> Failure {
        Failure::new(e.msg)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

/// A short reason for a failed request: the server's message for a result code (what the
/// original prints), otherwise the transport error.
pub fn why(e: &ClientError) -> String {
    match e {
        ClientError::Result { result, .. } => result.message().to_string(),
        ClientError::Connect { addr, source } => format!("Failed to connect to {addr}: {source}"),
        other => other.to_string(),
    }
}

/// Reports a problem that does not stop the command (a node or an inode that cannot be
/// read while listing). A failure to write to stderr is ignored: there is nowhere left to
/// report it.
pub fn warn(msg: impl fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Turns a request error into a failure whose message starts with `context`. A connection
/// that cannot be made is reported on its own, without the context, since it says it all.
pub fn fail(context: impl fmt::Display, e: &ClientError) -> Failure {
    match e {
        ClientError::Connect { .. } => Failure::new(why(e)),
        _ => Failure::new(format!("{context}: {}", why(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ResultCode;

    #[test]
    fn messages() {
        let addr = "127.0.0.1:7000".parse().expect("addr");
        let e = ClientError::Result {
            addr,
            op: "NEW_VDI",
            result: ResultCode::VDI_EXIST,
        };
        assert_eq!(
            fail("Failed to create VDI alpha", &e).msg,
            "Failed to create VDI alpha: VDI exists already"
        );
        assert_eq!(e.result(), Some(ResultCode::VDI_EXIST));
        let e = ClientError::Connect {
            addr,
            source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
        };
        let f = fail("Failed to create VDI alpha", &e);
        assert_eq!(f.msg, "Failed to connect to 127.0.0.1:7000: refused");
        assert_eq!(f.code, EXIT_FAILURE);
        assert_eq!(Failure::usage("x").code, EXIT_USAGE);
    }
}
