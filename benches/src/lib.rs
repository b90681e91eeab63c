//! Shared set-up for the criterion benches in `benches/`: a packed test file on the real disk.

use std::path::{Path, PathBuf};

use io_sched::bench::Rng;
use io_sched::packfile::{PackReader, PackWriter};
use io_sched::{ExpertKey, ExpertLayout};

/// A packed file of `layers × experts` random records of `expert_bytes`, created once under
/// `$FLASHMOE_BENCH_DIR` (default: the system temp dir) and reused.
pub fn bench_file(layers: u32, experts: u32, expert_bytes: u64) -> (PathBuf, ExpertLayout) {
    let dir = std::env::var_os("FLASHMOE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("flashmoe-bench"));
    std::fs::create_dir_all(&dir).expect("create bench dir");
    let path = dir.join(format!("bench-{layers}x{experts}x{expert_bytes}.fmoe"));
    if let Ok(r) = PackReader::open(&path)
        && let Ok(layout) = r.layout()
    {
        return (path, layout);
    }
    let mut w = PackWriter::create(&path, layers, experts).expect("create bench file");
    let mut rng = Rng::new(expert_bytes);
    let mut buf = vec![0u8; expert_bytes as usize];
    for l in 0..layers {
        for e in 0..experts {
            for c in buf.chunks_mut(8) {
                let x = rng.next_u64().to_le_bytes();
                c.copy_from_slice(&x[..c.len()]);
            }
            w.append(ExpertKey::new(l, e), &buf).expect("write record");
        }
    }
    w.finish().expect("finish bench file");
    let layout = PackReader::open(&path)
        .and_then(|r| r.layout())
        .expect("reopen bench file");
    (path, layout)
}

/// Drops the file from the page cache (cold reads for buffered and mmap backends).
pub fn drop_page_cache(path: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(f) = std::fs::File::open(path) {
        // SAFETY: posix_fadvise takes no pointers; the fd is valid while `f` lives.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}
