//! `ferroflow-server`: the gRPC service over a durable context, without Python.
//!
//! ```text
//! ferroflow-server --context URL [--listen 127.0.0.1:50051] [--token-file PATH]
//!                  [--tls-cert PEM --tls-key PEM] [--max-input-bytes N] [--outage-timeout SECONDS]
//! ```
//!
//! It starts, follows, resumes and cancels runs; `ferroflow worker` processes on the same
//! context execute them. It listens on loopback unless told otherwise, and refuses to
//! listen elsewhere without a bearer token unless `--allow-unauthenticated` says so.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ferroflow::{Engine, EngineConfig};
use ferroflow_server::{FerroflowService, Server, ServerConfig, ServerError, Tls, context};

#[derive(Parser, Debug)]
#[command(name = "ferroflow-server", version, about = "The ferroflow gRPC service over a durable context")]
struct Args {
    /// The durable context: a SQLite file (or sqlite:///path), redis://HOST:PORT?namespace=NAME
    /// or nats://HOST:PORT?namespace=NAME.
    #[arg(long, env = "FERROFLOW_CONTEXT")]
    context: String,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// A file holding the bearer token every call must carry ('authorization: Bearer <token>').
    /// Without it, the token is read from FERROFLOW_SERVER_TOKEN if that is set.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Serve TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Refuse run inputs and resume values longer than this, in bytes of JSON.
    #[arg(long, default_value_t = FerroflowService::DEFAULT_MAX_INPUT_BYTES)]
    max_input_bytes: usize,
    /// How long a call waits for a store that is unavailable before failing with UNAVAILABLE.
    #[arg(long, default_value_t = 30.0)]
    outage_timeout: f64,
    /// Listen on a non-loopback address without a bearer token.
    #[arg(long)]
    allow_unauthenticated: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ferroflow-server: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ferroflow-server: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let token = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
            Some(text.trim().to_owned())
        }
        None => std::env::var("FERROFLOW_SERVER_TOKEN").ok(),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |path: &PathBuf| std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
            Some(Tls { cert_pem: read(cert)?, key_pem: read(key)? })
        }
        _ => None,
    };
    let outage_timeout = Duration::try_from_secs_f64(args.outage_timeout)
        .map_err(|_| format!("--outage-timeout must be a number of seconds, not {}", args.outage_timeout))?;
    let secure = tls.is_some();
    let server_config =
        ServerConfig { listen: args.listen, token, tls, allow_unauthenticated: args.allow_unauthenticated };
    // Refused before the context is opened (a SQLite file created, a server connected to).
    server_config.check().map_err(refusal)?;

    let store = context::open(&args.context).await.map_err(|e| e.to_string())?;
    let config = EngineConfig {
        store: Some(store),
        execute: false,
        outage_timeout,
        // Runs are followed from the store while they are watched or waited on; finished
        // ones are read from the store again when asked for.
        retain_finished: 1000,
        ..EngineConfig::default()
    };
    let engine = Engine::new(tokio::runtime::Handle::current(), config);
    let service = FerroflowService::new(engine, Vec::new(), None).with_max_input_bytes(args.max_input_bytes);
    let server = Server::start(service, server_config).await.map_err(refusal)?;
    // The one line on stdout: tests and scripts wait for it (and read the port from it).
    println!(
        "ferroflow-server listening on {} ({}) with context {}",
        server.local_addr(),
        if secure { "TLS" } else { "plaintext" },
        ferroflow::store::redact_url(&args.context)
    );
    let mut server = server;
    tokio::select! {
        stopped = server.wait() => return stopped.map_err(|e| e.to_string()),
        () = shutdown_signal() => {}
    }
    tracing::info!("stopping: finishing the calls in progress");
    match tokio::time::timeout(Duration::from_secs(10), server.stop()).await {
        Ok(stopped) => stopped.map_err(|e| e.to_string()),
        Err(_) => Err("calls in progress did not finish within 10 s; stopping anyway".into()),
    }
}

/// A server error as this command says it, naming its options.
fn refusal(error: ServerError) -> String {
    match error {
        ServerError::Exposed { .. } => {
            format!("{error}: give --token-file (and --tls-cert/--tls-key), or pass --allow-unauthenticated")
        }
        error => error.to_string(),
    }
}

/// Resolves at SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers, only a kill stops the server.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
