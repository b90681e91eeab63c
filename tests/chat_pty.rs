//! `flashmoe chat` in a pseudo-terminal (tests/chat_pty.py, python's `pty`): streamed answers,
//! Ctrl-C stops an answer without leaving, /stats shows the reused context, /reset, /quit.
//! Skips with a printed reason when python3 is missing.

mod support;

use std::process::Command;

#[test]
fn chat_repl_through_a_pseudo_terminal() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipped: python3 is not installed (the pty driver is a python script)");
        return;
    }
    let dir = support::chat_model();
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chat_pty.py"))
        .arg(env!("CARGO_BIN_EXE_flashmoe"))
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("passed, 0 failed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn chat_without_a_template_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_flashmoe"))
        .arg("chat")
        .arg("--model")
        .arg(support::default_model())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no chat template"), "{err}");
}
