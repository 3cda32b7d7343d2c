//! Crash safety: kill -9 a real process in a loop while it publishes and
//! acknowledges under fsync = "always", then check what survived.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weir_queue::{ConsumerOptions, Fsync, Queue, Record, TopicConfig};

const DIR_ENV: &str = "WEIR_CRASH_CHILD_DIR";
const GEN_ENV: &str = "WEIR_CRASH_CHILD_GEN";

fn config() -> TopicConfig {
    // Small segments so crashes also land around segment rolls.
    TopicConfig { partitions: 2, fsync: Fsync::Always, segment_bytes: 64 * 1024, ..TopicConfig::default() }
}

fn payload(generation: u64, n: u64) -> String {
    format!("gen{generation}-msg{n}-{}", "z".repeat((n % 200) as usize))
}

/// The child: publish and consume forever, reporting on stdout what was
/// acknowledged (`P partition offset payload`) and committed (`C p0 p1`).
#[test]
#[ignore = "helper: run as a child process by kill_9_loop"]
fn crash_child() {
    let dir = std::env::var(DIR_ENV).expect("run by kill_9_loop");
    let generation: u64 = std::env::var(GEN_ENV).unwrap().parse().unwrap();
    let q = Queue::open(&dir).unwrap();
    q.ensure_topic("t", &config()).unwrap();
    let mut consumer = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
    let mut out = std::io::stdout().lock();
    for n in (0..).step_by(8) {
        let recs: Vec<Record> = (n..n + 8).map(|i| Record::new(payload(generation, i)).with_key(i.to_le_bytes().to_vec())).collect();
        let positions = q.publish("t", &recs).unwrap();
        for (r, (p, o)) in recs.iter().zip(positions) {
            writeln!(out, "P {p} {o} {}", String::from_utf8_lossy(&r.payload)).unwrap();
        }
        out.flush().unwrap();
        for d in consumer.fetch(5, Duration::ZERO).unwrap() {
            consumer.ack(d.id());
        }
        consumer.commit().unwrap();
        let c = consumer.committed();
        writeln!(out, "C {} {}", c[0], c[1]).unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn kill_9_loop() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<(u32, u64, String)> = Vec::new();
    let mut committed = [0u64; 2];
    let mut ever_seen: HashMap<(u32, u64), Vec<u8>> = HashMap::new();
    let rounds = 12;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for generation in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env(DIR_ENV, dir.path())
            .env(GEN_ENV, generation.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<_>>());
        // Let it work for a pseudo-random while, then SIGKILL it.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(150 + rng % 350));
        child.kill().unwrap();
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        for line in &lines {
            let mut f = line.splitn(4, ' ');
            match f.next() {
                Some("P") => {
                    let p = f.next().unwrap().parse().unwrap();
                    let o = f.next().unwrap().parse().unwrap();
                    if let Some(body) = f.next() {
                        acked.push((p, o, body.to_owned()));
                    }
                }
                Some("C") => {
                    for c in committed.iter_mut() {
                        if let Some(v) = f.next().and_then(|v| v.parse().ok()) {
                            assert!(v >= *c, "a committed offset went backwards in the child");
                            *c = v;
                        }
                    }
                }
                _ => {} // a line cut by the kill, or test-harness chatter
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30));

        // Recover and check.
        let q = Queue::open(dir.path()).unwrap();
        let mut all: HashMap<(u32, u64), Vec<u8>> = HashMap::new();
        for p in 0..2u32 {
            let recs = q.read("t", p, 0, usize::MAX).unwrap();
            for (i, r) in recs.iter().enumerate() {
                assert_eq!(r.offset, i as u64, "offsets are dense in partition {p}");
                all.insert((p, r.offset), r.payload.clone());
            }
        }
        for (p, o, body) in &acked {
            assert_eq!(all.get(&(*p, *o)).map(Vec::as_slice), Some(body.as_bytes()), "acknowledged {p}/{o} lost or changed");
        }
        for (pos, body) in &all {
            if let Some(before) = ever_seen.insert(*pos, body.clone()) {
                assert_eq!(&before, body, "offset {pos:?} now names a different payload");
            }
        }
        let c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
        for (p, (&on_disk, &reported)) in c.committed().iter().zip(&committed).enumerate() {
            assert!(on_disk >= reported, "partition {p}: committed offset went back from {reported} to {on_disk}");
        }
    }
    assert!(acked.len() > 100, "the children made progress: {} acknowledged", acked.len());
}
