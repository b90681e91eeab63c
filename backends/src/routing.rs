//! Router maths on the host: softmax, top-k, renormalisation.

use crate::error::{BackendError, Result};

/// The experts chosen for one token in one layer, best first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Routing {
    /// Expert ids, by descending probability.
    pub ids: Vec<u32>,
    /// Matching combine weights.
    pub weights: Vec<f32>,
}

/// Numerically stable softmax of `logits` into a new vector.
pub fn softmax(logits: &[f32]) -> Result<Vec<f32>> {
    if logits.iter().any(|v| !v.is_finite()) {
        return Err(BackendError::NonFinite {
            op: "softmax",
            what: "logits",
        });
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = p.iter().sum();
    p.iter_mut().for_each(|v| *v /= sum);
    Ok(p)
}

/// Softmax over all experts, keep the `k` most probable (ties: lower id first), and when
/// `renormalize` (Qwen3 `norm_topk_prob`, always for Mixtral) divide them by their sum.
///
/// ```
/// use flashmoe_backends::routing::top_k_softmax;
/// let r = top_k_softmax(&[0.0, 2.0, 1.0, 2.0], 2, true).unwrap();
/// assert_eq!(r.ids, vec![1, 3]);
/// assert!((r.weights[0] - 0.5).abs() < 1e-6);
/// ```
pub fn top_k_softmax(logits: &[f32], k: usize, renormalize: bool) -> Result<Routing> {
    if k == 0 || k > logits.len() {
        return Err(BackendError::OutOfRange {
            op: "top_k_softmax",
            what: "k",
            index: k,
            limit: logits.len() + 1,
        });
    }
    let p = softmax(logits)?;
    let mut order: Vec<u32> = (0..p.len() as u32).collect();
    order.sort_by(|&a, &b| p[b as usize].total_cmp(&p[a as usize]).then(a.cmp(&b)));
    order.truncate(k);
    let mut weights: Vec<f32> = order.iter().map(|&i| p[i as usize]).collect();
    if renormalize {
        let sum: f32 = weights.iter().sum();
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    Ok(Routing {
        ids: order,
        weights,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_without_renorm_keeps_probabilities() {
        let r = top_k_softmax(&[1.0, 0.0, 3.0], 1, false).unwrap();
        let e: f32 = (1f32).exp() + 1.0 + (3f32).exp();
        assert_eq!(r.ids, vec![2]);
        assert!((r.weights[0] - (3f32).exp() / e).abs() < 1e-6);
        assert!(top_k_softmax(&[f32::NAN, 0.0], 1, true).is_err());
        assert!(top_k_softmax(&[0.0], 2, true).is_err());
    }
}
