//! What an operator runs the cluster with: versions, the rest of the original `dog`'s
//! commands, metrics, packaging.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use protocol::attr::{attr_oid, VdiAttr};
use protocol::hash::sd_hash_vdi;
use protocol::inode::{InodeHeader, INODE_HEADER_SIZE};
use protocol::stats::{decode_md_info, NodeStat, MD_INFO_SIZE};
use protocol::{flags, op, ObjArgs, Oid, RequestHeader, ResultCode, Vid};
use tests::{dog_bin, free_ports, pseudo_random, sheep_bin, sheepfs_bin, Cluster, Mount, RawConn};

/// The commit the binaries were built from.
fn git_head() -> String {
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cannot run git");
    assert!(head.status.success(), "git rev-parse failed");
    String::from_utf8_lossy(&head.stdout).trim().to_string()
}

/// Every binary says which commit it was built from, so a bug report names the code.
#[test]
fn version_names_the_git_commit() {
    let head = git_head();
    for (name, bin) in [("sheep", sheep_bin()), ("dog", dog_bin()), ("sheepfs", sheepfs_bin())] {
        let out = Command::new(&bin)
            .arg("--version")
            .output()
            .expect("cannot run --version");
        assert!(out.status.success(), "{name} --version failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let want = format!("{name} {} (git {head})", env!("CARGO_PKG_VERSION"));
        assert_eq!(text.trim(), want, "{name} --version");
    }
}

const MIB: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path` over HTTP/1.1: (status line, headers, body).
fn http(addr: SocketAddr, request: &[u8]) -> (String, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    s.write_all(request).expect("sending the request");
    let mut reply = Vec::new();
    // A server that closes before reading all we sent resets the connection: what came
    // before the reset is the reply.
    if let Err(e) = s.read_to_end(&mut reply) {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "reading the reply: {e}");
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

fn scrape(text: &str) -> Scrape {
    assert!(
        text.ends_with("# EOF\n"),
        "an OpenMetrics exposition ends with # EOF:\n{text}"
    );
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("the metrics parse as Prometheus text")
}

/// The value of the sample `metric` whose labels include `labels` (0 when there is none).
fn sample(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => panic!("{metric} is not a summary"),
        })
        .collect();
    assert!(found.len() <= 1, "{metric} {labels:?} matches {} samples", found.len());
    found.first().copied().unwrap_or(0.0)
}

/// The metrics endpoint answers with Prometheus text whose counters follow the requests
/// made, and shrugs off requests that are not a GET of /metrics.
#[test]
fn metrics_endpoint_counts_requests() {
    let port = free_ports(1)[0];
    let c = Cluster::builder()
        .nodes(1)
        .args(&["--metrics", &port.to_string(), "-w", "16M"])
        .start();
    c.format(1);
    let at = SocketAddr::from(([127, 0, 0, 1], port));
    c.dog_ok(&["vdi", "create", "m", "16M"]);
    c.write_vdi("m", 0, &pseudo_random(1, MIB));
    c.dog(&["vdi", "read", "nosuch", "0", "1"]).expect_failure();

    let (status, headers, body) = http(at, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("application/openmetrics-text"), "{headers}");
    let s = scrape(&body);
    let writes = sample(&s, "sheep_requests_total", &[("op", "gateway_write")]);
    assert!(writes >= 1.0, "gateway writes counted: {writes}\n{body}");
    let timed = sample(&s, "sheep_request_duration_seconds", &[("op", "gateway_write")]);
    assert_eq!(timed, writes, "every counted write is timed\n{body}");
    let bytes_in = sample(
        &s,
        "sheep_request_bytes_total",
        &[("op", "gateway_write"), ("direction", "in")],
    );
    assert!(bytes_in >= MIB as f64, "1 MiB written, {bytes_in} bytes counted");
    let missing = sample(
        &s,
        "sheep_request_errors_total",
        &[("op", "other"), ("result", "NO_VDI")],
    );
    assert!(
        missing >= 1.0,
        "the lookup of a missing VDI is an error: {missing}\n{body}"
    );
    assert_eq!(sample(&s, "sheep_epoch", &[]), 1.0);
    assert_eq!(sample(&s, "sheep_members", &[]), 1.0);
    assert!(sample(&s, "sheep_store_size_bytes", &[]) > 0.0);
    assert_eq!(sample(&s, "sheep_cache_limit_bytes", &[]), 16.0 * MIB as f64);

    // Every series the sample dashboard plots exists.
    let dashboard = include_str!("../../contrib/grafana-dashboard.json");
    let mut plotted: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("sheep_"))
        .collect();
    plotted.sort();
    plotted.dedup();
    assert!(plotted.len() >= 10, "{plotted:?}");
    for name in plotted {
        assert!(
            body.contains(&format!("\n{name}")),
            "the dashboard plots {name}, which is not served:\n{body}"
        );
    }

    // The counters move with the next request, and a second scrape sees it.
    c.write_vdi("m", 4096, &pseudo_random(2, 4096));
    let (_, _, body) = http(at, b"GET /metrics HTTP/1.0\r\n\r\n");
    let after = sample(&scrape(&body), "sheep_requests_total", &[("op", "gateway_write")]);
    assert!(after > writes, "{after} after {writes}");

    let (status, _, _) = http(at, b"GET /other HTTP/1.1\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    let (status, _, _) = http(at, b"POST /metrics HTTP/1.1\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 405"), "{status}");
    // A head that never ends is cut off, and the endpoint keeps serving.
    let (status, _, _) = http(at, &vec![b'A'; 20_000]);
    assert_eq!(status, "", "an oversized head gets no answer");
    let (status, _, _) = http(at, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
}

/// `dog node stat` and STAT agree with what was done: the gateway counts the client's
/// writes, the other replicas count them as peer writes.
#[test]
fn node_stat_counts_client_and_peer_requests() {
    let c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "s", "16M"]);
    c.write_vdi("s", 0, &pseudo_random(3, MIB));
    assert_eq!(c.read_vdi("s", 0, 4096, None), pseudo_random(3, MIB)[..4096]);

    let stat = |i: usize| {
        let mut req = RequestHeader::new(op::STAT);
        req.data_length = NodeStat::SIZE as u32;
        let (h, data) = RawConn::connect(c.node(i).addr(), TIMEOUT)
            .exchange(&req, &[], 4096)
            .expect("STAT");
        assert_eq!(h.result_code(), ResultCode::SUCCESS);
        assert_eq!(data.len(), NodeStat::SIZE, "struct sd_stat is 120 bytes");
        NodeStat::decode(&data).expect("decodes")
    };
    let gw = stat(0).gateway;
    assert!(gw.write >= 1 && gw.read >= 1, "{gw:?}");
    assert!(gw.rx >= MIB as u64 && gw.tx >= 4096, "{gw:?}");
    assert_eq!(gw.active, 0, "nothing in flight: {gw:?}");
    for i in 1..3 {
        let p = stat(i).peer;
        assert!(p.write >= 1 && p.rx >= MIB as u64, "node {i} stored its replica: {p:?}");
    }

    // dog prints the same counters (STAT itself and dog's lookups are not counted).
    let raw = c.dog_ok(&["node", "stat", "-r"]).stdout_str();
    let s = stat(0);
    let rows: Vec<Vec<u64>> = raw
        .lines()
        .map(|l| l.split('\t').map(|f| f.parse().expect("a number")).collect())
        .collect();
    let want = |x: &protocol::stats::StatSide| vec![x.active, x.total, x.write, x.read, x.remove, x.flush, x.rx, x.tx];
    assert_eq!(rows, vec![want(&s.gateway), want(&s.peer)], "{raw}");
    let text = c.dog_ok(&["node", "stat"]).stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "Request\tActive\tTotal\tWrite\tRead\tRemove\tFlush\tAll WR\tAll RD"
    );
    assert!(
        lines[1].starts_with("Client\t") && lines[2].starts_with("Peer\t"),
        "{text}"
    );

    // -w prints them every second with the rates since the last round, until stopped.
    let mut cmd = Command::new(dog_bin());
    cmd.args(["node", "stat", "-w", "-r", "-p", &c.node(0).port().to_string()]);
    let out = tests::run_command(cmd, Duration::from_millis(3500));
    assert!(out.timed_out(), "watch mode runs until stopped: {}", out.describe());
    let text = out.stdout_str();
    let rows: Vec<&str> = text.lines().collect();
    assert!(rows.len() >= 2 && rows.len().is_multiple_of(2), "{text}");
    for r in rows {
        assert_eq!(r.split('\t').count(), 11, "8 counters and 3 rates: {r}");
    }
}

/// MD_INFO answers with the original's 263,688-byte layout: the store as one disk.
#[test]
fn md_info_shows_the_store_as_one_disk() {
    let c = Cluster::start_formatted(2, 2);
    c.dog_ok(&["vdi", "create", "d", "16M"]);
    c.write_vdi("d", 0, &pseudo_random(4, 2 * MIB));
    let mut conn = RawConn::connect(c.node(0).addr(), TIMEOUT);
    let mut req = RequestHeader::new(op::MD_INFO);
    req.data_length = MD_INFO_SIZE as u32;
    let (h, data) = conn.exchange(&req, &[], MD_INFO_SIZE).expect("MD_INFO");
    assert_eq!(h.result_code(), ResultCode::SUCCESS);
    assert_eq!(data.len(), 263_688);
    let disks = decode_md_info(&data).expect("decodes");
    let obj = c.node(0).dir().join("obj");
    let used: u64 = std::fs::read_dir(&obj)
        .expect("obj dir")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum();
    assert_eq!(disks.len(), 1, "{disks:?}");
    assert_eq!((disks[0].idx, disks[0].used), (0, used));
    assert_eq!(std::path::Path::new(&disks[0].path), obj);
    assert!(disks[0].free > 0);

    // The original dies on a wrong length; ours refuses it and goes on.
    req.data_length = 4096;
    let (h, data) = conn.exchange(&req, &[], MD_INFO_SIZE).expect("MD_INFO, short");
    assert_eq!((h.result_code(), data.len()), (ResultCode::INVALID_PARMS, 0));

    let raw = c.dog_ok(&["node", "md", "info", "-A", "-r"]).stdout_str();
    let lines: Vec<&str> = raw.lines().collect();
    assert_eq!(lines.len(), 2, "{raw}");
    let mut seen = Vec::new();
    for l in &lines {
        let f: Vec<&str> = l.split(' ').collect();
        let i = c.index_of(f[0].parse().expect("host:port first"));
        assert_eq!(f[6], c.node(i).dir().join("obj").display().to_string(), "{l}");
        seen.push(i);
    }
    seen.sort();
    assert_eq!(seen, [0, 1], "{raw}");
    let text = c.dog_ok(&["node", "md", "info"]).stdout_str();
    assert!(text.starts_with("Id\tSize\tUsed\tAvail\tUse%\tPath\n 0\t"), "{text}");
}

/// sheepfs shows the gateway's metrics and every node's recovery as files to `cat`.
#[test]
fn sheepfs_node_metrics_and_cluster_recovery() {
    let c = Cluster::start_formatted(2, 2);
    c.dog_ok(&["vdi", "create", "v", "8M"]);
    let m = Mount::start(&c, 0);
    std::fs::write(m.join("vdi/v/volume"), pseudo_random(5, 65536)).expect("writing the volume");
    let text = std::fs::read_to_string(m.join("node/metrics")).expect("reading /node/metrics");
    let s = scrape(&text);
    assert!(
        sample(&s, "sheep_requests_total", &[("op", "gateway_write")]) >= 1.0,
        "{text}"
    );
    assert_eq!(sample(&s, "sheep_members", &[]), 2.0);
    let names: Vec<String> = std::fs::read_dir(m.join("node"))
        .expect("listing /node")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"metrics".to_string()), "{names:?}");
    let rec = std::fs::read_to_string(m.join("cluster/recovery")).expect("reading /cluster/recovery");
    assert_eq!(rec.lines().count(), 3, "a header and one line per node:\n{rec}");
    assert!(
        std::fs::write(m.join("node/metrics"), b"x").is_err(),
        "monitoring files are read-only"
    );
}

/// `dog vdi setattr/getattr`: values round-trip byte for byte, -x and -d behave as the
/// original's, refusals change nothing, and the reply and the object are laid out as
/// PROTOCOL.md says.
#[test]
fn vdi_attributes() {
    let mut c = Cluster::start_formatted(3, 2);
    c.dog_ok(&["vdi", "create", "a", "8M"]);
    let get = |c: &Cluster, key: &str| c.dog_ok(&["vdi", "getattr", "a", key]).stdout;
    let code = |o: tests::DogOutput| o.expect_failure().status.code();

    c.dog_ok(&["vdi", "setattr", "a", "k1", "v1"]);
    assert_eq!(get(&c, "k1"), b"v1");
    let big = pseudo_random(6, 65536);
    c.dog_with_input(&["vdi", "setattr", "a", "k2"], &big).expect_ok();
    assert_eq!(get(&c, "k2"), big, "a 64 KiB value from stdin round-trips");
    c.dog_ok(&["vdi", "setattr", "a", "k1", "v2"]);
    assert_eq!(get(&c, "k1"), b"v2", "a set replaces the value");

    let o = c.dog(&["vdi", "setattr", "-x", "a", "k1", "v3"]);
    assert!(o.stderr.contains("The attribute 'k1' already exists"), "{}", o.stderr);
    assert_eq!(code(o), Some(3));
    assert_eq!(get(&c, "k1"), b"v2", "a refused -x changes nothing");
    c.dog_ok(&["vdi", "setattr", "-x", "a", "k3", "new"]);
    assert_eq!(get(&c, "k3"), b"new");

    let o = c.dog(&["vdi", "getattr", "a", "nokey"]);
    assert!(
        o.stdout.is_empty() && o.stderr.contains("Attribute 'nokey' not found"),
        "{}",
        o.stderr
    );
    assert_eq!(code(o), Some(5));
    let o = c.dog(&["vdi", "getattr", "nosuch", "k1"]);
    assert!(o.stderr.contains("VDI not found"), "{}", o.stderr);
    assert_eq!(code(o), Some(5));
    let o = c.dog_with_input(&["vdi", "setattr", "a", "k2"], &vec![1u8; 65537]);
    assert_eq!(code(o), Some(2), "a value over 64 KiB is a usage error");
    assert_eq!(get(&c, "k2"), big, "and changes nothing");

    c.dog_ok(&["vdi", "setattr", "-d", "a", "k1"]);
    assert_eq!(code(c.dog(&["vdi", "getattr", "a", "k1"])), Some(5), "deleted");
    assert_eq!(
        code(c.dog(&["vdi", "setattr", "-d", "a", "k1"])),
        Some(5),
        "deleted twice"
    );
    assert_eq!(get(&c, "k2"), big, "other attributes stay");
    c.dog_ok(&["vdi", "setattr", "a", "k1", "again"]);
    assert_eq!(get(&c, "k1"), b"again", "a deleted key can be set again");

    // The reply: vdi_id is sd_hash_vdi(name), attr_id the slot; the object holds the record
    // with the VDI's creation time.
    let want = VdiAttr {
        name: "a".into(),
        key: "k3".into(),
        ..VdiAttr::default()
    };
    let payload = want.encode();
    let mut req = RequestHeader::new(op::GET_VDI_ATTR);
    req.flags = flags::WRITE;
    req.data_length = payload.len() as u32;
    let r = c.call(1, req.clone(), &payload).expect("GET_VDI_ATTR");
    assert_eq!(r.header.vdi_id(), sd_hash_vdi(b"a"));
    assert_eq!(r.header.attr_id(), want.first_id(), "no collision: the first slot");
    assert_eq!(r.header.vdi_copies(), 2);
    assert!(r.data.is_empty());
    let oid = Oid(attr_oid(r.header.vdi_id(), r.header.attr_id()));
    let holders: Vec<usize> = (0..3).filter(|&i| c.node(i).object_bytes(oid).is_some()).collect();
    assert_eq!(holders.len(), 2, "two copies of the attribute object");
    let stored = VdiAttr::decode(&c.node(holders[0]).object_bytes(oid).expect("object")).expect("a record");
    let mut inode = RequestHeader::new(op::READ_OBJ);
    inode.data_length = INODE_HEADER_SIZE as u32;
    inode.set_obj(&ObjArgs {
        oid: Vid::new(c.vid_of("a")).expect("vid").inode_oid().0,
        ..ObjArgs::default()
    });
    let h = InodeHeader::decode(&c.call(0, inode, &[]).expect("inode").data).expect("header");
    assert_eq!(
        (stored.key.as_str(), stored.value.as_slice(), stored.ctime),
        ("k3", &b"new"[..], h.create_time)
    );

    // Malformed requests are refused.
    let mut bad = req;
    bad.flags = 0;
    bad.data_length = 0;
    assert_eq!(
        c.send(0, bad.clone(), &[]).expect("reply").header.result_code(),
        ResultCode::INVALID_PARMS
    );
    bad.flags = flags::WRITE;
    bad.data_length = 100;
    assert_eq!(
        c.send(0, bad, &[0; 100]).expect("reply").header.result_code(),
        ResultCode::INVALID_PARMS
    );

    // One copy lost: the attributes are still there.
    c.kill(holders[0]);
    let alive = (0..3).find(|&i| i != holders[0]).expect("a live node");
    let o = c.dog_at(alive, &["vdi", "getattr", "a", "k3"], None).expect_ok();
    assert_eq!(o.stdout, b"new");
}

/// `xtask docs` renders a man page per command and subcommand and shell completions that
/// the shells accept, from the same definitions the binaries parse with.
#[test]
fn man_pages_and_completions() {
    let out = tempfile::tempdir().expect("temp dir");
    let status = Command::new(tests::bin_dir().join("xtask"))
        .arg("docs")
        .arg(out.path())
        .status()
        .expect("running xtask (built by `cargo build --workspace --bins`)");
    assert!(status.success(), "xtask docs failed");
    let read = |rel: &str| std::fs::read_to_string(out.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let sheep = read("man/man1/sheep.1");
    assert!(sheep.starts_with(".ie") && sheep.contains(".TH sheep 1"), "{sheep}");
    assert!(
        sheep.contains("metrics") && sheep.contains(&format!("git {}", git_head())),
        "{sheep}"
    );
    assert!(read("man/man1/dog.1").contains("vdi"));
    assert!(read("man/man1/dog-vdi-setattr.1").contains("exclusive"));
    let sub = read("man/man1/dog-node-md-info.1");
    assert!(
        sub.contains(&format!(
            ".TH dog-node-md-info 1  \"dog-node-md-info {}",
            env!("CARGO_PKG_VERSION")
        )),
        "{sub}"
    );
    assert!(read("man/man1/sheepfs.1").contains("MOUNTPOINT"));
    for name in ["sheep", "dog", "sheepfs"] {
        let bash = out.path().join("completions/bash").join(name);
        let ok = Command::new("bash").arg("-n").arg(&bash).status().expect("bash -n");
        assert!(ok.success(), "{} does not parse", bash.display());
        assert!(read(&format!("completions/zsh/_{name}")).starts_with(&format!("#compdef {name}")));
        assert!(read(&format!("completions/fish/{name}.fish")).contains(&format!("complete -c {name}")));
    }
    assert!(read("completions/bash/dog").contains("setattr"));
}

/// `contrib/install.sh` puts binaries, man pages, completions, units and example configs
/// where Debian looks, keeps an edited config on a second run, and `--uninstall` removes
/// exactly what it installed.
#[test]
fn install_script_installs_and_uninstalls() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let release = tmp.path().join("target/release");
    std::fs::create_dir_all(&release).expect("mkdir");
    for b in ["sheep", "dog", "sheepfs"] {
        std::os::unix::fs::symlink(tests::bin_dir().join(b), release.join(b)).expect("symlink");
    }
    let docs = tmp.path().join("docs");
    let ok = Command::new(tests::bin_dir().join("xtask"))
        .arg("docs")
        .arg(&docs)
        .status();
    assert!(ok.expect("xtask").success());
    let root = tmp.path().join("root");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/install.sh");
    let install = |extra: &[&str]| {
        let out = Command::new("sh")
            .arg(&script)
            .args(["--no-build", "--docs"])
            .arg(&docs)
            .arg("--destdir")
            .arg(&root)
            .args(extra)
            .env("CARGO_TARGET_DIR", tmp.path().join("target"))
            .output()
            .expect("running install.sh");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "install.sh {extra:?} failed:\n{text}");
    };
    install(&[]);
    let at = |rel: &str| root.join(rel);
    for f in [
        "usr/local/bin/sheep",
        "usr/local/bin/dog",
        "usr/local/bin/sheepfs",
        "usr/local/share/man/man1/sheep.1.gz",
        "usr/local/share/man/man1/dog-vdi-setattr.1.gz",
        "usr/local/share/bash-completion/completions/dog",
        "usr/local/share/fish/vendor_completions.d/sheepfs.fish",
        "usr/lib/tmpfiles.d/sheepdog.conf",
        "etc/sheepdog/node0.toml",
        "etc/sheepdog/sheepfs-node0.env",
    ] {
        assert!(at(f).is_file(), "{f} is not installed");
    }
    let unit = std::fs::read_to_string(at("lib/systemd/system/sheep@.service")).expect("unit");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/sheep --config /etc/sheepdog/%i.toml"),
        "{unit}"
    );
    let v = Command::new(at("usr/local/bin/dog"))
        .arg("--version")
        .output()
        .expect("dog --version");
    assert!(v.status.success());

    // The example config parses as sheep's TOML (its one placeholder is the bind address).
    let out = Command::new(tests::sheep_bin())
        .arg("--config")
        .arg(at("etc/sheepdog/node0.toml"))
        .arg(tmp.path().join("store"))
        .output()
        .expect("sheep");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot listen on 192.0.2.10:7000"),
        "{err}"
    );

    std::fs::write(at("etc/sheepdog/node0.toml"), "port = 7001\n").expect("edit");
    install(&[]);
    let kept = std::fs::read_to_string(at("etc/sheepdog/node0.toml")).expect("config");
    assert_eq!(kept, "port = 7001\n", "a second install keeps the operator's config");

    install(&["--uninstall"]);
    let mut left = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                left.push(p.strip_prefix(&root).expect("under root").display().to_string());
            }
        }
    }
    left.sort();
    assert_eq!(left, ["etc/sheepdog/node0.toml", "etc/sheepdog/sheepfs-node0.env"]);
}
