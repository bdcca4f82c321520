//! The optional cluster secret: a mutual HMAC-SHA256 challenge-response that opens every
//! connection to a sheep started with `--auth-key-file`, before any Sheepdog request.
//! Not part of Sheepdog 1.0: without a key nothing changes on the wire.
//!
//! ```text
//! server -> client  "SDAUTH01" | server nonce (32)                                  40 bytes
//! client -> server  "SDAUTH01" | client nonce (32) | HMAC(key, "client" | sn | cn)  72 bytes
//! server -> client  HMAC(key, "server" | sn | cn)                                   32 bytes
//! ```
//!
//! The server's fresh nonce makes a recorded client answer useless on another connection;
//! the server's own answer proves to the client that it knows the key too. MACs are
//! compared in constant time (`hmac`'s `verify_slice`).

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAGIC: &[u8; 8] = b"SDAUTH01";
const NONCE: usize = 32;
const MAC: usize = 32;
/// Shortest secret accepted.
pub const MIN_KEY_LEN: usize = 16;
/// How long either side waits for the other's step.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster secret. Its bytes are never printed (`Debug` shows only its length).
#[derive(Clone)]
pub struct AuthKey(Arc<Vec<u8>>);

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthKey({} bytes)", self.0.len())
    }
}

impl AuthKey {
    pub fn new(secret: &[u8]) -> Result<AuthKey, String> {
        if secret.len() < MIN_KEY_LEN {
            return Err(format!("the key must be at least {MIN_KEY_LEN} bytes"));
        }
        Ok(AuthKey(Arc::new(secret.to_vec())))
    }

    /// Reads the secret from `path` (one trailing newline is not part of it). A file that
    /// others than its owner may read is refused, as ssh refuses such private keys.
    pub fn from_file(path: &Path) -> Result<AuthKey, String> {
        use std::os::unix::fs::PermissionsExt;
        let what = |e: String| format!("auth key file {}: {e}", path.display());
        let meta = std::fs::metadata(path).map_err(|e| what(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(what(format!(
                "mode {:o} lets others read it; chmod 600 it",
                meta.permissions().mode() & 0o777
            )));
        }
        let mut b = std::fs::read(path).map_err(|e| what(e.to_string()))?;
        if b.last() == Some(&b'\n') {
            b.pop();
        }
        AuthKey::new(&b).map_err(what)
    }

    fn mac(&self, role: &[u8], server: &[u8], client: &[u8]) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        m.update(role);
        m.update(server);
        m.update(client);
        m
    }
}

static PROCESS_KEY: OnceLock<AuthKey> = OnceLock::new();

/// Makes `key` the one every [`crate::Client`] of this process authenticates with. A
/// program sets it once, at start, from `--auth-key-file`.
pub fn install(key: AuthKey) {
    let _ = PROCESS_KEY.set(key);
}

/// The key installed for this process, if any.
pub fn installed() -> Option<&'static AuthKey> {
    PROCESS_KEY.get()
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "the peer does not speak the authentication handshake (is it started without --auth-key-file, or with one?)"
    )]
    NotAuth,
    #[error("the peer's proof does not match our key (different --auth-key-file?)")]
    BadKey,
    #[error("no answer within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn nonce() -> Result<[u8; NONCE], AuthError> {
    let mut n = [0u8; NONCE];
    getrandom::getrandom(&mut n).map_err(|e| AuthError::Io(std::io::Error::other(e.to_string())))?;
    Ok(n)
}

async fn timed<T>(f: impl std::future::Future<Output = Result<T, AuthError>>) -> Result<T, AuthError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, f)
        .await
        .unwrap_or(Err(AuthError::Timeout))
}

/// The server's side, on a connection just accepted.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, key: &AuthKey) -> Result<(), AuthError> {
    timed(async {
        let server = nonce()?;
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&server);
        s.write_all(&hello).await?;
        let mut magic = [0u8; 8];
        s.read_exact(&mut magic).await?;
        if &magic != MAGIC {
            return Err(AuthError::NotAuth);
        }
        let mut answer = [0u8; NONCE + MAC];
        s.read_exact(&mut answer).await?;
        let (client, proof) = answer.split_at(NONCE);
        key.mac(b"client", &server, client)
            .verify_slice(proof)
            .map_err(|_| AuthError::BadKey)?;
        let mine = key.mac(b"server", &server, client).finalize().into_bytes();
        s.write_all(&mine).await?;
        Ok(())
    })
    .await
}

/// Whether `b` opens a server's challenge (what a client without a key hears first).
pub fn is_challenge(b: &[u8]) -> bool {
    b.starts_with(MAGIC)
}

/// The client's side, on a connection just opened. Returns the bytes it sent (tests replay
/// them to show that a recorded answer is refused).
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, key: &AuthKey) -> Result<Vec<u8>, AuthError> {
    timed(async {
        let mut hello = [0u8; 8 + NONCE];
        s.read_exact(&mut hello).await?;
        if &hello[..8] != MAGIC {
            return Err(AuthError::NotAuth);
        }
        let server = &hello[8..];
        let client = nonce()?;
        let mut answer = MAGIC.to_vec();
        answer.extend_from_slice(&client);
        answer.extend_from_slice(&key.mac(b"client", server, &client).finalize().into_bytes());
        s.write_all(&answer).await?;
        let mut proof = [0u8; MAC];
        s.read_exact(&mut proof).await?;
        key.mac(b"server", server, &client)
            .verify_slice(&proof)
            .map_err(|_| AuthError::BadKey)?;
        Ok(answer)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> AuthKey {
        AuthKey::new(s.as_bytes()).expect("key")
    }

    #[tokio::test]
    async fn same_key_passes_both_ways() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let k = key("0123456789abcdef");
        let (srv, cli) = tokio::join!(accept(&mut a, &k), connect(&mut b, &k));
        assert!(srv.is_ok() && cli.is_ok(), "{srv:?} {cli:?}");
    }

    #[tokio::test]
    async fn a_wrong_key_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let (ks, kc) = (key("0123456789abcdef"), key("0123456789abcdeX"));
        let server = async move {
            let r = accept(&mut a, &ks).await;
            drop(a);
            r
        };
        let (srv, cli) = tokio::join!(server, connect(&mut b, &kc));
        assert!(matches!(srv, Err(AuthError::BadKey)), "{srv:?}");
        assert!(cli.is_err());
    }

    #[tokio::test]
    async fn a_recorded_answer_fails_on_a_new_challenge() {
        let k = key("0123456789abcdef");
        let (mut a, mut b) = tokio::io::duplex(1024);
        let (_, sent) = tokio::join!(accept(&mut a, &k), connect(&mut b, &k));
        let sent = sent.expect("first handshake");
        let (mut a, mut b) = tokio::io::duplex(1024);
        let replay = async {
            let mut hello = [0u8; 40];
            b.read_exact(&mut hello).await?;
            b.write_all(&sent).await
        };
        let (srv, _) = tokio::join!(accept(&mut a, &k), replay);
        assert!(matches!(srv, Err(AuthError::BadKey)), "{srv:?}");
    }

    #[test]
    fn short_keys_and_open_files_are_refused() {
        assert!(AuthKey::new(b"short").is_err());
        let dir = tempfile_dir();
        let p = dir.join("key");
        std::fs::write(&p, b"0123456789abcdef\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(AuthKey::from_file(&p)
            .expect_err("readable by others")
            .contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let k = AuthKey::from_file(&p).expect("key");
        assert_eq!(
            format!("{k:?}"),
            "AuthKey(16 bytes)",
            "the newline is not part of it; bytes never shown"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }
}
