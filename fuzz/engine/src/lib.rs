//! What weir-engine's fuzz targets run: the pipeline-file compiler and the
//! HTTP publish body decoder, on arbitrary bytes. Errors are expected; a
//! panic, a hang or an unbounded allocation is a finding. Shared by the
//! cargo-fuzz targets and by the corpus replay in
//! `runtime/engine/tests/fuzz_corpus.rs`.

use std::path::Path;

/// Compile a pipeline file; its errors must render.
pub fn pipeline_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(errors) = weir_engine::config::compile(Path::new("fuzz.toml"), text) {
        assert!(!errors.to_string().is_empty(), "an error says what is wrong");
    }
}

/// Decode a publish body. The first byte picks the content type; what
/// decodes must be records the queue can be asked to store.
pub fn http_body(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else { return };
    let content_type = ["application/json", "application/x-ndjson", "application/octet-stream"][mode as usize % 3];
    let headers = [("weir-key", &b"k"[..]), ("weir-header-h", &b"v"[..])];
    if let Ok(records) = weir_engine::records_from_body(content_type, headers, body) {
        for r in records {
            let _ = r.validate();
        }
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
    let bodies: [(u8, &str); 4] = [
        (0, r#"{"payload": "hello", "key": "k", "headers": {"h": [1, 2, 255]}, "timestamp_ms": 7, "id": "x"}"#),
        (0, r#"[{"payload": [104, 105]}, {"payload": "two", "key": null}]"#),
        (1, "{\"payload\": \"a\"}\n\n{\"payload\": \"b\", \"id\": \"2\"}\n"),
        (2, "raw bytes"),
    ];
    for (mode, body) in bodies {
        seeds.push(("http_body", [&[mode][..], body.as_bytes()].concat()));
    }
    seeds
}

/// Run `target` on `input`.
pub fn run(target: &str, input: &[u8]) {
    match target {
        "pipeline_toml" => pipeline_toml(input),
        "http_body" => http_body(input),
        other => panic!("no fuzz target {other}"),
    }
}
