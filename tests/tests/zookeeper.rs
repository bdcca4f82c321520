//! The `zookeeper` cluster driver against a real ZooKeeper (Debian's 3.8): I/O and identical
//! cluster views, concurrent VDI operations, a killed node, a late joiner, a whole-cluster
//! restart, a sheep whose session expires (SIGSTOP), the ensemble leader failing, and the
//! checkpoints that let the queue be trimmed: a joiner and a restart after a trim, the
//! checkpointing sheep's session expiring, and it and the ZooKeeper leader killed mid-trim.
//!
//! Every test starts its own ZooKeeper ([`tests::zk::ZooKeeper`]) and its own sheep, with a
//! 2 s session timeout so that failures are noticed fast. Timings are printed (run with
//! `--nocapture` to see them).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use protocol::Vid;
use tests::zk::{dog_command, run_tool, ZooKeeper};
use tests::{
    assert_same_bytes, pseudo_random, run_dog, set_bits, signal, wait_until, BlockingClient, Cluster, DogOutput,
};
use zookeeper_client as zkc;

const MIB: u64 = 1 << 20;
/// Object size of every VDI here (the cluster default, 1 << 22).
const OBJ: u64 = 4 * MIB;
/// The session timeout the sheep ask for.
const SESSION_SECS: u64 = 2;
/// How long a dead sheep may go unnoticed: the session timeout, ZooKeeper's expiry tick and
/// the reaper's watch, with room for a loaded machine.
const NOTICE: Duration = Duration::from_secs(10);
/// How long views may take to converge after an event every node must apply.
const CONVERGE: Duration = Duration::from_secs(20);
/// How long recovery may take.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a client operation may stall across a ZooKeeper leader failover.
const FAILOVER_STALL: Duration = Duration::from_secs(20);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

// ---------------------------------------------------------------------------------------------
// Helpers

fn zk_cluster(zk: &ZooKeeper, n: usize) -> Cluster {
    Cluster::builder().nodes(n).driver(zk.spec(SESSION_SECS)).start()
}

/// A standalone ZooKeeper and three sheep using it, formatted with `copies` copies. Bind both:
/// the ZooKeeper must outlive the cluster.
fn zk_cluster_formatted(copies: usize) -> (ZooKeeper, Cluster) {
    let zk = ZooKeeper::standalone();
    let c = zk_cluster(&zk, 3);
    c.format(copies);
    (zk, c)
}

fn addrs(c: &Cluster, nodes: &[usize]) -> BTreeSet<SocketAddr> {
    nodes.iter().map(|&i| c.node(i).addr()).collect()
}

/// Waits until every node of `nodes` lists exactly `nodes` and reports one common epoch
/// above `above`. Returns the epoch.
#[track_caller]
fn wait_members(c: &Cluster, nodes: &[usize], above: u32, limit: Duration, what: &str) -> u32 {
    let want = addrs(c, nodes);
    wait_until(what, limit, || {
        let mut epochs = BTreeSet::new();
        for &i in nodes {
            let got: BTreeSet<SocketAddr> = c
                .node_list(i)
                .map_err(|e| format!("node {i}: GET_NODE_LIST: {e}"))?
                .iter()
                .map(|n| n.addr)
                .collect();
            if got != want {
                return Err(format!("node {i} lists {got:?}, want {want:?}"));
            }
            epochs.insert(c.cluster_info(i).map_err(|e| format!("node {i}: {e}"))?.epoch);
        }
        match epochs.iter().collect::<Vec<_>>()[..] {
            [&e] if e > above => Ok(e),
            _ => Err(format!("epochs {epochs:?}, want one epoch above {above}")),
        }
    })
}

/// Creates the 32 MiB VDI `alpha` and writes `len` pseudo-random bytes (from `seed`) at its
/// start through node 0. Returns its vid and the model of its contents.
#[track_caller]
fn alpha_with_data(c: &Cluster, seed: u64, len: u64) -> (u32, Vec<u8>) {
    c.dog_ok(&["vdi", "create", "alpha", "32M"]);
    let vid = c.vid_of("alpha");
    let mut model = vec![0u8; (32 * MIB) as usize];
    c.put(0, "alpha", &mut model, 0, seed, len);
    (vid, model)
}

fn epoch_of(c: &Cluster, i: usize) -> u32 {
    c.cluster_info(i)
        .unwrap_or_else(|e| panic!("CLUSTER_INFO to node {i}: {e}"))
        .epoch
}

/// Every data object of `vid` stored on a running node holds the model's bytes, and the
/// copies of its inode agree.
#[track_caller]
fn check_replica_bytes(c: &Cluster, vid: u32, model: &[u8], when: &str) {
    let inode_oid = Vid::new(vid).expect("vid fits in 24 bits").inode_oid();
    let mut problems = Vec::new();
    let mut inode: Option<(usize, Vec<u8>)> = None;
    let mut data_copies = 0;
    for i in c.running() {
        for oid in c.node(i).objects() {
            if oid.vid().get() != vid {
                continue;
            }
            let Some(b) = c.node(i).object_bytes(oid) else { continue };
            if oid == inode_oid {
                match &inode {
                    None => inode = Some((i, b)),
                    Some((first, fb)) if *fb != b => {
                        problems.push(format!("inode {oid}: node {i}'s copy differs from node {first}'s"))
                    }
                    Some(_) => {}
                }
            } else if oid.is_data() {
                data_copies += 1;
                let start = (u64::from(oid.index()) * OBJ) as usize;
                match model.get(start..start + OBJ as usize) {
                    Some(want) if want == b.as_slice() => {}
                    Some(want) => problems.push(format!(
                        "{oid} on node {i} differs from the data written (first difference at \
                         object offset {:?}; {} bytes)",
                        b.iter().zip(want).position(|(x, y)| x != y),
                        b.len()
                    )),
                    None => problems.push(format!("{oid} on node {i} lies past the VDI")),
                }
            }
        }
    }
    assert!(
        data_copies > 0,
        "{when}: no data object of vid {vid:#x} on any running node"
    );
    assert!(
        problems.is_empty(),
        "replica contents {when} ({} problems):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

fn names_listed(c: &Cluster, i: usize) -> BTreeSet<String> {
    c.vdi_list(i)
        .into_iter()
        .filter(|v| v.flag != "s")
        .map(|v| v.name)
        .collect()
}

/// The time stamp of a sheep log line (`2026-11-25T16:07:01.785820Z ...`, UTC).
fn line_time(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let micros: u64 = format!("{frac:0<6}")[..6].parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_micros(micros))
}

/// The first line of `log` containing `needle`, with its time.
fn find_line(log: &str, needle: &str) -> Option<(SystemTime, String)> {
    log.lines()
        .find(|l| l.contains(needle))
        .and_then(|l| Some((line_time(l)?, l.to_string())))
}

/// Ephemeral znodes ZooKeeper lists under /sheepdog/members (the `dump` command).
fn zk_members(zk: &ZooKeeper, server: usize) -> BTreeSet<String> {
    let dump = zk.four_letter(server, "dump").unwrap_or_else(|e| panic!("dump: {e}"));
    dump.lines()
        .filter_map(|l| l.trim().strip_prefix("/sheepdog/members/"))
        .map(str::to_string)
        .collect()
}

const QUEUE: &str = "/sheepdog/queue";
const TRIMMED: &str = "/sheepdog/trimmed";
const LOCK: &str = "/sheepdog/lock";

/// A ZooKeeper client of the test's own, to look at the driver's znodes. Its session lives
/// only while a call runs on it now and then: make a new one after a long pause.
struct Peek {
    rt: tokio::runtime::Runtime,
    client: zkc::Client,
}

impl Peek {
    fn connect(zk: &ZooKeeper) -> Peek {
        Peek::connect_to(&zk.hosts())
    }

    /// Connected to the servers `hosts` (`ip:port,...`) only.
    fn connect_to(hosts: &str) -> Peek {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = rt.block_on(zkc::Client::connect(hosts)).expect("connect to ZooKeeper");
        Peek { rt, client }
    }

    /// The queued events, (name, sequence number), oldest first.
    fn queue(&self) -> Vec<(String, u64)> {
        let names = self
            .rt
            .block_on(self.client.list_children(QUEUE))
            .unwrap_or_else(|e| panic!("list {QUEUE}: {e}"));
        let mut q: Vec<(String, u64)> = names
            .into_iter()
            .filter_map(|n| {
                let seq = n.rsplit('-').next()?.parse().ok()?;
                Some((n, seq))
            })
            .collect();
        q.sort_by_key(|(_, seq)| *seq);
        q
    }

    /// The VDI-operation lock's znodes.
    fn locks(&self) -> Result<Vec<String>, String> {
        self.rt
            .block_on(self.client.list_children(LOCK))
            .map_err(|e| format!("list {LOCK}: {e}"))
    }

    fn data(&self, path: &str) -> Option<Vec<u8>> {
        self.rt.block_on(self.client.get_data(path)).ok().map(|(d, _)| d)
    }

    /// A znode holding a decimal number.
    fn number(&self, path: &str) -> Option<u64> {
        String::from_utf8_lossy(&self.data(path)?).trim().parse().ok()
    }
}

// ---------------------------------------------------------------------------------------------
// 1. I/O and identical views

#[test]
fn basic_io_and_identical_views() {
    let t0 = Instant::now();
    let zk = ZooKeeper::standalone();
    let zk_ready = t0.elapsed();
    let c = zk_cluster(&zk, 3);
    c.format(3);

    // The driver really is ZooKeeper: each sheep holds an ephemeral member znode.
    let want: BTreeSet<String> = (0..3).map(|i| c.node(i).addr().to_string()).collect();
    assert_eq!(zk_members(&zk, 0), want, "ephemeral /sheepdog/members znodes");

    c.dog_ok(&["vdi", "create", "alpha", "40M"]);
    let mut model = vec![0u8; (40 * MIB) as usize];
    let t = Instant::now();
    c.put(0, "alpha", &mut model, 3 * MIB + 5, 1, 32 * MIB);
    let wrote = t.elapsed();
    c.check_reads("alpha", &model, &[1, 2], "after writing 32 MiB through node 0");

    let v = c.wait_same_views(&[0, 1, 2], CONVERGE, "after the write");
    assert_eq!(set_bits(&v.in_use), vec![c.vid_of("alpha")], "READ_VDIS bits");
    println!(
        "basic: ZooKeeper up in {zk_ready:?}; 32 MiB written through node 0 in {wrote:?}; total {:?}",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Concurrent VDI operations through different nodes

#[test]
fn concurrent_vdi_ops_agree_everywhere() {
    let t0 = Instant::now();
    let (_zk, c) = zk_cluster_formatted(3);
    c.dog_ok(&["vdi", "create", "shared", "8M"]);
    let ports: Vec<u16> = (0..3).map(|i| c.node(i).port()).collect();

    const PER_THREAD: usize = 6;
    let handles: Vec<_> = (0..3)
        .map(|t| {
            let port = ports[t];
            std::thread::spawn(move || -> Result<(), String> {
                let ok = |args: &[&str]| -> Result<(), String> {
                    let out = run_dog(port, args, None);
                    if out.success() {
                        Ok(())
                    } else {
                        Err(format!(
                            "node {t}: `dog {}`: {} {}",
                            args.join(" "),
                            out.status,
                            out.stderr
                        ))
                    }
                };
                for k in 0..PER_THREAD {
                    ok(&["vdi", "create", &format!("t{t}-{k}"), "4M"])?;
                    if k % 2 == 0 {
                        ok(&["vdi", "delete", &format!("t{t}-{k}")])?;
                    }
                    if k % 3 == 0 {
                        ok(&["vdi", "snapshot", "shared"])?;
                    }
                }
                Ok(())
            })
        })
        .collect();
    let errors: Vec<String> = handles
        .into_iter()
        .filter_map(|h| h.join().expect("client thread panicked").err())
        .collect();
    assert!(
        errors.is_empty(),
        "concurrent VDI operations failed:\n{}",
        errors.join("\n")
    );

    let v = c.wait_same_views(&[0, 1, 2], CONVERGE, "after concurrent creates, deletes and snapshots");
    let mut want: BTreeSet<String> = (0..3)
        .flat_map(|t| (0..PER_THREAD).filter(|k| k % 2 == 1).map(move |k| format!("t{t}-{k}")))
        .collect();
    want.insert("shared".into());
    for i in 0..3 {
        assert_eq!(names_listed(&c, i), want, "VDIs (working) listed by node {i}");
    }
    let snaps = c
        .vdi_list(0)
        .iter()
        .filter(|l| l.name == "shared" && l.flag == "s")
        .count();
    assert_eq!(
        snaps,
        3 * PER_THREAD.div_ceil(3),
        "snapshots of `shared` listed:\n{}",
        v.vdi_list
    );
    // 1 shared + its snapshots + 3 * PER_THREAD created; the deleted ones stay allocated.
    let in_use = set_bits(&v.in_use);
    assert_eq!(in_use.len(), 1 + snaps + 3 * PER_THREAD, "READ_VDIS bits: {in_use:?}");
    assert_eq!(set_bits(&v.deleted).len(), 3 * PER_THREAD / 2, "READ_DEL_VDIS bits");
    println!("ordering: total {:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 3. A node killed with SIGKILL

#[test]
fn killed_node_is_noticed_and_recovers() {
    let t0 = Instant::now();
    let (_zk, mut c) = zk_cluster_formatted(3);
    let (vid, mut model) = alpha_with_data(&c, 11, 12 * MIB + 3);
    let before = epoch_of(&c, 0);

    c.kill(2);
    let killed = Instant::now();
    let e = wait_members(&c, &[0, 1], before, NOTICE, "the survivors to drop the killed node 2");
    let noticed = killed.elapsed();
    assert_eq!(e, before + 1, "one new epoch for one departure");

    c.check_reads("alpha", &model, &[0, 1], "with node 2 killed");
    c.put(1, "alpha", &mut model, 10 * MIB, 12, 9 * MIB);
    c.check_reads("alpha", &model, &[0], "after a write with node 2 killed");

    c.node_mut(2).start();
    let restarted = Instant::now();
    let e2 = wait_members(&c, &[0, 1, 2], e, CONVERGE, "node 2 to rejoin");
    let rejoined = restarted.elapsed();
    assert_eq!(e2, e + 1, "one new epoch for the rejoin");
    c.check_reads("alpha", &model, &[2, 0, 1], "after node 2 rejoined");
    let rec = c.wait_recovered(RECOVERY_TIMEOUT);
    check_replica_bytes(&c, vid, &model, "after node 2 rejoined and recovered");
    // 3 copies on 3 nodes: node 2 holds every object again, with the new bytes.
    let holders: usize = c.node(2).objects().iter().filter(|o| o.vid().get() == vid).count();
    assert_eq!(holders, 1 + 5, "objects of alpha on node 2 (inode + 5 data objects)");
    c.wait_same_views(&[0, 1, 2], CONVERGE, "after the rejoin");
    println!(
        "kill: noticed in {noticed:?}; rejoined in {rejoined:?}; recovered epoch {rec}; total {:?}",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A node that joins after the VDIs exist

#[test]
fn late_joiner_catches_up() {
    let t0 = Instant::now();
    let (_zk, mut c) = zk_cluster_formatted(2);
    c.dog_ok(&["vdi", "create", "alpha", "24M"]);
    c.dog_ok(&["vdi", "create", "beta", "8M"]);
    c.dog_ok(&["vdi", "snapshot", "alpha"]);
    c.dog_ok(&["vdi", "create", "gone", "4M"]);
    c.dog_ok(&["vdi", "delete", "gone"]);
    let vid = c.vid_of("alpha");
    let mut model = vec![0u8; (24 * MIB) as usize];
    c.put(1, "alpha", &mut model, MIB, 21, 20 * MIB);
    let before = c.wait_same_views(&[0, 1, 2], CONVERGE, "before the late join");
    let stored: BTreeSet<_> = c.running().into_iter().flat_map(|i| c.node(i).objects()).collect();

    let t = Instant::now();
    let n = c.add_node(4);
    let joined = t.elapsed();
    assert_eq!(n, 3);
    let after = c.wait_same_views(&[0, 1, 2, 3], CONVERGE, "after node 3 joined");
    assert_eq!(after.in_use, before.in_use, "READ_VDIS after the late join");
    assert_eq!(after.deleted, before.deleted, "READ_DEL_VDIS after the late join");
    assert_eq!(after.vdi_list, before.vdi_list, "`vdi list -r` after the late join");
    assert_eq!(
        names_listed(&c, 3),
        BTreeSet::from(["alpha".to_string(), "beta".to_string()]),
        "VDIs node 3 lists"
    );
    c.check_reads("alpha", &model, &[3], "through the late joiner");
    c.wait_recovered(RECOVERY_TIMEOUT);
    c.check_reads("alpha", &model, &[3, 0], "after recovery");
    check_replica_bytes(&c, vid, &model, "after the late join and recovery");
    // Which objects move to the new node depends on the random ports: ask the placement ring,
    // and check that every object is now exactly where it says, node 3 included.
    c.wait_placement(&c.ring(), 2, &stored, RECOVERY_TIMEOUT);
    let mine = c.node(3).objects().iter().filter(|o| o.vid().get() == vid).count();
    println!(
        "late join: joined in {joined:?}; holds {mine} of alpha's {} objects; total {:?}",
        stored.iter().filter(|o| o.vid().get() == vid).count(),
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Every sheep killed and restarted

#[test]
fn whole_cluster_restart_resumes_without_format() {
    let t0 = Instant::now();
    let (_zk, mut c) = zk_cluster_formatted(3);
    c.dog_ok(&["vdi", "create", "alpha", "16M"]);
    let mut model = vec![0u8; (16 * MIB) as usize];
    c.put(2, "alpha", &mut model, 0, 31, 16 * MIB);
    let info_before = c.cluster_info(0).expect("CLUSTER_INFO");
    let list_before = c.dog_ok(&["vdi", "list", "-r"]).stdout;
    let bitmaps_before = c.bitmaps(0).expect("bitmaps");

    c.kill_all();
    let t = Instant::now();
    c.start_all();
    c.wait_running();
    let back = t.elapsed();
    for i in 0..3 {
        let ci = c.cluster_info(i).expect("CLUSTER_INFO");
        assert_eq!(
            ci.ctime, info_before.ctime,
            "node {i}: ctime after the restart (a reformat?)"
        );
        assert_eq!(ci.nr_copies, 3, "node {i}: copies after the restart");
        // The same members come back: the cluster may resume at the same epoch.
        assert!(
            ci.epoch >= info_before.epoch,
            "node {i}: epoch {} after the restart, was {}",
            ci.epoch,
            info_before.epoch
        );
        assert_eq!(
            c.bitmaps(i).expect("bitmaps"),
            bitmaps_before,
            "node {i}: bitmaps after the restart"
        );
    }
    assert_same_bytes(
        "vdi list -r after the restart",
        &c.dog_ok(&["vdi", "list", "-r"]).stdout,
        &list_before,
    );
    c.check_reads("alpha", &model, &[0, 1, 2], "after the restart");
    c.put(1, "alpha", &mut model, 5 * MIB - 1, 32, MIB + 2);
    c.check_reads("alpha", &model, &[2], "after a write following the restart");
    c.wait_same_views(&[0, 1, 2], CONVERGE, "after the restart");
    println!("restart: all back in {back:?}; total {:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 6. A sheep whose ZooKeeper session expires

#[test]
fn expired_session_stops_writes_and_rejoins() {
    let t0 = Instant::now();
    let (_zk, mut c) = zk_cluster_formatted(3);
    let (vid, mut model) = alpha_with_data(&c, 41, 8 * MIB);
    let before = epoch_of(&c, 0);
    let pid = c.node(2).pid().expect("node 2 runs");
    let port2 = c.node(2).port();

    signal(pid, libc::SIGSTOP);
    let stopped = Instant::now();
    // A write sent to node 2 while it is stopped waits in its socket: node 2 sees it as soon
    // as it runs again, before it can know that its session is gone.
    let queued_data = pseudo_random(42, MIB as usize);
    let queued = {
        let d = queued_data.clone();
        std::thread::spawn(move || {
            let cmd = dog_command(
                LOCALHOST,
                port2,
                &["vdi", "write", "alpha", &(12 * MIB).to_string(), &MIB.to_string()],
            );
            let out = run_tool(cmd, Some(&d), Duration::from_secs(90));
            (out, SystemTime::now())
        })
    };

    let e = wait_members(&c, &[0, 1], before, NOTICE, "nodes 0 and 1 to drop the stopped node 2");
    let removed = stopped.elapsed();
    c.put(1, "alpha", &mut model, 16 * MIB, 43, 4 * MIB);
    c.check_reads("alpha", &model, &[0], "with node 2 stopped");
    // Stopped for 5 s in all (2.5 session timeouts): the session is certainly gone.
    let hold = Duration::from_secs(5);
    if let Some(rest) = hold.checked_sub(stopped.elapsed()) {
        std::thread::sleep(rest);
    }
    signal(pid, libc::SIGCONT);
    let resumed = Instant::now();

    // A write sent right after SIGCONT.
    let fresh_data = pseudo_random(44, MIB as usize);
    let cmd = dog_command(
        LOCALHOST,
        port2,
        &["vdi", "write", "alpha", &(24 * MIB).to_string(), &MIB.to_string()],
    );
    let fresh = run_tool(cmd, Some(&fresh_data), Duration::from_secs(90));
    let fresh_done = SystemTime::now();
    let (queued_out, queued_done) = queued.join().expect("queued writer thread panicked");

    // Node 2 must have noticed the expiry and joined again as a new member.
    let rejoin = wait_until("node 2's log to say it joined again", CONVERGE, || {
        let log = c.node(2).log_text();
        let expired = find_line(&log, "ZooKeeper session expired");
        let again = find_line(&log, "joined again after the session expiry");
        match (expired, again) {
            (Some(_), Some(a)) => Ok(a),
            (x, y) => Err(format!("expiry line: {x:?}; rejoin line: {y:?}")),
        }
    });
    let e2 = wait_members(&c, &[0, 1, 2], e, CONVERGE, "node 2 to be a member again");
    let back = resumed.elapsed();
    let announced = (0..2).any(|i| {
        c.node(i)
            .log_text()
            .contains("node's ZooKeeper session ended; announcing its leave")
    });
    assert!(announced, "neither node 0 nor node 1 logged announcing node 2's leave");

    // Each write through node 2 either failed with a message, or succeeded no earlier than
    // node 2 joined again. Whatever succeeded is part of the data; what failed is not.
    let mut outcomes = Vec::new();
    for (what, out, done, off, data) in [
        (
            "write queued while node 2 was stopped",
            &queued_out,
            queued_done,
            12 * MIB,
            &queued_data,
        ),
        (
            "write sent right after SIGCONT",
            &fresh,
            fresh_done,
            24 * MIB,
            &fresh_data,
        ),
    ] {
        assert!(!out.timed_out(), "{what}: no answer within 90 s: {}", out.describe());
        if out.success() {
            assert!(
                done >= rejoin.0,
                "{what} succeeded at {done:?}, before node 2 joined again ({}): it accepted a \
                 write with its old view",
                rejoin.1
            );
            model[off as usize..(off + MIB) as usize].copy_from_slice(data);
            let after = done.duration_since(rejoin.0).unwrap_or_default();
            outcomes.push(format!("{what}: succeeded, {after:?} after the rejoin was logged"));
        } else {
            assert!(
                !out.stderr.trim().is_empty(),
                "{what} failed without a message: {}",
                out.describe()
            );
            outcomes.push(format!("{what}: failed: {}", out.stderr.trim()));
        }
    }

    let rec = c.wait_recovered(RECOVERY_TIMEOUT);
    c.check_reads(
        "alpha",
        &model,
        &[0, 1, 2],
        "after node 2 rejoined and recovery settled",
    );
    check_replica_bytes(&c, vid, &model, "after node 2 rejoined and recovery settled");
    c.wait_same_views(&[0, 1, 2], CONVERGE, "after node 2 rejoined");
    // And node 2 takes writes again.
    c.put(2, "alpha", &mut model, 28 * MIB, 45, MIB);
    c.check_reads("alpha", &model, &[0], "after a write through the rejoined node 2");
    println!(
        "session expiry: removed after {removed:?} (epoch {e}); member again {back:?} after \
         SIGCONT (epoch {e2}); recovered epoch {rec}; {}; total {:?}",
        outcomes.join("; "),
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 7. The ensemble's leader fails during VDI operations

/// One client operation of the failover series, retried until it succeeds or stalls too long.
#[derive(Debug)]
struct OpRecord {
    what: String,
    started: Instant,
    took: Duration,
    attempts: usize,
    errors: Vec<String>,
    ok: bool,
}

/// Runs `f` until it succeeds, for at most [`FAILOVER_STALL`]. `f` returns Err(message) on a
/// failure worth retrying.
fn bounded(what: String, mut f: impl FnMut() -> Result<(), String>) -> OpRecord {
    let started = Instant::now();
    let mut errors = Vec::new();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match f() {
            Ok(()) => {
                return OpRecord {
                    what,
                    started,
                    took: started.elapsed(),
                    attempts,
                    errors,
                    ok: true,
                }
            }
            Err(e) => errors.push(format!("after {:?}: {e}", started.elapsed())),
        }
        if started.elapsed() >= FAILOVER_STALL {
            return OpRecord {
                what,
                started,
                took: started.elapsed(),
                attempts,
                errors,
                ok: false,
            };
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn dog_result(out: DogOutput) -> Result<DogOutput, String> {
    if out.success() {
        Ok(out)
    } else {
        Err(format!(
            "`dog {}`: {}: {}",
            out.args.join(" "),
            out.status,
            out.stderr.trim()
        ))
    }
}

#[test]
fn ensemble_leader_failover() {
    let t0 = Instant::now();
    let mut zk = ZooKeeper::ensemble(3);
    let zk_ready = t0.elapsed();
    let leader = zk.leader().expect("the ensemble has one leader");
    let c = zk_cluster(&zk, 3);
    c.format(3);
    c.dog_ok(&["vdi", "create", "common", "32M"]);
    let ports: Vec<u16> = (0..3).map(|i| c.node(i).port()).collect();

    const STEPS: usize = 12;
    let done = Arc::new(AtomicUsize::new(0));
    let worker = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut records = Vec::new();
            let mut created = Vec::new();
            let mut writes: Vec<(u64, u64)> = Vec::new();
            for k in 0..STEPS {
                let via = k % 3;
                let name = format!("f{k}");
                // Create; a retry after an ambiguous failure may find the VDI already there.
                let mut first_error: Option<String> = None;
                let r = bounded(format!("create {name} through node {via}"), || {
                    let out = run_dog(ports[via], &["vdi", "create", &name, "8M"], None);
                    if out.success() {
                        return Ok(());
                    }
                    if first_error.is_some() && out.stderr.contains("already") {
                        return Ok(());
                    }
                    let e = format!("{}: {}", out.status, out.stderr.trim());
                    first_error.get_or_insert(e.clone());
                    Err(e)
                });
                let ok = r.ok;
                records.push(r);
                if !ok {
                    break;
                }
                created.push(name);
                // Write 1 MiB of `common` through the next node.
                let via = (k + 1) % 3;
                let off = k as u64 * 2 * MIB + 7;
                let seed = 100 + k as u64;
                let d = pseudo_random(seed, MIB as usize);
                let r = bounded(format!("write common@{off} through node {via}"), || {
                    dog_result(run_dog(
                        ports[via],
                        &["vdi", "write", "common", &off.to_string(), &MIB.to_string()],
                        Some(&d),
                    ))
                    .map(|_| ())
                });
                let ok = r.ok;
                records.push(r);
                if !ok {
                    break;
                }
                writes.push((off, seed));
                done.store(k + 1, Ordering::SeqCst);
            }
            (records, created, writes)
        })
    };

    // Kill the leader a third of the way through.
    wait_until("the first operations to complete", Duration::from_secs(120), || {
        if done.load(Ordering::SeqCst) >= STEPS / 3 || worker.is_finished() {
            Ok(())
        } else {
            Err(format!("{} steps done", done.load(Ordering::SeqCst)))
        }
    });
    zk.kill(leader);
    let killed = Instant::now();
    let steps_before_kill = done.load(Ordering::SeqCst);
    let new_leader = zk.wait_leader(Duration::from_secs(30));
    let elected = killed.elapsed();
    let (records, created, writes) = worker.join().expect("operations thread panicked");

    let report: Vec<String> = records
        .iter()
        .map(|r| {
            format!(
                "{} (started {:+.1?} from the kill): {} in {:?} after {} attempts {:?}",
                r.what,
                r.started.checked_duration_since(killed).map_or_else(
                    || -(killed.duration_since(r.started).as_secs_f64()),
                    |d| d.as_secs_f64()
                ),
                if r.ok { "ok" } else { "FAILED" },
                r.took,
                r.attempts,
                r.errors
            )
        })
        .collect();
    assert!(
        records.iter().all(|r| r.ok) && created.len() == STEPS,
        "operations across the leader failover (leader was server {leader}, killed after \
         {steps_before_kill} steps):\n{}",
        report.join("\n")
    );
    let stall = records.iter().map(|r| r.took).max().expect("some operations");
    assert!(
        stall < FAILOVER_STALL,
        "longest operation {stall:?}:\n{}",
        report.join("\n")
    );

    // Every acknowledged operation is applied on every node.
    let v = c.wait_same_views(&[0, 1, 2], CONVERGE, "after the failover");
    let mut want: BTreeSet<String> = created.iter().cloned().collect();
    want.insert("common".into());
    for i in 0..3 {
        assert_eq!(names_listed(&c, i), want, "VDIs listed by node {i}");
    }
    assert_eq!(set_bits(&v.in_use).len(), want.len(), "READ_VDIS bits");
    let mut model = vec![0u8; (32 * MIB) as usize];
    for (off, seed) in &writes {
        model[*off as usize..(*off + MIB) as usize].copy_from_slice(&pseudo_random(*seed, MIB as usize));
    }
    c.check_reads("common", &model, &[0, 1, 2], "after the failover");

    // The killed server comes back as a follower.
    zk.restart(leader);
    let l2 = zk.wait_leader(Duration::from_secs(30));
    assert_eq!(l2, new_leader, "leadership moved again when the old leader came back");
    let retried: Vec<&String> = records.iter().filter(|r| r.attempts > 1).map(|r| &r.what).collect();
    println!(
        "failover: ensemble up in {zk_ready:?}; leader {leader} killed after {steps_before_kill} \
         steps; server {new_leader} elected in {elected:?}; longest operation {stall:?}; \
         retried: {retried:?}; total {:?}\n{}",
        t0.elapsed(),
        report.join("\n")
    );
}

/// A TCP proxy in front of one ZooKeeper server. Once armed, it forwards the next request
/// that creates a znode under its prefix and then resets the client's connection (RST) in
/// place of the reply: the create lands, and the client sees "connection reset by peer"
/// with no answer, as when a server dies under a request. Clients reconnect through it with
/// their sessions intact.
struct CutProxy {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
}

impl CutProxy {
    fn start(server: SocketAddr, prefix: &'static str) -> CutProxy {
        let listener = TcpListener::bind((LOCALHOST, 0)).expect("proxy listener");
        let addr = listener.local_addr().expect("proxy address");
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (a, k) = (armed.clone(), cuts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(upstream) = TcpStream::connect(server) else {
                    continue;
                };
                let (Ok(c_in), Ok(s_in)) = (client.try_clone(), upstream.try_clone()) else {
                    continue;
                };
                let cut_xid = Arc::new(AtomicI64::new(i64::MIN));
                let (a, x) = (a.clone(), cut_xid.clone());
                std::thread::spawn(move || forward_requests(c_in, upstream, prefix, &a, &x));
                let k = k.clone();
                std::thread::spawn(move || forward_replies(s_in, client, &cut_xid, &k));
            }
        });
        CutProxy { addr, armed, cuts }
    }
}

fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut b = vec![0u8; usize::try_from(i32::from_be_bytes(len)).ok()?];
    s.read_exact(&mut b).ok()?;
    Some(b)
}

fn write_frame(s: &mut TcpStream, b: &[u8]) -> bool {
    s.write_all(&(b.len() as i32).to_be_bytes())
        .and_then(|()| s.write_all(b))
        .is_ok()
}

fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The xid of request `frame` if it creates a znode under `prefix` (create, create2,
/// container or TTL create: the path comes first in each).
fn creates_under(frame: &[u8], prefix: &str) -> Option<i32> {
    let op = be_i32(frame, 4)?;
    let len = usize::try_from(be_i32(frame, 8)?).ok()?;
    let path = frame.get(12..12 + len)?;
    (matches!(op, 1 | 15 | 19 | 21) && path.starts_with(prefix.as_bytes())).then_some(be_i32(frame, 0)?)
}

/// Client to server. The first frame is the session handshake, the rest are requests.
fn forward_requests(mut from: TcpStream, mut to: TcpStream, prefix: &str, armed: &AtomicBool, cut_xid: &AtomicI64) {
    let mut first = true;
    while let Some(f) = read_frame(&mut from) {
        let cut = (!first)
            .then(|| creates_under(&f, prefix))
            .flatten()
            .filter(|_| armed.swap(false, Ordering::SeqCst));
        first = false;
        if let Some(xid) = cut {
            // Before the request leaves: its reply may come back at once.
            cut_xid.store(i64::from(xid), Ordering::SeqCst);
        }
        if !write_frame(&mut to, &f) {
            break;
        }
        if cut.is_some() {
            // Leave both connections to the other direction, which resets the client's.
            return;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Server to client, until the reply to the cut request: that one is dropped and the
/// client's connection reset.
fn forward_replies(mut from: TcpStream, mut to: TcpStream, cut_xid: &AtomicI64, cuts: &AtomicUsize) {
    let mut first = true;
    while let Some(f) = read_frame(&mut from) {
        let xid = (!first).then(|| be_i32(&f, 0)).flatten();
        first = false;
        if xid.is_some_and(|x| i64::from(x) == cut_xid.load(Ordering::SeqCst)) {
            let off = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt reads `off`, a valid linger, for the open socket of `to`.
            let set = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&to),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    std::ptr::from_ref(&off).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            assert_eq!(set, 0, "SO_LINGER on the proxy's client socket");
            cuts.fetch_add(1, Ordering::SeqCst);
            // Dropping `to`, its last descriptor, sends the RST.
            return;
        }
        if !write_frame(&mut to, &f) {
            return;
        }
    }
}

/// A lock request whose create lands but whose reply is lost to a connection reset (as when
/// the ZooKeeper server dies under it) must not leave its znode behind: the sheep's session
/// lives on, and every later VDI operation would queue behind the znode for as long as it
/// does. The driver finds its znode by the token in its name and goes on.
#[test]
fn a_lock_create_cut_by_a_connection_reset_leaves_no_lock_behind() {
    let zk = ZooKeeper::standalone();
    let server: SocketAddr = zk.hosts().parse().expect("one server's address");
    let proxy = CutProxy::start(server, "/sheepdog/lock/");
    let c = Cluster::builder()
        .nodes(3)
        .driver(format!("zookeeper:{},timeout={SESSION_SECS}", proxy.addr))
        .start();
    c.format(3);
    proxy.armed.store(true, Ordering::SeqCst);
    let r = bounded("create cut through node 0".into(), || {
        dog_result(run_dog(c.node(0).port(), &["vdi", "create", "cut", "4M"], None)).map(|_| ())
    });
    assert_eq!(
        proxy.cuts.load(Ordering::SeqCst),
        1,
        "the proxy cut no lock request: the test proved nothing"
    );
    assert!(r.ok, "{r:?}");
    for i in 0..3 {
        let name = format!("after-{i}");
        let r = bounded(format!("create {name} through node {i}"), || {
            dog_result(run_dog(c.node(i).port(), &["vdi", "create", &name, "4M"], None)).map(|_| ())
        });
        assert!(r.ok, "{r:?}");
    }
    // Released locks go in the background.
    let peek = Peek::connect(&zk);
    wait_until("no lock znode left", CONVERGE, || match peek.locks()? {
        l if l.is_empty() => Ok(()),
        l => Err(format!("lock znodes: {l:?}")),
    });
}

// ---------------------------------------------------------------------------------------------
// 9. A duplicate in the queue

/// An append retried after its reply was lost leaves the same event twice in the queue (a
/// leader failover does this). The copy must not be applied again, and its position must still
/// count as applied on every node, since the writer that retried waits for exactly that one.
#[test]
fn duplicate_queued_event_is_applied_once_and_its_position_counts() {
    let (zk, c) = zk_cluster_formatted(3);
    c.dog_ok(&["vdi", "create", "alpha", "8M"]);
    let peek = Peek::connect(&zk);
    let (last, _) = peek.queue().pop().expect("the queue holds events");
    let body = peek.data(&format!("{QUEUE}/{last}")).expect("the last event");
    let opts = zkc::CreateMode::PersistentSequential.with_acls(zkc::Acls::anyone_all());
    let (_, seq) = peek
        .rt
        .block_on(peek.client.create(&format!("{QUEUE}/ev-"), &body, &opts))
        .expect("append the duplicate");
    let dup_pos = seq.into_i64() as u64 + 1;

    for i in 0..c.len() {
        let addr = c.node(i).addr();
        wait_until(
            &format!("node {i} to count the duplicate's position {dup_pos} as applied"),
            NOTICE,
            || match peek.number(&format!("/sheepdog/applied/{addr}")).unwrap_or(0) {
                p if p >= dup_pos => Ok(()),
                p => Err(format!("applied position {p}")),
            },
        );
    }
    // Applied once: still one alpha, and the cluster goes on.
    c.dog_ok(&["vdi", "create", "beta", "8M"]);
    for i in 0..c.len() {
        assert_eq!(
            names_listed(&c, i),
            BTreeSet::from(["alpha".to_string(), "beta".to_string()]),
            "VDIs seen through node {i}"
        );
    }
    c.wait_same_views(&[0, 1, 2], CONVERGE, "after the duplicate");
}

// ---------------------------------------------------------------------------------------------
// 10. Checkpoints and the trimmed queue

/// Events between two checkpoints.
const EVERY: u64 = sheep::cluster::CHECKPOINT_EVERY;

/// Thousands of events after the data was written, most of them trimmed: a node joining
/// then starts from the checkpoint and ends up with the same bitmaps, epoch history and VDIs
/// as the others; then every sheep is killed and restarted, and all of it is still there.
#[test]
fn joiner_after_trimmed_events_and_restart_after_trim() {
    let t0 = Instant::now();
    let (zk, mut c) = zk_cluster_formatted(2);
    let (vid, mut model) = alpha_with_data(&c, 51, 12 * MIB);
    c.dog_ok(&["vdi", "snapshot", "alpha"]);
    c.dog_ok(&["vdi", "create", "gone", "4M"]);
    c.dog_ok(&["vdi", "delete", "gone"]);
    // Three clients, 2 × 500 events each: three checkpoints' worth.
    let t = Instant::now();
    c.churn(&[0, 1, 2], EVERY as usize / 2);
    let churned = t.elapsed();
    let writers = c.wait_trimming_checkpoints(2, CONVERGE, "after 3,000 events");
    let queued = Peek::connect(&zk).queue().len();
    assert!(
        queued < 2 * EVERY as usize,
        "{queued} events still queued after 3,000 events and checkpoints {writers:?}"
    );
    let before = c.wait_same_views(&[0, 1, 2], CONVERGE, "before the join");

    let n = c.add_node(4);
    let joined = c.wait_same_views(&[0, 1, 2, n], CONVERGE, "after node 3 joined");
    assert!(
        c.node(n).starts_from_checkpoint() > 0,
        "node {n} joined without starting from the checkpoint:\n{}",
        c.node(n).log_tail(40)
    );
    joined.assert_same_vdis(&before, "after the join");
    c.check_reads("alpha", &model, &[n], "through the node that joined after the trim");

    c.kill_all();
    c.start_all();
    c.wait_running();
    let restarted = c.wait_same_views(&[0, 1, 2, n], CONVERGE, "after every sheep restarted");
    restarted.assert_same_vdis(&joined, "after the restart");
    c.wait_recovered(RECOVERY_TIMEOUT);
    c.check_reads("alpha", &model, &[0, n], "after the restart");
    check_replica_bytes(&c, vid, &model, "after the restart");
    c.put(n, "alpha", &mut model, 20 * MIB, 52, MIB);
    c.dog_ok(&["vdi", "create", "after", "4M"]);
    c.wait_same_views(&[0, 1, 2, n], CONVERGE, "after a create following the restart");
    println!(
        "trimmed queue: 3,000+ events in {churned:?}, {queued} left queued; checkpoints \
         {writers:?}; total {:?}",
        t0.elapsed()
    );
}

/// The node writing checkpoints loses its session (SIGSTOP): another member takes the job
/// over and trims the events the stopped node never read, and that node, back, starts from
/// the checkpoint with the same state as the others.
#[test]
fn checkpointing_node_session_expiry() {
    let (_zk, mut c) = zk_cluster_formatted(3);
    let (vid, mut model) = alpha_with_data(&c, 61, 8 * MIB);
    c.churn(&[0, 1, 2], EVERY as usize / 4);
    let writers = c.wait_trimming_checkpoints(1, CONVERGE, "after 1,500 events");
    let lowest = (0..c.len()).min_by_key(|&i| c.node(i).addr()).expect("three nodes");
    assert_eq!(
        writers.keys().copied().collect::<Vec<_>>(),
        vec![lowest],
        "checkpoints must come from the member with the lowest address only: {writers:?}"
    );
    let w = lowest;
    let others: Vec<usize> = (0..c.len()).filter(|&i| i != w).collect();
    let before = epoch_of(&c, others[0]);
    let from_checkpoint = c.node(w).starts_from_checkpoint();

    let pid = c.node(w).pid().expect("the writer runs");
    signal(pid, libc::SIGSTOP);
    let stopped = Instant::now();
    let e = wait_members(&c, &others, before, NOTICE, "the others to drop the stopped writer");
    c.churn(&others, EVERY as usize * 3 / 4);
    let taken_over = wait_until("another member to write a checkpoint that trims", CONVERGE, || {
        let by_others: Vec<(usize, Vec<(u64, u64)>)> = c
            .checkpoint_writers()
            .into_iter()
            .filter(|(i, cps)| *i != w && cps.iter().any(|(_, t)| *t > 0))
            .collect();
        by_others.into_iter().next().ok_or("none yet".to_string())
    });
    let hold = Duration::from_secs(5);
    if let Some(rest) = hold.checked_sub(stopped.elapsed()) {
        std::thread::sleep(rest);
    }
    signal(pid, libc::SIGCONT);

    wait_until("the writer's log to say it joined again", CONVERGE, || {
        find_line(&c.node(w).log_text(), "joined again after the session expiry").ok_or("not yet".to_string())
    });
    wait_members(&c, &[0, 1, 2], e, CONVERGE, "the old writer to be a member again");
    c.wait_same_views(&[0, 1, 2], CONVERGE, "after the old writer rejoined");
    assert!(
        c.node(w).starts_from_checkpoint() > from_checkpoint,
        "node {w} rejoined without starting from the checkpoint although its events were \
         trimmed (checkpoints by node {}: {:?})",
        taken_over.0,
        taken_over.1
    );
    c.wait_recovered(RECOVERY_TIMEOUT);
    c.check_reads("alpha", &model, &[w], "through the old writer after it rejoined");
    c.put(w, "alpha", &mut model, 16 * MIB, 62, MIB);
    check_replica_bytes(&c, vid, &model, "after the old writer rejoined");
    c.churn(&[0, 1, 2], EVERY as usize / 4);
    c.wait_same_views(&[0, 1, 2], CONVERGE, "after more events");
}

/// `kill -9` of the sheep writing a checkpoint and of the ZooKeeper leader just as the trim
/// begins (the test watches the trim mark): the cluster comes back with its state, a new
/// node joins with the same state, and the next checkpoint removes what the crash left.
#[test]
fn crash_of_the_checkpointer_and_zookeeper_leader_mid_trim() {
    let t0 = Instant::now();
    let mut zk = ZooKeeper::ensemble(3);
    let mut c = zk_cluster(&zk, 3);
    c.format(2);
    let (vid, mut model) = alpha_with_data(&c, 71, 8 * MIB);
    c.churn(&[0, 1, 2], EVERY as usize / 4);
    let writers = c.wait_trimming_checkpoints(1, CONVERGE, "after 1,500 events");
    let w = *writers.keys().next().expect("a writer");
    let leader = zk.wait_leader(CONVERGE);

    // Churn until the next trim mark is set, then kill both at once. Watched through a
    // server that stays up.
    let follower = (0..zk.len()).find(|&i| i != leader).expect("three servers");
    let peek = Peek::connect_to(&zk.client_addr(follower).to_string());
    let (_, _, mark) = peek
        .rt
        .block_on(peek.client.get_and_watch_data(TRIMMED))
        .expect("watch the trim mark");
    let stop = AtomicBool::new(false);
    let (killed_at, leftover) = std::thread::scope(|s| {
        for i in 0..c.len() {
            let (addr, stop) = (c.node(i).addr(), &stop);
            // Failures are expected once the kill starts; the churn just stops there.
            s.spawn(move || BlockingClient::new(addr).churn(&format!("churn-{i}"), usize::MAX, stop));
        }
        let fired = peek
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(120), mark.changed()).await });
        signal(c.node(w).pid().expect("the writer runs"), libc::SIGKILL);
        signal(zk.pid(leader).expect("the leader runs"), libc::SIGKILL);
        stop.store(true, Ordering::Relaxed);
        assert!(fired.is_ok(), "no new trim mark within 120 s of churn");
        let at = peek.number(TRIMMED);
        let left = at.map(|t| peek.queue().iter().filter(|(_, seq)| *seq < t).count());
        (at, left)
    });
    zk.restart(leader);
    zk.wait_serving(leader);
    c.restart(w);
    c.wait_running();
    c.wait_same_views(&[0, 1, 2], CONVERGE, "after the crash");
    c.wait_recovered(RECOVERY_TIMEOUT);
    c.check_reads("alpha", &model, &[0, 1, 2], "after the crash");
    check_replica_bytes(&c, vid, &model, "after the crash");

    let n = c.add_node(4);
    let joined = c.wait_same_views(&[0, 1, 2, n], CONVERGE, "after a node joined");
    assert!(
        c.node(n).starts_from_checkpoint() > 0,
        "the new node did not start from the checkpoint"
    );
    c.put(n, "alpha", &mut model, 12 * MIB, 72, MIB);
    c.check_reads("alpha", &model, &[w], "after a write through the new node");

    // The next checkpoint finishes the trim the crash interrupted.
    let done_before = c.checkpoint_writers().values().map(Vec::len).sum::<usize>();
    c.churn(&[0, 1, 2, n], EVERY as usize / 4);
    wait_until("a checkpoint after the crash", CONVERGE, || {
        match c.checkpoint_writers().values().map(Vec::len).sum::<usize>() {
            k if k > done_before => Ok(()),
            k => Err(format!("{k} checkpoints logged, {done_before} before the crash")),
        }
    });
    if let Some(mark) = killed_at {
        // A new session: the watcher's expired while nobody drove its runtime.
        let below: Vec<u64> = Peek::connect(&zk)
            .queue()
            .iter()
            .map(|(_, q)| *q)
            .filter(|q| *q < mark)
            .collect();
        assert!(
            below.is_empty(),
            "events below the trim mark {mark} set before the crash are still queued: {below:?}"
        );
    }
    let after = c.wait_same_views(&[0, 1, 2, n], CONVERGE, "after the next checkpoint");
    assert_eq!(
        after.vdi_list.lines().count(),
        joined.vdi_list.lines().count() + 1,
        "`vdi list -r` with churn-{n} added"
    );
    println!(
        "crash mid-trim: killed sheep {w} and ZooKeeper server {leader} at trim mark \
         {killed_at:?} with {leftover:?} events below it still queued; total {:?}",
        t0.elapsed()
    );
}
