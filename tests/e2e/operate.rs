//! Operating a pipeline: replay from a point with a new group, redrive
//! dead letters, upgrade a stage while it runs.

use std::time::Duration;

use crate::{Weir, pipeline_file};

/// Pipeline `ops`: topic `in` → uppercase → the file `OUT`.
fn uppercase_to(dir: &std::path::Path, out: &str) -> std::path::PathBuf {
    pipeline_file(
        dir,
        &format!("{out}.toml"),
        &format!(
            "[pipeline]\nname = \"ops\"\n[source]\ntype = \"queue\"\ntopic = \"in\"\n\
             [[stage]]\nname = \"up\"\nmodule = \"{{component:uppercase}}\"\n\
             [[sink]]\ntype = \"file\"\npath = \"{out}\"\n"
        ),
    )
}

#[test]
fn a_new_group_replays_from_a_time_into_exactly_the_later_outputs() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let before: Vec<String> = (0..50).map(|i| format!("before-{i}")).collect();
    let after: Vec<String> = (0..50).map(|i| format!("after-{i}")).collect();
    weir.produce("in", &before.iter().map(String::as_str).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_millis(1100));
    let from = jiff::Timestamp::now();
    std::thread::sleep(Duration::from_millis(1100));
    weir.produce("in", &after.iter().map(String::as_str).collect::<Vec<_>>());

    // The pipeline's own group processes everything.
    let main = uppercase_to(dir.path(), "main.txt");
    weir.ok(&["run", main.to_str().unwrap(), "--drain"], b"");
    assert_eq!(std::fs::read_to_string(dir.path().join("main.txt")).unwrap().lines().count(), 100);

    // A new group from the time between the two batches: the later batch only.
    let replay = uppercase_to(dir.path(), "replay.txt");
    let from = from.to_string();
    weir.ok(&["run", replay.to_str().unwrap(), "--drain", "--group", "replay", "--from", &from], b"");
    let replayed = std::fs::read_to_string(dir.path().join("replay.txt")).unwrap();
    let want: Vec<String> = after.iter().map(|s| s.to_uppercase()).collect();
    assert_eq!(replayed.lines().collect::<Vec<_>>(), want, "exactly the messages from {from} on");

    // The pipeline's group was not moved: run again, nothing more.
    weir.ok(&["run", main.to_str().unwrap(), "--drain"], b"");
    assert_eq!(std::fs::read_to_string(dir.path().join("main.txt")).unwrap().lines().count(), 100);
    // An existing group resumes where it was, whatever --from says.
    weir.ok(&["run", replay.to_str().unwrap(), "--drain", "--group", "replay", "--from", "beginning"], b"");
    assert_eq!(std::fs::read_to_string(dir.path().join("replay.txt")).unwrap().lines().count(), 50);
    // From an offset, and from the beginning, with other new groups.
    let offset = uppercase_to(dir.path(), "offset.txt");
    weir.ok(&["run", offset.to_str().unwrap(), "--drain", "--group", "at-90", "--from", "90"], b"");
    assert_eq!(std::fs::read_to_string(dir.path().join("offset.txt")).unwrap().lines().next(), Some("AFTER-40"));
    let err = weir.fails(&["run", offset.to_str().unwrap(), "--group", "x", "--from", "yesterday"], b"");
    assert!(err.contains("--from \"yesterday\": give `beginning`, `end`, a time"), "{err}");
}
