//! Helpers for weir's tests: where the `weir` binary and the example
//! components are, building them when they are missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The shared target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from)
}

/// Path of the example component `name` (e.g. `uppercase`), building the
/// examples workspace for `wasm32-wasip2` once per test process if it is missing.
/// The README's test command builds them before the tests run.
///
/// `NAME-py`, `NAME-js` and `NAME-ts` are the Python, JavaScript and
/// TypeScript examples (`examples/consumers-{py,js,ts}/NAME`), built with
/// `weir build` (through cargo run) when missing.
pub fn component(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let path = target_dir().join("wasm32-wasip2/release").join(format!("{name}.wasm"));
    let other = ["py", "js", "ts"].into_iter().find_map(|lang| Some((lang, name.strip_suffix(&format!("-{lang}"))?)));
    if let Some((lang, stem)) = other {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_build_at_a_time = LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !path.exists() {
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["run", "--quiet", "-p", "weir-cli", "--", "build"])
                .arg(repo_root().join(format!("examples/consumers-{lang}")).join(stem))
                .arg("--out")
                .arg(&path)
                .current_dir(repo_root())
                .status()
                .expect("run weir build");
            assert!(status.success(), "building the example {name} failed");
        }
    } else if !path.exists() {
        BUILT.get_or_init(|| {
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
                .arg(repo_root().join("examples/Cargo.toml"))
                .arg("--target-dir")
                .arg(target_dir())
                .status()
                .expect("run cargo to build the example components");
            assert!(status.success(), "building the example components failed");
        });
    }
    assert!(path.exists(), "no component at {} (is `{name}` an example?)", path.display());
    path
}
