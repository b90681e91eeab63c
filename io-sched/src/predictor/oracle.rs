//! [`Oracle`]: the true future routing, read from a trace — the upper bound for prediction.

use super::{Candidate, LayerPrediction, OutFiller, Predictor, targets};

/// Replays a recorded routing trace `[token][layer][k]` and predicts it exactly, with
/// confidence 1.
///
/// It follows the engine by counting tokens: an `observe` of a layer ≤ the previously observed
/// one starts the next token. Before any `observe` the current token is token 0. Past the end
/// of the trace, and for experts ≥ `experts` or layers missing from the trace, it predicts
/// nothing.
#[derive(Debug, Clone)]
pub struct Oracle {
    layers: u32,
    experts: u32,
    trace: Vec<Vec<Vec<u32>>>,
    token: usize,
    last_layer: Option<u32>,
}

impl Oracle {
    /// An oracle over `trace[token][layer]` = the experts routed to, most probable first.
    pub fn new(trace: Vec<Vec<Vec<u32>>>, layers: u32, experts: u32) -> Self {
        Self {
            layers,
            experts,
            trace,
            token: 0,
            last_layer: None,
        }
    }

    /// How many tokens ahead [`Predictor::next_use`] looks for each expert's next use.
    pub const LOOKAHEAD: usize = 256;

    /// The index of the current token in the trace.
    pub fn token(&self) -> usize {
        self.token
    }
}

impl Predictor for Oracle {
    fn name(&self) -> &'static str {
        "oracle"
    }

    fn observe(&mut self, layer: u32, _experts: &[u32]) {
        if layer >= self.layers {
            return;
        }
        if self.last_layer.is_some_and(|l| layer <= l) {
            self.token += 1;
        }
        self.last_layer = Some(layer);
    }

    fn predict(&mut self, layer: u32, horizon: u32, max: usize, out: &mut Vec<LayerPrediction>) {
        let mut fill = OutFiller::new(out);
        for (t, ahead) in targets(layer, horizon, self.layers) {
            let Some(experts) = self
                .trace
                .get(self.token + ahead as usize)
                .and_then(|tok| tok.get(t as usize))
            else {
                continue;
            };
            let dst = fill.next(t, ahead);
            for &e in experts {
                if dst.len() == max {
                    break;
                }
                if e < self.experts && !dst.iter().any(|c| c.expert == e) {
                    dst.push(Candidate {
                        expert: e,
                        confidence: 1.0,
                    });
                }
            }
            fill.commit();
        }
    }

    /// The exact waits, from the trace: for each expert, the number of `layer`'s demands until
    /// it is routed again (1: at the next one), looking at most [`Oracle::LOOKAHEAD`] tokens
    /// ahead (farther: `LOOKAHEAD + 1`). Fed to [`crate::cache::NextUse`], that is Belady's
    /// choice among the evictable slots: the eviction policy's bound.
    fn calibrated(&self) -> bool {
        true
    }
    fn estimates_next_use(&self) -> bool {
        true
    }
    fn next_use(&mut self, layer: u32, out: &mut [f32]) -> bool {
        if layer >= self.layers {
            return false;
        }
        let token = match self.last_layer {
            Some(l) if layer <= l => self.token + 1,
            _ => self.token,
        };
        if self
            .trace
            .get(token)
            .and_then(|t| t.get(layer as usize))
            .is_none()
        {
            return false;
        }
        let far = (Self::LOOKAHEAD + 1) as f32;
        out.fill(far);
        let mut left = out.len();
        for (w, tok) in self.trace[token..].iter().take(Self::LOOKAHEAD).enumerate() {
            for &e in tok.get(layer as usize).map_or(&[][..], |v| v.as_slice()) {
                if let Some(o) = out.get_mut(e as usize)
                    && *o == far
                {
                    *o = (w + 1) as f32;
                    left -= 1;
                }
            }
            if left == 0 {
                break;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_use_gives_each_experts_exact_wait() {
        // Three tokens of a 2-layer model.
        let trace = vec![
            vec![vec![0, 1], vec![2]],
            vec![vec![3], vec![1, 2]],
            vec![vec![0], vec![3]],
        ];
        let mut o = Oracle::new(trace, 2, 4);
        let far = (Oracle::LOOKAHEAD + 1) as f32;
        let mut p = [9.0f32; 4];
        o.observe(0, &[0, 1]);
        // Layer 1 is next in this token (2 now, 1 next token, 3 the one after).
        assert!(o.next_use(1, &mut p));
        assert_eq!(p, [far, 2.0, 1.0, 3.0]);
        // Layer 0 runs again in the next token (3), then 0 in the one after.
        assert!(o.next_use(0, &mut p));
        assert_eq!(p, [2.0, far, far, 1.0]);
        o.observe(1, &[2]);
        o.observe(0, &[3]);
        o.observe(1, &[1, 2]);
        o.observe(0, &[0]);
        o.observe(1, &[3]);
        assert!(!o.next_use(0, &mut p), "past the end of the trace");
        assert!(!o.next_use(5, &mut p));
    }
}
