//! Test helpers of the C crates: the committed header is what cbindgen makes now, and where
//! cargo put the static library a C example links.

use std::path::{Path, PathBuf};

/// Regenerates `crate_dir/include/<name>` with the crate's `cbindgen.toml` into memory and
/// panics unless it equals the committed file; `FLASHMOE_BLESS=1` writes it instead.
pub fn check_header(crate_dir: &Path, name: &str, package: &str) {
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let path = crate_dir.join("include").join(name);
    if std::env::var_os("FLASHMOE_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write the header");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is out of date with the source: regenerate it with \
         FLASHMOE_BLESS=1 cargo test -p {package} --test header",
        path.display(),
    );
}

/// The static library `name` cargo built for this test run: beside the test binary
/// (`deps/`), else in the profile directory above it.
pub fn static_lib(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("test binary directory");
    for dir in [deps, deps.parent().unwrap_or(deps)] {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} not found beside {} (cargo builds it with this crate)",
        exe.display()
    );
}

/// Compiles the C program `source` against the headers in `include` and the static library
/// `lib` into `out` (C11, all warnings as errors); panics with the compiler's output on error.
pub fn compile_c(source: &Path, include: &Path, lib: &Path, out: &Path) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let o = std::process::Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1"])
        .arg("-I")
        .arg(include)
        .arg(source)
        .arg(lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("running {cc}: {e} (a C compiler is needed for this test)"));
    assert!(
        o.status.success(),
        "{cc} failed on {}:\n{}{}",
        source.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
