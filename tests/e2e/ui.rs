//! Golden tests: `weir validate` on each file in tests/ui/invalid must print
//! exactly the neighbouring `.err` file. Refresh with `BLESS=1`.

use crate::{Weir, repo_root};

#[test]
fn invalid_pipelines_report_expected_errors() {
    let dir = repo_root().join("tests/ui/invalid");
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    let mut count = 0;
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for toml in files.iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
        count += 1;
        let name = toml.file_name().unwrap().to_str().unwrap();
        let out = std::process::Command::new(Weir::bin()).args(["validate", name]).current_dir(&dir).output().unwrap();
        assert!(!out.status.success(), "{name} was accepted");
        let got = String::from_utf8(out.stderr).unwrap();
        let expected_path = toml.with_extension("err");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != want {
            failures.push(format!("--- {name}: expected\n{want}--- got\n{got}"));
        }
    }
    assert!(count >= 5, "golden files missing from {}", dir.display());
    assert!(failures.is_empty(), "golden mismatch (BLESS=1 to refresh):\n{}", failures.join("\n"));
}

#[test]
fn every_example_pipeline_validates() {
    let dir = repo_root().join("examples/pipelines");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let out = std::process::Command::new(Weir::bin()).arg("validate").arg(&path).output().unwrap();
        assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn every_complete_example_in_the_reference_validates() {
    let dir = repo_root().join("docs");
    let text = std::fs::read_to_string(dir.join("pipeline.md")).unwrap();
    let blocks: Vec<&str> =
        text.split("```toml\n").skip(1).map(|b| b.split("```").next().unwrap()).filter(|b| b.contains("[pipeline]")).collect();
    assert!(blocks.len() >= 2, "examples missing from docs/pipeline.md");
    let tmp = tempfile::tempdir().unwrap();
    for (i, block) in blocks.iter().enumerate() {
        // Written next to the reference, so its relative paths resolve the same.
        let path = dir.join(format!(".validate-{}-{i}.toml", std::process::id()));
        std::fs::write(&path, block).unwrap();
        let out = std::process::Command::new(Weir::bin()).arg("validate").arg(&path).env("WEIR_DATA_DIR", tmp.path()).output().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(out.status.success(), "docs/pipeline.md example {i}:\n{}", String::from_utf8_lossy(&out.stderr));
    }
}
