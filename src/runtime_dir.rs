//! A private `XDG_RUNTIME_DIR` when the environment has none.
//!
//! The Vulkan loader and Mesa's drivers (reached through wgpu) print `XDG_RUNTIME_DIR is
//! invalid or not set in the environment` — up to four times, to stderr, as if it were ours —
//! when the variable is unset (containers, CI, `sudo`, cron). They only want a private
//! directory to exist, so before anything starts a thread we point the variable at
//! `$TMPDIR/flashmoe-runtime-UID` (created with mode 0700) when it is unset or not a directory.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;

/// Sets `XDG_RUNTIME_DIR` to a private directory when it is unset or invalid. Must be called
/// before any other thread starts (it changes the process environment).
pub fn ensure() {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR")
        && std::path::Path::new(&d).is_dir()
    {
        return;
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir: PathBuf = std::env::temp_dir().join(format!("flashmoe-runtime-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    // Use it only if it is ours and private (another user may have made the name first).
    let ok = std::fs::symlink_metadata(&dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o077 == 0);
    if ok {
        // SAFETY: called first thing in `main`, before any thread exists, so nothing reads
        // the environment concurrently.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
    }
}
