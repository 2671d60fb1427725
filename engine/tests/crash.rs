//! Process-crash test (`harness = false`): the binary re-runs itself as a child that posts,
//! reserves and deletes on a real data directory, printing every acknowledged operation.
//! The parent SIGKILLs it at a random moment, reopens the engine and checks that every
//! acknowledged post is present unless its delete was acknowledged (or in flight), and that
//! no message with an acknowledged delete is present. Several rounds on the same directory.
//! The child also writes restart indexes continuously, so reopens start from whatever index
//! the kill left (or none) plus the log after it.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use engine::{Engine, EngineConfig, Error, MessageId, NewMessage, QueueKey, ReserveOptions};

const CHILD_ENV: &str = "FERROMQ_CRASH_CHILD_DIR";
const ROUNDS: usize = 10;
const WRITERS: usize = 4;

fn config(dir: &Path) -> EngineConfig {
    let mut c = EngineConfig::new(dir);
    c.segment_bytes = 2 << 20;
    c.body_bytes_max = 4096;
    c
}

fn key() -> QueueKey {
    QueueKey::new("p", "crash")
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    // The parent may be gone; nothing to do then.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Child: load until killed. `P id` = post acked, `X id` = delete sent, `D id` = delete acked.
fn child(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let e = Engine::open(config(dir)).expect("child open");
        // Restart indexes written all the time, so kills land in the middle of index
        // writes too (a torn temporary file, or one not yet renamed).
        let ix = e.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(15));
                let _ = ix.maintain();
                let _ = ix.write_index();
            }
        });
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let e = e.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                loop {
                    i += 1;
                    let msgs: Vec<_> = (0..1 + (i % 3))
                        .map(|j| NewMessage {
                            body: format!("w{w}-{i}-{j}").repeat(8).into_bytes().into(),
                            ..Default::default()
                        })
                        .collect();
                    let ids = e.post(&key(), &msgs, true).await.expect("post");
                    for id in ids {
                        say(format!("P {}", id.0));
                    }
                    let got = e
                        .reserve(
                            &key(),
                            ReserveOptions {
                                n: 2,
                                ..Default::default()
                            },
                        )
                        .await
                        .expect("reserve");
                    for m in got.iter().take(1) {
                        say(format!("X {}", m.id.0));
                        e.delete(&key(), m.id, m.reservation_id)
                            .await
                            .expect("delete");
                        say(format!("D {}", m.id.0));
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn random_ms(lo: u64, hi: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom_fill(&mut b);
    lo + u64::from_le_bytes(b) % (hi - lo + 1)
}

fn getrandom_fill(b: &mut [u8]) {
    // Good enough for a kill time: the clock's nanoseconds, mixed.
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let x = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (std::process::id() as u64);
    b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
}

#[derive(Default)]
struct Acked {
    posted: BTreeSet<u64>,
    in_flight: BTreeSet<u64>,
    deleted: BTreeSet<u64>,
}

/// One round: run the child, kill it, check the directory. Returns an error message.
fn round(dir: &Path, acked: &mut Acked) -> Result<(usize, usize, String), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(random_ms(50, 400)));
    child.kill().map_err(|e| e.to_string())?; // SIGKILL
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        let Some((op, id)) = line.split_once(' ') else {
            continue;
        };
        // The last line may be cut by the kill.
        let Ok(id) = id.parse::<u64>() else { continue };
        lines += 1;
        match op {
            "P" => {
                acked.posted.insert(id);
            }
            "X" => {
                acked.in_flight.insert(id);
            }
            "D" => {
                acked.deleted.insert(id);
            }
            _ => {}
        }
    }
    child.wait().map_err(|e| e.to_string())?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let checked = rt.block_on(async {
        let e = Engine::open(config(dir)).map_err(|e| format!("reopen: {e}"))?;
        e.check_invariants();
        let r = e.recovery_report();
        let opened = format!(
            "index {:?}, {} records replayed",
            r.index, r.records_replayed
        );
        let mut checked = 0;
        for &id in &acked.posted {
            let got = e.get(&key(), MessageId(id)).await;
            let gone = matches!(got, Err(Error::MessageNotFound));
            if let Err(err) = &got
                && !gone
            {
                return Err(format!("get {id}: {err}"));
            }
            if acked.deleted.contains(&id) {
                if !gone {
                    return Err(format!(
                        "message {id} is back after its delete was acknowledged"
                    ));
                }
            } else if gone && !acked.in_flight.contains(&id) {
                return Err(format!("acknowledged message {id} is lost"));
            }
            checked += 1;
        }
        // The delete of an in-flight message either happened or not; settle it now so the
        // next round starts from known state.
        for &id in &acked.in_flight {
            if !acked.deleted.contains(&id)
                && matches!(
                    e.get(&key(), MessageId(id)).await,
                    Err(Error::MessageNotFound)
                )
            {
                acked.deleted.insert(id);
            }
        }
        acked.in_flight.clear();
        e.close();
        Ok::<_, String>((checked, opened))
    })?;
    Ok((lines, checked.0, checked.1))
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    // `cargo test -- --list` and filters: this binary has a single test.
    if std::env::args().any(|a| a == "--list") {
        println!("crash: test");
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked = Acked::default();
    let (mut passed, mut failed) = (0, 0);
    for r in 0..ROUNDS {
        match round(dir.path(), &mut acked) {
            Ok((lines, checked, opened)) => {
                passed += 1;
                println!(
                    "crash round {r}: ok ({lines} acked ops read, {checked} messages checked; {opened})"
                );
            }
            Err(e) => {
                failed += 1;
                println!("crash round {r}: FAILED: {e}");
            }
        }
    }
    let total_acked = acked.posted.len();
    println!(
        "crash: {total_acked} acknowledged posts over {ROUNDS} kills in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    println!("crash: {passed} passed, {failed} failed");
    if failed > 0 || total_acked == 0 {
        std::process::exit(1);
    }
}
