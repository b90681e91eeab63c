//! A manifest may only name files inside its own directory: absolute paths and `..` are
//! refused with an error naming the entry; subdirectories are fine.

use io_sched::{Error, Manifest};
use serde_json::json;

fn manifest(files: serde_json::Value) -> String {
    json!({
        "format": "flashmoe-experts-manifest",
        "version": 1,
        "layers": 1,
        "experts": 1,
        "files": files,
        "records": [{"layer": 0, "expert": 0, "file": 0, "offset": 0, "len": 1,
                     "checksum": "0000000000000000"}],
    })
    .to_string()
}

#[test]
fn paths_outside_the_model_directory_are_refused() {
    let base = std::path::Path::new("/models/m");
    for bad in [
        "/etc/passwd",
        "../other/experts.fmoe",
        "sub/../../x.bin",
        "",
    ] {
        let e = Manifest::parse(&manifest(json!([bad])), base, "manifest.json".as_ref())
            .expect_err(bad);
        assert!(matches!(e, Error::Layout(_)), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("files[0]") && msg.contains("inside"),
            "{bad}: {msg}"
        );
    }
    for good in ["experts.fmoe", "sub/experts.fmoe", "./experts.fmoe"] {
        let (layout, _) = Manifest::parse(&manifest(json!([good])), base, "m.json".as_ref())
            .unwrap_or_else(|e| panic!("{good}: {e}"));
        assert!(layout.file_path(0).starts_with(base));
    }
}
