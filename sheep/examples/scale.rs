//! Scale check for the placement ring and the ZooKeeper driver.
//!
//! `cargo run --release --example scale -- ring` measures the ring for 1,000 nodes x 128
//! vnodes: the cost of building it (one membership change), of one object lookup, and the
//! share of objects that move when one node joins.
//!
//! `cargo run --release --example scale -- zookeeper HOST:PORT [--members N]` runs N light
//! members (the real driver, without store or server) in this process against a real
//! ZooKeeper: all join, one cluster operation is applied by all, then 10% leave at once.
//! Then the members that stay see 10,000 more events, report what they applied, and the
//! first writes checkpoints as a sheep does, so that the queue is trimmed behind them. It
//! prints the time each phase takes to converge, ZooKeeper's request count and its znode
//! count (from `mntr`). `contrib/bench/zk-scale.sh` starts a ZooKeeper and runs both.
//!
//! Light members keep only the membership, not a whole [`ClusterState`] (rebuilding a
//! 1,000-node ring per join in one process would measure the ring, not the driver); the
//! checkpoints they write are therefore an empty state at the right position. The tests
//! check real checkpoints.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::hash::sd_hash_oid;
use protocol::node::Node;
use protocol::placement::Ring;
use sheep::cluster::zookeeper::{ZkDriver, ZkSpec};
use sheep::cluster::{Delivered, Delivery};
use sheep::group::{ClusterState, Event, Format};

fn node(i: u32) -> Node {
    let addr = SocketAddr::from(([10, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8], 7000));
    Node {
        addr,
        nr_vnodes: 128,
        zone: i,
        space: 0,
    }
}

fn ring() {
    let n = 1000;
    let nodes: Vec<Node> = (0..n).map(node).collect();
    let t = Instant::now();
    let ring = Ring::new(nodes.clone());
    let build = t.elapsed();
    let lookups = 1_000_000u64;
    let t = Instant::now();
    let mut sink = 0usize;
    for i in 0..lookups {
        sink += ring.replicas(sd_hash_oid(i), 3).len();
    }
    let per_lookup = t.elapsed() / lookups as u32;
    let mut bigger = nodes;
    bigger.push(node(n));
    let ring2 = Ring::new(bigger);
    let objects = 200_000u64;
    let (mut moved_objects, mut moved_copies) = (0u64, 0u64);
    for i in 0..objects {
        let a: Vec<SocketAddr> = ring.replicas(i, 3).iter().map(|n| n.addr).collect();
        let b: Vec<SocketAddr> = ring2.replicas(i, 3).iter().map(|n| n.addr).collect();
        let changed = b.iter().filter(|x| !a.contains(x)).count() as u64;
        moved_copies += changed;
        moved_objects += u64::from(changed > 0);
    }
    println!("ring: {n} nodes x 128 vnodes = {} vnodes", n * 128);
    println!("ring: build (one membership change) {build:?}; lookup of 3 copies {per_lookup:?} ({sink} replicas)");
    println!(
        "ring: one node joins: {:.3}% of objects get a new copy holder, {:.3}% of copies move (1/N = {:.3}%)",
        100.0 * moved_objects as f64 / objects as f64,
        100.0 * moved_copies as f64 / (3 * objects) as f64,
        100.0 / f64::from(n + 1)
    );
}

/// ZooKeeper's `mntr` counters.
fn mntr(zk: &str) -> BTreeMap<String, String> {
    let mut out = String::new();
    if let Ok(mut s) = TcpStream::connect(zk) {
        let _ = s.write_all(b"mntr");
        let _ = s.read_to_string(&mut out);
    }
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn counter(zk: &str, name: &str) -> u64 {
    mntr(zk).get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn packets(zk: &str) -> u64 {
    counter(zk, "zk_packets_received")
}

/// What a light member knows: members (with incarnations) and whether the cluster op landed.
#[derive(Default)]
struct Light {
    members: BTreeMap<SocketAddr, u64>,
    formatted: bool,
    applied: u64,
}

fn apply(l: &mut Light, ev: &Event) {
    match ev {
        Event::Join { node, incarnation, .. } => {
            l.members.insert(node.addr, *incarnation);
        }
        Event::Leave { addr, incarnation, .. } if incarnation.is_none_or(|i| l.members.get(addr) == Some(&i)) => {
            l.members.remove(addr);
        }
        Event::Format { .. } => l.formatted = true,
        _ => {}
    }
}

async fn wait_all(what: &str, views: &[Arc<Mutex<Light>>], ok: impl Fn(&Light) -> bool) -> Duration {
    let t = Instant::now();
    loop {
        let done = views
            .iter()
            .filter(|v| ok(&v.lock().unwrap_or_else(|p| p.into_inner())))
            .count();
        if done == views.len() {
            return t.elapsed();
        }
        if t.elapsed() > Duration::from_secs(600) {
            eprintln!("{what}: gave up with {done}/{} members done", views.len());
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn zookeeper(zk: String, n: u32) {
    let spec = ZkSpec::parse(&format!("{zk},timeout=10")).expect("HOST:PORT of a ZooKeeper");
    let mut drivers = Vec::new();
    let mut views = Vec::new();
    let t = Instant::now();
    for i in 0..n {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Delivery>();
        let d = ZkDriver::start(&spec, node(i).addr, tx)
            .await
            .expect("connect to ZooKeeper");
        let view = Arc::new(Mutex::new(Light::default()));
        let v = view.clone();
        let d = Arc::new(d);
        let driver = d.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Like a sheep: apply what has arrived, report once, checkpoint when asked.
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let mut pos = 0;
                {
                    let mut l = v.lock().unwrap_or_else(|p| p.into_inner());
                    for dl in batch {
                        if let Delivered::Event(ev) = &dl.what {
                            apply(&mut l, ev);
                        }
                        pos = dl.pos;
                    }
                    l.applied = pos;
                }
                let _ = driver.report_applied(pos).await;
                if driver.cadence().due() {
                    let mut image = ClusterState::default();
                    image.pos = pos;
                    if let Ok(bytes) = serde_json::to_vec(&image) {
                        driver.checkpoint(pos, bytes);
                    }
                }
            }
        });
        drivers.push(d);
        views.push(view);
    }
    println!("zookeeper: {n} sessions opened in {:?}", t.elapsed());
    let p0 = packets(&zk);
    let joins: Vec<_> = drivers
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = d.clone();
            tokio::spawn(async move { d.join(node(i as u32), false).await })
        })
        .collect();
    for j in joins {
        j.await.expect("join task").expect("join");
    }
    let full = n as usize;
    let took = wait_all("join", &views, |l| l.members.len() == full).await;
    let p1 = packets(&zk);
    println!(
        "zookeeper: all {n} joined and every member sees {n} members after {took:?}; {} requests ({} per join)",
        p1 - p0,
        (p1 - p0) / u64::from(n.max(1))
    );
    let format = Format {
        ctime: 1,
        copies: 3,
        copy_policy: 0,
        flags: 4,
        block_size_shift: 22,
        store: "plain".into(),
    };
    drivers[0]
        .broadcast(Event::Format { format, time: 0 })
        .await
        .expect("broadcast");
    let took = wait_all("cluster op", &views, |l| l.formatted).await;
    let p2 = packets(&zk);
    println!(
        "zookeeper: one cluster operation applied by all {n} after {took:?}; {} requests",
        p2 - p1
    );
    let leaving = (n / 10) as usize;
    // Their sessions end once the drivers are gone, as when the processes die.
    for d in drivers.drain(full - leaving..) {
        d.close();
    }
    let stay = &views[..full - leaving];
    // Their member znodes go when ZooKeeper ends the sessions; the driver's part starts there.
    let t = Instant::now();
    while drivers[0].listed_members().await.len() > full - leaving {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expired = t.elapsed();
    let took = wait_all("leave", stay, |l| l.members.len() == full - leaving).await;
    let p3 = packets(&zk);
    println!(
        "zookeeper: {leaving} left at once; their member znodes were gone after {expired:?}; \
         the other {} agree on {} members {took:?} later; {} requests",
        full - leaving,
        full - leaving,
        p3 - p2
    );
    let events = 10_000u32;
    let znodes = counter(&zk, "zk_znode_count");
    let t = Instant::now();
    for chunk in (0..events).collect::<Vec<_>>().chunks(100) {
        let sends: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let d = drivers[0].clone();
                // A release nobody holds: an event every member applies and that changes nothing.
                tokio::spawn(async move {
                    d.broadcast(Event::ReleaseVdi {
                        vid: i,
                        owner: node(0).addr,
                        client: 0,
                    })
                    .await
                })
            })
            .collect();
        for s in sends {
            s.await.expect("broadcast task").expect("broadcast");
        }
    }
    let end = drivers[0].broadcast(Event::Shutdown).await.expect("broadcast");
    wait_all("events", stay, |l| l.applied >= end).await;
    let took = t.elapsed();
    // The checkpoint and its trim run in the background: give them a moment.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p4 = packets(&zk);
    println!(
        "zookeeper: {events} more events applied by all {} after {took:?}; {} requests; znodes {znodes} before, {} after",
        full - leaving,
        p4 - p3,
        counter(&zk, "zk_znode_count")
    );
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ring") => ring(),
        Some("zookeeper") => {
            let zk = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:2181".into());
            let n = args
                .iter()
                .position(|a| a == "--members")
                .and_then(|i| args.get(i + 1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            rt.block_on(zookeeper(zk, n));
        }
        _ => {
            eprintln!("usage: scale ring | scale zookeeper HOST:PORT [--members N]");
            std::process::exit(2);
        }
    }
}
