//! The cluster secret (`--auth-key-file`): strangers, wrong keys and replayed handshakes are
//! refused before any op runs and change nothing; a node with another key cannot join; the
//! key never shows in logs or `ps`. sheepfs's mode bits under `--allow-other`.
//!
//! Every test of this binary uses the same secret, installed in the harness's own client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use protocol::auth::AuthKey;
use protocol::{op, RequestHeader};
use tests::{dog_bin, free_ports, pseudo_random, run_command, sheep_bin, Cluster, ClusterBuilder, Mount};

const KEY: &str = "correct horse battery staple, 2026";
const TIMEOUT: Duration = Duration::from_secs(10);

/// A 0600 file holding `secret` in `dir`.
fn key_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{secret}\n")).expect("writing the key file");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    p
}

/// The file holding [`KEY`], written once per test process. dog and sheepfs find it through
/// `SHEEPDOG_AUTH_KEY_FILE`, which is process-wide, so it must outlive every test that runs in
/// parallel: it lives in cargo's temp dir for this target, not in one test's temp dir.
fn shared_key() -> &'static Path {
    static KEY_FILE: OnceLock<PathBuf> = OnceLock::new();
    KEY_FILE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("security");
        std::fs::create_dir_all(&dir).expect("creating the key's directory");
        let key = key_file(&dir, "key", KEY);
        std::env::set_var("SHEEPDOG_AUTH_KEY_FILE", &key);
        protocol::auth::install(AuthKey::new(KEY.as_bytes()).expect("key"));
        key
    })
}

/// A formatted cluster of `n` sheep sharing [`KEY`], with dog and sheepfs (through the
/// environment) and this process's client holding it too.
fn keyed(n: usize, copies: usize) -> (Cluster, PathBuf) {
    let key = shared_key().to_path_buf();
    let c = ClusterBuilder::default()
        .nodes(n)
        .args(&["--auth-key-file", key.to_str().expect("utf-8 path")])
        .start();
    c.format(copies);
    (c, key)
}

/// `dog ARGS -p PORT` with no key from the environment.
fn dog_without_key(port: u16, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(dog_bin());
    cmd.args(args)
        .args(["-p", &port.to_string()])
        .env_remove("SHEEPDOG_AUTH_KEY_FILE")
        .stdin(Stdio::null());
    let out = run_command(cmd, TIMEOUT * 3);
    (out.success(), out.describe())
}

/// Sends a request header on a connection that skipped or failed the handshake; the sheep
/// must close it without answering.
fn assert_no_answer(mut s: TcpStream, what: &str) {
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut req = RequestHeader::new(op::DEL_VDI);
    req.data_length = 256;
    let mut name = vec![0u8; 256];
    name[..1].copy_from_slice(b"s");
    let _ = s.write_all(&req.encode()).and_then(|()| s.write_all(&name));
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    // At most the server's 40-byte challenge came, never a 48-byte reply header after it.
    assert!(got.len() <= 40, "{what}: the sheep answered {} bytes", got.len());
}

#[test]
fn strangers_wrong_keys_and_replays_are_refused() {
    let keys = tempfile::tempdir().expect("temp dir");
    let (c, key) = keyed(2, 2);
    let data = pseudo_random(11, 1 << 20);
    c.dog_ok(&["vdi", "create", "s", "8M"]);
    c.write_vdi("s", 0, &data);
    let port = c.node(0).port();

    // Without the key: dog fails, and nothing changed.
    let (ok, text) = dog_without_key(port, &["vdi", "delete", "s"]);
    assert!(!ok, "dog without the key must fail: {text}");
    let (ok, text) = dog_without_key(port, &["vdi", "list"]);
    assert!(!ok, "{text}");
    // With another key: dog says why.
    let wrong = key_file(keys.path(), "wrong", "not the cluster's secret at all");
    let (ok, text) = dog_without_key(
        port,
        &["vdi", "delete", "s", "--auth-key-file", wrong.to_str().expect("utf-8")],
    );
    assert!(!ok && text.contains("authentication failed"), "{text}");
    // A key file others may read is refused before anything is sent.
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (ok, text) = dog_without_key(
        port,
        &["vdi", "list", "--auth-key-file", wrong.to_str().expect("utf-8")],
    );
    assert!(!ok && text.contains("chmod 600"), "{text}");

    // A raw client that skips the handshake gets no answer to its DEL_VDI.
    assert_no_answer(TcpStream::connect(c.node(0).addr()).expect("connect"), "no handshake");

    // A recorded handshake replayed on a new connection fails: the challenge differs.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let k = AuthKey::new(KEY.as_bytes()).expect("key");
    let recorded = rt.block_on(async {
        let mut s = tokio::net::TcpStream::connect(c.node(1).addr()).await.expect("connect");
        protocol::auth::connect(&mut s, &k).await.expect("the right key passes")
    });
    let mut s = TcpStream::connect(c.node(1).addr()).expect("connect");
    let mut challenge = [0u8; 40];
    s.read_exact(&mut challenge).expect("a challenge");
    s.write_all(&recorded).expect("replaying");
    assert_no_answer(s, "replayed handshake");
    let log = std::fs::read_to_string(c.node(1).log_path()).expect("log");
    assert!(log.contains("refused a connection that did not authenticate"), "{log}");

    assert_eq!(
        c.read_vdi("s", 0, data.len() as u64, None),
        data,
        "the refused requests changed nothing"
    );
    assert_eq!(c.vdi_list(0).len(), 1);

    // The secret never shows: not in the logs, not on the command line.
    for i in 0..2 {
        let log = std::fs::read_to_string(c.node(i).log_path()).expect("log");
        assert!(!log.contains(KEY), "node {i}'s log shows the key");
        let pid = c.node(i).pid().expect("running");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(cmdline.contains(key.to_str().expect("utf-8")) && !cmdline.contains(KEY));
    }
}

#[test]
fn a_node_with_another_key_cannot_join() {
    let keys = tempfile::tempdir().expect("temp dir");
    let (c, _) = keyed(2, 2);
    let epoch = c.cluster_info(0).expect("cluster info").epoch;
    let wrong = key_file(keys.path(), "wrong", "a different secret, long enough");
    for (what, extra) in [
        ("another key", vec!["--auth-key-file", wrong.to_str().expect("utf-8")]),
        ("no key", vec![]),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_ports(1)[0].to_string();
        let rendezvous = format!("local:{}", c.root().join("rv").display());
        let mut cmd = Command::new(sheep_bin());
        cmd.args(["-p", &port, "-c", &rendezvous])
            .args(&extra)
            .arg(dir.path())
            .env_remove("SHEEPDOG_AUTH_KEY_FILE");
        let out = run_command(cmd, TIMEOUT * 3);
        let text = out.describe();
        assert!(!out.success() && !out.timed_out(), "{what}: sheep must exit: {text}");
        assert!(text.contains("cannot join the cluster"), "{what}: {text}");
        assert_eq!(
            c.node_list(0).expect("node list").len(),
            2,
            "{what}: membership unchanged"
        );
        assert_eq!(
            c.cluster_info(0).expect("cluster info").epoch,
            epoch,
            "{what}: no new epoch"
        );
    }
}

/// With `--allow-other`, the kernel enforces the mode bits: another user reads monitoring
/// files but neither a volume nor a control file. Without it, other users see nothing.
#[test]
fn sheepfs_mode_bits_under_allow_other() {
    let (c, _) = keyed(1, 1);
    c.dog_ok(&["vdi", "create", "p", "4M"]);
    let as_nobody = |script: &str| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script]);
        run_command(cmd, TIMEOUT)
    };
    let private = Mount::start(&c, 0);
    let out = as_nobody(&format!("ls {}", private.path().display()));
    assert!(
        !out.success(),
        "without --allow-other, other users are kept out: {}",
        out.describe()
    );
    drop(private);

    let m = Mount::start_with(&c, 0, &["--allow-other"]);
    let mode = |rel: &str| std::fs::metadata(m.join(rel)).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode("vdi/p/volume"), 0o600);
    assert_eq!(mode("vdi/p/snapshot"), 0o200);
    assert_eq!(mode("config/object_cache"), 0o600);
    assert_eq!(mode("node/list"), 0o444);
    let out = as_nobody(&format!("cat {}", m.join("node/list").display()));
    assert!(out.success(), "monitoring files are for everyone: {}", out.describe());
    let out = as_nobody(&format!("head -c 1 {}", m.join("vdi/p/volume").display()));
    assert!(
        !out.success() && out.describe().contains("Permission denied"),
        "{}",
        out.describe()
    );
    let out = as_nobody(&format!("echo 1 > {}", m.join("vdi/p/snapshot").display()));
    assert!(!out.success(), "{}", out.describe());
    assert_eq!(c.vdi_list(0).len(), 1, "nobody's snapshot request changed nothing");
    // The owner (root here) still does everything.
    std::fs::write(m.join("vdi/p/snapshot"), b"1").expect("snapshot by the owner");
    assert_eq!(c.vdi_list(0).len(), 2);
}
