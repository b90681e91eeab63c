//! `flashmoe pack` on the committed MLX test checkpoint (engine/tests/data/mlx): it packs as
//! stored and says so; options it cannot honour on an MLX checkpoint are one clear error line.

use std::process::Command;

const MLX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/engine/tests/data/mlx/tiny-mixtral-4bit"
);

fn flashmoe(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flashmoe"))
        .args(args)
        .output()
        .expect("run flashmoe")
}

#[test]
fn pack_reads_an_mlx_checkpoint_as_stored() {
    let tmp = std::env::temp_dir().join(format!("flashmoe-cli-pack-mlx-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out_dir = tmp.join("packed");
    let out_str = out_dir.to_str().expect("utf-8 path");
    let out = flashmoe(&["pack", MLX, out_str]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("packed 8 expert records (q4g64)"),
        "{stdout}"
    );
    let info = std::fs::read_to_string(out_dir.join("flashmoe-pack.json")).expect("pack info");
    assert!(info.contains("\"source\": \"mlx\""), "{info}");
    for args in [
        &["pack", MLX, out_str, "--force", "--bits", "8"][..],
        &["pack", MLX, out_str, "--force", "--dense-bits", "4"][..],
    ] {
        let out = flashmoe(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains("MLX"), "{err}");
    }
    assert!(
        out_dir.join("manifest.json").exists(),
        "a refused --force keeps the old output"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
