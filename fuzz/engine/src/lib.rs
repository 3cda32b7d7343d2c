//! What weir-engine's fuzz target runs: the pipeline-file compiler, on
//! arbitrary bytes. Errors are expected; a panic, a hang or an unbounded
//! allocation is a finding. Shared by the cargo-fuzz target and by the
//! corpus replay in `runtime/engine/tests/fuzz_corpus.rs`.

use std::path::Path;

/// Compile a pipeline file; its errors must render.
pub fn pipeline_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(errors) = weir_engine::config::compile(Path::new("fuzz.toml"), text) {
        assert!(!errors.to_string().is_empty(), "an error says what is wrong");
    }
}

/// Seed inputs: (target, input) pairs. The pipeline files are the
/// examples' (`examples_dir`: the repository's `examples/pipelines`).
pub fn seeds(examples_dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(examples_dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for file in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
        seeds.push(("pipeline_toml", std::fs::read(file).unwrap()));
    }
    seeds
}

/// Run `target` on `input`.
pub fn run(target: &str, input: &[u8]) {
    match target {
        "pipeline_toml" => pipeline_toml(input),
        other => panic!("no fuzz target {other}"),
    }
}
