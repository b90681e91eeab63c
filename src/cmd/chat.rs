//! `flashmoe chat`: a terminal REPL on the model's chat template, with streamed answers,
//! the conversation kept (and its context reused, so a turn prefills only its new tokens),
//! `/reset`, `/stats`, `/quit`; Ctrl-C stops the answer being written, and quits at the
//! prompt.

use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::Args;
use flashmoe_backends::wgpu::{WgpuBackend, WgpuConfig};
use flashmoe_backends::{ComputeBackend, CpuBackend};
use flashmoe_engine::{ChatMessage, ChatTemplate, RenderOptions};

use super::CliResult;
use super::generate::DEFAULT_MODEL;
use super::session::{self, OpenOptions, single_token};
use flashmoe_engine::{Finish, GenerationRequest, ModelSession, Outcome};

/// `flashmoe chat` arguments.
#[derive(Args, Debug)]
pub struct ChatArgs {
    /// Packed model directory with a chat template (chat_template.jinja, or `chat_template` in
    /// tokenizer_config.json).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A system message that starts the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Tokens per answer at most.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Context positions (the whole conversation), at most the model's.
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
    /// Keep answering after end-of-sequence tokens (until --max-tokens or Ctrl-C).
    #[arg(long)]
    pub ignore_eos: bool,
}

/// Set while an answer is being written; Ctrl-C then stops it instead of quitting.
static GENERATING: AtomicBool = AtomicBool::new(false);
/// Set by Ctrl-C during an answer.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    if GENERATING.load(Ordering::SeqCst) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    } else {
        // SAFETY: `_exit` is async-signal-safe; nothing is left half-written at the prompt.
        unsafe { libc::_exit(130) };
    }
}

/// Runs the REPL until end of input, `/quit` or Ctrl-C at the prompt.
pub fn run(args: &ChatArgs) -> CliResult<()> {
    let dir = args
        .model
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL));
    let template = ChatTemplate::from_dir(&dir)?;
    let opts = OpenOptions {
        budget: args.budget.clone(),
        ctx: args.ctx,
        prefill_chunk: args.prefill_chunk,
    };
    match args.backend.as_str() {
        "cpu" => repl(
            args,
            template,
            session::open(&dir, CpuBackend::new(), &opts)?,
        ),
        "wgpu" => {
            let be = WgpuBackend::new(&WgpuConfig::default())
                .map_err(|e| format!("--backend wgpu: {e}"))?;
            eprintln!("note: compute on wgpu: {}", be.info());
            repl(args, template, session::open(&dir, be, &opts)?)
        }
        other => Err(format!("--backend {other:?}: expected cpu or wgpu").into()),
    }
}

fn repl<B: ComputeBackend>(
    args: &ChatArgs,
    template: ChatTemplate,
    mut s: ModelSession<B>,
) -> CliResult<()> {
    // SAFETY: `on_sigint` only touches atomics and calls `_exit`, both async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
    let stop_tokens: Vec<u32> = template
        .eos_token()
        .and_then(|e| single_token(&s.model().tokenizer, e))
        .into_iter()
        .collect();
    let fresh = || -> Vec<ChatMessage> {
        args.system
            .iter()
            .map(|t| ChatMessage::new("system", t.clone()))
            .collect()
    };
    let mut history = fresh();
    let mut last: Option<(Outcome, f64)> = None;
    let mut turn = 0u64;
    println!(
        "flashmoe chat: {} ({} positions). /reset, /stats, /quit; Ctrl-C stops an answer.",
        s.model().dir.display(),
        s.ctx()
    );
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        print!("> ");
        std::io::stdout().flush()?;
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            return Ok(());
        }
        let input = line.trim_end_matches(['\n', '\r']);
        match input.trim() {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/reset" => {
                history = fresh();
                s.reset();
                println!("(conversation cleared)");
                continue;
            }
            "/stats" => {
                print_stats(&s, last.as_ref());
                continue;
            }
            cmd if cmd.starts_with('/') => {
                println!("unknown command {cmd} (/reset, /stats, /quit)");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage::new("user", input));
        let text = match template.render(&history, &RenderOptions::generation()) {
            Ok(t) => t,
            Err(e) => {
                println!("error: {e}");
                history.pop();
                continue;
            }
        };
        let prompt = s.model().tokenizer.encode(&text)?;
        if prompt.len() + 1 >= s.ctx() {
            println!(
                "error: the conversation ({} tokens) fills the context of {}; /reset to start again",
                prompt.len(),
                s.ctx()
            );
            history.pop();
            continue;
        }
        let job = GenerationRequest::greedy(prompt, args.max_tokens)
            .sampling(args.temperature, args.top_p, args.seed.wrapping_add(turn))
            .stop_tokens(stop_tokens.clone())
            .ignore_eos(args.ignore_eos);
        turn += 1;
        INTERRUPTED.store(false, Ordering::SeqCst);
        GENERATING.store(true, Ordering::SeqCst);
        let t = Instant::now();
        let mut out = std::io::stdout();
        let result = s.generate(&job, &mut |_id, delta| {
            let _ = out.write_all(delta.as_bytes());
            let _ = out.flush();
            if INTERRUPTED.load(Ordering::SeqCst) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        GENERATING.store(false, Ordering::SeqCst);
        let o = result?;
        if o.finish == Finish::Cancelled {
            println!("\n(stopped)");
        } else {
            println!();
        }
        history.push(ChatMessage::new("assistant", o.text.clone()));
        last = Some((o, t.elapsed().as_secs_f64()));
    }
}

fn print_stats<B: ComputeBackend>(s: &ModelSession<B>, last: Option<&(Outcome, f64)>) {
    let t = s.scheduler().metrics().total();
    match last {
        Some((o, secs)) => println!(
            "last turn: {} prompt tokens ({} reused from the previous turn), {} generated in {:.2} s; context holds {} tokens",
            o.prompt_tokens,
            o.cached_tokens,
            o.completion_tokens,
            secs,
            s.cached_tokens()
        ),
        None => println!("no turn yet"),
    }
    println!(
        "experts: hit rate {:.1}%, prefetch precision {:.1}% recall {:.1}%, {:.1} MB read",
        100.0 * t.hit_rate(),
        100.0 * t.prefetch_precision(),
        100.0 * t.prefetch_recall(),
        t.bytes_read() as f64 / 1e6
    );
}
