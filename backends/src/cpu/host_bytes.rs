//! A weight's bytes in host memory. Large ones live in an anonymous mapping that Linux backs
//! with transparent huge pages where the system allows them (`madvise` mode is the common
//! default): decode streams every dense weight once per token at memory bandwidth, and with
//! 4 KiB pages each 4 KiB of it costs a TLB walk (measured on the 30B geometry's 175 MB
//! `lm_head` and its routed experts; see `io_sched`'s cache arena, which does the same).

use memmap2::MmapMut;
use std::fmt;
use std::ops::Deref;

/// Below this a weight stays on the heap (a huge page is 2 MiB).
const MAPPED_FROM: usize = 2 << 20;

/// Immutable bytes: a heap copy, or for large weights a huge-page-advised mapping.
pub(crate) enum HostBytes {
    Heap(Vec<u8>),
    Mapped(MmapMut),
}

impl HostBytes {
    /// A copy of `bytes` (mapped from [`MAPPED_FROM`] up; on the heap if mapping fails).
    pub(crate) fn copy_of(bytes: &[u8]) -> Self {
        match Self::filled(bytes.len(), |dst| {
            dst.copy_from_slice(bytes);
            Ok::<(), std::convert::Infallible>(())
        }) {
            Ok(b) => b,
        }
    }

    /// `len` bytes that `fill` writes where they will stay (mapped from [`MAPPED_FROM`] up, on
    /// the heap below or if mapping fails): nothing is copied, so loading a weight never
    /// holds it twice.
    pub(crate) fn filled<E>(
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<Self, E> {
        if len >= MAPPED_FROM
            && let Ok(mut map) = MmapMut::map_anon(len)
        {
            // Advised before `fill` touches it, so the faults take huge pages. Only a hint:
            // a kernel without THP refuses and 4 KiB pages work.
            #[cfg(target_os = "linux")]
            let _ = map.advise(memmap2::Advice::HugePage);
            fill(&mut map)?;
            return Ok(HostBytes::Mapped(map));
        }
        let mut v = vec![0u8; len];
        fill(&mut v)?;
        Ok(HostBytes::Heap(v))
    }
}

impl Deref for HostBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            HostBytes::Heap(v) => v,
            HostBytes::Mapped(m) => m,
        }
    }
}

impl Clone for HostBytes {
    fn clone(&self) -> Self {
        HostBytes::copy_of(self)
    }
}

impl fmt::Debug for HostBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = match self {
            HostBytes::Heap(_) => "heap",
            HostBytes::Mapped(_) => "mapped",
        };
        write!(f, "HostBytes({} bytes, {place})", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small and large copies hold the same bytes, and clones are equal copies.
    #[test]
    fn copies_keep_the_bytes() {
        for n in [0usize, 5, MAPPED_FROM - 1, MAPPED_FROM + 4097] {
            let src: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
            let b = HostBytes::copy_of(&src);
            assert_eq!(&*b, &src[..]);
            assert_eq!(matches!(b, HostBytes::Mapped(_)), n >= MAPPED_FROM);
            assert_eq!(&*b.clone(), &src[..]);
        }
    }

    /// A failing fill is the caller's error, whatever the size.
    #[test]
    fn a_failed_fill_returns_its_error() {
        for n in [7usize, MAPPED_FROM] {
            let r = HostBytes::filled(n, |dst| {
                assert_eq!(dst.len(), n);
                Err::<(), _>("no data")
            });
            assert_eq!(r.err(), Some("no data"));
        }
    }
}
