//! Deterministic pseudo-random bf16 tensors, produced lazily as safetensors [`View`]s.
//!
//! A tensor's bytes are a pure function of (seed, tensor name, [`Init`]): the name is hashed into
//! a tensor seed, and the values are made in blocks of [`BLOCK`] elements, each from its own
//! generator seeded by (tensor seed, block index). Blocks are filled by a few threads; the
//! bytes do not depend on how many. Values are approximately normal (the sum of four 16-bit
//! uniforms, Irwin–Hall, range ±3.46 σ), rounded to bf16 to nearest even.
//!
//! [`View::data`] builds the bytes when safetensors writes the tensor and drops them after, so
//! a writer holds at most one tensor in memory.

use safetensors::{Dtype, View};
use std::borrow::Cow;

/// Elements per independently seeded block.
pub const BLOCK: usize = 1 << 16;

/// How a tensor's values are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Every element `value`.
    Const(f32),
    /// `mean + std · z` per element, z ≈ N(0, 1).
    Normal {
        /// Mean of every element.
        mean: f32,
        /// Standard deviation.
        std: f32,
    },
    /// Rows of a `[rows, cols]` matrix sharing one random column offset: element `(r, c)` is
    /// `offset[c] + std · z`, with `offset[c] = offset_std · z'` drawn once per tensor (the
    /// direction every token embedding shares, which gives routing its popularity skew).
    SharedOffset {
        /// Standard deviation of the per-row part.
        std: f32,
        /// Standard deviation of the shared offset.
        offset_std: f32,
        /// Row width.
        cols: usize,
    },
    /// Uniform in `[lo, hi)` per element (e.g. DeltaNet's `A_log`, `dt_bias`).
    Uniform {
        /// Lower bound.
        lo: f32,
        /// Upper bound.
        hi: f32,
    },
}

/// SplitMix64 step: a good 64-bit mix of `x`.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The seed of tensor `name` under the run's `seed` (FNV-1a of the name, mixed).
pub fn tensor_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01B3);
    }
    mix64(seed ^ mix64(h))
}

/// A small, fast generator (wyrand).
struct Wy(u64);

impl Wy {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xA076_1D64_78BD_642F);
        let t = (self.0 as u128).wrapping_mul((self.0 ^ 0xE703_7ED1_A0B4_28DB) as u128);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// ≈ N(0, 1): four 16-bit uniforms summed, centred and scaled to unit variance.
    fn normal(&mut self) -> f32 {
        let x = self.next();
        let s = (x & 0xFFFF) + ((x >> 16) & 0xFFFF) + ((x >> 32) & 0xFFFF) + (x >> 48);
        // Mean 4·65535/2, variance 4·(65536² − 1)/12.
        (s as f32 - 131_070.0) * (1.0 / 37_837.23)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }
}

/// f32 to bf16 bits, rounding to nearest even (inputs here are finite).
pub fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// A tensor whose bf16 bytes are generated when safetensors asks for them.
pub struct RandomView<'a> {
    shape: Vec<usize>,
    init: Init,
    seed: u64,
    threads: usize,
    /// Told the bytes of each tensor once they are made (drives a progress bar).
    progress: &'a (dyn Fn(u64) + Sync),
}

impl<'a> RandomView<'a> {
    /// Tensor `name` of `shape` drawn by `init` under `seed`, generated on `threads` threads.
    pub fn new(
        name: &str,
        shape: Vec<usize>,
        init: Init,
        seed: u64,
        threads: usize,
        progress: &'a (dyn Fn(u64) + Sync),
    ) -> Self {
        Self {
            shape,
            init,
            seed: tensor_seed(seed, name),
            threads: threads.max(1),
            progress,
        }
    }

    fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The tensor's bf16 bytes (little-endian).
    pub fn bytes(&self) -> Vec<u8> {
        let n = self.elements();
        let mut out = vec![0u8; n * 2];
        let offset = match self.init {
            Init::SharedOffset {
                offset_std, cols, ..
            } => {
                let mut g = Wy(mix64(self.seed ^ 0x000F_F5E7));
                (0..cols).map(|_| offset_std * g.normal()).collect()
            }
            _ => Vec::new(),
        };
        let blocks = out.chunks_mut(BLOCK * 2).enumerate().collect::<Vec<_>>();
        let per = blocks.len().div_ceil(self.threads).max(1);
        let mut groups: Vec<Vec<(usize, &mut [u8])>> = Vec::new();
        let mut it = blocks.into_iter().peekable();
        while it.peek().is_some() {
            groups.push(it.by_ref().take(per).collect());
        }
        let fill = |group: Vec<(usize, &mut [u8])>| {
            for (i, chunk) in group {
                self.fill_block(i, chunk, &offset);
            }
        };
        if groups.len() <= 1 {
            groups.into_iter().for_each(fill);
        } else {
            std::thread::scope(|s| {
                for g in groups {
                    s.spawn(|| fill(g));
                }
            });
        }
        (self.progress)(out.len() as u64);
        out
    }

    fn fill_block(&self, block: usize, chunk: &mut [u8], offset: &[f32]) {
        let mut g = Wy(mix64(self.seed ^ mix64(block as u64 + 1)));
        let first = block * BLOCK;
        for (j, pair) in chunk.chunks_exact_mut(2).enumerate() {
            let v = match self.init {
                Init::Const(c) => c,
                Init::Normal { mean, std } => mean + std * g.normal(),
                Init::SharedOffset { std, cols, .. } => {
                    offset[(first + j) % cols] + std * g.normal()
                }
                Init::Uniform { lo, hi } => lo + (hi - lo) * g.unit(),
            };
            pair.copy_from_slice(&bf16_bits(v).to_le_bytes());
        }
    }
}

impl View for RandomView<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::BF16
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.bytes())
    }

    fn data_len(&self) -> usize {
        self.elements() * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn view<'a>(init: Init, threads: usize, p: &'a (dyn Fn(u64) + Sync)) -> RandomView<'a> {
        RandomView::new("t", vec![3, BLOCK + 7], init, 42, threads, p)
    }

    #[test]
    fn bytes_do_not_depend_on_the_thread_count() {
        let n = AtomicU64::new(0);
        let p = |b: u64| {
            n.fetch_add(b, Ordering::Relaxed);
        };
        let init = Init::Normal {
            mean: 0.0,
            std: 0.5,
        };
        assert_eq!(view(init, 1, &p).bytes(), view(init, 3, &p).bytes());
        assert_eq!(n.load(Ordering::Relaxed), 2 * 2 * 3 * (BLOCK as u64 + 7));
    }

    #[test]
    fn normal_values_have_the_asked_moments() {
        let p = |_: u64| {};
        let b = view(
            Init::Normal {
                mean: 0.25,
                std: 0.5,
            },
            2,
            &p,
        )
        .bytes();
        let v: Vec<f32> = b
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        assert!((mean - 0.25).abs() < 0.01, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.01, "std {}", var.sqrt());
    }

    #[test]
    fn names_and_seeds_change_the_bytes() {
        let p = |_: u64| {};
        let init = Init::Normal {
            mean: 0.0,
            std: 1.0,
        };
        let a = RandomView::new("a", vec![64], init, 1, 1, &p).bytes();
        let b = RandomView::new("b", vec![64], init, 1, 1, &p).bytes();
        let c = RandomView::new("a", vec![64], init, 2, 1, &p).bytes();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, RandomView::new("a", vec![64], init, 1, 1, &p).bytes());
    }

    #[test]
    fn shared_offset_rows_share_their_column_means() {
        let p = |_: u64| {};
        let cols = 8;
        let init = Init::SharedOffset {
            std: 0.0,
            offset_std: 1.0,
            cols,
        };
        let b = RandomView::new("e", vec![4, cols], init, 1, 1, &p).bytes();
        let (first, rest) = b.split_at(cols * 2);
        for row in rest.chunks(cols * 2) {
            assert_eq!(row, first);
        }
        assert!(first.chunks(2).any(|c| c != [0, 0]));
    }
}
