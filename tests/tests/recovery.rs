//! Node failure and recovery: a node joining, a node killed in the middle of a write, the
//! whole cluster killed node by node or at once, membership churn, stale copies on nodes that
//! were away, gateway-only nodes, a full disk, and recovery progress as operators see it.
//!
//! "Recovered" means: every running node reports the same cluster epoch, is idle, and has
//! recovered that epoch (STAT_RECOVERY). Copies a node no longer owns are removed only after
//! that, so placement ("every object on exactly the nodes the ring names, nowhere else") is
//! polled with a deadline as well.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol::node::{sort_nodes, Node};
use protocol::opcode::SD_SHEEP_PROTO_VER;
use protocol::placement::Ring;
use protocol::{flags, op, ObjArgs, Oid, RequestHeader, ResultCode, Vid};
use tests::{assert_same_bytes, dog_bin, pseudo_random, run_dog, wait_until, Cluster, ScratchFs};

const MIB: u64 = 1 << 20;
/// Object size of every VDI here (the cluster default, 1 << 22).
const OBJ: u64 = 4 * MIB;
/// How long recovery (and the orphan removal after it) may take.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `dog` fed by the test may run.
const FED_DOG_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Cluster observations

/// Panics (the cluster's drop prints the logs) if a node that should run has exited.
fn assert_alive(c: &mut Cluster) {
    for i in c.running() {
        if let Some(s) = c.node_mut(i).exit_status() {
            panic!(
                "node {i} (port {}) exited with {s} but should be running",
                c.node(i).port()
            );
        }
    }
}

/// The placement ring of the running nodes, built from what the harness knows.
fn live_ring(c: &Cluster) -> Ring {
    let mut v: Vec<Node> = c.running().iter().map(|&i| c.node(i).protocol_node()).collect();
    sort_nodes(&mut v);
    Ring::new(v)
}

/// The epoch every running node reports, asserting that they agree.
fn cluster_epoch(c: &Cluster) -> u32 {
    let epochs: BTreeMap<usize, u32> = c
        .running()
        .into_iter()
        .map(|i| {
            let ci = c
                .cluster_info(i)
                .unwrap_or_else(|e| panic!("CLUSTER_INFO to node {i}: {e}"));
            (i, ci.epoch)
        })
        .collect();
    let distinct: BTreeSet<u32> = epochs.values().copied().collect();
    assert_eq!(
        distinct.len(),
        1,
        "nodes disagree on the cluster epoch (node: epoch): {epochs:?}"
    );
    distinct.into_iter().next().expect("one epoch")
}

/// The objects of a VDI written at `indices`: its inode and those data objects.
fn vdi_objects(vid: u32, indices: impl IntoIterator<Item = u32>) -> BTreeSet<Oid> {
    let v = Vid::new(vid).expect("vid fits in 24 bits");
    let mut s: BTreeSet<Oid> = indices.into_iter().map(|i| v.data_oid(i)).collect();
    s.insert(v.inode_oid());
    s
}

/// Object indices a byte range touches.
fn indices(offset: u64, len: u64) -> BTreeSet<u32> {
    (offset / OBJ..=(offset + len - 1) / OBJ).map(|i| i as u32).collect()
}

/// Waits until the running nodes hold exactly the objects `expected`, each where the ring of
/// the running nodes (as the harness knows them) names for `copies` copies.
fn wait_placement(c: &Cluster, copies: usize, expected: &BTreeSet<Oid>) {
    c.wait_placement(&live_ring(c), copies, expected, RECOVERY_TIMEOUT);
}

/// Every copy on a running node of `vid`'s data objects holds exactly `model`'s bytes for
/// that object (the whole VDI is modelled, zeros where never written); copies of the inode
/// are identical to each other.
fn check_replica_bytes(c: &Cluster, vid: u32, model: &[u8]) {
    let v = Vid::new(vid).expect("vid fits in 24 bits");
    let mut problems = Vec::new();
    let mut inode: Option<(usize, Vec<u8>)> = None;
    for (oid, nodes) in c.live_holders() {
        if oid.vid().get() != vid {
            continue;
        }
        for n in nodes {
            let Some(b) = c.node(n).object_bytes(oid) else {
                problems.push(format!("{oid} vanished from node {n}"));
                continue;
            };
            if oid == v.inode_oid() {
                match &inode {
                    None => inode = Some((n, b)),
                    Some((first, fb)) => {
                        if *fb != b {
                            problems.push(format!("inode {oid}: copy on node {n} differs from node {first}'s"));
                        }
                    }
                }
            } else if oid.is_data() {
                let start = u64::from(oid.index()) * OBJ;
                let Some(want) = model.get(start as usize..(start + OBJ) as usize) else {
                    problems.push(format!("{oid} on node {n} lies past the modelled VDI"));
                    continue;
                };
                if b != want {
                    let at = b.iter().zip(want).position(|(x, y)| x != y);
                    problems.push(format!(
                        "{oid} on node {n}: {} bytes, differs from the data written (first \
                         difference at object offset {at:?}; {})",
                        b.len(),
                        classify(&b)
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "replica contents ({} problems):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Says whether `got` is all zeros, for failure messages.
fn classify(got: &[u8]) -> &'static str {
    if got.iter().all(|&b| b == 0) {
        "the copy is all zeros"
    } else {
        "the copy holds other data"
    }
}

/// `dog cluster info -r` through every running node; asserts they print the same thing and
/// that the epochs listed are consecutive, newest first, ending at 1. Returns the output.
#[track_caller]
fn cluster_info_everywhere(c: &Cluster, when: &str) -> String {
    let outs: BTreeMap<usize, String> = c
        .running()
        .into_iter()
        .map(|i| {
            (
                i,
                c.dog_at(i, &["cluster", "info", "-r"], None).expect_ok().stdout_str(),
            )
        })
        .collect();
    let (first_i, first) = outs.iter().next().expect("a running node");
    for (i, o) in &outs {
        assert_eq!(
            o, first,
            "`dog cluster info -r` {when}: node {i} prints\n{o}\nbut node {first_i} prints\n{first}"
        );
    }
    let epochs: Vec<u32> = epoch_lines(first).iter().map(|(e, _)| *e).collect();
    let want: Vec<u32> = (1..=epochs.len() as u32).rev().collect();
    assert_eq!(
        epochs, want,
        "`dog cluster info -r` {when}: epochs should run newest first down to 1 without gaps:\n{first}"
    );
    first.clone()
}

/// `(epoch, members)` of each epoch line of `dog cluster info -r` (`TIME EPOCH [a:p:v, ...]`).
fn epoch_lines(text: &str) -> Vec<(u32, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ' ');
            let (time, epoch, members) = (f.next()?, f.next()?, f.next()?);
            time.parse::<u64>().ok()?;
            let e = epoch.parse::<u32>().ok()?;
            members.starts_with('[').then(|| (e, members.to_string()))
        })
        .collect()
}

/// The members of the newest epoch as `dog cluster info -r` prints them, for the running
/// nodes: `[127.0.0.1:PORT:VNODES, ...]` sorted as the node list is.
fn expected_members(c: &Cluster) -> String {
    let ring = live_ring(c);
    let m: Vec<String> = ring
        .nodes()
        .iter()
        .map(|n| format!("{}:{}", n.addr, n.nr_vnodes))
        .collect();
    format!("[{}]", m.join(", "))
}

// ---------------------------------------------------------------------------------------------
// A dog whose stdin the test feeds piece by piece

/// A running `dog` whose standard input the test writes in pieces, so that something can
/// happen to the cluster at a known point of the transfer. Killed on drop if still running.
struct FedDog {
    cmdline: String,
    child: Child,
    stdin: Option<ChildStdin>,
    out: Option<JoinHandle<Vec<u8>>>,
    err: Option<JoinHandle<Vec<u8>>>,
}

impl FedDog {
    fn spawn(port: u16, args: &[&str]) -> FedDog {
        let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        full.extend(["-a".into(), "127.0.0.1".into(), "-p".into(), port.to_string()]);
        let cmdline = format!("dog {}", full.join(" "));
        let mut child = Command::new(dog_bin())
            .args(&full)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{cmdline}`: {e}"));
        let mut o = child.stdout.take().expect("dog stdout pipe");
        let mut e = child.stderr.take().expect("dog stderr pipe");
        FedDog {
            cmdline,
            stdin: child.stdin.take(),
            child,
            out: Some(std::thread::spawn(move || {
                let mut b = Vec::new();
                let _ = o.read_to_end(&mut b);
                b
            })),
            err: Some(std::thread::spawn(move || {
                let mut b = Vec::new();
                let _ = e.read_to_end(&mut b);
                b
            })),
        }
    }

    /// Writes `data` to dog's stdin (in a helper thread, so a dog that stopped reading cannot
    /// hang the test) and returns once dog has taken it all.
    fn feed(&mut self, data: &[u8]) {
        let mut pipe = self.stdin.take().expect("stdin already closed");
        let data = data.to_vec();
        let writer = std::thread::spawn(move || {
            let r = pipe.write_all(&data).and_then(|()| pipe.flush());
            (pipe, r)
        });
        let deadline = Instant::now() + FED_DOG_TIMEOUT;
        while !writer.is_finished() {
            if Instant::now() >= deadline {
                panic!("`{}` did not read its input within {FED_DOG_TIMEOUT:?}", self.cmdline);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let (pipe, r) = writer.join().expect("stdin writer thread panicked");
        if let Err(e) = r {
            let (status, _, stderr) = self.finish_inner();
            panic!(
                "`{}` stopped reading its input ({e}); it ended with {status:?}\nstderr: {stderr}",
                self.cmdline
            );
        }
        self.stdin = Some(pipe);
    }

    fn finish_inner(&mut self) -> (Option<ExitStatus>, Vec<u8>, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + FED_DOG_TIMEOUT;
        let status = loop {
            match self.child.try_wait().expect("waiting for dog") {
                Some(s) => break Some(s),
                None if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let out = self
            .out
            .take()
            .map(|h| h.join().expect("stdout reader"))
            .unwrap_or_default();
        let err = self
            .err
            .take()
            .map(|h| h.join().expect("stderr reader"))
            .unwrap_or_default();
        (status, out, String::from_utf8_lossy(&err).into_owned())
    }

    /// Closes stdin and waits for dog to exit: (status, stdout, stderr); `None` status when it
    /// had to be killed at the deadline.
    fn finish(mut self) -> (Option<ExitStatus>, Vec<u8>, String) {
        self.finish_inner()
    }
}

impl Drop for FedDog {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A node joins

/// A fourth node joins a 3-node, 2-copy cluster holding 40 MiB: afterwards every object sits on
/// exactly its placement nodes over 4 nodes (the new one included), no orphan copy remains
/// anywhere, and the data reads back identical through every node.
#[test]
fn join_moves_objects_to_the_new_placement() {
    let mut c = Cluster::start_formatted(3, 2);
    c.dog_ok(&["vdi", "create", "alpha", "40M"]);
    let mut model = vec![0u8; (40 * MIB) as usize];
    c.put(0, "alpha", &mut model, 0, 101, 40 * MIB);
    let vid = c.vid_of("alpha");
    let objects = vdi_objects(vid, indices(0, 40 * MIB));
    wait_placement(&c, 2, &objects);
    assert_eq!(cluster_epoch(&c), 1, "epoch after format");

    c.add_node(4);
    let epoch = c.wait_recovered(RECOVERY_TIMEOUT);
    assert_eq!(epoch, 2, "epoch after one join (format is epoch 1)");
    wait_placement(&c, 2, &objects);
    check_replica_bytes(&c, vid, &model);
    c.check_reads("alpha", &model, &(0..c.len()).collect::<Vec<_>>(), "after the join");
    let info = cluster_info_everywhere(&c, "after the join");
    let newest = &epoch_lines(&info)[0];
    assert_eq!(newest.1, expected_members(&c), "members of the newest epoch:\n{info}");
}

// ---------------------------------------------------------------------------------------------
// 2. A node dies in the middle of a full-volume write

/// One of seven nodes (3 copies, distinct zones) is killed while `dog vdi write` of a whole
/// 64 MiB VDI is in progress: the write succeeds; once the node is back and recovery is over,
/// every node reads the same bytes, equal to the source, and every object has exactly its 3
/// placement copies.
#[test]
fn node_killed_during_full_volume_write() {
    let mut c = Cluster::start_formatted(7, 3);
    let size = 64 * MIB;
    c.dog_ok(&["vdi", "create", "big", "64M"]);
    let vid = c.vid_of("big");
    let v = Vid::new(vid).expect("vid");
    let source = pseudo_random(202, size as usize);
    let victim = 4;

    let mut dog = FedDog::spawn(c.node(0).port(), &["vdi", "write", "big", "0", &size.to_string()]);
    let first = (24 * MIB) as usize;
    dog.feed(&source[..first]);
    // Part of the volume is on disk, the rest is not even sent yet.
    wait_until(
        "a few data objects of `big` to be stored",
        Duration::from_secs(60),
        || {
            let n = c
                .object_holders()
                .keys()
                .filter(|o| o.is_data() && o.vid() == v)
                .count();
            if n >= 3 {
                Ok(())
            } else {
                Err(format!("{n} data objects stored"))
            }
        },
    );
    let stored_at_kill = c
        .object_holders()
        .keys()
        .filter(|o| o.is_data() && o.vid() == v)
        .count();
    c.kill(victim);
    eprintln!("node {victim} killed with {stored_at_kill} of 16 data objects stored");
    dog.feed(&source[first..]);
    let (status, _, stderr) = dog.finish();
    assert!(
        status.is_some_and(|s| s.success()),
        "`dog vdi write big` with node {victim} killed after {stored_at_kill} of 16 objects were \
         stored: want exit 0, got {status:?}\nstderr: {stderr}"
    );

    c.wait_for_membership();
    c.restart(victim);
    c.wait_recovered(RECOVERY_TIMEOUT);
    let objects = vdi_objects(vid, 0..(size / OBJ) as u32);
    wait_placement(&c, 3, &objects);
    check_replica_bytes(&c, vid, &source);
    c.check_reads("big", &source, &(0..c.len()).collect::<Vec<_>>(), "after the restart");
    cluster_info_everywhere(&c, "after the restart");
}

// ---------------------------------------------------------------------------------------------
// 3. Every node killed, one by one, then restarted in another order

/// Four nodes (3 copies) are killed with SIGKILL one after another (each death noticed, no
/// recovery awaited), then started again in another order: the data reads back through every
/// node, every node prints the same `cluster info`, and placement is exact.
#[test]
fn all_nodes_killed_one_by_one_then_restarted_in_another_order() {
    let mut c = Cluster::start_formatted(4, 3);
    c.dog_ok(&["vdi", "create", "alpha", "32M"]);
    let mut model = vec![0u8; (32 * MIB) as usize];
    c.put(0, "alpha", &mut model, MIB / 2, 301, 28 * MIB);
    let vid = c.vid_of("alpha");
    let objects = vdi_objects(vid, indices(MIB / 2, 28 * MIB));

    // kill -9 one after another; each death is noticed (a new epoch), but recovery is not
    // waited for.
    let kill_order = [0, 1, 2, 3];
    for (k, &i) in kill_order.iter().enumerate() {
        c.kill(i);
        if k + 1 < kill_order.len() {
            c.wait_for_membership();
        }
    }
    let restart_order = [2, 0, 3, 1];
    for &i in &restart_order {
        c.node_mut(i).start();
        c.wait_for_membership();
    }
    c.wait_running();
    c.wait_recovered(RECOVERY_TIMEOUT);
    let info = cluster_info_everywhere(&c, "after every node was killed and restarted");
    assert_eq!(
        epoch_lines(&info)[0].1,
        expected_members(&c),
        "members of the newest epoch:\n{info}"
    );
    c.check_reads(
        "alpha",
        &model,
        &[0, 1, 2, 3],
        "after every node was killed and restarted",
    );
    wait_placement(&c, 3, &objects);
    check_replica_bytes(&c, vid, &model);
}

// ---------------------------------------------------------------------------------------------
// 4. Membership churn

/// In one burst, two nodes are stopped and started again and one is killed and restarted, with
/// no waiting in between: once things settle every node reports the identical epoch history and
/// the data is intact.
#[test]
fn membership_churn_leaves_identical_epoch_history() {
    let mut c = Cluster::start_formatted(5, 3);
    c.dog_ok(&["vdi", "create", "alpha", "32M"]);
    let mut model = vec![0u8; (32 * MIB) as usize];
    c.put(0, "alpha", &mut model, 0, 401, 32 * MIB);
    let vid = c.vid_of("alpha");

    let stopped: Vec<(usize, Option<ExitStatus>)> = [1, 2].iter().map(|&i| (i, c.node_mut(i).stop())).collect();
    c.node_mut(1).start();
    c.node_mut(2).start();
    c.kill(3);
    c.node_mut(3).start();
    for (i, s) in &stopped {
        assert!(
            s.is_some_and(|s| s.success()),
            "node {i} on SIGTERM: want a clean exit (status 0) within 10 s, got {s:?}"
        );
    }

    c.wait_for_membership();
    c.wait_running();
    c.wait_recovered(RECOVERY_TIMEOUT);
    let info = cluster_info_everywhere(&c, "after the churn");
    assert_eq!(
        epoch_lines(&info)[0].1,
        expected_members(&c),
        "members of the newest epoch:\n{info}"
    );
    // The same history in STAT_CLUSTER's own bytes.
    let raw: BTreeMap<usize, Vec<u8>> = (0..c.len())
        .map(|i| (i, c.stat_cluster(i, 8, 64).unwrap_or_else(|e| panic!("{e}")).data))
        .collect();
    for (i, b) in &raw {
        assert_same_bytes(&format!("STAT_CLUSTER payload of node {i} vs node 0"), b, &raw[&0]);
    }
    c.check_reads("alpha", &model, &(0..c.len()).collect::<Vec<_>>(), "after the churn");
    wait_placement(&c, 3, &vdi_objects(vid, 0..8));
    check_replica_bytes(&c, vid, &model);
}

// ---------------------------------------------------------------------------------------------
// 5. Unclean whole-cluster restarts

/// Three times in a row every sheep is killed with SIGKILL and started again: each time the
/// epoch history is the same on every node (old epochs unchanged), the data reads back through
/// every node, and a new write through another node works.
#[test]
fn three_unclean_restarts_in_a_row() {
    let mut c = Cluster::start_formatted(4, 3);
    c.dog_ok(&["vdi", "create", "alpha", "32M"]);
    let mut model = vec![0u8; (32 * MIB) as usize];
    c.put(0, "alpha", &mut model, 0, 501, 12 * MIB);
    let vid = c.vid_of("alpha");
    let mut touched = indices(0, 12 * MIB);
    let info_before = cluster_info_everywhere(&c, "before the restarts");

    for round in 0..3u64 {
        c.kill_all();
        c.start_all();
        c.wait_running();
        c.wait_recovered(RECOVERY_TIMEOUT);
        let when = format!("after unclean restart {}", round + 1);
        let info = cluster_info_everywhere(&c, &when);
        // Each restart adds epochs (nodes leave, nodes join) but never rewrites old ones.
        assert!(
            info.ends_with(&epoch_history_tail(&info_before)),
            "{when}: the epoch history should keep the old epochs unchanged\nbefore:\n{info_before}\nnow:\n{info}"
        );
        c.check_reads("alpha", &model, &(0..c.len()).collect::<Vec<_>>(), &when);

        // A new write works, through another node each time.
        let (off, len) = (12 * MIB + round * 6 * MIB + 4097, 5 * MIB + 3);
        c.put(
            (round as usize + 1) % c.len(),
            "alpha",
            &mut model,
            off,
            510 + round,
            len,
        );
        touched.extend(indices(off, len));
        c.check_reads(
            "alpha",
            &model,
            &[round as usize % c.len()],
            &format!("{when} and a new write"),
        );
    }
    wait_placement(&c, 3, &vdi_objects(vid, touched));
    check_replica_bytes(&c, vid, &model);
}

/// The epoch lines of `dog cluster info -r` output, oldest last, as one string.
fn epoch_history_tail(info: &str) -> String {
    info.lines()
        .filter(|l| epoch_lines(l).len() == 1)
        .map(|l| format!("{l}\n"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 6. Stale copies on nodes that were away

/// Data A is written; two of five nodes die; the cluster moves on and B overwrites A; the two
/// come back with their copies of A. Every node serves B (right after the restart and after
/// recovery), and no copy of A is left anywhere.
#[test]
fn nodes_with_stale_copies_rejoin_and_serve_new_data() {
    stale_copies_rejoin(5, &[1, 3]);
}

/// Five nodes holding stale copies rejoin a larger cluster (eight nodes) that moved on
/// without them.
#[test]
fn five_stale_nodes_rejoin_a_larger_cluster() {
    stale_copies_rejoin(8, &[1, 2, 4, 5, 7]);
}

fn stale_copies_rejoin(nodes: usize, away: &[usize]) {
    let mut c = Cluster::start_formatted(nodes, 3);
    let size = 32 * MIB;
    c.dog_ok(&["vdi", "create", "alpha", "32M"]);
    let a = pseudo_random(601, size as usize);
    let b = pseudo_random(602, size as usize);
    c.write_vdi("alpha", 0, &a);
    let vid = c.vid_of("alpha");
    let objects = vdi_objects(vid, 0..(size / OBJ) as u32);
    wait_placement(&c, 3, &objects);
    let stale: usize = away.iter().map(|&i| c.node(i).objects().len()).sum();
    assert!(
        stale > 0,
        "the nodes about to die hold no copy: the scenario tests nothing"
    );

    // One at a time, letting recovery restore three copies in between: losing more nodes at
    // once than there are copies would lose data, which is not this scenario.
    for &i in away {
        c.kill(i);
        c.wait_for_membership();
        c.wait_recovered(RECOVERY_TIMEOUT);
    }
    c.write_vdi("alpha", 0, &b);
    wait_placement(&c, 3, &objects);
    check_replica_bytes(&c, vid, &b);

    c.start_all();
    // Right away, before recovery can be assumed over: the returning nodes serve B.
    for &i in away {
        let got = c.dog_at(i, &["vdi", "read", "alpha"], None).expect_ok().stdout;
        assert_b(
            &got,
            &a,
            &b,
            &format!("read through returning node {i} right after its restart"),
        );
    }
    c.wait_recovered(RECOVERY_TIMEOUT);
    for i in 0..c.len() {
        let got = c.dog_at(i, &["vdi", "read", "alpha"], None).expect_ok().stdout;
        assert_b(&got, &a, &b, &format!("read through node {i} after recovery"));
    }
    wait_placement(&c, 3, &objects);
    check_replica_bytes(&c, vid, &b);
}

/// `got` must be `b`; on failure, says per object whether it held A, zeros or something else.
#[track_caller]
fn assert_b(got: &[u8], a: &[u8], b: &[u8], what: &str) {
    if got == b {
        return;
    }
    let mut kinds = Vec::new();
    for (i, chunk) in got.chunks(OBJ as usize).enumerate() {
        let r = i * OBJ as usize..(i * OBJ as usize + chunk.len());
        if chunk == &b[r.clone()] {
            continue;
        }
        let kind = if chunk == &a[r.clone()] {
            "old data A"
        } else if chunk.iter().all(|&x| x == 0) {
            "zeros"
        } else {
            "mixed/other"
        };
        kinds.push(format!("object {i}: {kind}"));
    }
    panic!(
        "{what}: want the new data B ({} bytes), got {} bytes; objects not B: {}",
        b.len(),
        got.len(),
        kinds.join(", ")
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Gateway-only nodes

/// Every entry of `DIR/obj` (any file at all), for "stores nothing" checks.
fn obj_dir_entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir.join("obj")) {
        Ok(rd) => rd
            .map(|e| e.expect("reading obj/").file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("listing {}/obj: {e}", dir.display()),
    }
}

/// A gateway-only node (`-g`) next to 3 storage nodes stores nothing, serves reads and writes,
/// and keeps serving writes after a storage node dies (3 copies over 2 zones, not strict). A
/// cluster of gateways only refuses to create a VDI.
#[test]
fn gateway_stores_nothing_and_keeps_serving_after_a_storage_node_dies() {
    let mut c = Cluster::builder().nodes(3).gateways(1).start();
    c.format(3);
    let gw = 3;
    assert!(c.node(gw).is_gateway());
    c.dog_at(gw, &["vdi", "create", "alpha", "32M"], None).expect_ok();
    let mut model = vec![0u8; (32 * MIB) as usize];
    c.put(gw, "alpha", &mut model, 0, 701, 20 * MIB);
    let vid = c.vid_of("alpha");
    let mut touched = indices(0, 20 * MIB);
    c.check_reads("alpha", &model, &[gw, 1], "written through the gateway");
    wait_placement(&c, 3, &vdi_objects(vid, touched.clone()));
    let stored = obj_dir_entries(c.node(gw).dir());
    assert!(
        stored.is_empty(),
        "the gateway stores {} files in DIR/obj: {stored:?}",
        stored.len()
    );

    c.kill(1);
    c.wait_for_membership();
    // A new epoch with 2 storage zones for 3 copies (not strict): writes go on.
    c.put(gw, "alpha", &mut model, 18 * MIB + 5, 702, 9 * MIB);
    touched.extend(indices(18 * MIB + 5, 9 * MIB));
    c.check_reads(
        "alpha",
        &model,
        &[gw, 0, 2],
        "after storage node 1 died and a new write",
    );
    c.wait_recovered(RECOVERY_TIMEOUT);
    wait_placement(&c, 3, &vdi_objects(vid, touched));
    check_replica_bytes(&c, vid, &model);
    let stored = obj_dir_entries(c.node(gw).dir());
    assert!(
        stored.is_empty(),
        "after the storage node died, the gateway stores {} files in DIR/obj: {stored:?}",
        stored.len()
    );
    drop(c);

    // A cluster of gateways only has nowhere to put data.
    let c = Cluster::builder().nodes(0).gateways(2).start();
    c.dog_ok(&["cluster", "format", "-c", "1"]);
    let out = c.dog(&["vdi", "create", "nowhere", "16M"]).expect_failure();
    eprintln!("gateway-only cluster refused `vdi create`: {}", out.stderr.trim());
    for i in 0..c.len() {
        let stored = obj_dir_entries(c.node(i).dir());
        assert!(stored.is_empty(), "gateway {i} stores {stored:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 8. One node's disk fills up

/// One of 3 nodes (3 copies) stores on a 64 MiB tmpfs. Writing more than fits fails with a
/// message about space; no sheep dies or leaves; what was written before reads back through
/// every node; no store holds temporary files or objects placement does not put there.
#[test]
fn full_disk_on_one_node_fails_writes_cleanly() {
    let small = ScratchFs::tmpfs("64m");
    let mut c = Cluster::start(3);
    // Node 2's DIR becomes the small filesystem before the cluster is formatted.
    let full = 2;
    c.put_node_on(full, &small);
    c.format(3);
    let epoch = cluster_epoch(&c);

    c.dog_ok(&["vdi", "create", "big", "128M"]);
    let vid = c.vid_of("big");
    let mut model = vec![0u8; (128 * MIB) as usize];
    c.put(0, "big", &mut model, 0, 801, 16 * MIB);

    // 112 MiB more cannot fit in node 2's 64 MiB (which already holds the inode and 16 MiB).
    let more = pseudo_random(802, (112 * MIB) as usize);
    let out = c.dog_with_input(&["vdi", "write", "big", &(16 * MIB).to_string()], &more);
    assert!(
        !out.success(),
        "writing 112 MiB more with node {full}'s 64 MiB store full should fail, but dog exited {}",
        out.status
    );
    assert!(
        out.stderr.to_lowercase().contains("no space"),
        "dog failed ({}) but its message does not mention space: {:?}",
        out.status,
        out.stderr
    );
    eprintln!("dog on a full node: {}", out.stderr.trim());
    // The operator sees it coming: `dog node list` flags the full store, and only that one.
    let list = c.dog_ok(&["node", "list"]).stdout_str();
    for i in 0..c.len() {
        let port = format!(":{}", c.node(i).port());
        let line = list.lines().find(|l| l.contains(&port)).expect("every node is listed");
        assert_eq!(line.ends_with("nearly full"), i == full, "node {i}: {list}");
    }

    // Nobody crashed or left.
    assert_alive(&mut c);
    c.wait_for_membership();
    assert_eq!(
        cluster_epoch(&c),
        epoch,
        "the epoch changed: a node left while its disk was full"
    );

    // What was written before still reads back, through every node.
    let got_prefix = |i: usize| {
        c.dog_at(i, &["vdi", "read", "big", "0", &(16 * MIB).to_string()], None)
            .expect_ok()
            .stdout
    };
    for i in 0..c.len() {
        assert_same_bytes(
            &format!("the first 16 MiB through node {i} after the failed write"),
            &got_prefix(i),
            &model[..(16 * MIB) as usize],
        );
    }

    // No junk: only object files (no temporaries), all of this VDI and placed on that node.
    let ring = c.ring();
    let v = Vid::new(vid).expect("vid");
    let mut problems = Vec::new();
    let mut unreferenced = BTreeMap::new();
    let inode = c.node(0).object_bytes(v.inode_oid()).expect("node 0 holds the inode");
    for i in 0..c.len() {
        let names = obj_dir_entries(c.node(i).dir());
        for name in &names {
            // An object's checksums sit beside it, and only beside an object.
            if let Some(object) = name.strip_suffix(".sum") {
                if !names.iter().any(|n| n == object) {
                    problems.push(format!("node {i}: obj/{name} has no object"));
                }
                continue;
            }
            let Some(oid) = Oid::from_file_name(name) else {
                problems.push(format!("node {i}: obj/{name} is not an object file"));
                continue;
            };
            if oid.vid() != v {
                problems.push(format!("node {i}: object {oid} of another vid"));
            }
            if !ring.replicas(oid.0, 3).iter().any(|n| n.addr == c.node(i).addr()) {
                problems.push(format!("node {i}: object {oid} is not placed on it"));
            }
            if oid.is_data() && inode_entry(&inode, oid.index()) != vid {
                *unreferenced.entry(i).or_insert(0) += 1;
            }
        }
    }
    assert!(problems.is_empty(), "junk in the stores:\n{}", problems.join("\n"));
    eprintln!("data objects not (yet) referenced by the inode, per node: {unreferenced:?}");
}

/// `data_vdi_id[idx]` of an inode object's bytes.
fn inode_entry(inode: &[u8], idx: u32) -> u32 {
    let off = protocol::inode::data_vdi_id_offset(idx) as usize;
    u32::from_le_bytes(inode[off..off + 4].try_into().expect("4 bytes"))
}

// ---------------------------------------------------------------------------------------------
// 9. Recovery progress as operators see it

/// One line of `dog node recovery -r`: `ID ADDR STATE DONE TOTAL RECOVERED_EPOCH`.
#[derive(Debug)]
struct RecoveryLine {
    addr: String,
    state: String,
    done: u64,
    total: u64,
    recovered_epoch: u32,
}

fn parse_node_recovery(text: &str) -> Result<Vec<RecoveryLine>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let bad = || format!("cannot parse `dog node recovery -r` line {l:?}");
            if f.len() != 6 {
                return Err(bad());
            }
            Ok(RecoveryLine {
                addr: f[1].to_string(),
                state: f[2].to_string(),
                done: f[3].parse().map_err(|_| bad())?,
                total: f[4].parse().map_err(|_| bad())?,
                recovered_epoch: f[5].parse().map_err(|_| bad())?,
            })
        })
        .collect()
}

/// A node restarted with `--recovery-rate 5` recovers 17 objects slowly enough that
/// `dog node recovery -r` shows it `recovering` with done < total; finally every node is idle
/// with the cluster epoch recovered, and the data and placement are right.
#[test]
fn node_recovery_shows_progress_of_a_throttled_node() {
    let mut c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "alpha", "64M"]);
    let mut model = vec![0u8; (64 * MIB) as usize];
    c.put(0, "alpha", &mut model, 0, 901, 64 * MIB);
    let vid = c.vid_of("alpha");

    let slow = 2;
    c.kill(slow);
    c.wait_for_membership();
    c.put(0, "alpha", &mut model, 3 * MIB, 902, 10 * MIB);
    c.node_mut(slow).start_with_args(&["--recovery-rate", "5"]);
    c.wait_for_membership();
    let slow_addr = c.node(slow).addr().to_string();

    let port = c.node(0).port();
    let seen = wait_until(
        "`dog node recovery -r` to show the throttled node recovering with done < total",
        Duration::from_secs(30),
        || {
            let out = run_dog(port, &["node", "recovery", "-r"], None).expect_ok();
            let text = out.stdout_str();
            let lines = parse_node_recovery(&text)?;
            match lines.iter().find(|l| l.addr == slow_addr) {
                Some(l) if l.state == "recovering" && l.done < l.total => Ok(text),
                _ => Err(text),
            }
        },
    );
    eprintln!("while recovering:\n{seen}");
    let epoch = cluster_epoch(&c);
    let done = wait_until(
        "`dog node recovery -r` to show every node idle with the current epoch recovered",
        RECOVERY_TIMEOUT,
        || {
            let text = run_dog(port, &["node", "recovery", "-r"], None)
                .expect_ok()
                .stdout_str();
            let lines = parse_node_recovery(&text)?;
            let all_idle =
                lines.len() == c.len() && lines.iter().all(|l| l.state == "idle" && l.recovered_epoch == epoch);
            if all_idle {
                Ok(text)
            } else {
                Err(text)
            }
        },
    );
    eprintln!("after recovery:\n{done}");
    let slow_line = parse_node_recovery(&done)
        .expect("parsed above")
        .into_iter()
        .find(|l| l.addr == slow_addr)
        .expect("the throttled node is listed");
    assert_eq!(
        slow_line.done, slow_line.total,
        "the finished recovery of the throttled node: done should equal total\n{done}"
    );
    c.wait_recovered(RECOVERY_TIMEOUT);
    c.check_reads("alpha", &model, &[slow, 0], "after the throttled recovery");
    wait_placement(&c, 3, &vdi_objects(vid, 0..16));
    check_replica_bytes(&c, vid, &model);
}

/// `kill -9` of one of three sheep while `dd` writes 512 MiB into a volume mounted through
/// another one: `dd` succeeds, and the bytes read back through the third gateway match.
#[test]
fn sheep_killed_while_dd_writes_into_a_mounted_volume() {
    let mut c = Cluster::start_formatted(3, 3);
    let size = 512 * MIB;
    c.dog_ok(&["vdi", "create", "vm", "600M"]);
    let source = pseudo_random(512, size as usize);
    let src = c.root().join("source.raw");
    std::fs::write(&src, &source).expect("writing the source image");
    let m = tests::Mount::start(&c, 0);
    let vol = m.volume("vm");
    let mut dd = Command::new("dd")
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", vol.display()))
        .args(["bs=1M", "conv=fsync,notrunc"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting dd");
    // Kill node 2 once part of the volume is on disk.
    let victim = 2;
    let v = Vid::new(c.vid_of("vm")).expect("vid");
    wait_until("dd to write the first objects", Duration::from_secs(60), || {
        let n = c
            .node(victim)
            .objects()
            .iter()
            .filter(|o| o.vid() == v && o.is_data())
            .count();
        if n >= 8 {
            Ok(())
        } else {
            Err(format!("{n} objects on node {victim}"))
        }
    });
    c.node_mut(victim).kill();
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = dd.try_wait().expect("waiting for dd") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "dd did not finish within 300 s after the kill"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    if let Some(mut e) = dd.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(status.success(), "dd failed after a sheep was killed: {status}: {err}");
    let got = run_dog(c.node(1).port(), &["vdi", "read", "vm", "0", &size.to_string()], None).expect_ok();
    assert_same_bytes("the volume read through node 1 after the kill", &got.stdout, &source);
    m.unmount();
}

/// A read that reaches a replica recovery has not got to yet does not wait for it to fetch
/// the whole object (with 2 GiB objects that takes seconds): the replica declines, a current
/// one serves the read, and the object jumps the behind replica's recovery queue.
#[test]
fn a_read_during_recovery_is_served_by_a_current_replica() {
    let mut c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "alpha", "64M"]);
    let mut model = vec![0u8; (64 * MIB) as usize];
    c.put(0, "alpha", &mut model, 0, 951, 64 * MIB);
    let vid = Vid::new(c.vid_of("alpha")).expect("a vid");

    let behind = 2;
    c.kill(behind);
    c.wait_for_membership();
    c.put(0, "alpha", &mut model, 0, 952, 64 * MIB);
    // One object a second, in oid order: recovery reaches data object i some i seconds
    // after the node is back.
    c.node_mut(behind).start_with_args(&["--recovery-rate", "1"]);
    c.wait_for_membership();
    let epoch = c.cluster_info(behind).expect("CLUSTER_INFO").epoch;
    let current = |c: &Cluster, i: u64| {
        c.node(behind).object_bytes(vid.data_oid(i as u32)).as_deref()
            == Some(&model[(i * OBJ) as usize..((i + 1) * OBJ) as usize])
    };

    // The replica that is behind declines a read that may go elsewhere...
    let mut req = RequestHeader::new(op::READ_PEER);
    req.proto_ver = SD_SHEEP_PROTO_VER;
    req.epoch = epoch;
    req.flags |= flags::CURRENT_ONLY;
    req.data_length = 4096;
    req.set_obj(&ObjArgs {
        oid: vid.data_oid(15).0,
        offset: 4096,
        ..ObjArgs::default()
    });
    let declined = c.call(behind, req, &[]).err().and_then(|e| e.result());
    assert_eq!(
        declined,
        Some(ResultCode::NODE_IN_RECOVERY),
        "a read of object 15 from the node that is behind"
    );
    // ...and its gateway reads through a current one.
    let at = 15 * OBJ + 4096;
    let got = c
        .dog_at(behind, &["vdi", "read", "alpha", &at.to_string(), "8192"], None)
        .expect_ok()
        .stdout;
    assert_same_bytes(
        "a read through the node that is behind",
        &got,
        &model[at as usize..at as usize + 8192],
    );

    // Object 15 jumps the queue: it is current while object 10, ahead of it, is not yet.
    wait_until(
        "object 15 to be recovered on the node that is behind",
        RECOVERY_TIMEOUT,
        || {
            if current(&c, 15) {
                Ok(())
            } else {
                Err("object 15 is still stale".to_string())
            }
        },
    );
    assert!(
        !current(&c, 10),
        "object 15 did not jump the queue: object 10 was recovered first"
    );

    c.wait_recovered(RECOVERY_TIMEOUT * 2);
    c.check_reads("alpha", &model, &[behind], "after recovery");
}
