//! The committed header is what cbindgen makes from the source now.

use std::path::Path;

#[test]
fn header_is_current() {
    check_header("flashmoe_engine.h");
}

/// Regenerates `include/<name>` into memory and compares it with the committed file;
/// `FLASHMOE_BLESS=1` writes it instead.
fn check_header(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let path = dir.join("include").join(name);
    if std::env::var_os("FLASHMOE_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write the header");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is out of date with the source: regenerate it with \
         FLASHMOE_BLESS=1 cargo test -p {} --test header",
        path.display(),
        env!("CARGO_PKG_NAME")
    );
}
