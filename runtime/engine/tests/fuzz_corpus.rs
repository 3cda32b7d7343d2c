//! The fuzz targets of `fuzz/engine` (run by `scripts/fuzz`), replayed on
//! their seeds and on the corpus the fuzzer kept, including every input
//! that once found a bug. `WEIR_FUZZ_SEEDS_TO=DIR` also writes the seeds
//! to `DIR/TARGET/`, which is how `scripts/fuzz` starts a corpus.

#[path = "../../../fuzz/engine/src/lib.rs"]
mod fuzz;

use std::path::Path;

#[test]
fn the_fuzz_seeds_and_corpus_run_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let seeds = fuzz::seeds(&root.join("examples/pipelines"));
    for (i, (target, input)) in seeds.iter().enumerate() {
        fuzz::run(target, input);
        if let Ok(out) = std::env::var("WEIR_FUZZ_SEEDS_TO") {
            let dir = Path::new(&out).join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{i}")), input).unwrap();
        }
    }
    let mut replayed = 0;
    for target in ["pipeline_toml"] {
        for entry in std::fs::read_dir(root.join("fuzz/engine/corpus").join(target)).into_iter().flatten() {
            let path = entry.unwrap().path();
            fuzz::run(target, &std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    eprintln!("{} seeds and {replayed} corpus inputs ran clean", seeds.len());
}
