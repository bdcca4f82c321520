use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fuser::{Config, MountOption, Session, SessionACL};
use sheepfs::backend::{Backend, ClusterBackend};
use sheepfs::cli::Args;
use sheepfs::fs::Fs;
use sheepfs::fuse::SheepFuse;

/// Forks; the parent waits for the child's word on the mount and exits with it.
fn daemonize() -> std::io::Result<std::fs::File> {
    let mut fds = [0; 2];
    // SAFETY: pipe fills two descriptors; fork happens before any thread is started.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            // SAFETY: the read end belongs to the parent; the write end is ours to own.
            unsafe {
                libc::close(fds[0]);
                libc::setsid();
            }
            Ok(unsafe { std::fs::File::from_raw_fd(fds[1]) })
        }
        _ => {
            // SAFETY: as above, the other way round.
            unsafe { libc::close(fds[1]) };
            let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
            let mut word = String::new();
            let _ = r.read_to_string(&mut word);
            if word == "ok" {
                std::process::exit(0);
            }
            let word = if word.is_empty() {
                "sheepfs: the mount process died before the mount was ready".to_string()
            } else {
                word
            };
            eprintln!("{word}");
            std::process::exit(1);
        }
    }
}

fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&null);
        // SAFETY: dup2 onto the standard descriptors of this process.
        unsafe {
            libc::dup2(fd, 0);
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
        }
    }
}

fn init_logging(args: &Args) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // fuser unmounts again when its session ends, which fails with a warning whenever
        // the mount is already gone (umount by hand, or ours at SIGTERM): always, here.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser::mnt=error"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match &args.log_file {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("cannot open log file {}: {e}", p.display()))?;
            b.with_ansi(false).with_writer(std::sync::Mutex::new(f)).init();
        }
        None => b
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init(),
    }
    Ok(())
}

/// Mounts and serves until unmounted. `ready` is called once the mount is usable.
/// Sets the kernel read-ahead of the filesystem mounted at `mountpoint` (its backing device
/// info, named by the mount's anonymous device number).
fn set_read_ahead(mountpoint: &std::path::Path, kib: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mountpoint)?.dev();
    let path = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
    std::fs::write(&path, format!("{kib}\n")).map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
    tracing::info!(kib, "read-ahead set");
    Ok(())
}

fn serve(args: &Args, ready: &mut dyn FnMut(Result<(), String>)) -> Result<(), String> {
    // The main runtime: the start-up check, the signal handler, the pipelined connection to
    // the gateway and the reads and writes handed to it by the FUSE threads (see `fuse.rs`).
    // Two workers: with one, a large read's reply being copied to the kernel held up the
    // reading of the next reply off the connection (sequential reads 5-10% faster with
    // two in alternating runs; random I/O level).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    if let Some(p) = &args.auth_key_file {
        protocol::auth::install(protocol::auth::AuthKey::from_file(p)?);
    }
    let gateway = SocketAddr::new(args.address, args.port);
    let backend = Arc::new(
        ClusterBackend::new(
            gateway,
            Duration::from_secs(args.retry_secs),
            rt.handle().clone(),
            !args.no_object_cache,
        )
        .with_node_timeout(Duration::from_secs(args.node_timeout_secs)),
    );
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), backend.cluster_info()).await })
        .map_err(|_| format!("gateway {gateway} did not answer"))?
        .map_err(|e| format!("cannot reach the gateway {gateway}: {e}"))?;
    let fs = Arc::new(
        Fs::new(backend)
            .with_chunk(args.chunk_kib << 10)
            .with_direct_writes(sheepfs::fuse::direct_writes_are_coherent()),
    );
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("sheepdog@{gateway}")),
        MountOption::Subtype("sheepfs".into()),
        MountOption::DefaultPermissions,
    ];
    config.acl = if args.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(args.threads.max(1));
    let session = Session::new(
        SheepFuse::new(fs.clone(), rt.handle().clone()),
        &args.mountpoint,
        &config,
    )
    .map_err(|e| format!("cannot mount at {}: {e}", args.mountpoint.display()))?;
    let mountpoint = args.mountpoint.clone();
    rt.spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => return tracing::error!("cannot handle SIGTERM: {e}"),
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("signal received: flushing and unmounting");
        if let Err(e) = fs.unmount().await {
            tracing::error!("flush or lock release failed: {e}");
        }
        if let Ok(c) = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path. When the mount is busy, detach it: the
            // kernel finishes once the last user lets go.
            unsafe {
                if libc::umount2(c.as_ptr(), 0) != 0 {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
    });
    let bg = session
        .spawn()
        .map_err(|e| format!("cannot start the FUSE session: {e}"))?;
    // Now that requests are served, the mount can be looked at.
    if args.read_ahead_kib > 0 {
        if let Err(e) = set_read_ahead(&args.mountpoint, args.read_ahead_kib) {
            tracing::warn!("cannot set the read-ahead of the mount: {e}");
        }
    }
    tracing::info!(%gateway, mountpoint = %args.mountpoint.display(), "mounted");
    ready(Ok(()));
    bg.join().map_err(|e| format!("FUSE session failed: {e}"))?;
    tracing::info!("unmounted");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut pipe = None;
    if !args.foreground {
        match daemonize() {
            Ok(p) => pipe = Some(p),
            Err(e) => {
                eprintln!("sheepfs: cannot go to the background: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Err(e) = init_logging(&args) {
        eprintln!("sheepfs: {e}");
        return ExitCode::from(2);
    }
    // Before the FUSE threads and the runtime start, so that they all inherit it.
    if let Err(e) = protocol::sched::batch() {
        tracing::warn!("cannot run under SCHED_BATCH ({e}); small writes will be slower");
    }
    // In the background stderr is gone: a panic must reach the log file.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("panic: {info}");
        default_hook(info);
    }));
    let mut tell = |r: Result<(), String>| {
        if let Some(mut p) = pipe.take() {
            let word = match r {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("sheepfs: {e}"),
            };
            let _ = p.write_all(word.as_bytes());
            detach_stdio();
        }
    };
    match serve(&args, &mut tell) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            tell(Err(e.clone()));
            eprintln!("sheepfs: {e}");
            ExitCode::FAILURE
        }
    }
}
