//! The committed header is what cbindgen makes from the source now (`FLASHMOE_BLESS=1`
//! regenerates it).

#[test]
fn header_is_current() {
    flashmoe_capi_common::testing::check_header(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        "flashmoe_engine.h",
        env!("CARGO_PKG_NAME"),
    );
}
