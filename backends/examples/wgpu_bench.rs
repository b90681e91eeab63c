//! GPU figures for the wgpu backend: achieved GB/s of weight bytes per kernel family, the tiled
//! matmul on prompt chunks against one matvec per token (tokens/s), and a per-token decode split (expert upload, kernels, sync) for a model geometry.
//!
//! `cargo run --release -p flashmoe-backends --example wgpu_bench -- [--mem-gbps N] [--kernels-only]`
//!
//! `--mem-gbps` is the GPU's memory bandwidth, to print ratios (H100 SXM 3350, H200 4800).
//! Times are wall-clock over many dispatches submitted back to back, then one sync: a lower
//! bound of the achieved bandwidth (submission overhead included). Numbers, not statistics.

use flashmoe_backends::quant::{WeightFormat, quantize};
use flashmoe_backends::wgpu::{WgpuBackend, WgpuConfig};
use flashmoe_backends::{
    AttnShape, ComputeBackend, ExpertId, ExpertScratch, KvShape, RoutedExpert, WeightView,
};
use std::time::Instant;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Deterministic pseudo-random weights in [-0.3, 0.3].
fn weights(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
        })
        .collect()
}

/// One expert record's three tensors in q4 (group 64).
struct Expert {
    gate: Vec<u8>,
    up: Vec<u8>,
    down: Vec<u8>,
}

fn expert(hidden: usize, inter: usize, seed: u64) -> Res<Expert> {
    let f = WeightFormat::Q4_64;
    Ok(Expert {
        gate: quantize(&weights(inter * hidden, seed), inter, hidden, f)?,
        up: quantize(&weights(inter * hidden, seed + 1), inter, hidden, f)?,
        down: quantize(&weights(hidden * inter, seed + 2), hidden, inter, f)?,
    })
}

fn routed<'a>(e: &'a Expert, id: ExpertId, hidden: usize, inter: usize) -> Res<RoutedExpert<'a>> {
    let f = WeightFormat::Q4_64;
    Ok(RoutedExpert {
        id,
        weights: [
            WeightView::new(&e.gate, inter, hidden, f)?,
            WeightView::new(&e.up, inter, hidden, f)?,
            WeightView::new(&e.down, hidden, inter, f)?,
        ],
        combine: 1.0 / 8.0,
    })
}

/// GPU nanoseconds so far of the kernels whose name starts with `prefix`.
fn gpu_ns(be: &WgpuBackend, prefix: &str) -> f64 {
    be.kernel_times()
        .iter()
        .filter(|k| k.kernel.starts_with(prefix))
        .map(|k| k.gpu_ns)
        .sum()
}

/// Achieved GB/s: by wall clock (submission included) and, when profiling, by GPU time.
struct Rate {
    wall: f64,
    gpu: Vec<(&'static str, f64)>,
}

fn pick(rates: &[Rate], f: impl Fn(&mut Vec<f64>) -> f64) -> Rate {
    let mut wall: Vec<f64> = rates.iter().map(|r| r.wall).collect();
    let gpu = rates[0]
        .gpu
        .iter()
        .enumerate()
        .map(|(i, (k, _))| {
            let mut v: Vec<f64> = rates
                .iter()
                .filter_map(|r| r.gpu.get(i).map(|g| g.1))
                .collect();
            (*k, f(&mut v))
        })
        .collect();
    Rate {
        wall: f(&mut wall),
        gpu,
    }
}

fn median(rates: &[Rate]) -> Rate {
    pick(rates, |v| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    })
}

fn best(rates: &[Rate]) -> Rate {
    pick(rates, |v| v.iter().cloned().fold(0.0, f64::max))
}

/// GB/s of the batched expert kernels: `n` resident experts of `[hidden x inter]` per call.
fn experts_gbps(be: &WgpuBackend, hidden: usize, inter: usize, n: usize, reps: usize) -> Res<Rate> {
    let experts: Vec<Expert> = (0..n)
        .map(|e| expert(hidden, inter, e as u64 * 7))
        .collect::<Res<_>>()?;
    let routed: Vec<RoutedExpert> = experts
        .iter()
        .enumerate()
        .map(|(e, x)| {
            routed(
                x,
                ExpertId {
                    layer: 0,
                    expert: e as u32,
                },
                hidden,
                inter,
            )
        })
        .collect::<Res<_>>()?;
    let up_bytes: usize = experts.iter().map(|e| e.gate.len() + e.up.len()).sum();
    let down_bytes: usize = experts.iter().map(|e| e.down.len()).sum();
    let x = be.upload(&weights(hidden, 99))?;
    let mut scratch = ExpertScratch {
        h1: be.zeros(inter)?,
        h2: be.zeros(inter)?,
        out: be.zeros(hidden)?,
    };
    let mut out = be.zeros(hidden)?;
    be.moe_experts(&routed, &x, &mut scratch, &mut out)?; // uploads into the ring
    be.sync()?;
    let (up0, down0) = (gpu_ns(be, "gate_up"), gpu_ns(be, "down_combine"));
    let t = Instant::now();
    for _ in 0..reps {
        be.moe_experts(&routed, &x, &mut scratch, &mut out)?;
    }
    be.sync()?;
    let wall = t.elapsed().as_secs_f64();
    let (up1, down1) = (gpu_ns(be, "gate_up"), gpu_ns(be, "down_combine"));
    let rate = |bytes: usize, ns: f64| (bytes * reps) as f64 / ns;
    let gpu = if up1 > up0 {
        vec![
            ("gate_up", rate(up_bytes, up1 - up0)),
            ("down_combine", rate(down_bytes, down1 - down0)),
            (
                "both",
                rate(up_bytes + down_bytes, up1 - up0 + down1 - down0),
            ),
        ]
    } else {
        Vec::new()
    };
    Ok(Rate {
        wall: ((up_bytes + down_bytes) * reps) as f64 / wall / 1e9,
        gpu,
    })
}

/// GB/s of the resident matvec kernel on one `[rows x cols]` q4 weight.
fn matvec_gbps(be: &WgpuBackend, rows: usize, cols: usize, reps: usize) -> Res<Rate> {
    let f = WeightFormat::Q4_64;
    let bytes = quantize(&weights(rows * cols, 5), rows, cols, f)?;
    let w = be.load_weight(&bytes, rows, cols, f)?;
    let x = be.upload(&weights(cols, 6))?;
    let mut y = be.zeros(rows)?;
    be.matvec(&w, &x, &mut y)?;
    be.sync()?;
    let g0 = gpu_ns(be, "matvec");
    let t = Instant::now();
    for _ in 0..reps {
        be.matvec(&w, &x, &mut y)?;
    }
    be.sync()?;
    let wall = t.elapsed().as_secs_f64();
    let g1 = gpu_ns(be, "matvec");
    let gpu = if g1 > g0 {
        vec![("matvec", (bytes.len() * reps) as f64 / (g1 - g0))]
    } else {
        Vec::new()
    };
    Ok(Rate {
        wall: (bytes.len() * reps) as f64 / wall / 1e9,
        gpu,
    })
}

/// Tokens/s of the resident q4 `matmul` on a chunk of `n` tokens (`as_matvecs`: the same
/// tokens as `n` matvecs, the per-token path it replaces), in the `wall` field; GPU-time
/// tokens/s in `gpu` when profiling.
fn matmul_tok_s(
    be: &WgpuBackend,
    rows: usize,
    cols: usize,
    n: usize,
    reps: usize,
    as_matvecs: bool,
) -> Res<Rate> {
    let f = WeightFormat::Q4_64;
    let bytes = quantize(&weights(rows * cols, 5), rows, cols, f)?;
    let w = be.load_weight(&bytes, rows, cols, f)?;
    let x = be.upload(&weights(n * cols, 6))?;
    let mut y = be.zeros(n * rows)?;
    let xs: Vec<_> = (0..n)
        .map(|t| be.upload(&weights(cols, 6 + t as u64)))
        .collect::<Result<_, _>>()?;
    let mut ys: Vec<_> = (0..n).map(|_| be.zeros(rows)).collect::<Result<_, _>>()?;
    let mut run = || -> Res<()> {
        if as_matvecs {
            for (xt, yt) in xs.iter().zip(&mut ys) {
                be.matvec(&w, xt, yt)?;
            }
        } else {
            be.matmul(&w, &x, n, &mut y)?;
        }
        Ok(())
    };
    run()?;
    be.sync()?;
    let kernel = if as_matvecs { "matvec" } else { "matmul" };
    let g0 = gpu_ns(be, kernel);
    let t = Instant::now();
    for _ in 0..reps {
        run()?;
    }
    be.sync()?;
    let wall = t.elapsed().as_secs_f64();
    let g1 = gpu_ns(be, kernel);
    let tokens = (n * reps) as f64;
    let gpu = if g1 > g0 {
        vec![(kernel, tokens / ((g1 - g0) * 1e-9))]
    } else {
        Vec::new()
    };
    Ok(Rate {
        wall: tokens / wall,
        gpu,
    })
}

/// The ceiling for a WGSL kernel here: GB/s of a plain streaming read (vec4<u32> loads, xor
/// reduce) over `bytes`, through the same naga translation as the backend's kernels.
fn stream_gbps(be: &WgpuBackend, bytes: u64, reps: usize) -> Res<f64> {
    use wgpu::util::DeviceExt;
    let d = be.device();
    let src = r#"
@group(0) @binding(0) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = arrayLength(&a);
    let step = nwg.x * 256u;
    var s = vec4<u32>(0u);
    var i = gid.x;
    for (; i + 3u * step < n; i += 4u * step) {
        s ^= a[i] ^ a[i + step] ^ a[i + 2u * step] ^ a[i + 3u * step];
    }
    for (; i < n; i += step) {
        s ^= a[i];
    }
    out[gid.x] = s.x ^ s.y ^ s.z ^ s.w;
}
"#;
    let module = d.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("stream"),
        source: wgpu::ShaderSource::Wgsl(src.into()),
    });
    let pipe = d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("stream"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let a = d.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: &vec![1u8; bytes as usize],
        usage: wgpu::BufferUsages::STORAGE,
    });
    let groups = 132 * 16;
    let out = d.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: groups * 256 * 4,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let bg = d.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipe.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: a.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: out.as_entire_binding(),
            },
        ],
    });
    let run = |n: usize| -> Res<f64> {
        let mut enc = d.create_command_encoder(&Default::default());
        for _ in 0..n {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipe);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(groups as u32, 1, 1);
        }
        let t = Instant::now();
        be.queue().submit([enc.finish()]);
        d.poll(wgpu::PollType::wait_indefinitely())?;
        Ok(t.elapsed().as_secs_f64())
    };
    run(2)?;
    let secs = run(reps)?;
    Ok((bytes as usize * reps) as f64 / secs / 1e9)
}

/// A decode-step geometry (the non-expert weights in q4 too, random routing).
struct Geometry {
    name: &'static str,
    layers: usize,
    hidden: usize,
    inter: usize,
    experts: usize,
    k: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// Runs `tokens` decode steps of `g` with random routing over host-resident q4 experts and
/// prints the split: host copies of expert records, host recording, waiting on the GPU.
fn decode_split(be: &WgpuBackend, g: &Geometry, tokens: usize) -> Res<()> {
    let f = WeightFormat::Q4_64;
    let (h, qd, kvd) = (g.hidden, g.heads * g.head_dim, g.kv_heads * g.head_dim);
    let mat = |r: usize, c: usize, s: u64| -> Res<_> {
        Ok(be.load_weight(&quantize(&weights(r * c, s), r, c, f)?, r, c, f)?)
    };
    // One layer's resident weights, shared by every layer (the bytes read are the same).
    let (wq, wk, wv, wo, router) = (
        mat(qd, h, 1)?,
        mat(kvd, h, 2)?,
        mat(kvd, h, 3)?,
        mat(h, qd, 4)?,
        mat(g.experts, h, 5)?,
    );
    let norm = be.upload(&vec![1.0; h])?;
    let pool: Vec<Expert> = (0..g.experts.min(64))
        .map(|e| expert(h, g.inter, 100 + e as u64))
        .collect::<Res<_>>()?;
    let mut kv = be.kv_cache(KvShape {
        layers: g.layers,
        max_seq: tokens,
        kv_dim: kvd,
    })?;
    let (mut x, mut hs) = (be.upload(&weights(h, 7))?, be.zeros(h)?);
    let (mut q, mut k, mut v, mut att, mut o) = (
        be.zeros(qd)?,
        be.zeros(kvd)?,
        be.zeros(kvd)?,
        be.zeros(qd)?,
        be.zeros(h)?,
    );
    let mut logits = be.zeros(g.experts)?;
    let mut scratch = ExpertScratch {
        h1: be.zeros(g.inter)?,
        h2: be.zeros(g.inter)?,
        out: be.zeros(h)?,
    };
    let mut moe = be.zeros(h)?;
    let shape = AttnShape {
        n_heads: g.heads,
        n_kv_heads: g.kv_heads,
        head_dim: g.head_dim,
    };
    let before = be.stats();
    let mut rng = 12345u64;
    let t = Instant::now();
    for pos in 0..tokens {
        for l in 0..g.layers {
            be.rms_norm(&x, &norm, 1e-6, &mut hs)?;
            be.matvec(&wq, &hs, &mut q)?;
            be.matvec(&wk, &hs, &mut k)?;
            be.matvec(&wv, &hs, &mut v)?;
            be.rope(&mut q, g.heads, g.head_dim, pos, 1e6)?;
            be.rope(&mut k, g.kv_heads, g.head_dim, pos, 1e6)?;
            be.kv_write(&mut kv, l, pos, &k, &v)?;
            be.attention(&q, &kv, l, pos + 1, shape, &mut att)?;
            be.matvec(&wo, &att, &mut o)?;
            be.axpy(&mut x, 1.0, &o)?;
            be.rms_norm(&x, &norm, 1e-6, &mut hs)?;
            be.matvec(&router, &hs, &mut logits)?;
            let _ = be.router_top_k(&logits, g.k, true)?; // the sync a real decode pays
            let mut chosen = Vec::with_capacity(g.k);
            while chosen.len() < g.k {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let e = (rng % g.experts as u64) as u32;
                if !chosen.contains(&e) {
                    chosen.push(e);
                }
            }
            let routed: Vec<RoutedExpert> = chosen
                .iter()
                .map(|&e| {
                    routed(
                        &pool[e as usize % pool.len()],
                        ExpertId {
                            layer: l as u32,
                            expert: e,
                        },
                        h,
                        g.inter,
                    )
                })
                .collect::<Res<_>>()?;
            be.moe_experts(&routed, &hs, &mut scratch, &mut moe)?;
            be.axpy(&mut x, 1.0, &moe)?;
        }
        be.read(&x)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let times = be.kernel_times();
    let kernels = if times.is_empty() {
        "     n/a".to_string()
    } else {
        let ms = times.iter().map(|k| k.gpu_ns).sum::<f64>() / 1e6 / tokens as f64;
        format!("{ms:>5.2} ms")
    };
    let s = be.stats();
    let per = |a: u64, b: u64| (a - b) as f64 / 1e6 / tokens as f64;
    println!(
        "{:<16} {:>8.2} ms/token  upload {:>7.2} ms ({:>6.1} MB, {} records)  record {:>6.2} ms  wait {:>7.2} ms  GPU kernels {}  ring {} slots",
        g.name,
        secs * 1e3 / tokens as f64,
        per(s.ring.upload_ns, before.ring.upload_ns),
        (s.ring.upload_bytes - before.ring.upload_bytes) as f64 / 1e6 / tokens as f64,
        (s.ring.demand_uploads - before.ring.demand_uploads) / tokens as u64,
        per(s.record_ns, before.record_ns),
        per(s.wait_ns, before.wait_ns),
        kernels,
        s.ring.slots,
    );
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let mem = args
        .iter()
        .position(|a| a == "--mem-gbps")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<f64>().ok());
    // The kernels' GB/s only: no prompt-chunk matmuls, no decode split.
    let kernels_only = args.iter().any(|a| a == "--kernels-only");
    let be = WgpuBackend::new(&WgpuConfig::default())?;
    let prof = WgpuBackend::new(&WgpuConfig {
        profile: true,
        ..WgpuConfig::default()
    })?;
    println!("adapter: {}", be.info());
    let ratio = |g: f64| mem.map(|m| format!("{:.2}x", g / m)).unwrap_or_default();
    let show = |name: String, r: Rate| {
        let gpu: Vec<String> = r
            .gpu
            .iter()
            .map(|(k, g)| format!("{k} {g:.0} GB/s ({})", ratio(*g)))
            .collect();
        println!(
            "{name:<44} wall {:>7.1} GB/s ({})  GPU time: {}",
            r.wall,
            ratio(r.wall),
            if gpu.is_empty() {
                "no timestamps".into()
            } else {
                gpu.join(", ")
            }
        );
    };
    if let Some(m) = mem {
        println!("ratios are of {m} GB/s");
    }
    // Clocks ramp with load and fall when idle: warm up, then interleave rounds of every
    // measurement and report the median and best of the rounds.
    stream_gbps(&be, 96 << 20, 400)?;
    let mut rows: Vec<(String, Vec<Rate>)> = Vec::new();
    for _round in 0..5 {
        let mut i = 0;
        let mut push = |name: String, r: Rate| {
            if rows.len() <= i {
                rows.push((name, Vec::new()));
            }
            rows[i].1.push(r);
            i += 1;
        };
        let g = stream_gbps(&be, 96 << 20, 200)?;
        push(
            "reference: WGSL streaming read, 96 MiB".into(),
            Rate {
                wall: g,
                gpu: Vec::new(),
            },
        );
        for (hidden, inter, n) in [(4096, 1024, 16), (2048, 768, 40)] {
            push(
                format!("q4 experts {hidden}x{inter}, {n} per dispatch"),
                experts_gbps(&prof, hidden, inter, n, 200)?,
            );
        }
        push(
            "q4 matvec 32768x4096 resident".into(),
            matvec_gbps(&prof, 32768, 4096, 200)?,
        );
        push(
            "q4 matvec 32768x4096, unprofiled".into(),
            matvec_gbps(&be, 32768, 4096, 200)?,
        );
    }
    for (name, rates) in rows {
        show(format!("{name} (median of 5)"), median(&rates));
        show(format!("{name} (best of 5)"), best(&rates));
    }
    if kernels_only {
        return Ok(());
    }
    // Prompt chunks: the tiled matmul against one matvec per token, interleaved rounds.
    let mut chunk_rows: Vec<(String, Vec<Rate>)> = Vec::new();
    for _round in 0..5 {
        let mut i = 0;
        for n in [4usize, 16, 64] {
            for as_matvecs in [false, true] {
                let name = format!(
                    "q4 4096x2048 n={n} {}",
                    if as_matvecs { "as matvecs" } else { "matmul" }
                );
                let r = matmul_tok_s(&prof, 4096, 2048, n, 50, as_matvecs)?;
                if chunk_rows.len() <= i {
                    chunk_rows.push((name, Vec::new()));
                }
                chunk_rows[i].1.push(r);
                i += 1;
            }
        }
    }
    for (name, rates) in chunk_rows {
        let m = median(&rates);
        let gpu: Vec<String> = m
            .gpu
            .iter()
            .map(|(k, v)| format!("{k} {v:.0} tok/s"))
            .collect();
        println!(
            "{name:<44} wall {:>9.0} tok/s  GPU time: {} (median of 5)",
            m.wall,
            if gpu.is_empty() {
                "no timestamps".into()
            } else {
                gpu.join(", ")
            }
        );
    }
    for (hidden, inter, n) in [(4096, 1024, 8), (2048, 768, 8)] {
        show(
            format!("q4 experts {hidden}x{inter}, {n} per dispatch (in L2)"),
            experts_gbps(&prof, hidden, inter, n, 200)?,
        );
    }
    println!(
        "decode step (random routing, every routed expert uploaded unless resident; GPU kernel time from a profiled second run):"
    );
    let geos = [
        Geometry {
            name: "tiny-qwen3-moe",
            layers: 8,
            hidden: 256,
            inter: 128,
            experts: 32,
            k: 4,
            heads: 4,
            kv_heads: 2,
            head_dim: 64,
        },
        Geometry {
            name: "qwen3-30b-a3b",
            layers: 48,
            hidden: 2048,
            inter: 768,
            experts: 128,
            k: 8,
            heads: 32,
            kv_heads: 4,
            head_dim: 128,
        },
    ];
    for g in &geos {
        decode_split(&be, g, 16)?;
        decode_split(
            &WgpuBackend::new(&WgpuConfig {
                profile: true,
                ..WgpuConfig::default()
            })?,
            g,
            16,
        )?;
    }
    Ok(())
}
