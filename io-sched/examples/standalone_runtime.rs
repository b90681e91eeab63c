//! A runtime that owns its own compute, using io-sched alone: describe a layout → open a
//! session → per layer, demand what the router chose (the session hints what its predictor
//! expects next) → use the bytes → release. No flashmoe engine or backend involved.
//!
//! ```text
//! cargo run --release -p flashmoe-io-sched --example standalone_runtime
//! ```

use io_sched::backend::select::{BackendConfig, open_backend};
use io_sched::packfile::{PackSplit, write_pack_set};
use std::sync::Arc;

use io_sched::predictor::{self, PredictorKind};
use io_sched::{Manifest, Scheduler, SchedulerConfig, Session, SessionConfig};

const LAYERS: u32 = 8;
const EXPERTS: u32 = 32;
const K: usize = 4;
const EXPERT_BYTES: usize = 256 * 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. Your model's experts, written once in io-sched's packed format (any runtime can do
    //    this; or build an `ExpertLayout` in code over your own files with `LayoutBuilder`).
    let dir = std::env::temp_dir().join("io-sched-standalone-example");
    std::fs::create_dir_all(&dir)?;
    write_pack_set(
        &dir,
        LAYERS,
        EXPERTS,
        PackSplit::PerLayer,
        None,
        |key, buf| {
            buf.resize(EXPERT_BYTES, 0);
            buf.fill((key.layer * EXPERTS + key.expert) as u8);
            Ok(())
        },
    )?;

    // 2. Open: the manifest is validated against the files; the backend is chosen for this
    //    platform, with a reason for every fallback.
    let (layout, _meta) = Manifest::load(dir.join("manifest.json"))?;
    let opened = open_backend(&layout, &BackendConfig::default())?;
    for why in &opened.fallbacks {
        eprintln!("fallback: {why}");
    }
    let budget = layout.total_expert_bytes() / 4; // a quarter of the experts fit
    let sched = Arc::new(Scheduler::with_backend(
        layout,
        SchedulerConfig::with_budget(budget),
        opened.backend,
    )?);
    println!("reading with {}", sched.backend_description());

    // 3. Decode: your router decides; io-sched fetches, ahead of time when it can. The
    //    session owns the per-layer protocol: each demand is queued first, then the next two
    //    layers' top K + 2 candidates are hinted, then it waits. (A runtime with pre-gate
    //    scores hands them to `session.scores` and predicts with `predictor::Scores`.)
    let predictor = predictor::build(PredictorKind::Temporal, LAYERS, EXPERTS)
        .ok_or("temporal predictor needs no trace")?;
    let policy = SessionConfig::new(K).with_per_layer(K + 2).with_horizon(2);
    let mut session = Session::new(sched.clone(), policy, predictor);
    let mut checksum = 0u64;
    for token in 0..64u32 {
        for layer in 0..LAYERS {
            // Your router's choice (here: a drifting pattern with reuse between tokens).
            let routed: Vec<u32> = (0..K as u32)
                .map(|i| (token / 4 + i * 5 + layer * 3) % EXPERTS)
                .collect();
            let guard = session.demand(layer, &routed)?;
            for (expert, bytes) in guard.iter() {
                // Your compute reads the expert's bytes in place; they stay pinned until the
                // guard drops.
                assert_eq!(bytes[0], (layer * EXPERTS + expert) as u8);
                checksum = checksum.wrapping_add(bytes.iter().map(|&b| b as u64).sum::<u64>());
            }
            drop(guard);
        }
    }
    let m = sched.metrics().total();
    println!(
        "hit rate {:.1}%, prefetch precision {:.1}%, recall {:.1}%, {} MiB read, stalled {:.1} ms (sum {checksum})",
        100.0 * m.hit_rate(),
        100.0 * m.prefetch_precision(),
        100.0 * m.prefetch_recall(),
        m.bytes_read() >> 20,
        m.stall_ns as f64 / 1e6,
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
