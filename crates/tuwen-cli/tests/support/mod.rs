//! What the CLI tests share: running the binary offline, and reading how it ended.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `tuwen` with `args`, offline.
pub fn tuwen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tuwen"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("binary runs")
}

/// Its standard output, after checking that it succeeded (else its standard error is shown).
pub fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Checks that it failed with one line on standard error that contains `needle`.
pub fn fails(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "succeeded; stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

/// A fresh, empty folder in the temporary folder, named after the test file and `name`.
pub fn scratch(file: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tuwen-{file}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
