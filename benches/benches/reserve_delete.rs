//! Consume cycle: `reserve(n = 100, timeout 60 s)` then `delete_batch` of the 100
//! (id, reservation id) pairs, on a queue kept at ≥ 1M messages of 100 B (refilled outside
//! the timed sections). Throughput counts consumed messages.
//!
//! * `nosync/engine` — one task, `SyncPolicy::Never`.
//! * `nosync/raw_write_all` — the same log bytes (one reserve + one delete record per cycle)
//!   written with `write_all` to a plain file.
//! * `durable_16_consumers/engine` — 16 concurrent tasks on a 2-worker runtime,
//!   `SyncPolicy::Always` (each reserve and each delete waits for its fdatasync).
//! * `durable_16_consumers/raw_overwrite` — ideal group commit by hand: 16 reserve records,
//!   one fdatasync, 16 delete records, one fdatasync, into a pre-zero-filled file.

mod common;

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::{DeleteItem, Engine, QueueKey, ReserveOptions, SyncPolicy};
use ferromq_benches::{
    BATCH, RawAppender, RawOverwriter, delete_record_bytes, fill, fmt_rate, open_engine, queue_key,
    rate, reserve_record_bytes, tempdir,
};

/// Queue depth kept under the timed cycles.
const DEPTH: u64 = 1_000_000;
const CONSUMERS: usize = 16;

const OPTS: ReserveOptions = ReserveOptions {
    n: BATCH,
    timeout_s: 60,
    wait_ms: 0,
    delete: false,
};

async fn cycle(engine: &Engine, key: &QueueKey) {
    let got = engine.reserve(key, OPTS).await.expect("reserve");
    assert_eq!(got.len(), BATCH, "queue ran dry");
    let items: Vec<DeleteItem> = got.iter().map(DeleteItem::of).collect();
    engine.delete_batch(key, &items).await.expect("delete");
}

/// Tops the queue up (untimed) so that it holds at least `DEPTH + need` messages.
fn top_up(
    rt: &tokio::runtime::Runtime,
    engine: &Engine,
    key: &QueueKey,
    depth: &mut u64,
    need: u64,
    tasks: usize,
) {
    let want = DEPTH + need;
    if *depth < want {
        let add = want - *depth;
        rt.block_on(fill(engine, key, add as usize, tasks));
        *depth += add.div_ceil(BATCH as u64) * BATCH as u64;
    }
}

fn nosync(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("reserve_delete/cycle100/nosync");
    g.throughput(Throughput::Elements(BATCH as u64));

    let dir = tempdir();
    let engine = open_engine(dir.path(), SyncPolicy::Never);
    let key = queue_key();
    let mut depth = 0u64;
    let t = Instant::now();
    top_up(&rt, &engine, &key, &mut depth, 0, 1);
    println!(
        "reserve_delete/nosync: prefilled {depth} messages in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let (mut consumed, mut timed) = (0u64, Duration::ZERO);
    g.bench_function("engine", |b| {
        b.iter_custom(|iters| {
            top_up(&rt, &engine, &key, &mut depth, iters * BATCH as u64, 1);
            let elapsed = rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    cycle(&engine, &key).await;
                }
                start.elapsed()
            });
            depth -= iters * BATCH as u64;
            consumed += iters * BATCH as u64;
            timed += elapsed;
            elapsed
        })
    });
    println!(
        "reserve_delete/nosync/engine: {} msgs/s consumed over {consumed} messages",
        fmt_rate(rate(consumed as f64, timed))
    );
    drop(engine);
    drop(dir);

    let dir = tempdir();
    let mut raw = RawAppender::new(dir.path(), 64 * 1024 * 1024);
    let (rbuf, dbuf) = (
        vec![7u8; reserve_record_bytes(BATCH)],
        vec![7u8; delete_record_bytes(BATCH)],
    );
    g.bench_function("raw_write_all", |b| {
        b.iter(|| {
            raw.append(&rbuf);
            raw.append(&dbuf);
        })
    });
    drop(raw);
    drop(dir);
    g.finish();
}

fn durable(c: &mut Criterion) {
    let rt = common::runtime();
    let mut g = c.benchmark_group("reserve_delete/cycle100/durable_16_consumers");

    let dir = tempdir();
    let engine = open_engine(dir.path(), SyncPolicy::Always);
    let key = queue_key();
    let mut depth = 0u64;
    let t = Instant::now();
    top_up(&rt, &engine, &key, &mut depth, 0, CONSUMERS);
    println!(
        "reserve_delete/durable: prefilled {depth} messages in {:.2} s (16 durable writers)",
        t.elapsed().as_secs_f64()
    );
    let (mut consumed, mut timed, mut fsyncs) = (0u64, Duration::ZERO, 0u64);
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("engine", |b| {
        b.iter_custom(|iters| {
            top_up(
                &rt,
                &engine,
                &key,
                &mut depth,
                iters * BATCH as u64,
                CONSUMERS,
            );
            let before = engine.stats().fsyncs;
            let elapsed = rt.block_on(async {
                let start = Instant::now();
                let mut handles = Vec::with_capacity(CONSUMERS);
                for w in 0..CONSUMERS {
                    let mine =
                        iters / CONSUMERS as u64 + u64::from((w as u64) < iters % CONSUMERS as u64);
                    let engine = engine.clone();
                    let key = key.clone();
                    handles.push(tokio::spawn(async move {
                        for _ in 0..mine {
                            cycle(&engine, &key).await;
                        }
                    }));
                }
                for h in handles {
                    h.await.expect("consumer");
                }
                start.elapsed()
            });
            fsyncs += engine.stats().fsyncs - before;
            depth -= iters * BATCH as u64;
            consumed += iters * BATCH as u64;
            timed += elapsed;
            elapsed
        })
    });
    println!(
        "reserve_delete/durable/engine: {} msgs/s consumed, {} fsyncs/s ({consumed} messages)",
        fmt_rate(rate(consumed as f64, timed)),
        fmt_rate(rate(fsyncs as f64, timed))
    );
    drop(engine);
    drop(dir);

    let dir = tempdir();
    let mut raw = RawOverwriter::new(&dir.path().join("zeroed"), 64 * 1024 * 1024);
    let rbuf = vec![7u8; reserve_record_bytes(BATCH) * CONSUMERS];
    let dbuf = vec![7u8; delete_record_bytes(BATCH) * CONSUMERS];
    g.throughput(Throughput::Elements((BATCH * CONSUMERS) as u64));
    g.bench_function("raw_overwrite", |b| {
        b.iter(|| {
            raw.write(&rbuf);
            raw.sync();
            raw.write(&dbuf);
            raw.sync();
        })
    });
    drop(raw);
    drop(dir);
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config(3);
    targets = nosync, durable
}
criterion_main!(benches);
