//! Group commit: 16 concurrent tokio tasks (multi-thread runtime, 2 workers) each posting
//! batches of 100 × 100 B with `SyncPolicy::Always`. Throughput counts messages; the
//! fsync rate (from `Engine::stats().fsyncs`) is printed as a line after the run.
//!
//! Raw baseline, same run: ideal group commit by hand — one writer writes 16 post records'
//! worth of bytes into a pre-zero-filled file and issues one `sync_data` for the lot.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::SyncPolicy;
use ferromq_benches::{
    BATCH, BODY_BYTES, RawOverwriter, fmt_rate, messages, open_engine, post_record_bytes,
    queue_key, rate, tempdir,
};

const WRITERS: usize = 16;

fn group_commit(c: &mut Criterion) {
    let rt = common::runtime();
    let mut g = c.benchmark_group("group_commit/16_writers/batch100x100B");

    let dir = tempdir();
    let engine = open_engine(dir.path(), SyncPolicy::Always);
    let key = queue_key();
    let (mut total_batches, mut total_fsyncs, mut total_time) = (0u64, 0u64, Duration::ZERO);
    let lat = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ));
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("engine", |b| {
        b.iter_custom(|iters| {
            let before = engine.stats().fsyncs;
            let elapsed = rt.block_on(async {
                let start = Instant::now();
                let mut handles = Vec::with_capacity(WRITERS);
                for w in 0..WRITERS {
                    let mine =
                        iters / WRITERS as u64 + u64::from((w as u64) < iters % WRITERS as u64);
                    let engine = engine.clone();
                    let key = key.clone();
                    let lat = lat.clone();
                    handles.push(tokio::spawn(async move {
                        let msgs = messages(BATCH, BODY_BYTES);
                        let mut h =
                            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                        for _ in 0..mine {
                            let t = Instant::now();
                            engine.post(&key, &msgs, true).await.expect("post");
                            h.saturating_record(t.elapsed().as_micros() as u64);
                        }
                        lat.lock()
                            .expect("histogram lock")
                            .add(&h)
                            .expect("merge histogram");
                    }));
                }
                for h in handles {
                    h.await.expect("writer");
                }
                start.elapsed()
            });
            total_batches += iters;
            total_fsyncs += engine.stats().fsyncs - before;
            total_time += elapsed;
            elapsed
        })
    });
    println!(
        "group_commit/engine: {} msgs/s, {} fsyncs/s, {:.1} batches per fsync ({} batches, {} fsyncs in {:.2} s)",
        fmt_rate(rate(total_batches as f64 * BATCH as f64, total_time)),
        fmt_rate(rate(total_fsyncs as f64, total_time)),
        total_batches as f64 / total_fsyncs.max(1) as f64,
        total_batches,
        total_fsyncs,
        total_time.as_secs_f64()
    );
    if let Ok(h) = lat.lock() {
        println!(
            "group_commit/engine: post latency us p50={} p99={} p999={} max={} (segment rolls: {})",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            engine.stats().segments
        );
    }
    drop(engine);
    drop(dir);

    let dir = tempdir();
    let mut raw = RawOverwriter::new(&dir.path().join("zeroed"), 64 * 1024 * 1024);
    let buf = vec![7u8; post_record_bytes(BATCH, BODY_BYTES) * WRITERS];
    g.throughput(Throughput::Elements((BATCH * WRITERS) as u64));
    g.bench_function("raw_overwrite_16batches_per_fdatasync", |b| {
        b.iter(|| {
            raw.write(&buf);
            raw.sync();
        })
    });
    drop(raw);
    drop(dir);
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config(4);
    targets = group_commit
}
criterion_main!(benches);
