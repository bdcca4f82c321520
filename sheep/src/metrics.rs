//! What this node has done, for operators: request counts, latencies, bytes and errors by op
//! class, counted as requests pass through `ops::handle`. `crate::scrape` renders them with
//! the node's figures of the moment (Prometheus/OpenMetrics text, for `--metrics` and
//! STAT_METRICS); `dog node stat` (STAT) reads them in the original's `sd_stat` layout.

use std::time::Instant;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use protocol::stats::{NodeStat, StatSide};
use protocol::{op, ResultCode};

/// What kind of work a request is, as the original's `sd_stat` splits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    GatewayRead,
    GatewayWrite,
    GatewayRemove,
    /// FLUSH_VDI: a client's flush (fsync).
    Flush,
    PeerRead,
    PeerWrite,
    PeerRemove,
    PeerFlush,
    /// Everything else: VDI, cluster and monitoring ops.
    Other,
}

const CLASSES: [Class; 9] = [
    Class::GatewayRead,
    Class::GatewayWrite,
    Class::GatewayRemove,
    Class::Flush,
    Class::PeerRead,
    Class::PeerWrite,
    Class::PeerRemove,
    Class::PeerFlush,
    Class::Other,
];

impl Class {
    pub fn of(opcode: u8) -> Class {
        match opcode {
            op::READ_OBJ => Class::GatewayRead,
            op::WRITE_OBJ | op::CREATE_AND_WRITE_OBJ => Class::GatewayWrite,
            op::REMOVE_OBJ | op::DISCARD_OBJ => Class::GatewayRemove,
            op::FLUSH_VDI => Class::Flush,
            op::READ_PEER => Class::PeerRead,
            op::WRITE_PEER | op::CREATE_AND_WRITE_PEER => Class::PeerWrite,
            op::REMOVE_PEER => Class::PeerRemove,
            op::FLUSH_PEER => Class::PeerFlush,
            _ => Class::Other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Class::GatewayRead => "gateway_read",
            Class::GatewayWrite => "gateway_write",
            Class::GatewayRemove => "gateway_remove",
            Class::Flush => "flush",
            Class::PeerRead => "peer_read",
            Class::PeerWrite => "peer_write",
            Class::PeerRemove => "peer_remove",
            Class::PeerFlush => "peer_flush",
            Class::Other => "other",
        }
    }

    fn is_peer(self) -> bool {
        matches!(
            self,
            Class::PeerRead | Class::PeerWrite | Class::PeerRemove | Class::PeerFlush
        )
    }

    fn labels(self) -> ClassLabel {
        [("op", self.name())]
    }
}

type ClassLabel = [(&'static str, &'static str); 1];
type PairLabel = [(&'static str, &'static str); 2];

/// The counters requests update as they pass through [`crate::ops::handle`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<ClassLabel, Counter>,
    active: Family<ClassLabel, Gauge>,
    latency: Family<ClassLabel, Histogram>,
    bytes: Family<PairLabel, Counter>,
    errors: Family<PairLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One request being served: dropped (or finished) when its reply is built.
pub struct InFlight<'a> {
    metrics: &'a Metrics,
    class: Class,
    start: Instant,
}

impl InFlight<'_> {
    /// The request is answered: `result` with `bytes_in` received and `bytes_out` sent.
    pub fn done(self, result: ResultCode, bytes_in: usize, bytes_out: usize) {
        let m = self.metrics;
        let class = self.class.name();
        m.latency
            .get_or_create(&self.class.labels())
            .observe(self.start.elapsed().as_secs_f64());
        m.bytes
            .get_or_create(&[("op", class), ("direction", "in")])
            .inc_by(bytes_in as u64);
        m.bytes
            .get_or_create(&[("op", class), ("direction", "out")])
            .inc_by(bytes_out as u64);
        if result != ResultCode::SUCCESS {
            m.errors
                .get_or_create(&[("op", class), ("result", result.name())])
                .inc();
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.active.get_or_create(&self.class.labels()).dec();
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sheep");
        let requests = Family::<ClassLabel, Counter>::default();
        let active = Family::<ClassLabel, Gauge>::default();
        let latency = Family::<ClassLabel, Histogram>::new_with_constructor(|| {
            // 25 us to about 1.6 s, doubling.
            Histogram::new(exponential_buckets(25e-6, 2.0, 17))
        });
        let bytes = Family::<PairLabel, Counter>::default();
        let errors = Family::<PairLabel, Counter>::default();
        registry.register("requests", "Requests served, by op class", requests.clone());
        registry.register(
            "requests_active",
            "Requests being served now, by op class",
            active.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its reply, by op class",
            latency.clone(),
        );
        registry.register(
            "request_bytes",
            "Payload bytes received (in) and sent (out), by op class",
            bytes.clone(),
        );
        registry.register(
            "request_errors",
            "Requests answered with an error, by op class and result code",
            errors.clone(),
        );
        Metrics {
            registry,
            requests,
            active,
            latency,
            bytes,
            errors,
        }
    }

    /// A request of `opcode` arrives.
    pub fn start(&self, opcode: u8) -> InFlight<'_> {
        let class = Class::of(opcode);
        self.requests.get_or_create(&class.labels()).inc();
        self.active.get_or_create(&class.labels()).inc();
        InFlight {
            metrics: self,
            class,
            start: Instant::now(),
        }
    }

    fn requests(&self, c: Class) -> u64 {
        self.requests.get_or_create(&c.labels()).get()
    }

    fn bytes(&self, c: Class, direction: &'static str) -> u64 {
        self.bytes
            .get_or_create(&[("op", c.name()), ("direction", direction)])
            .get()
    }

    /// STAT's reply: these counters as the original's `struct sd_stat` adds them up.
    pub fn node_stat(&self) -> NodeStat {
        let side = |peer: bool| {
            let of = |f: &dyn Fn(Class) -> u64| -> u64 {
                CLASSES
                    .iter()
                    .filter(|c| **c != Class::Other && c.is_peer() == peer)
                    .map(|c| f(*c))
                    .sum()
            };
            let pick = |gateway: Class, peer_class: Class| self.requests(if peer { peer_class } else { gateway });
            StatSide {
                active: of(&|c| self.active.get_or_create(&c.labels()).get().max(0) as u64),
                total: of(&|c| self.requests(c)),
                rx: of(&|c| self.bytes(c, "in")),
                tx: of(&|c| self.bytes(c, "out")),
                remove: pick(Class::GatewayRemove, Class::PeerRemove),
                read: pick(Class::GatewayRead, Class::PeerRead),
                write: pick(Class::GatewayWrite, Class::PeerWrite),
                flush: if peer { 0 } else { self.requests(Class::Flush) },
            }
        };
        NodeStat {
            gateway: side(false),
            peer: side(true),
        }
    }

    /// The whole exposition: these counters, then the figures of `now` (built by
    /// [`crate::scrape`] from the node's state at scrape time), then `# EOF`.
    pub fn render(&self, now: &Registry) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, now);
        let _ = encode_eof(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_stat_adds_up_by_class() {
        let m = Metrics::new();
        for (opcode, n, bytes_in, bytes_out) in [
            (op::READ_OBJ, 3, 0, 4096),
            (op::WRITE_OBJ, 2, 512, 0),
            (op::CREATE_AND_WRITE_OBJ, 1, 100, 0),
            (op::REMOVE_OBJ, 1, 0, 0),
            (op::FLUSH_VDI, 4, 0, 0),
            (op::READ_PEER, 5, 0, 10),
            (op::WRITE_PEER, 6, 7, 0),
            (op::REMOVE_PEER, 1, 0, 0),
            (op::FLUSH_PEER, 1, 0, 0),
            (op::GET_NODE_LIST, 9, 0, 1000),
        ] {
            for _ in 0..n {
                m.start(opcode).done(ResultCode::SUCCESS, bytes_in, bytes_out);
            }
        }
        let _busy = m.start(op::READ_OBJ);
        let v: Vec<u64> = m
            .node_stat()
            .encode()
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        assert_eq!(
            v,
            [1, 0, 12, 13, 1124, 12288, 42, 50, 1, 4, 3, 4, 1, 5, 6],
            "gateway: 3+1 reads, 3 writes, 1 remove, 4 flushes; peer: 12 + 1 flush; \
             the node list is not counted"
        );
    }

    #[test]
    fn errors_are_counted_by_result() {
        let m = Metrics::new();
        m.start(op::READ_OBJ).done(ResultCode::NO_OBJ, 0, 0);
        let e = m
            .errors
            .get_or_create(&[("op", "gateway_read"), ("result", "NO_OBJ")])
            .get();
        assert_eq!(e, 1);
        assert_eq!(m.active.get_or_create(&Class::GatewayRead.labels()).get(), 0);
    }
}
