use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use protocol::node::{Node, DEFAULT_VNODES};
use sheep::cache::index::Index;
use sheep::cluster::{Driver, DriverSpec};
use sheep::config::{Args, Config};
use sheep::node::Sheep;
use sheep::store::{Options as StoreOptions, Store};
use tokio::net::TcpListener;

fn init_logging(cfg: &Config) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log_level))
        .map_err(|e| format!("bad log level {:?}: {e}", cfg.log_level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match &cfg.log_file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            builder.with_ansi(false).with_writer(std::sync::Mutex::new(f)).init();
        }
        None => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).with_writer(std::io::stderr).init()
        }
    }
    Ok(())
}

/// Binds the optional listener of `what`, if it is asked for.
async fn listen_if(at: Option<SocketAddr>, what: &str) -> Result<Option<TcpListener>, String> {
    match at {
        Some(at) => TcpListener::bind(at)
            .await
            .map(Some)
            .map_err(|e| format!("cannot listen for {what} on {at}: {e}")),
        None => Ok(None),
    }
}

async fn run(cfg: Config) -> Result<(), String> {
    let spec = DriverSpec::parse(&cfg.cluster).map_err(|e| e.to_string())?;
    // A bad key file stops the start before anything is bound, opened or joined.
    let key = match &cfg.auth_key_file {
        Some(p) => Some(protocol::auth::AuthKey::from_file(p)?),
        None => None,
    };
    let addr = SocketAddr::new(cfg.bind, cfg.port);
    std::fs::create_dir_all(&cfg.dir).map_err(|e| format!("cannot create {}: {e}", cfg.dir.display()))?;
    let opts = StoreOptions {
        direct: !cfg.buffered_io,
        sync_writes: cfg.sync_writes,
    };
    let store =
        Store::open(&cfg.dir, opts).map_err(|e| format!("cannot open the store in {}: {e}", cfg.dir.display()))?;
    let space = if cfg.gateway {
        0
    } else {
        store.space().map_err(|e| format!("cannot stat the store: {e}"))?.0
    };
    let me = Node {
        addr,
        nr_vnodes: if cfg.gateway {
            0
        } else {
            cfg.vnodes.unwrap_or(DEFAULT_VNODES)
        },
        zone: cfg.zone(),
        space,
    };
    // Bind before joining, so a second sheep on the same port fails here, not in the cluster.
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let nbd_listener = listen_if(cfg.nbd, "NBD").await?;
    let metrics_listener = listen_if(cfg.metrics, "metrics").await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = Driver::start(&spec, addr, tx).await.map_err(|e| e.to_string())?;
    let recovery = sheep::recovery::freshness::Recovery::new(cfg.recovery_rate, cfg.scrub_rate, cfg.farm_keep);
    let (cache, leftovers) = match &cfg.cache {
        Some(c) => {
            let (index, left) = Index::open(&c.dir, c.size)
                .map_err(|e| format!("cannot open the object cache in {}: {e}", c.dir.display()))?;
            tracing::info!(dir = %c.dir.display(), size = c.size, dirty_left = left.len(), "object cache on");
            (Some(Arc::new(index)), left)
        }
        None => (None, Vec::new()),
    };
    if let Some(k) = &key {
        // Every request this sheep sends (to its peers) proves the secret too.
        protocol::auth::install(k.clone());
    }
    let others: Vec<_> = driver
        .listed_members()
        .await
        .into_iter()
        .filter(|a| *a != addr)
        .collect();
    sheep::access::check_members(key.as_ref(), &others)
        .await
        .map_err(|e| format!("cannot join the cluster: {e}"))?;
    let access = sheep::access::Access::new(key, cfg.allow.clone());
    let sheep = Arc::new(Sheep::new(
        me.clone(),
        cfg.dir.clone(),
        store,
        driver,
        recovery,
        cache,
        access,
    ));
    tokio::spawn(sheep.clone().apply_loop(rx));
    tokio::spawn(sheep.clone().report_loop());
    let pos = sheep
        .driver
        .join(me.clone(), cfg.vnodes.is_some() && !cfg.gateway)
        .await
        .map_err(|e| format!("cannot join the cluster: {e}"))?;
    sheep.wait_applied(pos).await;
    tokio::spawn(sheep::recovery::worker(sheep.clone()));
    tokio::spawn(sheep::recovery::scrub::worker(sheep.clone()));
    tokio::spawn(sheep::cache::recover(sheep.clone(), leftovers));
    tokio::spawn(sheep::cache::pusher(sheep.clone()));
    tokio::spawn(sheep::vdi::collector(sheep.clone()));
    sheep::recovery::init(&sheep);
    tracing::info!(%addr, zone = me.zone, vnodes = me.nr_vnodes, epoch = sheep.state().epoch(), dir = %cfg.dir.display(), "sheep is serving");
    let server = tokio::spawn(sheep::server::serve(sheep.clone(), listener));
    if let Some(l) = nbd_listener {
        let exports = Arc::new(sheep::nbd::Exports::new(sheep.clone(), addr));
        tracing::info!(addr = ?l.local_addr().ok(), "serving VDIs over NBD");
        tokio::spawn(sheep::nbd::serve(exports, l));
    }
    if let Some(l) = metrics_listener {
        tracing::info!(addr = ?l.local_addr().ok(), "serving metrics over HTTP");
        tokio::spawn(sheep::scrape::serve(sheep.clone(), l));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    tokio::select! {
        _ = sheep.stop.notified() => {
            // Let in-flight replies (the SHUTDOWN answer among them) reach their clients.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        _ = term.recv() => leave(&sheep).await,
        _ = tokio::signal::ctrl_c() => leave(&sheep).await,
    }
    server.abort();
    if let Err(e) = sheep.store.flush() {
        tracing::error!(error = %e, "final flush failed");
    }
    tracing::info!("sheep stopped");
    Ok(())
}

async fn leave(sheep: &Arc<Sheep>) {
    if let Err(code) = sheep::cache::push_all(sheep, None).await {
        tracing::error!(result = %code, "cannot push the object cache's dirty data before stopping");
    }
    tracing::info!("stopping: leaving the cluster");
    if let Err(e) = sheep.driver.leave().await {
        tracing::error!(error = %e, "cannot announce the leave; the others will notice the exit");
    }
}

fn main() -> ExitCode {
    let cfg = match Config::load(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sheep: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&cfg) {
        eprintln!("sheep: {e}");
        return ExitCode::from(2);
    }
    // Before the runtime starts, so that every worker thread inherits it.
    if let Err(e) = protocol::sched::batch() {
        tracing::warn!("cannot run under SCHED_BATCH ({e}); small writes will be slower");
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sheep: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("sheep: {e}");
            ExitCode::FAILURE
        }
    }
}
