//! Choosing tokens from logits (kept apart from the model).

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
