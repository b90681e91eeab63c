//! Replacing a packed model directory without losing data.
//!
//! `pack --force` may only replace what the packer itself wrote: [`check_target`] refuses an
//! output that is, or contains, the checkpoint being read, and an existing output that is
//! neither empty nor a packed model (it holds `manifest.json` and `flashmoe-pack.json`), so a
//! folder of the user's files is never removed. [`replace_dir`] makes the finished temporary
//! directory durable (every file and the directory fsynced) before renaming it over the old
//! one, and fsyncs the parent after the rename, so a crash leaves either the old model or
//! the whole new one under the final name.

use crate::error::{EngineError, Result};
use std::path::{Path, PathBuf};

/// Files whose presence marks a directory as a packed model that `--force` may replace.
const PACKED_MARKERS: [&str; 2] = ["manifest.json", crate::pack::PACK_INFO_FILE];

/// Checks that packing `src` into `out` cannot destroy data: refuses `out` when it exists and
/// `force` is off, when it is `src` or holds `src` (the checkpoint would be deleted by the
/// replacement), or when it is a non-empty directory that is not a packed model.
pub(crate) fn check_target(src: &Path, out: &Path, force: bool) -> Result<()> {
    let fail = |reason: String| EngineError::Pack {
        path: out.to_path_buf(),
        reason,
    };
    let exists = std::fs::symlink_metadata(out).is_ok();
    if let (Ok(s), Ok(o)) = (src.canonicalize(), out.canonicalize())
        && s.starts_with(&o)
    {
        return Err(fail(format!(
            "is the checkpoint being packed or holds it ({}); choose another output directory",
            src.display()
        )));
    }
    if !exists {
        return Ok(());
    }
    if !force {
        return Err(fail("already exists (pass --force to replace it)".into()));
    }
    let meta = std::fs::symlink_metadata(out).map_err(|source| EngineError::Io {
        op: "stat",
        path: out.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(fail(
            "exists and is not a directory; --force only replaces a packed model".into(),
        ));
    }
    let mut entries = std::fs::read_dir(out).map_err(|source| EngineError::Io {
        op: "read directory",
        path: out.to_path_buf(),
        source,
    })?;
    let empty = entries.next().is_none();
    let packed = PACKED_MARKERS.iter().all(|m| out.join(m).is_file());
    if !empty && !packed {
        return Err(fail(format!(
            "exists and is not a packed model (no {} and {}); --force only replaces a packed \
             model, remove it yourself if you mean it",
            PACKED_MARKERS[0], PACKED_MARKERS[1]
        )));
    }
    Ok(())
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.to_path_buf();
    move |source| EngineError::Io { op, path, source }
}

/// Fsyncs every regular file directly in `dir`, then `dir` itself.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let path = entry.path();
        if entry.file_type().map_err(io_err("stat", &path))?.is_file() {
            sync_path(&path)?;
        }
    }
    sync_path(dir)
}

/// Fsyncs one file or directory.
fn sync_path(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync", path))
}

/// Moves the finished `tmp` (a sibling of `out`) to `out`, replacing an existing `out` only
/// after `tmp` is whole and on disk. The caller has run [`check_target`].
pub(crate) fn replace_dir(tmp: &Path, out: &Path, parent: &Path, name: &str) -> Result<()> {
    sync_tree(tmp)?;
    let old: PathBuf = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = std::fs::symlink_metadata(out).is_ok();
    if had_old {
        std::fs::rename(out, &old).map_err(io_err("move aside", out))?;
    }
    if let Err(e) = std::fs::rename(tmp, out) {
        if had_old {
            // Put the old model back: the new one could not take its place.
            let _ = std::fs::rename(&old, out);
        }
        return Err(io_err("rename", out)(e));
    }
    sync_path(parent)?;
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_the_source_and_a_folder_that_is_not_a_packed_model() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("ckpt");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("model.safetensors"), b"x").unwrap();
        let e = check_target(&src, &src, true).unwrap_err().to_string();
        assert!(e.contains("checkpoint being packed"), "{e}");
        let e = check_target(&src, d.path(), true).unwrap_err().to_string();
        assert!(e.contains("checkpoint being packed"), "{e}");
        let user = d.path().join("mine");
        std::fs::create_dir(&user).unwrap();
        std::fs::write(user.join("notes.txt"), b"keep me").unwrap();
        let e = check_target(&src, &user, true).unwrap_err().to_string();
        assert!(e.contains("not a packed model"), "{e}");
        let file = d.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(check_target(&src, &file, true).is_err());
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        check_target(&src, &empty, true).unwrap();
        assert!(check_target(&src, &empty, false).is_err());
        for m in PACKED_MARKERS {
            std::fs::write(user.join(m), b"{}").unwrap();
        }
        check_target(&src, &user, true).unwrap();
        check_target(&src, &d.path().join("new"), false).unwrap();
    }

    #[test]
    fn replace_keeps_the_new_tree() {
        let d = tempfile::tempdir().unwrap();
        let (tmp, out) = (d.path().join(".o.tmp"), d.path().join("o"));
        std::fs::create_dir(&tmp).unwrap();
        std::fs::create_dir(&out).unwrap();
        std::fs::write(tmp.join("a"), b"new").unwrap();
        std::fs::write(out.join("a"), b"old").unwrap();
        replace_dir(&tmp, &out, d.path(), "o").unwrap();
        assert_eq!(std::fs::read(out.join("a")).unwrap(), b"new");
        assert!(!tmp.exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
