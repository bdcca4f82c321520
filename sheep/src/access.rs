//! Who may talk to this sheep: an allow-list of client networks (every listener: Sheepdog,
//! NBD, metrics) and the optional cluster secret that each Sheepdog connection must prove
//! before its first request (`protocol::auth`).

use std::net::{IpAddr, SocketAddr};

use protocol::auth::{AuthError, AuthKey};
use tokio::net::{TcpListener, TcpStream};

/// One network of the allow-list: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// `--allow NET[,NET...]`: addresses or CIDR networks, e.g. `10.0.0.0/24,192.0.2.7`.
pub fn parse_networks(spec: &str) -> Result<Vec<Network>, String> {
    spec.split(',')
        .map(str::trim)
        .map(|n| {
            let bad = || format!("--allow {n:?}: expected an address or ADDR/PREFIX, e.g. 10.0.0.0/24");
            let (addr, prefix) = match n.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (n, None),
            };
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            };
            Ok(Network { addr, prefix })
        })
        .collect()
}

/// The rules every accepted connection goes through.
#[derive(Debug, Default)]
pub struct Access {
    key: Option<AuthKey>,
    allow: Vec<Network>,
}

impl Access {
    pub fn new(key: Option<AuthKey>, allow: Vec<Network>) -> Access {
        Access { key, allow }
    }

    /// Loopback is always let in; with no list, every address is (the bind address and the
    /// firewall decide).
    pub fn allows(&self, ip: IpAddr) -> bool {
        ip.to_canonical().is_loopback() || self.allow.is_empty() || self.allow.iter().any(|n| n.contains(ip))
    }

    /// The handshake on a new Sheepdog connection, when there is a key. `false`: the
    /// connection must be closed before any request is read.
    pub async fn authenticate(&self, s: &mut TcpStream, peer: Option<SocketAddr>) -> bool {
        let Some(key) = &self.key else {
            return true;
        };
        match protocol::auth::accept(s, key).await {
            Ok(()) => true,
            // dog's liveness probe connects and hangs up without a word.
            Err(AuthError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::debug!(?peer, "connection closed during authentication");
                false
            }
            Err(e) => {
                tracing::warn!(?peer, error = %e, "refused a connection that did not authenticate");
                false
            }
        }
    }
}

/// Accepts connections on `listener` for ever, each served by its own task running
/// `serve(stream)`; those from addresses `access` does not allow are closed at once.
pub async fn accept_loop<F, Fut>(listener: TcpListener, what: &'static str, access: &Access, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if !access.allows(peer.ip()) {
                    tracing::warn!(%peer, "refused a {what} from outside the allowed networks");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let served = serve(stream);
                tokio::spawn(async move {
                    served.await;
                    tracing::trace!(%peer, "{what} closed");
                });
            }
            Err(e) => {
                // Out of descriptors and similar: wait a moment rather than spin.
                tracing::error!(error = %e, "accept of a {what} failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Before this node joins: whether a member it reaches agrees on the secret. `Err` with
/// the reason when one refuses (another key, or a key on one side only); `Ok` once one
/// member authenticated, or when none answers (the first node, or all of them down).
pub async fn check_members(key: Option<&AuthKey>, members: &[SocketAddr]) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    for &m in members {
        let Ok(Ok(mut s)) = tokio::time::timeout(protocol::auth::HANDSHAKE_TIMEOUT, TcpStream::connect(m)).await else {
            continue;
        };
        match key {
            Some(k) => {
                return protocol::auth::connect(&mut s, k)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("member {m} refused this node's --auth-key-file: {e}"))
            }
            None => {
                // Ask something harmless: a plain sheep answers with a reply header, an
                // authenticating one has sent its challenge before it read a byte.
                use tokio::io::AsyncWriteExt;
                let req = protocol::RequestHeader::new(protocol::op::GET_NODE_LIST);
                let mut first = [0u8; 8];
                let heard = tokio::time::timeout(protocol::auth::HANDSHAKE_TIMEOUT, async {
                    s.write_all(&req.encode()).await?;
                    s.read_exact(&mut first).await
                })
                .await;
                if matches!(heard, Ok(Ok(_))) && protocol::auth::is_challenge(&first) {
                    return Err(format!(
                        "member {m} requires a cluster secret: start with --auth-key-file"
                    ));
                }
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn allow_lists() {
        let a = Access::new(
            None,
            parse_networks("10.0.0.0/24, 192.0.2.7,2001:db8::/32").expect("parse"),
        );
        for yes in [
            "10.0.0.1",
            "10.0.0.255",
            "192.0.2.7",
            "127.0.0.1",
            "::1",
            "2001:db8::9",
            "::ffff:10.0.0.3",
        ] {
            assert!(a.allows(ip(yes)), "{yes}");
        }
        for no in ["10.0.1.1", "192.0.2.8", "2001:db9::1", "172.16.0.1"] {
            assert!(!a.allows(ip(no)), "{no}");
        }
        assert!(Access::default().allows(ip("203.0.113.1")), "no list: everyone");
        let all = Access::new(None, parse_networks("0.0.0.0/0").expect("parse"));
        assert!(all.allows(ip("203.0.113.1")));
        for bad in ["", "10.0.0.0/33", "x", "10.0.0.0/", "::/129"] {
            assert!(parse_networks(bad).is_err(), "{bad:?}");
        }
    }
}
