//! Test-only helpers shared by every flashmoe crate: where the fixtures are, and what a test
//! does when they are missing.
//!
//! A test that needs `../shared/fixtures` calls [`fixture`]: when the file is absent it prints
//! why and the test returns early (a skip), unless `FLASHMOE_REQUIRE_FIXTURES=1` is set (as CI
//! does, having the fixtures beside the clone), where a missing fixture fails the test.

use std::path::PathBuf;

/// Environment variable that turns a missing fixture from a skip into a failure.
pub const REQUIRE_ENV: &str = "FLASHMOE_REQUIRE_FIXTURES";

/// The fixtures directory: `$FLASHMOE_FIXTURES` when set, else `shared/fixtures` beside the
/// workspace.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("FLASHMOE_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"),
    }
}

/// Whether `FLASHMOE_REQUIRE_FIXTURES` asks for every fixture to be present.
pub fn fixtures_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `rel` (a file or directory under the fixtures directory, e.g.
/// `tiny-qwen3-moe/routing_trace.safetensors`) if it exists. Otherwise prints a SKIP line and
/// returns `None`, or panics when [`fixtures_required`].
pub fn fixture(rel: &str) -> Option<PathBuf> {
    let path = fixtures_dir().join(rel);
    if path.exists() {
        return Some(path);
    }
    if fixtures_required() {
        panic!(
            "{REQUIRE_ENV} is set but fixture {} is missing (tests read ../shared/fixtures \
             beside the workspace, or $FLASHMOE_FIXTURES)",
            path.display()
        );
    }
    println!(
        "SKIP: fixture {} not found (tests read ../shared/fixtures beside the workspace; set \
         {REQUIRE_ENV}=1 to make this a failure)",
        path.display()
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_fixture_skips_or_fails_as_asked() {
        let missing = "no-such-fixture/config.json";
        if fixtures_required() {
            let r = std::panic::catch_unwind(|| fixture(missing));
            assert!(
                r.is_err(),
                "a missing fixture must fail under {REQUIRE_ENV}"
            );
        } else {
            assert_eq!(fixture(missing), None);
        }
    }
}
