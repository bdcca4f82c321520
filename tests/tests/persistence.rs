//! Everything written survives `kill -9` of every sheep and a restart on the same DIRs.

use protocol::bitmap::BITMAP_BYTES;
use protocol::{op, RequestHeader};
use std::time::Duration;

use tests::{assert_same_bytes, pseudo_random, Cluster};

const MIB: u64 = 1 << 20;

fn read_vdis(c: &Cluster, i: usize) -> Vec<u8> {
    let mut req = RequestHeader::new(op::READ_VDIS);
    req.data_length = BITMAP_BYTES as u32;
    c.call(i, req, &[])
        .unwrap_or_else(|e| panic!("READ_VDIS to node {i}: {e}"))
        .data
}

#[test]
fn data_survives_kill_and_restart() {
    let mut c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "alpha", "64M"]);
    c.dog_ok(&["vdi", "create", "beta", "32M"]);

    let mut alpha = vec![0u8; (64 * MIB) as usize];
    let mut beta = vec![0u8; (32 * MIB) as usize];
    c.put(0, "alpha", &mut alpha, 0, 1, 10 * MIB + 17);
    c.put(0, "alpha", &mut alpha, 33 * MIB - 9, 2, 5 * MIB);
    c.put(0, "beta", &mut beta, 4 * MIB - 1, 3, 2);
    c.dog_ok(&["vdi", "snapshot", "alpha"]);
    let alpha_snap = alpha.clone();
    c.put(0, "alpha", &mut alpha, 2 * MIB, 4, 3 * MIB);

    let list_before = c.dog_ok(&["vdi", "list", "-r"]).stdout;
    let bitmap_before = read_vdis(&c, 0);

    c.kill_all();
    c.start_all();
    c.wait_running();

    let list_after = c.dog_ok(&["vdi", "list", "-r"]).stdout;
    assert_same_bytes("vdi list -r after restart", &list_after, &list_before);
    for i in 0..c.len() {
        assert_same_bytes(
            &format!("READ_VDIS of node {i} after restart"),
            &read_vdis(&c, i),
            &bitmap_before,
        );
    }
    assert_same_bytes(
        "alpha after restart",
        &c.dog_ok(&["vdi", "read", "alpha"]).stdout,
        &alpha,
    );
    assert_same_bytes(
        "alpha snapshot 1 after restart",
        &c.dog_ok(&["vdi", "read", "alpha", "-s", "1"]).stdout,
        &alpha_snap,
    );
    assert_same_bytes("beta after restart", &c.dog_ok(&["vdi", "read", "beta"]).stdout, &beta);

    // Still writable, through another node.
    let d = pseudo_random(5, 4096);
    c.dog_at(1, &["vdi", "write", "beta", "1000", &d.len().to_string()], Some(&d))
        .expect_ok();
    beta[1000..1000 + d.len()].copy_from_slice(&d);
    assert_same_bytes(
        "beta after a write following the restart",
        &c.dog_ok(&["vdi", "read", "beta"]).stdout,
        &beta,
    );
}

/// One node killed: the others keep serving the data (2 of 3 copies left); once it is back
/// it serves the same bytes, including those written while it was away.
#[test]
fn one_node_killed_and_restarted() {
    let mut c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "alpha", "32M"]);
    let mut alpha = vec![0u8; (32 * MIB) as usize];
    c.put(0, "alpha", &mut alpha, 3 * MIB, 21, 6 * MIB + 5);

    c.kill(2);
    c.wait_for_membership();
    assert_same_bytes(
        "alpha with node 2 down",
        &c.dog_ok(&["vdi", "read", "alpha"]).stdout,
        &alpha,
    );
    c.put(0, "alpha", &mut alpha, 20 * MIB - 7, 22, MIB);
    assert_same_bytes(
        "alpha written with node 2 down",
        &c.dog_ok(&["vdi", "read", "alpha"]).stdout,
        &alpha,
    );

    c.start_all();
    c.wait_running();
    assert_same_bytes(
        "alpha read through the restarted node 2",
        &c.dog_at(2, &["vdi", "read", "alpha"], None).expect_ok().stdout,
        &alpha,
    );
}

/// Thousands of cluster events on the local driver: its log is trimmed behind checkpoints, so
/// a restart does not replay history; after every sheep is killed and restarted, and a node
/// is added, all agree on the state they had.
#[test]
fn local_log_is_trimmed_and_restarts_keep_the_state() {
    let every = sheep::cluster::CHECKPOINT_EVERY as usize;
    let limit = Duration::from_secs(20);
    let mut c = Cluster::start_formatted(3, 2);
    c.dog_ok(&["vdi", "create", "alpha", "16M"]);
    let mut model = vec![0u8; (16 * MIB) as usize];
    c.put(0, "alpha", &mut model, MIB, 81, 6 * MIB);
    c.dog_ok(&["vdi", "snapshot", "alpha"]);
    c.dog_ok(&["vdi", "create", "gone", "4M"]);
    c.dog_ok(&["vdi", "delete", "gone"]);
    // Three clients, 2 × 500 events each.
    c.churn(&[0, 1, 2], every / 2);
    let writers = c.wait_trimming_checkpoints(2, limit, "after 3,000 events");
    let log = std::fs::read_to_string(c.root().join("rv").join("log")).expect("the cluster log");
    let first = log.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(r#"{"trimmed_to":"#),
        "the log does not start with its trim position: {first:?}"
    );
    let events = log.lines().count() - 1;
    assert!(
        events < 2 * every,
        "{events} events still in the log after 3,000 and checkpoints {writers:?}"
    );
    let before = c.wait_same_views(&[0, 1, 2], limit, "before the restart");

    c.kill_all();
    c.start_all();
    c.wait_running();
    let after = c.wait_same_views(&[0, 1, 2], limit, "after every sheep restarted");
    after.assert_same_vdis(&before, "after the restart");
    c.check_reads("alpha", &model, &[0, 1, 2], "after the restart");

    let n = c.add_node(0);
    c.wait_same_views(&[0, 1, 2, n], limit, "after a node joined");
    assert!(
        c.node(n).starts_from_checkpoint() > 0,
        "node {n} joined without starting from the checkpoint:\n{}",
        c.node(n).log_tail(40)
    );
    c.put(n, "alpha", &mut model, 9 * MIB, 82, MIB);
    c.check_reads("alpha", &model, &[0, n], "after a write through the new node");
}
