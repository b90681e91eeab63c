//! The logistic model of one (layer, distance): weights with AdaGrad, a target's features
//! ([`Features`]: the dense ones stored feature-major, the constant and indicator ones as a
//! flag and an index list), and the two loops over a target's experts — probabilities and
//! the log-loss gradient — each a few passes over contiguous rows that the compiler
//! vectorizes, plus a touch of the k or 2k indicated experts.

use super::FEATURES;
use super::math::sigmoid;

/// The features stored as rows (feature index of row `i`: `DENSE[i]`); the others are the
/// bias (0), "no fresh scores" (2: one flag per target) and the score's top k (3) and top 2k
/// (8), kept as the index list [`Features::top`].
pub(super) const DENSE: [usize; 6] = [1, 4, 5, 6, 7, 9];
/// Rows of [`DENSE`] features.
pub(super) const ROWS: usize = DENSE.len();

/// One logistic model's weights with their AdaGrad accumulators.
#[derive(Debug, Clone, Copy)]
pub(super) struct Weights {
    pub(super) w: [f32; FEATURES],
    g2: [f32; FEATURES],
}

impl Weights {
    pub(super) fn zero() -> Self {
        Self {
            w: [0.0; FEATURES],
            g2: [1.0; FEATURES],
        }
    }

    /// AdaGrad ascent on the log-likelihood with batch gradient `grad`.
    pub(super) fn step(&mut self, grad: &[f32; FEATURES], lr: f32) {
        for ((w, g2), g) in self.w.iter_mut().zip(&mut self.g2).zip(grad) {
            *g2 += g * g;
            *w += lr * g / g2.sqrt();
        }
    }
}

/// The features of every expert of one target.
#[derive(Debug, Clone, Default)]
pub(super) struct Features {
    /// `ROWS × experts`: row `i` is feature `DENSE[i]` of every expert.
    pub(super) rows: Vec<f32>,
    /// Whether the target had fresh scores (feature 2 is `!fresh` for every expert).
    pub(super) fresh: bool,
    /// The score's top 2k experts (feature 8), its top k first (feature 3: `top[..k]`).
    pub(super) top: Vec<u32>,
    pub(super) k: usize,
}

impl Features {
    pub(super) fn new(experts: usize) -> Self {
        Self {
            rows: vec![0.0; ROWS * experts],
            fresh: false,
            top: Vec::with_capacity(experts),
            k: 0,
        }
    }

    /// Feature `f` of expert `j` (for tests and inspection).
    #[cfg(test)]
    pub(super) fn get(&self, f: usize, j: usize) -> f32 {
        let e = self.rows.len() / ROWS;
        match f {
            0 => 1.0,
            2 => (!self.fresh) as u8 as f32,
            3 => self.top[..self.k.min(self.top.len())].contains(&(j as u32)) as u8 as f32,
            8 => self.top.contains(&(j as u32)) as u8 as f32,
            _ => {
                let i = DENSE.iter().position(|&d| d == f).expect("a feature index");
                self.rows[i * e + j]
            }
        }
    }
}

/// `p[j] = σ(w · x_j)` for every expert `j` of `x`.
pub(super) fn probabilities(w: &[f32; FEATURES], x: &Features, p: &mut [f32]) {
    let e = p.len();
    debug_assert_eq!(x.rows.len(), ROWS * e);
    let bias = w[0] + if x.fresh { 0.0 } else { w[2] };
    p.fill(bias);
    for (i, &f) in DENSE.iter().enumerate() {
        let wf = w[f];
        if wf == 0.0 {
            continue;
        }
        for (z, x) in p.iter_mut().zip(&x.rows[i * e..(i + 1) * e]) {
            *z += wf * x;
        }
    }
    for (n, &j) in x.top.iter().enumerate() {
        if let Some(z) = p.get_mut(j as usize) {
            *z += w[8] + if n < x.k { w[3] } else { 0.0 };
        }
    }
    p.iter_mut().for_each(|z| *z = sigmoid(*z));
}

/// The log-likelihood gradient `Σ_j (y_j - p_j) x_j` of `x` with probabilities `p`, where
/// `y_j` = 1 for the `routed` experts; `err` is scratch (one per expert).
pub(super) fn gradient(
    x: &Features,
    p: &[f32],
    routed: &[u32],
    err: &mut [f32],
) -> [f32; FEATURES] {
    let e = p.len();
    for (d, p) in err.iter_mut().zip(p) {
        *d = -p;
    }
    for &j in routed {
        if let Some(d) = err.get_mut(j as usize) {
            *d += 1.0;
        }
    }
    let mut g = [0.0f32; FEATURES];
    g[0] = dot(err, None);
    g[2] = if x.fresh { 0.0 } else { g[0] };
    for (n, &j) in x.top.iter().enumerate() {
        let d = err.get(j as usize).copied().unwrap_or(0.0);
        g[8] += d;
        if n < x.k {
            g[3] += d;
        }
    }
    for (i, &f) in DENSE.iter().enumerate() {
        g[f] = dot(err, Some(&x.rows[i * e..(i + 1) * e]));
    }
    g
}

/// `Σ a_j b_j` (`b` = 1 when `None`) in eight lanes, which the compiler vectorizes (a plain
/// float sum must keep its order and stays scalar).
fn dot(a: &[f32], b: Option<&[f32]>) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0.0f32; LANES];
    let n = a.len() / LANES * LANES;
    match b {
        Some(b) => {
            for (ca, cb) in a[..n].chunks_exact(LANES).zip(b[..n].chunks_exact(LANES)) {
                for l in 0..LANES {
                    acc[l] += ca[l] * cb[l];
                }
            }
            acc[0] += a[n..].iter().zip(&b[n..]).map(|(a, b)| a * b).sum::<f32>();
        }
        None => {
            for ca in a[..n].chunks_exact(LANES) {
                for l in 0..LANES {
                    acc[l] += ca[l];
                }
            }
            acc[0] += a[n..].iter().sum::<f32>();
        }
    }
    acc.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dense formula over every feature, for comparison.
    fn z_by_hand(w: &[f32; FEATURES], x: &Features, j: usize) -> f32 {
        (0..FEATURES).map(|f| w[f] * x.get(f, j)).sum()
    }

    #[test]
    fn probabilities_and_gradient_match_the_dense_formulas() {
        let e = 5;
        let mut x = Features::new(e);
        for (n, v) in x.rows.iter_mut().enumerate() {
            *v = ((n * 7) % 11) as f32 / 5.0 - 1.0;
        }
        x.top.extend([3, 1, 4]);
        x.k = 1;
        let w: [f32; FEATURES] = std::array::from_fn(|f| 0.1 * f as f32 - 0.3);
        for fresh in [false, true] {
            x.fresh = fresh;
            let mut p = vec![0.0; e];
            probabilities(&w, &x, &mut p);
            for (j, &pj) in p.iter().enumerate() {
                let want = 1.0 / (1.0 + (-z_by_hand(&w, &x, j)).exp());
                assert!((pj - want).abs() < 1e-6, "p[{j}] {pj} vs {want}");
            }
            let mut err = vec![0.0; e];
            let g = gradient(&x, &p, &[1, 2], &mut err);
            for (f, &gf) in g.iter().enumerate() {
                let want: f32 = (0..e)
                    .map(|j| ((j == 1 || j == 2) as u8 as f32 - p[j]) * x.get(f, j))
                    .sum();
                assert!((gf - want).abs() < 1e-5, "g[{f}] {gf} vs {want}");
            }
        }
    }
}
