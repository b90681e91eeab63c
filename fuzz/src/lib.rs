//! Helpers of the fuzz targets: parsers that take a path get the input through a scratch
//! file in a per-process directory (under /dev/shm when it exists, so it stays in memory).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub mod packfile;

/// The per-process scratch directory.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("flashmoe-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    })
}

/// Writes `data` to `name` in the scratch directory and returns its path.
pub fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, data).expect("write scratch file");
    path
}

/// The repository root (for reference files the targets need beside the input).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// With `FLASHMOE_FUZZ_REPORT` set, prints what an input came to (`ok`, or the error's first
/// line) on stderr: run a target over its corpus with `-runs=0` to see which checks the corpus
/// reaches.
pub fn report<T, E: std::fmt::Display>(outcome: &Result<T, E>) {
    static ON: OnceLock<bool> = OnceLock::new();
    if !*ON.get_or_init(|| std::env::var_os("FLASHMOE_FUZZ_REPORT").is_some()) {
        return;
    }
    match outcome {
        Ok(_) => eprintln!("outcome: ok"),
        Err(e) => eprintln!("outcome: {}", e.to_string().lines().next().unwrap_or("")),
    }
}
