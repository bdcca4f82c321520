//! Harness for end-to-end tests: starts real `sheep` daemons on loopback ports in a temporary
//! directory, runs the real `dog` against them, and cleans up on drop, even on panic.
//!
//! Every daemon writes its log to `<tmp>/node<i>.log` (its raw stdout/stderr, for panics and
//! start-up failures, go to `<tmp>/node<i>.out`). When a test panics while a [`Cluster`] is
//! alive, the cluster's drop kills the daemons and prints the tail of each node's files, so a
//! failed run shows what the daemons did. Set `SHEEP_TEST_KEEP=1` to keep the directory.
//!
//! Waiting is always a poll against a condition with a deadline ([`wait_until`]), never a
//! fixed sleep.

pub mod fuzz;
pub mod zk;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use protocol::bitmap::{VdiBitmap, BITMAP_BYTES};
use protocol::cluster::{ClusterInfo, EpochRecord};
use protocol::node::{sort_nodes, Node, DEFAULT_VNODES, SD_MAX_NODES};
use protocol::placement::Ring;
use protocol::{op, Client, ClientError, ClusterArgs, Oid, Reply, RequestHeader, ResponseHeader, VdiArgs};

/// How long a cluster may take to start, join or restart.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one `dog` run may take before the harness kills it and fails the test.
pub const DOG_TIMEOUT: Duration = Duration::from_secs(120);
/// Per-request timeout for protocol calls made by the harness.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of each log printed when a test fails.
const LOG_TAIL_LINES: usize = 300;

// ---------------------------------------------------------------------------------------------
// Binaries

/// The directory holding the built binaries: the test executable lives in
/// `target/<profile>/deps/NAME-hash`, the binaries in `target/<profile>/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the path of the test executable");
    let deps = exe.parent().expect("test executable has no parent directory");
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps directory has no parent")
    } else {
        deps
    };
    dir.to_path_buf()
}

fn binary(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --bins` first",
        p.display()
    );
    p
}

pub fn sheep_bin() -> PathBuf {
    binary("sheep")
}

pub fn dog_bin() -> PathBuf {
    binary("dog")
}

// ---------------------------------------------------------------------------------------------
// Small utilities

/// Sends `sig` to process `pid` (a child the harness started and has not reaped).
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) takes no pointers; the pid is a child of this process.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig}): {}", std::io::Error::last_os_error());
}

/// Polls `f` until it returns `Some`, with a short growing interval, and panics with `what`
/// and the last observation when `timeout` passes.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(20);
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
                }
            }
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(250));
    }
}

/// Ports handed to tests come from here up to [`PORT_END`]: below Linux's ephemeral range
/// (32768 and up by default), so no connect() and no bind to port 0 anywhere on the machine
/// takes one, even while a test's daemon is down between a kill and its restart.
const PORT_BASE: u16 = 20_000;
const PORT_END: u16 = 32_000;
/// A test process claims ports a block at a time, with a lock file that other test
/// processes (another `cargo test` on the same machine) respect.
const PORT_BLOCK: u16 = 500;

/// The blocks this process holds and the next port of the newest.
struct PortBlocks {
    /// Locked lock files, kept open for the life of the process.
    held: Vec<File>,
    next: u16,
    end: u16,
}

static PORTS: std::sync::Mutex<PortBlocks> = std::sync::Mutex::new(PortBlocks {
    held: Vec::new(),
    next: 0,
    end: 0,
});

impl PortBlocks {
    /// A port no earlier call in this process returned, in a block of this process, and
    /// free now (nothing else on the machine listens on it).
    fn take(&mut self) -> u16 {
        loop {
            if self.next == self.end {
                self.claim();
            }
            let p = self.next;
            self.next += 1;
            if TcpListener::bind(("127.0.0.1", p)).is_ok() {
                return p;
            }
        }
    }

    /// Locks the first block that no test process holds (this one included: a second flock
    /// of a file through another open fails like anyone else's).
    fn claim(&mut self) {
        for start in (PORT_BASE..PORT_END).step_by(PORT_BLOCK.into()) {
            let path = std::env::temp_dir().join(format!("sheepdog-test-ports-{start}.lock"));
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
            // SAFETY: flock takes a descriptor we own and no pointers.
            if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                self.held.push(f);
                self.next = start;
                self.end = start + PORT_BLOCK;
                return;
            }
        }
        panic!("every block of test ports ({PORT_BASE} to {PORT_END}) is held by other test processes");
    }
}

/// Reserves `n` distinct free loopback ports for this process: no other call, here or in
/// another test process, returns them again while it runs.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut blocks = PORTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    (0..n).map(|_| blocks.take()).collect()
}

/// Deterministic pseudo-random bytes (xorshift64*), so payloads need no `rand` dependency and
/// a failure reproduces exactly.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    if x == 0 {
        x = 1;
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Compares two byte strings and panics with the first differing offset and a short excerpt
/// instead of dumping megabytes.
#[track_caller]
pub fn assert_same_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let differing = got.iter().zip(want).filter(|(a, b)| a != b).count();
    let excerpt = |b: &[u8]| -> String {
        b.iter()
            .skip(first)
            .take(16)
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    panic!(
        "{what}: bytes differ: got {} bytes, want {} bytes; first difference at offset {first} \
         ({first:#x}); {differing} differing bytes in the common length\n  got  @{first}: {}\n  \
         want @{first}: {}",
        got.len(),
        want.len(),
        excerpt(got),
        excerpt(want)
    );
}

/// Parses a size as dog does: plain bytes or a K/M/G/T suffix (powers of 1024).
pub fn parse_size(s: &str) -> u64 {
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1 << 30),
        Some('t' | 'T') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>().unwrap_or_else(|e| panic!("bad size {s:?}: {e}")) * mult
}

/// The last `lines` lines of a file, or why it cannot be read.
pub fn file_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(b) => {
            let text = String::from_utf8_lossy(&b);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            let mut s = String::new();
            if start > 0 {
                s.push_str(&format!("[... {start} earlier lines ...]\n"));
            }
            for l in &all[start..] {
                s.push_str(l);
                s.push('\n');
            }
            s
        }
        Err(e) => format!("[cannot read {}: {e}]\n", path.display()),
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// Starts `cmd` as a daemon of the test: stdin from /dev/null, stdout and stderr appended to
/// `output`, and SIGKILLed by the kernel when the thread that started it dies (the setting
/// survives `exec`, e.g. of `ip netns exec`), so a crashed test leaks no process. Panics
/// naming `what` if it cannot start.
pub fn spawn_daemon(cmd: &mut Command, output: &Path, what: &str) -> Child {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(output)
        .unwrap_or_else(|e| panic!("opening {}: {e}", output.display()));
    let err = out
        .try_clone()
        .unwrap_or_else(|e| panic!("duplicating {}: {e}", output.display()));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}"))
}

/// `--- PATH ---` and the last `lines` lines of each file, for failure messages.
pub fn files_tail(paths: &[&Path], lines: usize) -> String {
    paths
        .iter()
        .map(|p| format!("--- {} ---\n{}", p.display(), file_tail(p, lines)))
        .collect()
}

/// SIGKILLs and reaps the child, if any (it may already have exited: that is harmless).
pub fn kill_and_reap(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The exit status of a started child that has exited (reaping it), `None` while it runs or
/// when none was started.
pub fn exited(child: &mut Option<Child>) -> Option<ExitStatus> {
    child.as_mut().and_then(|c| c.try_wait().ok().flatten())
}

/// With `SHEEP_TEST_KEEP` set, keeps the temporary directory `tmp` (swapping in an empty
/// placeholder that is removed instead) and says where it is.
pub fn keep_dir_if_asked(tmp: &mut tempfile::TempDir) {
    if std::env::var_os("SHEEP_TEST_KEEP").is_some() {
        let dir = std::mem::replace(
            tmp,
            tempfile::tempdir().expect("creating a placeholder temporary directory"),
        );
        eprintln!("keeping {}", dir.keep().display());
    }
}

// ---------------------------------------------------------------------------------------------
// dog

/// What one `dog` run produced.
#[derive(Debug)]
pub struct DogOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl DogOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stdout and stderr together, for checking a message wherever dog chose to print it.
    pub fn all_text(&self) -> String {
        format!("{}{}", self.stdout_str(), self.stderr)
    }

    /// Panics with the command, status and stderr unless dog succeeded.
    #[track_caller]
    pub fn expect_ok(self) -> DogOutput {
        if !self.success() {
            panic!(
                "`dog {}` failed with {}\nstderr: {}\nstdout: {}",
                self.args.join(" "),
                self.status,
                self.stderr,
                truncate_for_message(&self.stdout_str())
            );
        }
        self
    }

    /// Panics unless dog failed (non-zero exit) and said something on stderr.
    #[track_caller]
    pub fn expect_failure(self) -> DogOutput {
        if self.success() {
            panic!(
                "`dog {}` was expected to fail but exited with {}\nstdout: {}\nstderr: {}",
                self.args.join(" "),
                self.status,
                truncate_for_message(&self.stdout_str()),
                self.stderr
            );
        }
        assert!(
            !self.stderr.trim().is_empty(),
            "`dog {}` failed with {} but printed no message on stderr",
            self.args.join(" "),
            self.status
        );
        self
    }
}

fn truncate_for_message(s: &str) -> String {
    if s.len() > 2000 {
        let mut end = 2000;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}... [{} bytes]", &s[..end], s.len())
    } else {
        s.to_string()
    }
}

/// Runs `dog ARGS -a 127.0.0.1 -p PORT` with optional stdin, with a deadline.
pub fn run_dog(port: u16, args: &[&str], stdin: Option<&[u8]>) -> DogOutput {
    let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    full.extend(["-a".into(), "127.0.0.1".into(), "-p".into(), port.to_string()]);
    let mut cmd = Command::new(dog_bin());
    cmd.args(&full)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `dog {}`: {e}", full.join(" ")));

    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("dog stdin pipe");
        let data = data.to_vec();
        std::thread::spawn(move || {
            // dog may legitimately stop reading early (e.g. on an error); that is not ours
            // to judge here, its exit status tells.
            let _ = pipe.write_all(&data);
        })
    });
    let mut out_pipe = child.stdout.take().expect("dog stdout pipe");
    let mut err_pipe = child.stderr.take().expect("dog stderr pipe");
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        out_pipe.read_to_end(&mut b).map(|_| b)
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        err_pipe.read_to_end(&mut b).map(|_| b)
    });

    let deadline = Instant::now() + DOG_TIMEOUT;
    let status = loop {
        match child.try_wait().expect("waiting for dog") {
            Some(s) => break s,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`dog {}` did not finish within {DOG_TIMEOUT:?}; killed", full.join(" "));
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    if let Some(w) = writer {
        w.join().expect("dog stdin writer thread panicked");
    }
    let stdout = out_reader
        .join()
        .expect("dog stdout reader thread panicked")
        .expect("reading dog's stdout");
    let stderr = err_reader
        .join()
        .expect("dog stderr reader thread panicked")
        .expect("reading dog's stderr");
    DogOutput {
        args: full,
        status,
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// One sheep

/// One daemon the harness started (or will start again).
pub struct Sheep {
    pub index: usize,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
    out: PathBuf,
    /// The `-c` argument: the cluster driver and where it rendezvous.
    cluster: String,
    zone: Option<u32>,
    gateway: bool,
    /// Daemon flags given at every start (the cluster builder's [`ClusterBuilder::args`]).
    args: Vec<String>,
    /// The NBD port, when the cluster was built with [`ClusterBuilder::nbd`].
    nbd: Option<u16>,
    child: Option<Child>,
}

impl Sheep {
    /// `nbd://` URL of export `name` on this sheep. Panics unless it serves NBD.
    pub fn nbd_url(&self, name: &str) -> String {
        let port = self
            .nbd
            .unwrap_or_else(|| panic!("node {} does not serve NBD", self.index));
        format!("nbd://127.0.0.1:{port}/{name}")
    }

    /// The NBD listening address. Panics unless it serves NBD.
    pub fn nbd_addr(&self) -> SocketAddr {
        let port = self
            .nbd
            .unwrap_or_else(|| panic!("node {} does not serve NBD", self.index));
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The daemon's DIR.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn zone(&self) -> Option<u32> {
        self.zone
    }

    pub fn is_gateway(&self) -> bool {
        self.gateway
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// How this node should appear in GET_NODE_LIST and on the placement ring.
    pub fn protocol_node(&self) -> Node {
        Node {
            addr: self.addr(),
            nr_vnodes: if self.gateway { 0 } else { DEFAULT_VNODES },
            zone: self
                .zone
                .unwrap_or_else(|| protocol::node::default_zone(self.addr().ip())),
            space: 0,
        }
    }

    /// Starts the daemon. Panics if it is already running.
    pub fn start(&mut self) {
        self.start_with_args(&[]);
    }

    /// True while the process runs; reaps it if it has exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => c.try_wait().expect("try_wait on sheep").is_none(),
        }
    }

    /// The exit status if the process has exited (and reaps it), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait on sheep"))
    }

    /// SIGKILL and reap. A no-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The process may already have exited; kill then fails harmlessly.
            let _ = c.kill();
            c.wait()
                .unwrap_or_else(|e| panic!("waiting for killed node {}: {e}", self.index));
        }
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL. Returns the exit status, if it exited by itself.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) on a pid we own and have not reaped.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = c.try_wait().expect("try_wait on stopping sheep") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                c.wait()
                    .unwrap_or_else(|e| panic!("waiting for node {}: {e}", self.index));
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills (if running) and starts the daemon again on the same DIR and port. The caller
    /// waits for it to rejoin (see [`Cluster::restart`]).
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// Object ids stored in `DIR/obj/`: regular files named by exactly 16 hex digits.
    /// Temporary files and sub-directories are ignored.
    pub fn objects(&self) -> BTreeSet<Oid> {
        let dir = self.dir.join("obj");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeSet::new(),
            Err(e) => panic!("listing {}: {e}", dir.display()),
        };
        let mut set = BTreeSet::new();
        for entry in rd {
            let entry = entry.unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() != 16 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            // A file can vanish between readdir and stat (deletion in progress): skip it.
            let Ok(ft) = entry.file_type() else { continue };
            if !ft.is_file() {
                continue;
            }
            if let Some(oid) = Oid::from_file_name(name) {
                set.insert(oid);
            }
        }
        set
    }

    /// The contents of one object file, if this node stores it.
    pub fn object_bytes(&self, oid: Oid) -> Option<Vec<u8>> {
        fs::read(self.dir.join("obj").join(oid.file_name())).ok()
    }

    /// This node's whole log file (empty before it exists).
    pub fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The cluster checkpoints this node has logged writing, in order: (position, events
    /// trimmed), from its `cluster checkpoint written pos=P ... trimmed=T` lines.
    pub fn checkpoints_written(&self) -> Vec<(u64, u64)> {
        let field = |line: &str, key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse::<u64>().ok())
        };
        self.log_text()
            .lines()
            .filter(|l| l.contains("cluster checkpoint written"))
            .filter_map(|l| Some((field(l, "pos=")?, field(l, "trimmed=")?)))
            .collect()
    }

    /// How many times this node has logged starting from the cluster's checkpoint.
    pub fn starts_from_checkpoint(&self) -> usize {
        self.log_text()
            .matches("starting from the cluster's checkpoint")
            .count()
    }

    /// The last `lines` lines of this node's log file and of its raw stdout/stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        files_tail(&[&self.log, &self.out], lines)
    }

    /// Accepts a TCP connection right now.
    pub fn accepts_tcp(&self) -> bool {
        TcpStream::connect_timeout(&self.addr(), Duration::from_millis(500)).is_ok()
    }
}

impl Drop for Sheep {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

// ---------------------------------------------------------------------------------------------
// A cluster

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    nodes: usize,
    gateways: usize,
    zones: Option<Vec<Option<u32>>>,
    driver: Option<String>,
    args: Vec<String>,
    nbd: bool,
    dirs: Vec<PathBuf>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            nodes: 1,
            gateways: 0,
            zones: None,
            driver: None,
            args: Vec::new(),
            nbd: false,
            dirs: Vec::new(),
        }
    }
}

impl ClusterBuilder {
    /// Storage nodes (default 1).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Gateway-only nodes (`-g`), started after the storage nodes, with `-z 100+i`.
    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }

    /// Zones for the storage nodes, in order. By default storage node `i` gets `-z i+1`: all
    /// daemons share 127.0.0.1, so with PROTOCOL.md's address-derived default zone they would
    /// all fall in one zone and every object would get a single copy. `None` leaves `-z` off;
    /// the harness then expects that address-derived zone (`default_zone(127.0.0.1)`), which
    /// this daemon replaces by the port on loopback, so [`Cluster::ring`] is only exact for
    /// nodes given a zone.
    pub fn zones(mut self, zones: Vec<Option<u32>>) -> Self {
        self.zones = Some(zones);
        self
    }

    /// The cluster driver (`-c`), e.g. `zookeeper:127.0.0.1:PORT,timeout=2`. Default: the
    /// local driver with a rendezvous directory inside the cluster's temp dir.
    pub fn driver(mut self, spec: impl Into<String>) -> Self {
        self.driver = Some(spec.into());
        self
    }

    /// Extra flags for every sheep, at every start (e.g. `["--sync-writes"]`).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Store directories for the first nodes, in order (e.g. on [`ScratchFs`] mounts of
    /// different sizes); the others get `node<i>` in the cluster's temp dir.
    pub fn dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.dirs = dirs;
        self
    }

    /// Every sheep also serves NBD (`--nbd`) on a port of its own ([`Sheep::nbd_url`]).
    pub fn nbd(mut self) -> Self {
        self.nbd = true;
        self
    }

    pub fn start(self) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("sheep-test-")
            .tempdir()
            .expect("creating the cluster's temporary directory");
        let rendezvous = tmp.path().join("rv");
        fs::create_dir_all(&rendezvous).expect("creating the rendezvous directory");
        let cluster = self
            .driver
            .clone()
            .unwrap_or_else(|| format!("local:{}", rendezvous.display()));
        let total = self.nodes + self.gateways;
        let ports = free_ports(if self.nbd { 2 * total } else { total });
        let nodes = (0..total)
            .map(|i| {
                let gateway = i >= self.nodes;
                // Gateways get an explicit zone too, so what every node advertises is known
                // exactly without depending on the daemon's default-zone policy.
                let zone = if gateway {
                    Some(100 + i as u32)
                } else {
                    match &self.zones {
                        Some(z) => z.get(i).copied().flatten(),
                        None => Some(i as u32 + 1),
                    }
                };
                Sheep {
                    index: i,
                    port: ports[i],
                    dir: self
                        .dirs
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| tmp.path().join(format!("node{i}"))),
                    log: tmp.path().join(format!("node{i}.log")),
                    out: tmp.path().join(format!("node{i}.out")),
                    cluster: cluster.clone(),
                    zone,
                    gateway,
                    args: self.args.clone(),
                    nbd: self.nbd.then(|| ports[total + i]),
                    child: None,
                }
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building the harness's tokio runtime");
        let mut c = Cluster { tmp, nodes, rt };
        for i in 0..total {
            c.nodes[i].start();
        }
        c.wait_for_membership();
        c
    }
}

/// A running set of sheep sharing one rendezvous directory.
pub struct Cluster {
    tmp: tempfile::TempDir,
    nodes: Vec<Sheep>,
    rt: tokio::runtime::Runtime,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// `n` storage nodes in distinct zones, not formatted.
    pub fn start(n: usize) -> Cluster {
        Cluster::builder().nodes(n).start()
    }

    /// `n` storage nodes in distinct zones, formatted with `copies` copies.
    pub fn start_formatted(n: usize, copies: usize) -> Cluster {
        let c = Cluster::start(n);
        c.format(copies);
        c
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, i: usize) -> &Sheep {
        &self.nodes[i]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Sheep {
        &mut self.nodes[i]
    }

    pub fn nodes(&self) -> &[Sheep] {
        &self.nodes
    }

    /// Indices of the nodes the harness started and has not killed or stopped.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect()
    }

    /// Every node as the protocol should list it, sorted as GET_NODE_LIST sorts.
    pub fn expected_nodes(&self) -> Vec<Node> {
        let mut v: Vec<Node> = self.nodes.iter().map(Sheep::protocol_node).collect();
        sort_nodes(&mut v);
        v
    }

    /// The placement ring of the full membership, built from what the harness knows (address,
    /// zone, 128 vnodes or 0 for a gateway), independently of the daemons.
    pub fn ring(&self) -> Ring {
        Ring::new(self.expected_nodes())
    }

    /// Indices of the nodes that `ring().replicas(oid, copies)` names.
    pub fn replica_nodes(&self, oid: Oid, copies: usize) -> BTreeSet<usize> {
        let ring = self.ring();
        ring.replicas(oid.0, copies)
            .iter()
            .map(|n| self.index_of(n.addr))
            .collect()
    }

    /// The node index listening on `addr`.
    pub fn index_of(&self, addr: SocketAddr) -> usize {
        self.nodes
            .iter()
            .position(|n| n.addr() == addr)
            .unwrap_or_else(|| panic!("{addr} is not a node of this cluster"))
    }

    /// For every object found on any node's disk, the indices of the nodes that hold it.
    pub fn object_holders(&self) -> BTreeMap<Oid, BTreeSet<usize>> {
        let mut m: BTreeMap<Oid, BTreeSet<usize>> = BTreeMap::new();
        for n in &self.nodes {
            for oid in n.objects() {
                m.entry(oid).or_default().insert(n.index);
            }
        }
        m
    }

    /// For every object on a running node's disk, the running nodes holding it.
    pub fn live_holders(&self) -> BTreeMap<Oid, BTreeSet<usize>> {
        let mut m: BTreeMap<Oid, BTreeSet<usize>> = BTreeMap::new();
        for i in self.running() {
            for oid in self.node(i).objects() {
                m.entry(oid).or_default().insert(i);
            }
        }
        m
    }

    /// Waits up to `timeout` until the running nodes hold exactly the objects `expected` (no
    /// other object anywhere), each on exactly the nodes that `ring` names for `copies`
    /// copies: no missing copy, no orphan. Copies a node no longer owns go only after every
    /// node recovered the epoch, so this polls.
    #[track_caller]
    pub fn wait_placement(&self, ring: &Ring, copies: usize, expected: &BTreeSet<Oid>, timeout: Duration) {
        let storage_zones: BTreeSet<u32> = ring
            .nodes()
            .iter()
            .filter(|n| !n.is_gateway())
            .map(|n| n.zone)
            .collect();
        let want: BTreeMap<Oid, BTreeSet<usize>> = expected
            .iter()
            .map(|&oid| {
                let nodes: BTreeSet<usize> = ring
                    .replicas(oid.0, copies)
                    .iter()
                    .map(|n| self.index_of(n.addr))
                    .collect();
                assert_eq!(
                    nodes.len(),
                    copies.min(storage_zones.len()),
                    "the ring names {} nodes for {oid} with {copies} copies over {} zones: the \
                     harness's zones are wrong",
                    nodes.len(),
                    storage_zones.len()
                );
                (oid, nodes)
            })
            .collect();
        wait_until(
            "every object on exactly its placement nodes (no missing copy, no orphan)",
            timeout,
            || {
                let got = self.live_holders();
                let mut problems = Vec::new();
                for (oid, w) in &want {
                    let g = got.get(oid).cloned().unwrap_or_default();
                    if &g != w {
                        problems.push(format!("{oid}: on nodes {g:?}, placement says {w:?}"));
                    }
                }
                for (oid, g) in &got {
                    if !want.contains_key(oid) {
                        problems.push(format!("unexpected object {oid} on nodes {g:?}"));
                    }
                }
                if problems.is_empty() {
                    Ok(())
                } else {
                    let n = problems.len();
                    problems.truncate(20);
                    Err(format!("{n} problems, e.g.:\n  {}", problems.join("\n  ")))
                }
            },
        );
    }

    // --- protocol calls -------------------------------------------------------------------

    /// Sends one request to node `i` on a fresh connection and returns the reply, whatever
    /// its result code.
    pub fn send(&self, i: usize, req: RequestHeader, payload: &[u8]) -> Result<Reply, ClientError> {
        let client = Client::with_timeout(self.nodes[i].addr(), CALL_TIMEOUT);
        self.rt.block_on(client.send(req, payload))
    }

    /// Like [`Cluster::send`], but a non-SUCCESS result is an error.
    pub fn call(&self, i: usize, req: RequestHeader, payload: &[u8]) -> Result<Reply, ClientError> {
        let client = Client::with_timeout(self.nodes[i].addr(), CALL_TIMEOUT);
        self.rt.block_on(client.call(req, payload))
    }

    /// GET_NODE_LIST from node `i`.
    pub fn node_list(&self, i: usize) -> Result<Vec<Node>, ClientError> {
        let mut req = RequestHeader::new(op::GET_NODE_LIST);
        req.data_length = (SD_MAX_NODES * protocol::node::NODE_SIZE) as u32;
        let r = self.call(i, req, &[])?;
        Ok(Node::decode_list(&r.data))
    }

    /// CLUSTER_INFO from node `i`.
    pub fn cluster_info(&self, i: usize) -> Result<ClusterInfo, String> {
        let mut req = RequestHeader::new(op::CLUSTER_INFO);
        req.data_length = protocol::cluster::CLUSTER_INFO_SIZE as u32;
        let r = self.call(i, req, &[]).map_err(|e| e.to_string())?;
        ClusterInfo::decode(&r.data).ok_or_else(|| format!("short CLUSTER_INFO: {} bytes", r.data.len()))
    }

    /// GET_VDI_INFO(name, snapid) through node `i`: the vid.
    pub fn vdi_id(&self, i: usize, name: &str, snapid: u32) -> Result<u32, ClientError> {
        let mut payload = vec![0u8; 512];
        protocol::put_cstr(&mut payload[..256], name.as_bytes());
        let mut req = RequestHeader::new(op::GET_VDI_INFO);
        req.set_vdi(&VdiArgs {
            snapid,
            ..VdiArgs::default()
        });
        let r = self.call(i, req, &payload)?;
        Ok(r.header.vdi_id())
    }

    /// The vid of the working VDI `name`, asked through node 0; panics if there is none.
    #[track_caller]
    pub fn vid_of(&self, name: &str) -> u32 {
        self.vdi_id(0, name, 0)
            .unwrap_or_else(|e| panic!("GET_VDI_INFO {name}: {e}"))
    }

    /// READ_VDIS and READ_DEL_VDIS of node `i`: (in use, deleted).
    pub fn bitmaps(&self, i: usize) -> Result<(Vec<u8>, Vec<u8>), String> {
        let mut out = Vec::new();
        for opcode in [op::READ_VDIS, op::READ_DEL_VDIS] {
            let mut req = RequestHeader::new(opcode);
            req.data_length = BITMAP_BYTES as u32;
            let r = self
                .call(i, req, &[])
                .map_err(|e| format!("node {i}: op {opcode:#x}: {e}"))?;
            if r.data.len() != BITMAP_BYTES {
                return Err(format!(
                    "node {i}: op {opcode:#x} returned {} bytes, want {BITMAP_BYTES}",
                    r.data.len()
                ));
            }
            out.push(r.data);
        }
        let del = out.pop().expect("two bitmaps");
        let used = out.pop().expect("two bitmaps");
        Ok((used, del))
    }

    /// STAT_CLUSTER of node `i` with room for `slots` epoch records of `nodes_nr` nodes: the
    /// reply (its header's epoch, and the records' bytes).
    pub fn stat_cluster(&self, i: usize, nodes_nr: u32, slots: usize) -> Result<Reply, String> {
        let mut req = RequestHeader::new(op::STAT_CLUSTER);
        req.data_length = (slots * EpochRecord::stride(nodes_nr as usize)) as u32;
        req.set_cluster(&ClusterArgs {
            nodes_nr,
            ..ClusterArgs::default()
        });
        self.call(i, req, &[])
            .map_err(|e| format!("node {i}: STAT_CLUSTER: {e}"))
    }

    /// What node `i` says about the cluster: its bitmaps, epoch log and `vdi list -r`.
    pub fn view(&self, i: usize) -> Result<View, String> {
        let (in_use, deleted) = self.bitmaps(i)?;
        // Room for 64 epochs of 8 nodes: the epoch log's bytes.
        let epochs = self.stat_cluster(i, 8, 64)?.data;
        let out = self.dog_at(i, &["vdi", "list", "-r"], None);
        if !out.success() {
            return Err(format!("node {i}: `dog vdi list -r` failed: {}", out.stderr.trim()));
        }
        Ok(View {
            in_use,
            deleted,
            epochs,
            vdi_list: out.stdout_str(),
        })
    }

    /// Waits (up to `limit`) until `nodes` report identical views; returns the common view.
    #[track_caller]
    pub fn wait_same_views(&self, nodes: &[usize], limit: Duration, when: &str) -> View {
        wait_until(
            &format!("identical bitmaps, epoch logs and VDI lists on nodes {nodes:?} {when}"),
            limit,
            || {
                let views: BTreeMap<usize, View> = nodes
                    .iter()
                    .map(|&i| self.view(i).map(|v| (i, v)))
                    .collect::<Result<_, _>>()?;
                let (&first, v0) = views.iter().next().expect("at least one node");
                for (i, v) in &views {
                    if v != v0 {
                        return Err(format!("node {i}: {v:?}\nnode {first}: {v0:?}"));
                    }
                }
                Ok(v0.clone())
            },
        )
    }

    /// Makes `2 × cycles` cluster events on each node of `via` at once, each through its own
    /// VDI `churn-<i>` (created here when missing): see [`BlockingClient::churn`].
    #[track_caller]
    pub fn churn(&self, via: &[usize], cycles: usize) {
        for &i in via {
            let name = format!("churn-{i}");
            if self.vdi_id(i, &name, 0).is_err() {
                self.dog_ok(&["vdi", "create", &name, "4M"]);
            }
        }
        let never = AtomicBool::new(false);
        let failures: Vec<String> = std::thread::scope(|s| {
            let workers: Vec<_> = via
                .iter()
                .map(|&i| {
                    let (addr, never) = (self.nodes[i].addr(), &never);
                    s.spawn(move || BlockingClient::new(addr).churn(&format!("churn-{i}"), cycles, never))
                })
                .collect();
            workers
                .into_iter()
                .filter_map(|w| w.join().expect("churn thread panicked").err())
                .collect()
        });
        assert!(failures.is_empty(), "making cluster events: {}", failures.join("; "));
    }

    /// The nodes that have logged writing a cluster checkpoint, with what each wrote
    /// ([`Sheep::checkpoints_written`]).
    pub fn checkpoint_writers(&self) -> BTreeMap<usize, Vec<(u64, u64)>> {
        (0..self.len())
            .map(|i| (i, self.nodes[i].checkpoints_written()))
            .filter(|(_, w)| !w.is_empty())
            .collect()
    }

    /// Waits (up to `limit`) until the nodes have logged `at_least` checkpoints in all that
    /// trimmed events; returns the writers.
    #[track_caller]
    pub fn wait_trimming_checkpoints(
        &self,
        at_least: usize,
        limit: Duration,
        when: &str,
    ) -> BTreeMap<usize, Vec<(u64, u64)>> {
        wait_until(
            &format!("{at_least} checkpoints that trimmed events {when}"),
            limit,
            || {
                let writers = self.checkpoint_writers();
                let trimming = writers.values().flatten().filter(|(_, trimmed)| *trimmed > 0).count();
                if trimming >= at_least {
                    Ok(writers)
                } else {
                    Err(format!("checkpoints written (position, events trimmed): {writers:?}"))
                }
            },
        )
    }

    /// STAT_RECOVERY of node `i`.
    pub fn stat_recovery(&self, i: usize) -> Result<RecoveryStat, String> {
        let mut req = RequestHeader::new(op::STAT_RECOVERY);
        req.data_length = 24;
        let r = self
            .call(i, req, &[])
            .map_err(|e| format!("node {i}: STAT_RECOVERY: {e}"))?;
        if r.data.len() < 24 {
            return Err(format!(
                "node {i}: STAT_RECOVERY returned {} bytes, want 24",
                r.data.len()
            ));
        }
        let u64_at = |o: usize| u64::from_le_bytes(r.data[o..o + 8].try_into().expect("8 bytes"));
        Ok(RecoveryStat {
            running: r.data[0] != 0,
            done: u64_at(8),
            total: u64_at(16),
            recovered_epoch: r.header.recovered_epoch(),
        })
    }

    // --- waiting --------------------------------------------------------------------------

    /// Panics with the node's log if a node that should run has exited.
    fn check_alive(&mut self) {
        for n in &mut self.nodes {
            if n.child.is_some() {
                if let Some(s) = n.exit_status() {
                    panic!(
                        "node {} (port {}) exited with {s}\n{}",
                        n.index,
                        n.port,
                        n.log_tail(LOG_TAIL_LINES)
                    );
                }
            }
        }
    }

    /// Waits until every running node accepts TCP and its GET_NODE_LIST names exactly the
    /// running nodes (as a set; order, zones and vnodes are for the tests to check).
    pub fn wait_for_membership(&mut self) {
        let running = self.running();
        let want: BTreeSet<SocketAddr> = running.iter().map(|&i| self.nodes[i].addr()).collect();
        wait_until("every node to accept TCP and list every node", START_TIMEOUT, || {
            self.check_alive();
            for &i in &running {
                if !self.nodes[i].accepts_tcp() {
                    return Err(format!("node {i} does not accept TCP yet"));
                }
                let got = self.node_list(i).map_err(|e| format!("node {i}: GET_NODE_LIST: {e}"))?;
                let got: BTreeSet<SocketAddr> = got.iter().map(|n| n.addr).collect();
                if got != want {
                    return Err(format!("node {i} lists {got:?}, want {want:?}"));
                }
            }
            Ok(())
        });
    }

    /// Waits until every running node reports a formatted, running cluster (CLUSTER_INFO
    /// status OK with a non-zero ctime).
    pub fn wait_running(&mut self) {
        let running = self.running();
        wait_until("every node to report the cluster running", START_TIMEOUT, || {
            self.check_alive();
            self.report_running(&running)
        });
    }

    /// Waits up to `timeout` until every running node reports the same cluster epoch, is idle,
    /// and has recovered that epoch (STAT_RECOVERY); panics with the node's log if a running
    /// node exits meanwhile. Returns the epoch.
    ///
    /// The membership must name exactly the running nodes first: right after a kill, the
    /// survivors still agree on the old epoch, recovered and idle, until they notice.
    #[track_caller]
    pub fn wait_recovered(&mut self, timeout: Duration) -> u32 {
        self.wait_for_membership();
        let nodes = self.running();
        wait_until(
            "every running node to be idle with the cluster epoch recovered",
            timeout,
            || {
                self.check_alive();
                let mut epochs = BTreeMap::new();
                let mut stats = BTreeMap::new();
                for &i in &nodes {
                    let ci = self
                        .cluster_info(i)
                        .map_err(|e| format!("node {i}: CLUSTER_INFO: {e}"))?;
                    epochs.insert(i, ci.epoch);
                    stats.insert(i, self.stat_recovery(i)?);
                }
                let distinct: BTreeSet<u32> = epochs.values().copied().collect();
                if distinct.len() != 1 {
                    return Err(format!("nodes disagree on the epoch (node: epoch): {epochs:?}"));
                }
                let e = epochs.values().next().copied().expect("at least one running node");
                let behind: BTreeMap<usize, RecoveryStat> = stats
                    .into_iter()
                    .filter(|(_, s)| s.running || s.recovered_epoch != e)
                    .collect();
                if behind.is_empty() {
                    Ok(e)
                } else {
                    Err(format!("cluster epoch {e}; nodes not done (node: state): {behind:?}"))
                }
            },
        )
    }

    /// `Ok` when each of `nodes` reports CLUSTER_INFO status OK with a non-zero ctime.
    fn report_running(&self, nodes: &[usize]) -> Result<(), String> {
        for &i in nodes {
            let ci = self.cluster_info(i).map_err(|e| format!("node {i}: {e}"))?;
            if ci.status != protocol::cluster::status::OK || ci.ctime == 0 {
                return Err(format!("node {i}: status {} ctime {:#x}", ci.status, ci.ctime));
            }
        }
        Ok(())
    }

    // --- lifecycle ------------------------------------------------------------------------

    /// `dog cluster format -c COPIES` through node 0, then waits until every node runs.
    pub fn format(&self, copies: usize) {
        self.format_with(&["-c", &copies.to_string()]);
    }

    /// `dog cluster format ARGS` through node 0, then waits until every node runs.
    pub fn format_with(&self, args: &[&str]) {
        self.dog_ok(&[&["cluster", "format"], args].concat());
        // Formatting is a cluster operation; dog returns once node 0 applied it.
        let running = self.running();
        wait_until("every node to see the format", START_TIMEOUT, || {
            self.report_running(&running)
        });
    }

    /// Moves node `i` onto `fs` before the cluster is formatted: stops it, replaces its DIR
    /// with a link to `fs`, starts it again and waits until the members list it.
    pub fn put_node_on(&mut self, i: usize, fs: &ScratchFs) {
        self.kill(i);
        let dir = self.node(i).dir().to_path_buf();
        fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("removing {}: {e}", dir.display()));
        std::os::unix::fs::symlink(fs.path(), &dir).unwrap_or_else(|e| panic!("linking {}: {e}", dir.display()));
        self.node_mut(i).start();
        self.wait_for_membership();
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// SIGKILL every node.
    pub fn kill_all(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }

    /// Restarts node `i` on its DIR and port and waits until the membership includes it.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
        self.wait_for_membership();
    }

    /// Starts every node that is not running, on its old DIR and port, and waits for the full
    /// membership.
    pub fn start_all(&mut self) {
        for n in &mut self.nodes {
            if !n.is_running() {
                n.child = None;
                n.start();
            }
        }
        self.wait_for_membership();
    }

    // --- dog ------------------------------------------------------------------------------

    /// Runs dog against node 0.
    pub fn dog(&self, args: &[&str]) -> DogOutput {
        run_dog(self.nodes[0].port, args, None)
    }

    /// Runs dog against node 0 and panics (with stderr) unless it succeeds.
    #[track_caller]
    pub fn dog_ok(&self, args: &[&str]) -> DogOutput {
        run_dog(self.nodes[0].port, args, None).expect_ok()
    }

    /// Runs dog against node 0 with `stdin` as its standard input.
    pub fn dog_with_input(&self, args: &[&str], stdin: &[u8]) -> DogOutput {
        run_dog(self.nodes[0].port, args, Some(stdin))
    }

    /// Runs dog against node `i` with optional stdin.
    pub fn dog_at(&self, i: usize, args: &[&str], stdin: Option<&[u8]>) -> DogOutput {
        run_dog(self.nodes[i].port, args, stdin)
    }

    /// `dog vdi write NAME OFFSET LEN < data` through node 0; panics on failure.
    #[track_caller]
    pub fn write_vdi(&self, name: &str, offset: u64, data: &[u8]) {
        run_dog(
            self.nodes[0].port,
            &["vdi", "write", name, &offset.to_string(), &data.len().to_string()],
            Some(data),
        )
        .expect_ok();
    }

    /// `dog vdi read NAME OFFSET LEN [-s SNAP]` through node 0; panics on failure.
    #[track_caller]
    pub fn read_vdi(&self, name: &str, offset: u64, len: u64, snap: Option<&str>) -> Vec<u8> {
        let off = offset.to_string();
        let len = len.to_string();
        let mut args = vec!["vdi", "read", name, off.as_str(), len.as_str()];
        if let Some(s) = snap {
            args.extend(["-s", s]);
        }
        self.dog_ok(&args).stdout
    }

    /// `dog vdi list -r` through node `i`, parsed.
    #[track_caller]
    pub fn vdi_list(&self, i: usize) -> Vec<VdiLine> {
        let out = self.dog_at(i, &["vdi", "list", "-r"], None).expect_ok();
        parse_vdi_list(&out.stdout_str())
    }

    /// Writes `len` pseudo-random bytes (from `seed`) at `off` of VDI `name` through node
    /// `via`, and into `model`; panics if dog fails.
    #[track_caller]
    pub fn put(&self, via: usize, name: &str, model: &mut [u8], off: u64, seed: u64, len: u64) {
        let d = pseudo_random(seed, len as usize);
        self.dog_at(
            via,
            &["vdi", "write", name, &off.to_string(), &len.to_string()],
            Some(&d),
        )
        .expect_ok();
        model[off as usize..(off + len) as usize].copy_from_slice(&d);
    }

    /// `dog vdi read NAME` through each of `nodes` equals `model`.
    #[track_caller]
    pub fn check_reads(&self, name: &str, model: &[u8], nodes: &[usize], when: &str) {
        for &i in nodes {
            let out = self.dog_at(i, &["vdi", "read", name], None).expect_ok();
            assert_same_bytes(
                &format!("`dog vdi read {name}` through node {i} {when}"),
                &out.stdout,
                model,
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            kill_and_reap(&mut n.child);
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!(
                    "===== node {} (port {}, zone {:?}{}) =====\n{}",
                    n.index,
                    n.port,
                    n.zone,
                    if n.gateway { ", gateway" } else { "" },
                    n.log_tail(LOG_TAIL_LINES)
                );
            }
        }
        keep_dir_if_asked(&mut self.tmp);
    }
}

/// One node's STAT_RECOVERY reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryStat {
    pub running: bool,
    pub done: u64,
    pub total: u64,
    pub recovered_epoch: u32,
}

/// What one node says about the cluster (READ_VDIS, READ_DEL_VDIS, the STAT_CLUSTER epoch
/// log and `vdi list -r`), for comparing nodes.
#[derive(Clone, PartialEq, Eq)]
pub struct View {
    pub in_use: Vec<u8>,
    pub deleted: Vec<u8>,
    pub epochs: Vec<u8>,
    pub vdi_list: String,
}

impl View {
    /// Asserts that `self` holds the same VDIs as `earlier` (bitmaps and `vdi list -r`); the
    /// epoch logs may differ, since membership may have changed in between.
    #[track_caller]
    pub fn assert_same_vdis(&self, earlier: &View, when: &str) {
        assert_eq!(set_bits(&self.in_use), set_bits(&earlier.in_use), "READ_VDIS {when}");
        assert_eq!(
            set_bits(&self.deleted),
            set_bits(&earlier.deleted),
            "READ_DEL_VDIS {when}"
        );
        assert_eq!(self.vdi_list, earlier.vdi_list, "`vdi list -r` {when}");
    }
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("in_use", &set_bits(&self.in_use))
            .field("deleted", &set_bits(&self.deleted))
            .field("epoch_log_bytes", &self.epochs.len())
            .field("vdi_list", &self.vdi_list)
            .finish()
    }
}

/// The vids set in a READ_VDIS / READ_DEL_VDIS bitmap.
pub fn set_bits(b: &[u8]) -> Vec<u32> {
    VdiBitmap::from_bytes(b.to_vec()).expect("bitmap size").iter().collect()
}

// ---------------------------------------------------------------------------------------------
// `dog vdi list -r`

/// One line of `dog vdi list -r`:
/// `FLAG NAME SNAPID SIZE USED SHARED CTIME VID COPIES TAG BSS` (TAG may be empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VdiLine {
    /// `=` working VDI, `s` snapshot, `c` clone.
    pub flag: String,
    pub name: String,
    pub snap_id: u32,
    pub size: u64,
    pub used: u64,
    pub shared: u64,
    pub vid: u32,
    pub copies: u32,
    pub tag: String,
    pub raw: String,
}

/// Parses `dog vdi list -r` output; panics on a line it cannot read.
pub fn parse_vdi_list(text: &str) -> Vec<VdiLine> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(
                f.len() == 10 || f.len() == 11,
                "cannot parse `vdi list -r` line {l:?}: {} fields",
                f.len()
            );
            let num = |s: &str, what: &str| -> u64 {
                s.parse()
                    .unwrap_or_else(|e| panic!("`vdi list -r` line {l:?}: {what} {s:?}: {e}"))
            };
            let vid_str = f[7].trim_start_matches("0x");
            VdiLine {
                flag: f[0].to_string(),
                name: f[1].to_string(),
                snap_id: num(f[2], "snap id") as u32,
                size: num(f[3], "size"),
                used: num(f[4], "used"),
                shared: num(f[5], "shared"),
                vid: u32::from_str_radix(vid_str, 16)
                    .unwrap_or_else(|e| panic!("`vdi list -r` line {l:?}: vid {vid_str:?}: {e}")),
                copies: num(f[8], "copies") as u32,
                tag: if f.len() == 11 { f[9].to_string() } else { String::new() },
                raw: l.to_string(),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A blocking protocol client, for threads of a test

/// [`protocol::Client`] with its own small runtime, so test threads can make protocol calls
/// without sharing the cluster's runtime.
pub struct BlockingClient {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl BlockingClient {
    pub fn new(addr: SocketAddr) -> BlockingClient {
        BlockingClient {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a client runtime"),
            client: Client::with_timeout(addr, CALL_TIMEOUT),
        }
    }

    /// The reply, whatever its result code.
    pub fn send(&self, req: RequestHeader, payload: &[u8]) -> Result<Reply, ClientError> {
        self.rt.block_on(self.client.send(req, payload))
    }

    /// Cluster events made cheaply: up to `cycles` times LOCK_VDI and RELEASE_VDI of the
    /// working VDI `name` (each one event that every member applies). Stops early once `stop`
    /// is set; returns the cycles done, or the first failure.
    pub fn churn(&self, name: &str, cycles: usize, stop: &AtomicBool) -> Result<usize, String> {
        for done in 0..cycles {
            if stop.load(Ordering::Relaxed) {
                return Ok(done);
            }
            let vid = self
                .rt
                .block_on(self.client.lock_vdi(name))
                .map_err(|e| format!("LOCK_VDI {name} via {}: {e}", self.client.addr()))?
                .vid;
            let vid = protocol::Vid::new(vid).ok_or_else(|| format!("LOCK_VDI {name}: vid {vid:#x}"))?;
            self.rt
                .block_on(self.client.release_vdi(vid))
                .map_err(|e| format!("RELEASE_VDI {name} via {}: {e}", self.client.addr()))?;
        }
        Ok(cycles)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw TCP, for malformed traffic

/// A blocking connection that sends exactly the bytes it is given, for tests that must send
/// what a well-behaved client never would.
pub struct RawConn {
    pub stream: TcpStream,
}

impl RawConn {
    /// Connects with `timeout` as the read and write timeout.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> RawConn {
        let stream = TcpStream::connect_timeout(&addr, timeout).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream
            .set_read_timeout(Some(timeout))
            .expect("setting the read timeout");
        stream
            .set_write_timeout(Some(timeout))
            .expect("setting the write timeout");
        let _ = stream.set_nodelay(true);
        RawConn { stream }
    }

    pub fn send_bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(b)?;
        self.stream.flush()
    }

    /// Sends a header as given (no flag or length fix-ups) followed by `payload`.
    pub fn send(&mut self, h: &RequestHeader, payload: &[u8]) -> std::io::Result<()> {
        let mut b = h.encode().to_vec();
        b.extend_from_slice(payload);
        self.send_bytes(&b)
    }

    /// Reads one reply: the 48-byte header, then `data_length` bytes (refusing more than
    /// `limit`).
    pub fn read_reply(&mut self, limit: usize) -> std::io::Result<(ResponseHeader, Vec<u8>)> {
        let mut hb = [0u8; protocol::header::HEADER_SIZE];
        self.stream.read_exact(&mut hb)?;
        let h = ResponseHeader::decode(&hb);
        if h.data_length as usize > limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("reply announces {} bytes, more than {limit}", h.data_length),
            ));
        }
        let mut data = vec![0u8; h.data_length as usize];
        self.stream.read_exact(&mut data)?;
        Ok((h, data))
    }

    /// Sends a request and reads its reply.
    pub fn exchange(
        &mut self,
        h: &RequestHeader,
        payload: &[u8],
        limit: usize,
    ) -> std::io::Result<(ResponseHeader, Vec<u8>)> {
        self.send(h, payload)?;
        self.read_reply(limit)
    }

    /// Reads until EOF, an error or the timeout; returns how many bytes came and how it ended.
    pub fn drain(&mut self) -> (usize, String) {
        let mut n = 0;
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return (n, "eof".into()),
                Ok(k) => n += k,
                Err(e) => return (n, format!("{:?}: {e}", e.kind())),
            }
        }
    }
}

/// Reads a `/proc/PID/status` field in kB (e.g. `VmPeak`, `VmHWM`, `VmRSS`).
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Reads a whole file, with a message naming it on failure.
pub fn read_file(path: &Path) -> Vec<u8> {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut b = Vec::new();
    f.read_to_end(&mut b)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    b
}

// ---------------------------------------------------------------------------------------------
// External tools and sheepfs mounts

/// How long one external tool (dd, cp, mkfs.ext4, qemu-img, fio...) may run by default.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `sheepfs` may take to report its mount ready, and to exit after `umount`.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of sheepfs's log printed when a test fails.
const SHEEPFS_LOG_TAIL_LINES: usize = 200;

pub fn sheepfs_bin() -> PathBuf {
    binary("sheepfs")
}

/// What one external command produced.
#[derive(Debug)]
pub struct ToolOutput {
    /// The command line, for messages.
    pub cmdline: String,
    /// `None` when the harness killed the command at its deadline.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl ToolOutput {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The command, how it ended, and what it printed.
    pub fn describe(&self) -> String {
        let how = match self.status {
            Some(s) => s.to_string(),
            None => format!("no exit: killed by the harness after {:?}", self.elapsed),
        };
        format!(
            "`{}` ended with {how} after {:?}\nstderr: {}\nstdout: {}",
            self.cmdline,
            self.elapsed,
            self.stderr.trim_end(),
            truncate_for_message(self.stdout_str().trim_end())
        )
    }

    /// Panics with the command, status, stderr and stdout unless it exited 0.
    #[track_caller]
    pub fn expect_ok(self) -> ToolOutput {
        if !self.success() {
            panic!("expected success: {}", self.describe());
        }
        self
    }

    /// Panics unless the command exited by itself with a non-zero status.
    #[track_caller]
    pub fn expect_failure(self) -> ToolOutput {
        if self.success() || self.timed_out() {
            panic!("expected a non-zero exit: {}", self.describe());
        }
        self
    }
}

/// Runs `cmd` (stdin from /dev/null, stdout and stderr captured) and kills it if it is still
/// running after `timeout`: a hung tool fails the test instead of hanging it.
pub fn run_command(cmd: Command, timeout: Duration) -> ToolOutput {
    run_command_with_stdin(cmd, Stdio::null(), timeout)
}

/// [`run_command`] with the given standard input (e.g. a file the test opened itself).
pub fn run_command_with_stdin(mut cmd: Command, stdin: Stdio, timeout: Duration) -> ToolOutput {
    let cmdline = {
        let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
        parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
        parts.join(" ")
    };
    cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{cmdline}`: {e}"));
    let mut out_pipe = child.stdout.take().expect("stdout pipe");
    let mut err_pipe = child.stderr.take().expect("stderr pipe");
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out_pipe.read_to_end(&mut b);
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err_pipe.read_to_end(&mut b);
        b
    });
    let deadline = start + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for `{cmdline}`: {e}"),
        }
    };
    let elapsed = start.elapsed();
    // A tool that left a background child holding the pipes (sheepfs does not: it detaches
    // its stdio) would block these joins; none of the tools used here does.
    let stdout = out_reader.join().expect("stdout reader thread panicked");
    let stderr = err_reader.join().expect("stderr reader thread panicked");
    ToolOutput {
        cmdline,
        status,
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed,
    }
}

/// Runs `program args...` with [`TOOL_TIMEOUT`].
pub fn tool(program: &str, args: &[&str]) -> ToolOutput {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_command(cmd, TOOL_TIMEOUT)
}

/// Runs `program args...` with [`TOOL_TIMEOUT`] and panics unless it exits 0.
#[track_caller]
pub fn tool_ok(program: &str, args: &[&str]) -> ToolOutput {
    tool(program, args).expect_ok()
}

/// `path` as a command-line argument (test paths are UTF-8).
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Is `path` a mount point right now (as listed in /proc/self/mountinfo)?
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    // Field 5 is the mount point, with spaces and friends escaped as \040 etc.
    let want = path.to_string_lossy().replace(' ', "\\040");
    info.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Is process `pid` alive (present and not a zombie)?
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last ')'.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The pid of the `sheepfs` process serving `mountpoint`: its command line names the
/// binary and ends with the (unique, per-test) mount point.
fn find_sheepfs_pid(mountpoint: &Path) -> Option<u32> {
    let want = mountpoint.as_os_str().as_encoded_bytes();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
        let is_sheepfs = args
            .first()
            .is_some_and(|a0| *a0 == b"sheepfs" || a0.ends_with(b"/sheepfs"));
        if is_sheepfs && args.last() == Some(&want) && process_alive(pid) {
            return Some(pid);
        }
    }
    None
}

/// A `sheepfs` mounted on a directory inside the cluster's temporary directory, talking to one
/// node as its gateway. It holds no borrow of the [`Cluster`], so a test can kill and restart
/// nodes under it. Declare it after the cluster so that it drops first.
///
/// On drop it unmounts (`umount`, then `umount -l`), waits for the sheepfs process to exit
/// (SIGKILL after [`MOUNT_TIMEOUT`]) and, when the test is failing, prints the tail of the
/// sheepfs log. [`Mount::unmount`] does the same but fails the test if anything went wrong.
pub struct Mount {
    mountpoint: PathBuf,
    log: PathBuf,
    node: usize,
    pid: Option<u32>,
    done: bool,
}

impl Mount {
    /// `sheepfs -a 127.0.0.1 -p <port of node> --log-file <tmp>/sheepfs.log <tmp>/mnt`.
    #[track_caller]
    pub fn start(c: &Cluster, node: usize) -> Mount {
        Mount::start_with(c, node, &[])
    }

    /// Like [`Mount::start`] with extra sheepfs flags (e.g. `--retry-secs 3`). The first
    /// mount of a cluster uses `mnt` and `sheepfs.log`, later ones `mnt1`, `sheepfs1.log`...
    #[track_caller]
    pub fn start_with(c: &Cluster, node: usize, extra: &[&str]) -> Mount {
        let (mountpoint, log) = (0..)
            .map(|k| {
                let suffix = if k == 0 { String::new() } else { k.to_string() };
                (
                    c.root().join(format!("mnt{suffix}")),
                    c.root().join(format!("sheepfs{suffix}.log")),
                )
            })
            .find(|(m, _)| !m.exists())
            .expect("some mount point name is free");
        fs::create_dir_all(&mountpoint).unwrap_or_else(|e| panic!("creating {}: {e}", mountpoint.display()));
        let port = c.node(node).port().to_string();
        let mut cmd = Command::new(sheepfs_bin());
        cmd.args(["-a", "127.0.0.1", "-p", &port, "--log-file"])
            .arg(&log)
            .args(extra)
            .arg(&mountpoint);
        let out = run_command(cmd, MOUNT_TIMEOUT);
        let mut m = Mount {
            mountpoint,
            log,
            node,
            pid: None,
            done: false,
        };
        m.pid = find_sheepfs_pid(&m.mountpoint);
        if !out.success() || !is_mount_point(&m.mountpoint) || m.pid.is_none() {
            panic!(
                "sheepfs did not mount {} through node {node}: {}\nmounted: {}, sheepfs pid: {:?}\n{}",
                m.mountpoint.display(),
                out.describe(),
                is_mount_point(&m.mountpoint),
                m.pid,
                m.log_tail(SHEEPFS_LOG_TAIL_LINES)
            );
        }
        m
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// A path inside the mount: `join("vdi/list")`.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// `/vdi/<name>`.
    pub fn vdi_dir(&self, name: &str) -> PathBuf {
        self.mountpoint.join("vdi").join(name)
    }

    /// `/vdi/<name>/volume`.
    pub fn volume(&self, name: &str) -> PathBuf {
        self.vdi_dir(name).join("volume")
    }

    /// The node this mount uses as its gateway.
    pub fn node(&self) -> usize {
        self.node
    }

    /// The pid of the sheepfs process serving the mount.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole sheepfs log so far.
    pub fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        files_tail(&[&self.log], lines)
    }

    pub fn is_mounted(&self) -> bool {
        is_mount_point(&self.mountpoint)
    }

    /// Is the sheepfs process still running?
    pub fn process_alive(&self) -> bool {
        self.pid.is_some_and(process_alive)
    }

    /// Unmounts and waits for sheepfs to exit; panics (with the log) if `umount` failed or
    /// the process had to be killed.
    #[track_caller]
    pub fn unmount(mut self) {
        let problems = self.teardown();
        if !problems.is_empty() {
            panic!(
                "unmounting {} did not go cleanly:\n  {}\n{}",
                self.mountpoint.display(),
                problems.join("\n  "),
                self.log_tail(SHEEPFS_LOG_TAIL_LINES)
            );
        }
    }

    /// Unmounts, waits for the process, kills it if need be. Returns what went wrong.
    fn teardown(&mut self) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let mut problems = Vec::new();
        let mp = self.mountpoint.to_string_lossy().into_owned();
        if self.is_mounted() {
            let out = tool("umount", &[&mp]);
            if !out.success() {
                problems.push(format!("umount failed: {}", out.describe()));
                if self.is_mounted() {
                    let lazy = tool("umount", &["-l", &mp]);
                    if !lazy.success() {
                        problems.push(format!("umount -l failed: {}", lazy.describe()));
                    }
                }
            }
        } else {
            problems.push(format!("{mp} was no longer mounted before the unmount"));
        }
        if let Some(pid) = self.pid {
            let deadline = Instant::now() + MOUNT_TIMEOUT;
            while process_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if process_alive(pid) {
                problems.push(format!(
                    "sheepfs (pid {pid}) still ran {MOUNT_TIMEOUT:?} after the unmount; sent SIGKILL"
                ));
                // SAFETY: kill(2) on the pid found serving this mount; checked alive just now.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
                let deadline = Instant::now() + Duration::from_secs(5);
                while process_alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        if self.is_mounted() {
            // The process is gone; a mount left behind is a dead FUSE connection.
            let _ = tool("umount", &["-l", &mp]);
            problems.push(format!("{mp} was still mounted after sheepfs exited"));
        }
        let log = self.log_text();
        if !log.lines().any(|l| l.trim_end().ends_with(" unmounted")) {
            problems.push(
                "sheepfs's log has no `unmounted` line: it did not exit through its normal path \
                 (in the background its stderr, and so any panic message, goes to /dev/null)"
                    .to_string(),
            );
        }
        for l in log
            .lines()
            .filter(|l| l.contains("flush at unmount failed") || l.contains("flush failed"))
        {
            problems.push(format!("sheepfs could not flush: {l}"));
        }
        problems
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let problems = self.teardown();
        if std::thread::panicking() || !problems.is_empty() {
            for p in &problems {
                eprintln!("sheepfs mount {}: {p}", self.mountpoint.display());
            }
            eprintln!(
                "===== sheepfs on {} (node {}, pid {:?}) =====\n{}",
                self.mountpoint.display(),
                self.node,
                self.pid,
                self.log_tail(SHEEPFS_LOG_TAIL_LINES)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Growing a running cluster, and daemons with extra flags (recovery scenarios)

impl Sheep {
    /// [`Sheep::start`] with extra daemon flags for this start only (e.g.
    /// `["--recovery-rate", "5"]`). Panics if the daemon is already running.
    pub fn start_with_args(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "node {} is already running", self.index);
        fs::create_dir_all(&self.dir).unwrap_or_else(|e| panic!("creating {}: {e}", self.dir.display()));
        let mut cmd = Command::new(sheep_bin());
        cmd.arg("-p")
            .arg(self.port.to_string())
            .arg("-b")
            .arg("127.0.0.1")
            .arg("-c")
            .arg(&self.cluster)
            .arg("--log-file")
            .arg(&self.log);
        if let Some(z) = self.zone {
            cmd.arg("-z").arg(z.to_string());
        }
        if self.gateway {
            cmd.arg("-g");
        }
        if let Some(port) = self.nbd {
            cmd.arg("--nbd").arg(port.to_string());
        }
        cmd.args(&self.args).args(extra).arg(&self.dir);
        let what = format!("sheep for node {}", self.index);
        self.child = Some(spawn_daemon(&mut cmd, &self.out, &what));
    }
}

impl Cluster {
    /// Starts one more storage node, in zone `zone`, on a fresh DIR and a port that no node of
    /// this cluster uses (running or not), and waits until every running node lists it.
    /// Returns its index.
    pub fn add_node(&mut self, zone: u32) -> usize {
        let port = free_ports(1)[0];
        let i = self.nodes.len();
        let root = self.tmp.path().to_path_buf();
        self.nodes.push(Sheep {
            index: i,
            port,
            dir: root.join(format!("node{i}")),
            log: root.join(format!("node{i}.log")),
            out: root.join(format!("node{i}.out")),
            cluster: self.nodes[0].cluster.clone(),
            zone: Some(zone),
            gateway: false,
            args: self.nodes[0].args.clone(),
            nbd: None,
            child: None,
        });
        self.nodes[i].start();
        self.wait_for_membership();
        i
    }
}

// ---------------------------------------------------------------------------------------------
// Filesystems of a chosen size

/// A filesystem of a chosen size mounted in its own temporary directory (a tmpfs, or ext4 on
/// a sparse loop file, whose unwritten preallocations cost no backing space), unmounted and
/// removed on drop, even when the test panics. Declare it before the cluster that stores on
/// it, so the daemons die first.
pub struct ScratchFs {
    dir: Option<tempfile::TempDir>,
    mnt: PathBuf,
}

impl ScratchFs {
    /// `mount -t tmpfs -o size=SIZE` (e.g. `64m`).
    #[track_caller]
    pub fn tmpfs(size: &str) -> ScratchFs {
        let (dir, mnt) = ScratchFs::mount_point();
        tool_ok(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", path_str(&mnt)],
        );
        ScratchFs { dir: Some(dir), mnt }
    }

    /// ext4 on a sparse file of `bytes`, mounted through a loop device that the kernel
    /// detaches at unmount.
    #[track_caller]
    pub fn ext4(bytes: u64) -> ScratchFs {
        let (dir, mnt) = ScratchFs::mount_point();
        let image = dir.path().join("image");
        File::create(&image)
            .and_then(|f| f.set_len(bytes))
            .unwrap_or_else(|e| panic!("creating {}: {e}", image.display()));
        tool_ok("mkfs.ext4", &["-q", "-F", path_str(&image)]);
        let fs = ScratchFs { dir: Some(dir), mnt };
        tool_ok("mount", &["-o", "loop", path_str(&image), path_str(&fs.mnt)]);
        fs
    }

    fn mount_point() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("sheep-test-fs-")
            .tempdir()
            .expect("creating a directory for a scratch filesystem");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap_or_else(|e| panic!("creating {}: {e}", mnt.display()));
        (dir, mnt)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        if !tool("umount", &[path_str(&self.mnt)]).success() {
            // Still busy: detach it now; the kernel frees it when the last user goes.
            let _ = tool("umount", &["-l", path_str(&self.mnt)]);
        }
        drop(self.dir.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_random_is_deterministic_and_varied() {
        let a = pseudo_random(7, 1000);
        assert_eq!(a, pseudo_random(7, 1000));
        assert_ne!(a, pseudo_random(8, 1000));
        assert_eq!(&pseudo_random(7, 10)[..], &a[..10]);
        let zeros = a.iter().filter(|&&b| b == 0).count();
        assert!(zeros < 30, "{zeros} zero bytes in 1000");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), 1 << 30);
        assert_eq!(parse_size("64M"), 64 << 20);
        assert_eq!(parse_size("4096"), 4096);
    }

    #[test]
    fn vdi_list_lines() {
        let v = parse_vdi_list(
            "s alpha 1 268435456 4194304 0 1700000000 5e3d0b 3  22\n\
             = alpha 0 268435456 0 4194304 1700000001 5e3d0c 3 mytag 22\n",
        );
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].flag.as_str(), v[0].snap_id, v[0].vid), ("s", 1, 0x5e3d0b));
        assert_eq!(v[0].tag, "");
        assert_eq!((v[1].tag.as_str(), v[1].shared, v[1].copies), ("mytag", 4194304, 3));
    }

    #[test]
    fn bin_dir_is_the_profile_dir() {
        let d = bin_dir();
        assert!(d.join("deps").is_dir(), "{}", d.display());
    }
}
