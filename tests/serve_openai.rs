//! The official `openai` Python client against `flashmoe serve` (tests/openai_client.py).
//! Skips with a printed reason when `python3 -c 'import openai'` fails (CI installs it with
//! `pip install openai` and sets `FLASHMOE_REQUIRE_OPENAI=1`, which turns the skip into a
//! failure).

mod support;

use std::process::Command;
use support::{Server, chat_model, generate_text};

#[test]
fn official_openai_client_works() {
    let have = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("FLASHMOE_REQUIRE_OPENAI").is_none(),
            "FLASHMOE_REQUIRE_OPENAI is set but `import openai` fails"
        );
        eprintln!(
            "skipped: python3 with the `openai` package is not installed (pip install openai)"
        );
        return;
    }
    let dir = chat_model();
    let expected = generate_text(dir.path(), "The Rust programming language", 24);
    let exp_file = dir.path().join("expected.txt");
    std::fs::write(&exp_file, &expected).unwrap();
    let s = Server::start(dir.path(), &["--api-key", "sekret"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("http://127.0.0.1:{}/v1", s.port))
        .arg(&exp_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("passed, 0 failed"), "{stdout}");
}
