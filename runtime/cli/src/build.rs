//! `weir build [DIR]`: build a stage project into a `weir:pipeline/stage`
//! component, whatever its language, installing the toolchain it needs into
//! weir's cache folder the first time.
//!
//! A project is Rust if it has `Cargo.toml` (built with cargo for
//! `wasm32-wasip2`), Python if it has `stage.py` (built with
//! componentize-py), JavaScript if it has `stage.js` or TypeScript if it has
//! `stage.ts` (bundled with rolldown, which strips the types, then built with
//! componentize-js). The SDKs and the WIT contract are carried
//! inside the `weir` binary and written to the cache, so a project needs
//! nothing but its own files.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

/// The componentize-py release weir builds Python stages with.
const COMPONENTIZE_PY: &str = "0.25.1";
/// The componentize-js and rolldown releases weir builds JavaScript stages with.
const COMPONENTIZE_JS: &str = "0.23.0";
const ROLLDOWN: &str = "1.3.3";

#[derive(clap::Args)]
pub(crate) struct BuildArgs {
    /// The stage project: a folder with `Cargo.toml` (Rust), `stage.py`
    /// (Python), `stage.js` (JavaScript) or `stage.ts` (TypeScript)
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Where to write the component [default: Rust: cargo's
    /// target/wasm32-wasip2/release/NAME.wasm; Python and JavaScript:
    /// DIR/build/NAME.wasm, NAME the folder's name]
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// A stage project's language, from the files in its folder (or, for
/// `weir new`, `--lang`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Lang {
    Rust,
    Python,
    #[value(name = "js")]
    JavaScript,
}

impl Lang {
    pub(crate) fn of(dir: &Path) -> anyhow::Result<Lang> {
        ensure!(dir.is_dir(), "{} is not a folder", dir.display());
        if dir.join("Cargo.toml").is_file() {
            Ok(Lang::Rust)
        } else if dir.join("stage.py").is_file() {
            Ok(Lang::Python)
        } else if dir.join("stage.js").is_file() || dir.join("stage.ts").is_file() {
            Ok(Lang::JavaScript)
        } else {
            bail!(
                "{} is not a stage project: it has no Cargo.toml (Rust), stage.py (Python), stage.js (JavaScript) or stage.ts (TypeScript)",
                dir.display()
            )
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::JavaScript => "JavaScript",
        }
    }
}

pub(crate) fn build(args: BuildArgs) -> anyhow::Result<()> {
    let dir = args.dir.canonicalize().with_context(|| format!("{}", args.dir.display()))?;
    let lang = Lang::of(&dir)?;
    let out = match lang {
        Lang::Rust => build_rust(&dir, args.out.as_deref())?,
        Lang::Python => build_python(&dir, args.out.as_deref())?,
        Lang::JavaScript => build_js(&dir, args.out.as_deref())?,
    };
    let size = std::fs::metadata(&out).with_context(|| format!("{}", out.display()))?.len();
    let name = if lang == Lang::JavaScript && dir.join("stage.ts").is_file() { "TypeScript" } else { lang.name() };
    println!("{} ({:.1} MB, {name})", out.display(), size as f64 / 1e6);
    Ok(())
}

/// `cargo build --release --target wasm32-wasip2` in `dir`; the component
/// is the `.wasm` artifact cargo reports (copied to `out` if given).
fn build_rust(dir: &Path, out: Option<&Path>) -> anyhow::Result<PathBuf> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    if installed.is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).lines().any(|l| l == "wasm32-wasip2")) {
        progress("installing the wasm32-wasip2 target (rustup target add wasm32-wasip2)");
        run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]), "rustup")?;
    }
    progress(&format!("building {} (cargo build --release --target wasm32-wasip2)", dir.display()));
    let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-wasip2", "--message-format=json-render-diagnostics"])
        .current_dir(dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo (is Rust installed? https://rustup.rs)")?;
    ensure!(output.status.success(), "cargo build failed ({})", output.status);
    let built = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .rfind(|f| f.extension().is_some_and(|e| e == "wasm"))
        .context("cargo built no .wasm file: is the crate a `cdylib` (crate-type = [\"cdylib\"])?")?;
    match out {
        Some(out) => {
            copy(&built, out)?;
            Ok(out.to_owned())
        }
        None => Ok(built),
    }
}

/// `out`, else `DIR/build/NAME.wasm`, its folder created.
fn out_path(dir: &Path, out: Option<&Path>) -> anyhow::Result<PathBuf> {
    let name = dir.file_name().map_or_else(|| "stage".into(), |n| n.to_string_lossy().into_owned());
    let out = out.map_or_else(|| dir.join("build").join(format!("{name}.wasm")), Path::to_owned);
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(out)
}

/// componentize-py over the project and the SDK, against the WIT contract.
fn build_python(dir: &Path, out: Option<&Path>) -> anyhow::Result<PathBuf> {
    let out = out_path(dir, out)?;
    let tool = componentize_py()?;
    let sdk = sdk::unpack()?;
    progress(&format!("building {} (componentize-py {COMPONENTIZE_PY})", dir.display()));
    run(
        Command::new(tool)
            .arg("-d")
            .arg(sdk.join("wit/weir.wit"))
            .args(["-w", "stage", "componentize", "weir_app", "-p"])
            .arg(dir)
            .arg("-p")
            .arg(sdk.join("python"))
            .arg("-o")
            .arg(&out),
        "componentize-py",
    )?;
    Ok(out)
}

/// The SDK's build.mjs (rolldown, then componentize-js), run by node from
/// the toolchain folder so that its imports resolve there.
fn build_js(dir: &Path, out: Option<&Path>) -> anyhow::Result<PathBuf> {
    let out = out_path(dir, out)?;
    let toolchain = componentize_js()?;
    let sdk = sdk::unpack()?;
    let script = toolchain.join("build.mjs");
    write_if_changed(&script, include_str!("../../../sdk/js/build.mjs"))?;
    progress(&format!("building {} (componentize-js {COMPONENTIZE_JS})", dir.display()));
    run(
        Command::new("node").arg(&script).arg(dir).arg(sdk.join("js")).arg(sdk.join("wit/weir.wit")).arg(&out),
        "node build.mjs (componentize-js)",
    )?;
    Ok(out)
}

/// A folder with componentize-js and rolldown in its node_modules,
/// installed with npm into the cache folder on first use.
fn componentize_js() -> anyhow::Result<PathBuf> {
    let root = cache_dir()?.join(format!("toolchains/componentize-js-{COMPONENTIZE_JS}"));
    install_once(&root, &format!("componentize-js {COMPONENTIZE_JS} and rolldown {ROLLDOWN}"), || {
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        std::fs::write(root.join("package.json"), "{\"private\": true, \"type\": \"module\"}\n")?;
        run(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                .arg(format!("@bytecodealliance/componentize-js@{COMPONENTIZE_JS}"))
                .arg(format!("rolldown@{ROLLDOWN}"))
                .current_dir(&root),
            "npm install componentize-js (is Node.js 20 or later with npm installed?)",
        )
    })?;
    Ok(root)
}

/// The componentize-py program, installed into a venv in the cache folder
/// on first use (then reused).
fn componentize_py() -> anyhow::Result<PathBuf> {
    let venv = cache_dir()?.join(format!("toolchains/componentize-py-{COMPONENTIZE_PY}"));
    let tool = venv.join("bin/componentize-py");
    install_once(&venv, &format!("componentize-py {COMPONENTIZE_PY}"), || {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv (is python3 with venv installed?)")?;
        run(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .arg(format!("componentize-py=={COMPONENTIZE_PY}")),
            "pip install componentize-py",
        )?;
        ensure!(tool.is_file(), "componentize-py was installed but {} is missing", tool.display());
        Ok(())
    })?;
    Ok(tool)
}

/// Run `install` into the empty folder `root` unless an earlier run
/// finished there: a marker written last, so an interrupted install is
/// never taken for a finished one (the folder is emptied and it runs again).
fn install_once(root: &Path, what: &str, install: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let done = root.join("weir-installed");
    if done.is_file() {
        return Ok(());
    }
    progress(&format!("installing {what} into {} (once)", root.display()));
    let _ = std::fs::remove_dir_all(root);
    install()?;
    std::fs::write(&done, what).with_context(|| format!("writing {}", done.display()))
}

/// weir's cache folder (see [`weir_host::cache_root`]).
pub(crate) fn cache_dir() -> anyhow::Result<PathBuf> {
    weir_host::cache_root().context("no cache folder: set WEIR_CACHE_DIR (or HOME)")
}

fn progress(what: &str) {
    eprintln!("==> {what}");
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    ensure!(status.success(), "{what} failed ({status})");
    Ok(())
}

/// Write `text` to `file` unless it holds it already; written aside and
/// renamed, since another weir (a parallel build) may be reading it.
fn write_if_changed(file: &Path, text: &str) -> anyhow::Result<()> {
    if std::fs::read(file).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(());
    }
    let parent = file.parent().expect("a file in a folder");
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(parent).with_context(|| format!("writing in {}", parent.display()))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes()).with_context(|| format!("writing {}", file.display()))?;
    tmp.persist(file).with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// The SDK sources and the WIT contract, as this binary was built with.
pub(crate) mod sdk {
    use std::path::PathBuf;

    /// (path under the unpacked folder, contents). The Rust SDK's
    /// `wit_bindgen::generate!` reads `../wit`: `wit/` beside `rust/`.
    const FILES: &[(&str, &str)] = &[
        ("wit/weir.wit", include_str!("../../../wit/weir.wit")),
        ("python/weir/__init__.py", include_str!("../../../sdk/python/weir/__init__.py")),
        ("python/weir/testing.py", include_str!("../../../sdk/python/weir/testing.py")),
        ("python/weir/_component.py", include_str!("../../../sdk/python/weir/_component.py")),
        ("python/weir_app.py", include_str!("../../../sdk/python/weir_app.py")),
        ("js/package.json", include_str!("../../../sdk/js/package.json")),
        ("js/weir.js", include_str!("../../../sdk/js/weir.js")),
        ("js/testing.js", include_str!("../../../sdk/js/testing.js")),
        ("js/weir.d.ts", include_str!("../../../sdk/js/weir.d.ts")),
        ("js/testing.d.ts", include_str!("../../../sdk/js/testing.d.ts")),
        ("js/component.js", include_str!("../../../sdk/js/component.js")),
        ("rust/src/lib.rs", include_str!("../../../sdk/src/lib.rs")),
        ("rust/src/host.rs", include_str!("../../../sdk/src/host.rs")),
        ("rust/src/testing.rs", include_str!("../../../sdk/src/testing.rs")),
        ("rust/src/types.rs", include_str!("../../../sdk/src/types.rs")),
        ("rust/src/windows.rs", include_str!("../../../sdk/src/windows.rs")),
        ("rust/src/__private/packed.rs", include_str!("../../../sdk/src/__private/packed.rs")),
    ];

    /// The Rust SDK's manifest outside weir's workspace (what sdk/Cargo.toml
    /// inherits from it, spelled out).
    fn rust_manifest() -> String {
        format!(
            "[package]\nname = \"weir-sdk\"\nversion = \"{}\"\nedition = \"2024\"\n\n[dependencies]\n\
             wit-bindgen = {{ version = \"0.61\", default-features = false, features = [\"macros\", \"realloc\"] }}\n",
            env!("CARGO_PKG_VERSION")
        )
    }

    /// Write the files into `CACHE/sdk/VERSION/` (where missing or
    /// different) and return that folder.
    pub(crate) fn unpack() -> anyhow::Result<PathBuf> {
        let root = super::cache_dir()?.join("sdk").join(env!("CARGO_PKG_VERSION"));
        let manifest = rust_manifest();
        for (path, text) in FILES.iter().copied().chain([("rust/Cargo.toml", manifest.as_str())]) {
            super::write_if_changed(&root.join(path), text)?;
        }
        Ok(root)
    }
}
