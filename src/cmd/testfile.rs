//! The packed test file io-bench reads: created once per geometry (with a progress bar), then
//! reused while its header still matches.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use io_sched::ExpertLayout;
use io_sched::bench::Rng;
use io_sched::packfile::{PackReader, PackWriter};

use super::CliResult;

/// Geometry of a test file: `layers × experts` records of `expert_bytes` each.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub layers: u32,
    pub experts: u32,
    pub expert_bytes: u64,
}

impl Geometry {
    pub fn file_name(&self) -> String {
        format!(
            "io-bench-{}x{}x{}.fmoe",
            self.layers, self.experts, self.expert_bytes
        )
    }
}

/// Opens `dir/<geometry>.fmoe` if it is a valid packed file of this geometry, else writes it.
pub fn ensure(dir: &Path, g: Geometry, quiet: bool) -> CliResult<(PathBuf, ExpertLayout)> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let path = dir.join(g.file_name());
    if path.exists() {
        match PackReader::open(&path) {
            Ok(r) if r.header().layers == g.layers && r.header().experts == g.experts => {
                let layout = r.layout()?;
                if layout.iter().all(|(_, l)| l.len == g.expert_bytes) {
                    return Ok((path, layout));
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("rewriting {}: {e}", path.display()),
        }
    }
    let total = g.layers as u64 * g.experts as u64 * g.expert_bytes;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "writing {msg} {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(g.file_name());
    let mut w = PackWriter::create(&path, g.layers, g.experts)?;
    let mut buf = vec![0u8; g.expert_bytes as usize];
    let mut rng = Rng::new(0xF1A5_u64 ^ g.expert_bytes);
    for layer in 0..g.layers {
        for expert in 0..g.experts {
            // Incompressible bytes, so no layer of the storage stack can shortcut the reads.
            for chunk in buf.chunks_mut(8) {
                let x = rng.next_u64().to_le_bytes();
                chunk.copy_from_slice(&x[..chunk.len()]);
            }
            w.append(io_sched::ExpertKey::new(layer, expert), &buf)?;
            bar.inc(g.expert_bytes);
        }
    }
    w.finish()?;
    bar.finish_and_clear();
    let layout = PackReader::open(&path)?.layout()?;
    Ok((path, layout))
}

/// Drops the file's pages from the page cache, so buffered and mmap reads start cold.
pub fn drop_page_cache(path: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(f) = std::fs::File::open(path) {
        // SAFETY: posix_fadvise takes no pointers; the fd is valid while `f` lives.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            tracing::warn!("posix_fadvise(DONTNEED) on {} failed: {rc}", path.display());
        }
    }
}
