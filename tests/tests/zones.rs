//! Fewer zones than copies: a cluster formatted strict (`dog cluster format -t`) halts writes,
//! any other runs degraded with one copy per zone; `dog cluster info` says which.

use tests::{assert_same_bytes, pseudo_random, Cluster};

const MIB: u64 = 1 << 20;

/// Three sheep, three copies; one is killed, leaving two zones.
fn cluster_missing_a_zone(strict: bool) -> (Cluster, Vec<u8>) {
    let mut c = Cluster::start(3);
    let mut args = vec!["cluster", "format", "-c", "3"];
    if strict {
        args.push("-t");
    }
    c.dog_ok(&args);
    c.wait_running();
    c.dog_ok(&["vdi", "create", "v", "16M"]);
    let before = pseudo_random(31, (8 * MIB) as usize);
    c.write_vdi("v", 0, &before);
    c.node_mut(2).kill();
    c.wait_for_membership();
    (c, before)
}

#[test]
fn strict_cluster_halts_writes_when_zones_are_short() {
    let (c, before) = cluster_missing_a_zone(true);
    let info = c.dog_ok(&["cluster", "info"]).stdout_str();
    assert!(
        info.contains("Fewer zones (2) than copies (3): writes are halted (strict mode)"),
        "cluster info should say writes are halted:\n{info}"
    );
    let new = pseudo_random(32, MIB as usize);
    let out = c.dog_with_input(&["vdi", "write", "v", "0", &MIB.to_string()], &new);
    assert!(
        !out.success(),
        "a write must be refused in strict mode with two zones: {}",
        out.all_text()
    );
    assert!(
        out.all_text().contains("halted"),
        "the refusal should say writes are halted: {}",
        out.all_text()
    );
    // Nothing changed, and reads still work.
    let got = c.dog_ok(&["vdi", "read", "v", "0", &(8 * MIB).to_string()]).stdout;
    assert_same_bytes("the VDI after a refused write", &got, &before);
}

#[test]
fn default_cluster_runs_degraded_when_zones_are_short() {
    let (c, _) = cluster_missing_a_zone(false);
    let info = c.dog_ok(&["cluster", "info"]).stdout_str();
    assert!(
        info.contains("Fewer zones (2) than copies (3): running degraded, 2 copies per object"),
        "cluster info should say the cluster runs degraded:\n{info}"
    );
    let new = pseudo_random(33, (2 * MIB) as usize);
    c.write_vdi("v", 4 * MIB, &new);
    let got = c
        .dog_ok(&["vdi", "read", "v", &(4 * MIB).to_string(), &(2 * MIB).to_string()])
        .stdout;
    assert_same_bytes("a write made while degraded", &got, &new);
}
