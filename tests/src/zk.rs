//! ZooKeeper servers for tests of the `zookeeper` cluster driver: a standalone server or an
//! ensemble, on free ports in a temporary directory, as child processes of the test thread
//! (with `PR_SET_PDEATHSIG`, so a killed test run leaks no JVM), killed on drop.
//!
//! The servers run Debian's ZooKeeper (`/usr/share/java/zookeeper.jar`, whose manifest names
//! its dependencies) directly under `java`, with log4j writing to `<tmp>/zk<i>/server.log`.
//! `zkServer.sh` is not used: Debian's `zkEnv.sh` (a link to `/etc/zookeeper/conf/environment`)
//! overwrites `ZOOCFGDIR` and `ZOO_LOG_DIR`, and without an slf4j binding on its classpath the
//! server logs nothing, so a failed test would have no server log to show.
//!
//! When a test panics while a [`ZooKeeper`] is alive, its drop prints the tail of each
//! server's log. `SHEEP_TEST_KEEP=1` keeps the directory.
//!
//! Also here: [`run_tool`], a bounded run of any command with bytes on its standard input,
//! and [`dog_command`], `dog` aimed at any address (the [`crate::run_dog`] of the harness
//! always talks to 127.0.0.1).

use std::fs;
use std::io::{Read, Seek, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{
    dog_bin, exited, files_tail, free_ports, keep_dir_if_asked, kill_and_reap, run_command, run_command_with_stdin,
    spawn_daemon, wait_until, ToolOutput,
};

/// The JVM.
pub const JAVA: &str = "/usr/bin/java";
/// ZooKeeper (its manifest's Class-Path names its dependencies) and an slf4j → log4j binding.
pub const ZK_CLASSPATH: &[&str] = &[
    "/usr/share/java/zookeeper.jar",
    "/usr/share/java/slf4j-log4j12.jar",
    "/usr/share/java/log4j-1.2.jar",
];
/// How long a server (or the whole ensemble) may take to start serving.
pub const ZK_START_TIMEOUT: Duration = Duration::from_secs(60);
/// ZooKeeper's tick. The session timeouts a server grants lie in [2, 20] ticks: 1 s to 10 s.
pub const TICK_MS: u64 = 500;
/// Lines of each server log printed when a test fails.
const ZK_LOG_TAIL_LINES: usize = 120;

const LOG4J: &str = "log4j.rootLogger=INFO, CONSOLE\n\
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender\n\
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout\n\
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t:%C{1}@%L] - %m%n\n";

/// Sends a four-letter command (`ruok`, `srvr`, `stat`, `mntr`...) and returns the answer.
pub fn four_letter(addr: SocketAddr, cmd: &str) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).map_err(|e| format!("connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(2))))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    s.write_all(cmd.as_bytes())
        .map_err(|e| format!("send {cmd:?} to {addr}: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .map_err(|e| format!("read the answer to {cmd:?} from {addr}: {e}"))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The `Mode:` line of a `srvr` answer: `leader`, `follower`, `standalone`...
fn mode_of(srvr: &str) -> Option<String> {
    srvr.lines()
        .find_map(|l| l.strip_prefix("Mode:"))
        .map(|m| m.trim().to_string())
}

/// One server of a [`ZooKeeper`].
struct Server {
    /// 1-based id (`myid`).
    id: usize,
    client: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    fn start(&mut self, log4j: &Path) {
        assert!(self.child.is_none(), "ZooKeeper server {} is already running", self.id);
        let mut cmd = Command::new(JAVA);
        cmd.args([
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.net.preferIPv4Stack=true",
        ])
        .arg(format!("-Dlog4j.configuration=file:{}", log4j.display()))
        .arg(format!("-Dzookeeper.log.dir={}", self.dir.display()))
        .arg("-cp")
        .arg(ZK_CLASSPATH.join(":"))
        .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
        .arg(self.dir.join("zoo.cfg"))
        .current_dir(&self.dir);
        // The kernel kills the JVM if the thread that started it dies: no leak on a crash.
        let what = format!("ZooKeeper server {} ({JAVA})", self.id);
        self.child = Some(spawn_daemon(&mut cmd, &self.log, &what));
    }

    fn kill(&mut self) {
        kill_and_reap(&mut self.child);
    }

    /// Panics (with the log) if the process was started and has exited.
    fn check_alive(&mut self) {
        if let Some(status) = exited(&mut self.child) {
            panic!(
                "ZooKeeper server {} ({}) exited with {status}\n{}",
                self.id,
                self.client,
                files_tail(&[&self.log], ZK_LOG_TAIL_LINES)
            );
        }
    }
}

/// A standalone ZooKeeper server or an ensemble, killed on drop.
pub struct ZooKeeper {
    tmp: tempfile::TempDir,
    log4j: PathBuf,
    servers: Vec<Server>,
}

impl ZooKeeper {
    /// One standalone server, clients on 127.0.0.1.
    pub fn standalone() -> ZooKeeper {
        ZooKeeper::start(1, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// One standalone server whose client port listens on `ip` only (`clientPortAddress`),
    /// e.g. a bridge address that sheep in network namespaces reach.
    pub fn standalone_on(ip: IpAddr) -> ZooKeeper {
        ZooKeeper::start(1, ip)
    }

    /// `n` servers (n >= 2) forming one ensemble on 127.0.0.1; waits until it has a leader
    /// and every server serves.
    pub fn ensemble(n: usize) -> ZooKeeper {
        assert!(n >= 2, "an ensemble needs at least 2 servers, got {n}");
        ZooKeeper::start(n, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    fn start(n: usize, client_ip: IpAddr) -> ZooKeeper {
        for p in std::iter::once(JAVA).chain(ZK_CLASSPATH.iter().copied()) {
            assert!(
                Path::new(p).exists(),
                "{p} is missing: these tests need Java and Debian's `zookeeper` package"
            );
        }
        let tmp = tempfile::Builder::new()
            .prefix("zk-test-")
            .tempdir()
            .expect("creating ZooKeeper's temporary directory");
        let log4j = tmp.path().join("log4j.properties");
        fs::write(&log4j, LOG4J).unwrap_or_else(|e| panic!("writing {}: {e}", log4j.display()));
        // Client ports, and for an ensemble a quorum and an election port per server.
        let per = if n == 1 { 1 } else { 3 };
        let ports = free_ports(n * per);
        let quorum_lines: String = if n == 1 {
            String::new()
        } else {
            (0..n)
                .map(|i| {
                    format!(
                        "server.{}=127.0.0.1:{}:{}\n",
                        i + 1,
                        ports[i * per + 1],
                        ports[i * per + 2]
                    )
                })
                .collect()
        };
        let mut servers = Vec::new();
        for i in 0..n {
            let dir = tmp.path().join(format!("zk{}", i + 1));
            let data = dir.join("data");
            fs::create_dir_all(&data).unwrap_or_else(|e| panic!("creating {}: {e}", data.display()));
            let client = SocketAddr::new(client_ip, ports[i * per]);
            let cfg = format!(
                "tickTime={TICK_MS}\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={}\n\
                 clientPortAddress={}\nadmin.enableServer=false\n4lw.commands.whitelist=*\n\
                 maxClientCnxns=0\n{quorum_lines}",
                data.display(),
                client.port(),
                client_ip
            );
            fs::write(dir.join("zoo.cfg"), cfg).unwrap_or_else(|e| panic!("writing zoo.cfg: {e}"));
            if n > 1 {
                fs::write(data.join("myid"), format!("{}\n", i + 1)).unwrap_or_else(|e| panic!("writing myid: {e}"));
            }
            servers.push(Server {
                id: i + 1,
                client,
                log: dir.join("server.log"),
                dir,
                child: None,
            });
        }
        let mut zk = ZooKeeper { tmp, log4j, servers };
        for s in &mut zk.servers {
            s.start(&zk.log4j);
        }
        for i in 0..n {
            zk.wait_serving(i);
        }
        if n > 1 {
            zk.wait_leader(ZK_START_TIMEOUT);
        }
        zk
    }

    /// The directory holding every server's config, data and log.
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Where server `i` (0-based) takes clients.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        self.servers[i].client
    }

    /// `HOST:PORT,HOST:PORT...` of every server, running or not.
    pub fn hosts(&self) -> String {
        self.servers
            .iter()
            .map(|s| s.client.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The sheep `-c` argument: `zookeeper:HOST:PORT,...,timeout=N`.
    pub fn spec(&self, timeout_secs: u64) -> String {
        format!("zookeeper:{},timeout={timeout_secs}", self.hosts())
    }

    /// The pid of server `i`, while the harness runs it.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.servers[i].child.as_ref().map(Child::id)
    }

    /// SIGKILL server `i` and reap it. A no-op when it is not running.
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }

    /// Kills server `i` if it runs, starts it again on its data, and waits until it serves.
    pub fn restart(&mut self, i: usize) {
        self.servers[i].kill();
        self.servers[i].start(&self.log4j);
        self.wait_serving(i);
    }

    /// A four-letter command to server `i`.
    pub fn four_letter(&self, i: usize, cmd: &str) -> Result<String, String> {
        four_letter(self.servers[i].client, cmd)
    }

    /// Server `i`'s mode (`leader`, `follower`, `standalone`), or why there is none (not
    /// running, not serving: no quorum).
    pub fn mode(&self, i: usize) -> Result<String, String> {
        if self.servers[i].child.is_none() {
            return Err(format!("server {i} is not running"));
        }
        let a = self.four_letter(i, "srvr")?;
        mode_of(&a).ok_or_else(|| format!("server {i}: no Mode in {:?}", a.trim()))
    }

    /// The index of the server that reports `Mode: leader` right now, if exactly one does.
    pub fn leader(&self) -> Option<usize> {
        let leaders: Vec<usize> = (0..self.servers.len())
            .filter(|&i| self.mode(i).is_ok_and(|m| m == "leader"))
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// Waits until exactly one running server leads and every other running server follows.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        wait_until("a ZooKeeper leader with every running server serving", timeout, || {
            let modes: Vec<(usize, Result<String, String>)> = (0..self.servers.len())
                .filter(|&i| self.servers[i].child.is_some())
                .map(|i| (i, self.mode(i)))
                .collect();
            let leaders: Vec<usize> = modes
                .iter()
                .filter(|(_, m)| m.as_deref() == Ok("leader"))
                .map(|(i, _)| *i)
                .collect();
            let all_serve = modes
                .iter()
                .all(|(_, m)| matches!(m.as_deref(), Ok("leader" | "follower")));
            if leaders.len() == 1 && all_serve {
                Ok(leaders[0])
            } else {
                Err(format!("modes: {modes:?}"))
            }
        })
    }

    /// Waits until server `i` answers `ruok` with `imok` and `srvr` with a mode; panics with
    /// its log if it exits or does not get there within [`ZK_START_TIMEOUT`].
    pub fn wait_serving(&mut self, i: usize) {
        let started = Instant::now();
        let addr = self.servers[i].client;
        let what = format!("ZooKeeper server {i} ({addr}) to serve");
        loop {
            self.servers[i].check_alive();
            let last = match four_letter(addr, "ruok") {
                Ok(a) if a.trim() == "imok" => match self.mode(i) {
                    Ok(_) => return,
                    Err(e) => e,
                },
                Ok(a) => format!("ruok answered {a:?}"),
                Err(e) => e,
            };
            if started.elapsed() > ZK_START_TIMEOUT {
                panic!(
                    "timed out after {ZK_START_TIMEOUT:?} waiting for {what}; last: {last}\n{}",
                    self.log_tail(i, ZK_LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `lines` lines of server `i`'s log, without Java stack-trace lines (every
    /// client that goes away logs one).
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let s = &self.servers[i];
        let text = match fs::read(&s.log) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => return format!("[cannot read {}: {e}]\n", s.log.display()),
        };
        let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with('\t')).collect();
        let start = kept.len().saturating_sub(lines);
        format!(
            "--- {} (stack-trace lines left out) ---\n{}{}\n",
            s.log.display(),
            if start > 0 {
                format!("[... {start} earlier lines ...]\n")
            } else {
                String::new()
            },
            kept[start..].join("\n")
        )
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.kill();
        }
        if std::thread::panicking() {
            for i in 0..self.servers.len() {
                eprintln!(
                    "===== ZooKeeper server {} ({}) =====\n{}",
                    i,
                    self.servers[i].client,
                    self.log_tail(i, ZK_LOG_TAIL_LINES)
                );
            }
        }
        keep_dir_if_asked(&mut self.tmp);
    }
}

// ---------------------------------------------------------------------------------------------
// Bounded commands

/// `dog` with `args` followed by `-a IP -p PORT`, ready to run (or to wrap, e.g. in
/// `ip netns exec`: see [`dog_args`]).
pub fn dog_command(ip: IpAddr, port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new(dog_bin());
    cmd.args(dog_args(ip, port, args));
    cmd
}

/// `args` followed by `-a IP -p PORT`.
pub fn dog_args(ip: IpAddr, port: u16, args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.extend(["-a".to_string(), ip.to_string(), "-p".to_string(), port.to_string()]);
    v
}

/// Runs `cmd` with `stdin` (bytes, staged in a temporary file) and kills it after `timeout`;
/// [`ToolOutput::timed_out`] then tells.
pub fn run_tool(cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> ToolOutput {
    match stdin {
        None => run_command(cmd, timeout),
        Some(data) => {
            let mut f = tempfile::tempfile().expect("creating a temporary file for stdin");
            f.write_all(data).expect("staging stdin in a temporary file");
            f.rewind().expect("rewinding the staged stdin");
            run_command_with_stdin(cmd, Stdio::from(f), timeout)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        let srvr = "Zookeeper version: 3.8.0\nLatency min/avg/max: 0/0.0/0\nMode: follower\nNode count: 5\n";
        assert_eq!(mode_of(srvr).as_deref(), Some("follower"));
        assert_eq!(
            mode_of("This ZooKeeper instance is not currently serving requests\n"),
            None
        );
    }
}
