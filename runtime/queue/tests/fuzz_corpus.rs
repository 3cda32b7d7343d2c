//! The fuzz targets of `fuzz/queue` (run by `scripts/fuzz`), replayed on
//! their seeds and on the corpus the fuzzer kept, including every input
//! that once found a bug: a cheap regression check on every test run.
//! `WEIR_FUZZ_SEEDS_TO=DIR` also writes the seeds to `DIR/TARGET/`, which
//! is how `scripts/fuzz` starts a corpus.

#[path = "../../../fuzz/queue/src/lib.rs"]
mod fuzz;

use std::path::Path;

#[test]
fn the_fuzz_seeds_and_corpus_run_clean() {
    let seeds = fuzz::seeds();
    for (i, (target, input)) in seeds.iter().enumerate() {
        fuzz::run(target, input);
        if let Ok(out) = std::env::var("WEIR_FUZZ_SEEDS_TO") {
            let dir = Path::new(&out).join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{i}")), input).unwrap();
        }
    }
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/queue/corpus");
    let mut replayed = 0;
    for target in ["segment", "state", "metadata", "http_body"] {
        for entry in std::fs::read_dir(corpus.join(target)).into_iter().flatten() {
            let path = entry.unwrap().path();
            fuzz::run(target, &std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    eprintln!("{} seeds and {replayed} corpus inputs ran clean", seeds.len());
}
