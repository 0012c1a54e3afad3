//! The generated code under `src/gen` is checked in so that ordinary builds need no `protoc`.
//! This test regenerates it from the `.proto` files and fails if the result differs, so the two
//! can never drift apart. After editing a `.proto` file, run this test once with
//! `LOGBOOK_BLESS=1` to write the new code, then review and commit it.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

#[test]
fn generated_code_is_up_to_date() {
    let root = root();
    let out = tempfile_dir();
    let mut config = prost_build::Config::new();
    config
        .out_dir(&out)
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".", "#[serde(default)]")
        .compile_protos(
            &[root.join("proto/logbook/agent/v1/agent.proto")],
            &[root.join("proto")],
        )
        .unwrap_or_else(|e| {
            panic!("protoc failed ({e}); install it with `apt-get install protobuf-compiler`")
        });

    let mut stale = Vec::new();
    for entry in std::fs::read_dir(&out).expect("read generated dir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().expect("file name").to_owned();
        let fresh = std::fs::read_to_string(&path).expect("read generated");
        let checked_in = root.join("src/gen").join(&name);
        if std::fs::read_to_string(&checked_in).ok().as_deref() != Some(fresh.as_str()) {
            if std::env::var_os("LOGBOOK_BLESS").is_some() {
                std::fs::write(&checked_in, &fresh).expect("write generated");
            } else {
                stale.push(checked_in.display().to_string());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        stale.is_empty(),
        "generated code is stale: {stale:?}; rerun with LOGBOOK_BLESS=1 and commit the result"
    );
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("logbook-proto-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}
