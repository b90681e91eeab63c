//! Choosing tokens from logits (kept apart from the model): argmax, top-k, and [`Sampler`].

/// Index of the largest logit; the first one on ties (like `torch.argmax`). `None` if empty.
///
/// ```
/// assert_eq!(flashmoe_engine::sampler::argmax(&[0.1, 3.0, 3.0]), Some(1));
/// ```
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32)
}

/// The `k` largest logits' indices, largest first (ties: lower index first).
pub fn top_k(logits: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    idx.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

/// How to pick the next token: greedy, or temperature + nucleus (top-p) sampling from a
/// seeded generator (same seed, same logits → same tokens, on every platform).
#[derive(Clone, Debug)]
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    rng: SplitMix64,
}

impl Sampler {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self::new(0.0, 1.0, 0)
    }

    /// Samples from `softmax(logits / temperature)` restricted to the smallest set of tokens
    /// whose probability reaches `top_p`. `temperature <= 0` (or NaN) is greedy; `top_p` is
    /// clamped to `(0, 1]`.
    ///
    /// ```
    /// use flashmoe_engine::sampler::Sampler;
    /// let logits = [0.0, 2.0, 1.0];
    /// let mut a = Sampler::new(0.8, 0.9, 7);
    /// let mut b = Sampler::new(0.8, 0.9, 7);
    /// let xs: Vec<u32> = (0..20).map(|_| a.sample(&logits).unwrap()).collect();
    /// let ys: Vec<u32> = (0..20).map(|_| b.sample(&logits).unwrap()).collect();
    /// assert_eq!(xs, ys);
    /// assert_eq!(Sampler::greedy().sample(&logits), Some(1));
    /// ```
    pub fn new(temperature: f32, top_p: f32, seed: u64) -> Self {
        let top_p = if top_p.is_nan() {
            1.0
        } else {
            top_p.clamp(f32::MIN_POSITIVE, 1.0)
        };
        Self {
            temperature,
            top_p,
            rng: SplitMix64(seed),
        }
    }

    /// Whether this sampler is greedy.
    pub fn is_greedy(&self) -> bool {
        self.temperature.is_nan() || self.temperature <= 0.0
    }

    /// The next token, or `None` for empty logits.
    pub fn sample(&mut self, logits: &[f32]) -> Option<u32> {
        if self.is_greedy() {
            return argmax(logits);
        }
        let max = logits
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return argmax(logits);
        }
        // Probabilities in f64, sorted by descending probability (ties: lower id first).
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .filter(|(_, x)| x.is_finite())
            .map(|(i, &x)| (i as u32, (((x - max) / self.temperature) as f64).exp()))
            .collect();
        let sum: f64 = probs.iter().map(|p| p.1).sum();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut kept = 0.0;
        let mut n = 0;
        for p in &probs {
            kept += p.1 / sum;
            n += 1;
            if kept >= self.top_p as f64 {
                break;
            }
        }
        let nucleus = &probs[..n];
        let mass: f64 = nucleus.iter().map(|p| p.1).sum();
        let mut r = self.rng.next_f64() * mass;
        for &(id, p) in nucleus {
            if r < p {
                return Some(id);
            }
            r -= p;
        }
        nucleus.last().map(|p| p.0)
    }
}

/// SplitMix64: a tiny generator whose output is fixed by its definition (unlike library RNGs
/// that may change between versions), so seeded runs stay reproducible.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
