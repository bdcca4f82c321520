//! The metrics endpoint (`--metrics`, and STAT_METRICS for sheepfs's `/node/metrics`): the
//! request counters of [`crate::metrics`] plus what this node holds at scrape time (epoch,
//! members, recovery, store space, object cache), as Prometheus/OpenMetrics text, served
//! by a small HTTP/1.1 responder that answers `GET /metrics` only.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::node::Sheep;

/// The content type of the exposition.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Longest request head the endpoint reads.
const MAX_HEAD: usize = 8192;
/// How long a client may take to send its request.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole exposition, as of now.
pub fn render(sheep: &Sheep) -> String {
    let mut gauges: Vec<(&str, &str, u64)> = Vec::new();
    {
        let st = sheep.state();
        gauges.push(("epoch", "The cluster epoch this node is in", u64::from(st.epoch())));
        gauges.push(("members", "Nodes in the cluster", st.nodes().len() as u64));
    }
    let p = sheep.recovery.progress();
    gauges.extend([
        (
            "vnodes",
            "This node's virtual nodes (0: gateway only)",
            u64::from(sheep.me.nr_vnodes),
        ),
        (
            "recovery_running",
            "1 while this node recovers objects",
            u64::from(p.running),
        ),
        (
            "recovery_objects_done",
            "Objects the current recovery has handled",
            p.done,
        ),
        (
            "recovery_objects",
            "Objects the current recovery has to handle",
            p.total,
        ),
    ]);
    if let Ok((size, free)) = sheep.store.space() {
        gauges.push(("store_size_bytes", "Size of the filesystem holding the store", size));
        gauges.push((
            "store_free_bytes",
            "Free space of the filesystem holding the store",
            free,
        ));
    }
    let mut now = Registry::with_prefix("sheep");
    if let Some(c) = &sheep.cache {
        let s = c.stats();
        gauges.extend([
            ("cache_limit_bytes", "The object cache's size", s.limit),
            ("cache_used_bytes", "Bytes of object copies in the cache", s.used),
            (
                "cache_dirty_bytes",
                "Bytes in the cache not yet pushed to the replicas",
                s.dirty,
            ),
        ]);
        now.register("cache_hits", "Cached I/O served from a copy", ConstCounter::new(s.hits));
        now.register(
            "cache_misses",
            "Cached I/O that fetched a copy first",
            ConstCounter::new(s.misses),
        );
    }
    for (name, help, v) in gauges {
        now.register(name, help, ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)));
    }
    sheep.metrics.render(&now)
}

/// Serves `GET /metrics` over HTTP/1.x on `listener` for ever.
pub async fn serve(sheep: Arc<Sheep>, listener: TcpListener) {
    let s = sheep.clone();
    crate::access::accept_loop(listener, "metrics connection", &sheep.access, move |c| {
        answer(s.clone(), c)
    })
    .await
}

async fn answer(sheep: Arc<Sheep>, mut s: TcpStream) {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut s)).await {
        Ok(Some(h)) => h,
        _ => return,
    };
    let mut words = head.split_ascii_whitespace();
    let (status, ctype, body) = match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", CONTENT_TYPE, render(&sheep)),
        (Some("GET"), _) => ("404 Not Found", "text/plain", "only /metrics is served here\n".into()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET is served here\n".into(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = s.write_all(reply.as_bytes()).await {
        tracing::debug!(error = %e, "metrics client gone before the reply");
    }
}

/// The request line and headers, up to the blank line; `None` if the client sends more than
/// [`MAX_HEAD`] bytes or hangs up first.
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > MAX_HEAD {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}
