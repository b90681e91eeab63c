//! `flashmoe serve`: an OpenAI-compatible HTTP server (axum on tokio) for one packed model.
//!
//! - [`routes`]: the endpoints; requests are checked and tokenized there.
//! - [`api`]: request and response bodies and their validation.
//! - [`error`]: OpenAI's error JSON.
//! - [`worker`]: the dedicated thread that owns the model and generates one request at a time
//!   from a bounded queue (full: 429), keeping the last conversation's context for reuse.
//!
//! Listens on 127.0.0.1 unless `--public` is given; Ctrl-C or SIGTERM stops accepting,
//! lets the requests in progress finish, and exits 0.

mod routes;
mod worker;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use clap::Args;
use flashmoe_engine::{ChatTemplate, Tokenizer};

use super::CliResult;
use super::generate::{DEFAULT_MODEL, parse_budget};
use super::session::{OpenOptions, single_token};

/// `flashmoe serve` arguments.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Packed model directory (default: the tiny Qwen3-MoE in models/).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// TCP port (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on. Anything but a loopback address needs `--public`.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Allow listening on a non-loopback address (reachable from other machines).
    #[arg(long)]
    pub public: bool,
    /// Require `Authorization: Bearer KEY` on /v1 routes (compared in constant time).
    #[arg(long)]
    pub api_key: Option<String>,
    /// The model id clients name (default: the directory's name).
    #[arg(long)]
    pub model_id: Option<String>,
    /// Requests that may wait for the generation in progress; more get 429.
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
    /// Largest request body (`1M`, `65536`).
    #[arg(long, default_value = "2M")]
    pub max_body: String,
    /// Context positions (prompt + answer), at most the model's.
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
    /// Expert cache size: bytes (`512M`) or a share of all experts (`25%`).
    #[arg(long, default_value = "25%")]
    pub budget: String,
    /// Prompt tokens per prefill chunk: each expert a chunk routes to is read once and run on
    /// all its tokens (default: as many as 256 MiB of activations hold, at most 2048; 1 is token
    /// by token).
    #[arg(long, value_parser = crate::cmd::values::prefill_chunk)]
    pub prefill_chunk: Option<usize>,
    /// Compute backend: cpu or wgpu.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
}

/// Runs the server until Ctrl-C or SIGTERM.
pub fn run(args: &ServeArgs) -> CliResult<()> {
    if !args.host.is_loopback() && !args.public {
        return Err(format!(
            "--host {}: not a loopback address; add --public to listen where other machines can reach it",
            args.host
        )
        .into());
    }
    let max_body = usize::try_from(
        parse_budget(&args.max_body, 0).map_err(|e| e.replace("--budget", "--max-body"))?,
    )?;
    let dir = args
        .model
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL));
    let model_id = match &args.model_id {
        Some(id) => id.clone(),
        None => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "flashmoe".into()),
    };
    let counters = Arc::new(worker::Counters::default());
    let opts = OpenOptions {
        budget: args.budget.clone(),
        ctx: args.ctx,
        prefill_chunk: args.prefill_chunk,
    };
    let (queue, thread, ready) = worker::spawn(
        dir.clone(),
        args.backend.clone(),
        opts,
        args.queue,
        counters.clone(),
    )?;
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let template = ChatTemplate::from_dir(&dir).map_err(|e| e.to_string());
    let chat_stop_tokens = match &template {
        Ok(t) => t
            .eos_token()
            .and_then(|e| single_token(&tokenizer, e))
            .into_iter()
            .collect(),
        Err(why) => {
            eprintln!("note: chat is off: {why}");
            Vec::new()
        }
    };
    let state = Arc::new(routes::AppState {
        queue,
        queue_cap: args.queue.max(1),
        counters,
        model_id: model_id.clone(),
        ready: ready.clone(),
        tokenizer,
        template,
        chat_stop_tokens,
        api_key: args.api_key.clone(),
        max_body,
        requests: AtomicU64::new(0),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let served = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.host, args.port)).await?;
        let addr = listener.local_addr()?;
        println!(
            "flashmoe serve: listening on http://{addr} (model `{model_id}`, {} positions, {})",
            ready.ctx, ready.compute
        );
        use std::io::Write;
        std::io::stdout().flush()?;
        axum::serve(listener, routes::router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    });
    drop(rt);
    // Every queue sender is gone with the router: the worker finishes and exits.
    let _ = thread.join();
    served?;
    eprintln!("flashmoe serve: drained, exiting");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    eprintln!("flashmoe serve: shutting down (finishing requests in progress)");
}
