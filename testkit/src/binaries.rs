//! Paths of the workspace's binaries for end-to-end tests.
//!
//! Cargo only exposes `CARGO_BIN_EXE_*` for a package's own binaries, and the end-to-end tests
//! need both `logbook` and `logbook-agent`. Both are built by `cargo nextest run --workspace`
//! (the README's test command); they sit next to the test executable's `deps` directory.

use std::path::PathBuf;

/// The path of a workspace binary such as `logbook-agent`.
pub fn path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo nextest run --workspace` (or `cargo build --workspace`) first",
        path.display()
    );
    path
}
