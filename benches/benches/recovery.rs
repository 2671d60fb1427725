//! Restart time and memory per live message.
//!
//! Builds, once and outside the timed loop, a data dir holding N live 100 B messages
//! (N = `FERROMQ_BENCH_RECOVER_N`, default 1,000,000; set 10000000 for the 10M target),
//! printing the resident memory the engine gained per live message while posting them
//! (`VmRSS` and `RssAnon` from /proc/self/status, before/after). Then times
//! `Engine::open` of that directory (page cache warm; the engine is dropped untimed).
//!
//! Two ways to open, side by side in the same run:
//! - `engine_open_index`: with the restart index the clean close left (`index.idx`), so
//!   nothing is replayed (the report is checked: index loaded, 0 records replayed);
//! - `engine_open_replay`: the same directory with the index moved aside (untimed) before
//!   each open and put back after it: a full replay of the log.
//!
//! Raw baseline, same run: reading every log segment of the directory (not the zero-filled
//! spare, not the index) with `read` into a reused 1 MiB buffer — what a recovery scan has
//! to do at least — also warm.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::{Engine, EngineConfig, IndexUse, SyncPolicy};
use ferromq_benches::{fill, open_engine, proc_status_bytes, queue_key, tempdir};

fn recover_n() -> usize {
    std::env::var("FERROMQ_BENCH_RECOVER_N")
        .ok()
        .and_then(|s| s.replace('_', "").parse().ok())
        .unwrap_or(1_000_000)
}

fn dir_bytes(dir: &std::path::Path) -> (u64, Vec<std::path::PathBuf>) {
    let mut total = 0;
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let md = e.metadata().expect("metadata");
        let segment = e.file_name().to_string_lossy().ends_with(".seg");
        if md.is_file() && segment {
            total += md.len();
            files.push(e.path());
        }
    }
    (total, files)
}

fn recovery(c: &mut Criterion) {
    let n = recover_n();
    let dir = tempdir();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    {
        let (rss0, anon0) = (proc_status_bytes("VmRSS"), proc_status_bytes("RssAnon"));
        let t = Instant::now();
        let engine = open_engine(dir.path(), SyncPolicy::Never);
        rt.block_on(fill(&engine, &queue_key(), n, 1));
        let took = t.elapsed();
        let (rss1, anon1) = (proc_status_bytes("VmRSS"), proc_status_bytes("RssAnon"));
        println!(
            "recovery/rss_after_post: {n} live messages posted in {:.2} s; VmRSS +{:.1} MiB = {:.1} B/message; RssAnon +{:.1} MiB = {:.1} B/message (target <= 64 B)",
            took.as_secs_f64(),
            rss1.saturating_sub(rss0) as f64 / 1048576.0,
            rss1.saturating_sub(rss0) as f64 / n as f64,
            anon1.saturating_sub(anon0) as f64 / 1048576.0,
            anon1.saturating_sub(anon0) as f64 / n as f64,
        );
        // The index a clean close writes, written here to see what it costs: the state
        // lock is held only for the copy.
        let t = Instant::now();
        let w = engine.write_index().expect("write the restart index");
        println!(
            "recovery/index_write: {} messages, {:.1} MiB in {:.3} s; state lock held {:.1} ms for the copy",
            w.messages,
            w.bytes as f64 / 1048576.0,
            t.elapsed().as_secs_f64(),
            w.lock_held.as_secs_f64() * 1e3,
        );
        engine.close();
    }
    let (bytes, files) = dir_bytes(dir.path());
    let index = dir.path().join("index.idx");
    let aside = dir.path().join("index.idx.aside");
    println!(
        "recovery: data dir holds {} files, {:.1} MiB",
        files.len(),
        bytes as f64 / 1048576.0
    );

    {
        let (rss0, anon0) = (proc_status_bytes("VmRSS"), proc_status_bytes("RssAnon"));
        let t = Instant::now();
        let engine = Engine::open(EngineConfig::new(dir.path())).expect("reopen");
        let took = t.elapsed();
        let r = engine.recovery_report();
        assert!(
            matches!(r.index, IndexUse::Loaded { .. }) && r.records_replayed == 0,
            "the first open uses the index: {r:?}"
        );
        let (rss1, anon1) = (proc_status_bytes("VmRSS"), proc_status_bytes("RssAnon"));
        let size = rt
            .block_on(engine.queue_info(&queue_key()))
            .expect("queue info")
            .size;
        assert_eq!(size, n.div_ceil(100) as u64 * 100, "all messages recovered");
        println!(
            "recovery/rss_after_open: first open (from the index) {:.3} s; VmRSS +{:.1} B/message, RssAnon +{:.1} B/message",
            took.as_secs_f64(),
            rss1.saturating_sub(rss0) as f64 / n as f64,
            anon1.saturating_sub(anon0) as f64 / n as f64,
        );
    }

    let mut g = c.benchmark_group(format!("recovery/{n}x100B"));
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("engine_open_index", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let engine = Engine::open(EngineConfig::new(dir.path())).expect("open");
                total += t.elapsed();
                let r = engine.recovery_report();
                assert_eq!(r.records_replayed, 0, "{r:?}");
                // Dropped without `close`: nothing was appended, the index stays current.
                drop(engine);
            }
            total
        })
    });
    g.bench_function("engine_open_replay", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                std::fs::rename(&index, &aside).expect("move the index aside");
                let t = Instant::now();
                let engine = Engine::open(EngineConfig::new(dir.path())).expect("open");
                total += t.elapsed();
                assert_eq!(engine.recovery_report().index, IndexUse::Absent);
                drop(engine);
                std::fs::rename(&aside, &index).expect("put the index back");
            }
            total
        })
    });
    let mut buf = vec![0u8; 1 << 20];
    g.bench_function("raw_read_files", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for f in &files {
                let mut file = std::fs::File::open(f).expect("open log file");
                loop {
                    let n = file.read(&mut buf).expect("read");
                    if n == 0 {
                        break;
                    }
                    sum += u64::from(buf[n - 1]);
                }
            }
            sum
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config(5);
    targets = recovery
}
criterion_main!(benches);
