//! The features of every expert of one target layer ([`Blend::features`]).

use super::math::logit;
use super::model::{Features, ROWS};
use super::{Blend, NEAR, TRANSITION_PRIOR, top};

impl Blend {
    /// Fills `x` with the features of every expert of target `t`, predicted `d` layers after
    /// `src` (`d > NEAR`: history only). Rows in [`super::model::DENSE`] order: score logit,
    /// previous token, routing share, transition, older score logit, recent count.
    pub(super) fn features(&mut self, t: u32, src: u32, d: usize, x: &mut Features) {
        let (e, tl) = (self.experts as usize, t as usize);
        debug_assert_eq!(x.rows.len(), ROWS * e);
        let near = d <= NEAR;
        let fresh = near && self.fresh[tl];
        let layer = tl * e..(tl + 1) * e;
        let mut rows = x.rows.chunks_exact_mut(e);
        let mut row = || rows.next().expect("ROWS rows");
        x.fresh = fresh;
        x.top.clear();
        x.k = self.k.min(e);
        let score = row();
        if fresh {
            score.copy_from_slice(&self.score_logit[layer.clone()]);
            top::select(
                &self.score[layer.clone()],
                (2 * x.k).min(e),
                x.k,
                false,
                &mut self.keys,
            );
            x.top.extend(self.keys.iter().map(|&k| top::expert(k)));
        } else {
            score.fill(0.0);
        }
        row().copy_from_slice(&self.prev[layer.clone()]);
        row().copy_from_slice(&self.freq_logit[layer.clone()]);
        // The transition from `src`'s latest routing, when it is this token's.
        let trans = row();
        if near && !self.trans.is_empty() && self.seen[src as usize] == self.seq {
            self.transition_row(src as usize, d);
            for (o, r) in trans.iter_mut().zip(&self.row) {
                *o = logit(*r);
            }
        } else {
            trans.fill(0.0);
        }
        let older = row();
        if fresh && self.has_older[tl] {
            older.copy_from_slice(&self.older[layer.clone()]);
        } else {
            older.fill(0.0);
        }
        row().copy_from_slice(&self.recent[layer]);
    }

    /// `self.row` = P(j at `src + d` | the experts routed at `src`), the mean of their rows of
    /// the distance-`d` transition table, each with the prior k / E.
    fn transition_row(&mut self, src: usize, d: usize) {
        let e = self.experts as usize;
        self.row.fill(0.0);
        let prior = TRANSITION_PRIOR * self.k as f32 / e as f32;
        let srcs = &self.current[src];
        let base = ((d - 1) * self.layers as usize + src) * e;
        let n = srcs.len().max(1) as f32;
        let mut bias = 0.0;
        for &i in srcs {
            let r = base + i as usize;
            let scale = 1.0 / (n * (self.trans_rows[r] + TRANSITION_PRIOR));
            bias += scale * prior;
            let counts = &self.trans[r * e..(r + 1) * e];
            for (o, c) in self.row.iter_mut().zip(counts) {
                *o += scale * c;
            }
        }
        self.row.iter_mut().for_each(|o| *o += bias);
    }
}
