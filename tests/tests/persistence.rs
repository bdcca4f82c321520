//! Everything written survives `kill -9` of every sheep and a restart on the same DIRs.

use protocol::bitmap::BITMAP_BYTES;
use protocol::{op, RequestHeader};
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
