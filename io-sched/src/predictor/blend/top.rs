//! Top-m selection over a layer's non-negative values (scores, probabilities) by one integer
//! key per expert: the value's bits (order-preserving for non-negative floats) above the
//! complemented index, so that one `u64` comparison orders by value, then by lower index —
//! no closure, no float compare, no sort unless the order is needed.

/// The value bits that order: those of `v`, or 0 when `v` is not positive and finite (such
/// values rank last).
#[inline(always)]
fn bits(v: f32) -> u32 {
    // Positive finite floats are exactly the bit patterns 1..=0x7f7f_ffff (one compare, no
    // branch).
    let b = v.to_bits();
    if b.wrapping_sub(1) < 0x7f7f_ffff {
        b
    } else {
        0
    }
}

/// The sort key of expert `j` with value `v`.
#[inline(always)]
fn key(j: usize, v: f32) -> u64 {
    ((bits(v) as u64) << 32) | (u32::MAX - j as u32) as u64
}

/// A lower bound of the `m`-th largest value bits (`1 <= m <= values.len()`): the least of
/// the maxima of at least `m` disjoint groups — each group's maximum is a distinct value at
/// least that large. Branch-free, so it vectorizes; on a layer's values it passes a small
/// share of them on to the selection.
fn floor_of_top(values: &[f32], m: usize) -> u32 {
    let group = (values.len() / m).max(1);
    values
        .chunks(group)
        .map(|g| g.iter().map(|&v| bits(v)).fold(0, u32::max))
        .fold(u32::MAX, u32::min)
}

/// The expert of a key.
#[inline(always)]
pub(super) fn expert(key: u64) -> u32 {
    u32::MAX - key as u32
}

/// The value bits of a key (0: the value was not positive).
#[inline(always)]
pub(super) fn positive(key: u64) -> bool {
    key >> 32 != 0
}

/// Leaves in `keys` the `m` best of `values` (value descending, then index ascending):
/// `keys[..inner]` are the best `inner` of them, in no order; with `sorted`, all of them are in
/// order instead.
pub(super) fn select(values: &[f32], m: usize, inner: usize, sorted: bool, keys: &mut Vec<u64>) {
    keys.clear();
    let m = m.min(values.len());
    if m == 0 {
        return;
    }
    // Only values that can be among the best `m` (every one of them is at least the floor).
    let floor = floor_of_top(values, m);
    // Branch-free compaction: every key is written, the cursor moves only past kept ones.
    keys.resize(values.len(), 0);
    let mut n = 0;
    for (j, &v) in values.iter().enumerate() {
        keys[n] = key(j, v);
        n += (bits(v) >= floor) as usize;
    }
    keys.truncate(n);
    if m < keys.len() {
        keys.select_nth_unstable_by(m - 1, |a, b| b.cmp(a));
        keys.truncate(m);
    }
    if sorted {
        keys.sort_unstable_by(|a, b| b.cmp(a));
    } else if inner > 0 && inner < m {
        keys.select_nth_unstable_by(inner - 1, |a, b| b.cmp(a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_value_then_index_and_skips_nothing_positive() {
        let v = [0.1, 0.5, 0.0, 0.5, f32::NAN, 0.3, -1.0];
        let mut keys = Vec::new();
        select(&v, 4, 0, true, &mut keys);
        let e: Vec<u32> = keys.iter().map(|&k| expert(k)).collect();
        assert_eq!(e, [1, 3, 5, 0]);
        assert!(keys.iter().all(|&k| positive(k)));
        select(&v, 5, 2, false, &mut keys);
        let mut inner: Vec<u32> = keys[..2].iter().map(|&k| expert(k)).collect();
        inner.sort();
        assert_eq!(inner, [1, 3]);
        assert!(!positive(keys[4]), "the fifth has no positive value");
        select(&v, 0, 0, true, &mut keys);
        assert!(keys.is_empty());
    }

    #[test]
    fn the_prefilter_never_drops_one_of_the_best() {
        // Against a full sort, on values with many ties and a few zeros.
        let mut x = 12345u64;
        for n in [1usize, 7, 64, 128, 130] {
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 9) as f32 / 8.0
                })
                .collect();
            for m in [1, 3, 16, n] {
                let mut keys = Vec::new();
                select(&v, m, 0, true, &mut keys);
                let mut all: Vec<u64> = v.iter().enumerate().map(|(j, &v)| key(j, v)).collect();
                all.sort_unstable_by(|a, b| b.cmp(a));
                all.truncate(m);
                assert_eq!(keys, all, "n {n} m {m}");
            }
        }
    }
}
