//! `weir new` and `weir build`: a freshly generated stage project builds,
//! passes its own unit tests, runs its pipeline and passes the pipeline's
//! `weir test`, in every language and template, as its README says.

use std::process::Command;

use crate::{Weir, repo_root};

const INPUT: &[u8] = b"hello\na debug line\nhello\n";

fn expected(template: &str) -> &'static str {
    match template {
        "map" => "HELLO\nA DEBUG LINE\nHELLO\n",
        "filter" => "hello\nhello\n",
        "count" => "hello=1\na debug line=1\nhello=2\n",
        _ => unreachable!(),
    }
}

fn succeeds(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{what} failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

fn new_build_test_run(lang: &str) {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().to_str().unwrap();
    for template in ["map", "filter", "count"] {
        let name = format!("{lang}-{template}");
        let created = weir.ok(&["new", &name, "--lang", lang, "--template", template, "--dir", parent], b"");
        assert!(created.contains("README.md"), "{created}");
        let project = dir.path().join(&name);
        let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
        assert!(readme.contains("weir build") && readme.contains("weir run pipeline.toml --drain"), "{readme}");

        // Rust projects share one target folder, so the SDK's dependencies build once.
        let built = weir
            .cmd(&["build", project.to_str().unwrap()])
            .env("CARGO_TARGET_DIR", repo_root().join("target/new-projects"))
            .output()
            .unwrap();
        assert!(built.status.success(), "weir build {name}: {}", String::from_utf8_lossy(&built.stderr));
        let stdout = String::from_utf8(built.stdout).unwrap();
        let shown = match lang {
            "rust" => "Rust",
            "python" => "Python",
            _ => "JavaScript",
        };
        assert!(stdout.contains(".wasm (") && stdout.contains(&format!("MB, {shown})")), "{stdout}");

        // Its own unit tests, as the README says, natively.
        if lang == "rust" {
            succeeds(
                Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                    .args(["test", "--quiet"])
                    .current_dir(&project)
                    .env("CARGO_TARGET_DIR", repo_root().join("target/new-projects")),
                "cargo test",
            );
        } else if lang == "js" {
            succeeds(Command::new("node").arg("--test").current_dir(&project), "node --test");
        } else {
            let python = repo_root().join("target/venv-pytest/bin/python");
            assert!(python.exists(), "no {}: scripts/test installs pytest there", python.display());
            succeeds(Command::new(python).args(["-m", "pytest", "-q", "-p", "no:cacheprovider"]).current_dir(&project), "pytest");
        }

        let pipeline = project.join("pipeline.toml");
        let mut toml = std::fs::read_to_string(&pipeline).unwrap();
        if lang == "rust" {
            // Where the shared target folder put the component.
            let shared = repo_root().join("target/new-projects/wasm32-wasip2/release");
            toml = toml.replace("target/wasm32-wasip2/release", shared.to_str().unwrap());
            std::fs::write(&pipeline, toml).unwrap();
        }
        assert_eq!(weir.ok(&["run", pipeline.to_str().unwrap(), "--drain"], INPUT), expected(template), "{name}");
        // The pipeline's own test, from the project folder, as the README says.
        assert!(readme.contains("weir test pipeline.toml --input test/input.txt --expect test/expected.txt"), "{readme}");
        let mut cmd = weir.cmd(&["test", "pipeline.toml", "--input", "test/input.txt", "--expect", "test/expected.txt"]);
        cmd.current_dir(&project);
        let tested = Weir::output_of(cmd, b"");
        let stdout = String::from_utf8_lossy(&tested.stdout);
        let ok = format!("ok    outputs: {} as expected", expected(template).lines().count());
        assert!(tested.status.success() && stdout.contains(&ok), "weir test {name}: {stdout}");
    }
    let again = weir.fails(&["new", &format!("{lang}-map"), "--lang", lang, "--dir", parent], b"");
    assert!(again.contains("already exists"), "{again}");
}

#[test]
fn new_rust_projects_build_test_and_run() {
    new_build_test_run("rust");
}

#[test]
fn new_python_projects_build_test_and_run() {
    new_build_test_run("python");
}

#[test]
fn new_javascript_projects_build_test_and_run() {
    new_build_test_run("js");
}

/// A stage in TypeScript (`stage.ts`, typed by the SDK's .d.ts files)
/// builds with `weir build` and keeps exact counts in state through a pipeline.
#[test]
fn a_typescript_stage_builds_and_counts() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("count.wasm");
    let built = weir.ok(&["build", repo_root().join("examples/consumers-ts/count").to_str().unwrap(), "--out", out.to_str().unwrap()], b"");
    assert!(built.contains("MB, TypeScript)"), "{built}");
    let toml = format!(
        "[pipeline]\nname = \"ts\"\n[source]\ntype = \"stdin\"\n[[stage]]\nname = \"count\"\nmodule = {:?}\n\
         [stage.config]\nretry_every = \"2\"\n[[sink]]\ntype = \"stdout\"\n",
        out.to_str().unwrap()
    );
    let p = crate::pipeline_file(dir.path(), "ts.toml", &toml);
    // The second `a` is retried once (retry_every), its first write discarded.
    assert_eq!(weir.ok(&["run", p.to_str().unwrap(), "--drain"], b"a\nb\na\nc\n"), "a=1\nb=1\nc=1\na=2\n");
}

#[test]
fn new_and_build_refuse_what_they_cannot_make() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let err = weir.fails(&["new", "Bad Name", "--dir", dir.path().to_str().unwrap()], b"");
    assert!(err.contains("project name `Bad Name`: use up to 64 lower-case letters, digits, `-` and `_`, starting with a letter"), "{err}");
    let err = weir.fails(&["build", dir.path().to_str().unwrap()], b"");
    assert!(
        err.contains(
            "is not a stage project: it has no Cargo.toml (Rust), stage.py (Python), stage.js (JavaScript) or stage.ts (TypeScript)"
        ),
        "{err}"
    );
}

/// componentize-py's runtime leaks a little per call and StarlingMonkey's
/// collector lets its heap grow past 64 MiB: 400,000 messages through each
/// language's uppercase with the default `max_memory_bytes` fail no call,
/// because weir recycles an instance whose memory passes 3/4 of its limit
/// (without that, each instance ran out every ~200,000 to ~300,000
/// messages, and a batch was dead-lettered with kind `memory`).
#[test]
fn python_and_javascript_stages_run_long_within_the_default_memory_limit() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    for lang in ["py", "js"] {
        let p = crate::pipeline_file(
            dir.path(),
            &format!("{lang}.toml"),
            &format!(
                "[pipeline]\nname = \"long-{lang}\"\n[source]\ntype = \"generator\"\ncount = 400000\n\
                 [[stage]]\nname = \"up\"\nmodule = \"{{component:uppercase-{lang}}}\"\n[[sink]]\ntype = \"file\"\npath = \"/dev/null\"\n"
            ),
        );
        let report = dir.path().join(format!("{lang}.json"));
        let out = weir.output(&["run", p.to_str().unwrap(), "--drain", "--report", report.to_str().unwrap()], b"");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{lang}: {err}");
        assert!(err.contains("weir: 400000 in, 400000 out, 0 dead-lettered"), "{lang}: {err}");
        assert!(!err.contains("replacing the instance"), "{lang}: a call failed: {err}");
        let stage = &crate::read_json(&report)["stages"][0];
        assert_eq!((stage["retried"].as_u64(), stage["dead_lettered"].as_u64()), (Some(0), Some(0)), "{lang}: {stage}");
        assert!(stage["instances_recycled"].as_u64().unwrap() >= 1, "{lang}: its instance was recycled: {stage}");
        assert_eq!(stage["instances_replaced"], 0, "{lang}: no call failed: {stage}");
    }
}
