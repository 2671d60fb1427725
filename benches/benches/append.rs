//! Engine append vs a raw file written with the same bytes, in the same run.
//!
//! * `nosync/engine` — `Engine::post` of 100 × 100 B, `SyncPolicy::Never`.
//! * `nosync/raw_write_all` — `write_all` of one post record's worth of bytes (12,818 B)
//!   to a plain file rolled every 64 MiB.
//! * `fdatasync/engine` — the same post with `SyncPolicy::Always`, one caller (so one
//!   fdatasync per batch).
//! * `fdatasync/raw_overwrite` — the same bytes + `sync_data` per batch into a
//!   pre-zero-filled file (the engine also writes into zero-filled spares).
//! * `fdatasync/raw_append` — the same into a fresh (growing) file, for reference.

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::SyncPolicy;
use ferromq_benches::{
    BATCH, BODY_BYTES, RawAppender, RawOverwriter, messages, open_engine, post_record_bytes,
    queue_key, tempdir,
};

const SEGMENT: u64 = 64 * 1024 * 1024;

fn nosync(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("append/batch100x100B/nosync");
    g.throughput(Throughput::Elements(BATCH as u64));

    let dir = tempdir();
    let engine = open_engine(dir.path(), SyncPolicy::Never);
    let key = queue_key();
    let msgs = messages(BATCH, BODY_BYTES);
    g.bench_function("engine", |b| {
        b.iter(|| rt.block_on(engine.post(&key, &msgs, true)).expect("post"));
    });
    drop(engine);
    drop(dir);

    let dir = tempdir();
    let mut raw = RawAppender::new(dir.path(), SEGMENT);
    let buf = vec![7u8; post_record_bytes(BATCH, BODY_BYTES)];
    g.bench_function("raw_write_all", |b| b.iter(|| raw.append(&buf)));
    drop(raw);
    drop(dir);
    g.finish();
}

fn fdatasync(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("append/batch100x100B/fdatasync");
    g.throughput(Throughput::Elements(BATCH as u64));

    let dir = tempdir();
    let engine = open_engine(dir.path(), SyncPolicy::Always);
    let key = queue_key();
    let msgs = messages(BATCH, BODY_BYTES);
    let before = engine.stats();
    let mut posts = 0u64;
    g.bench_function("engine", |b| {
        b.iter(|| {
            rt.block_on(engine.post(&key, &msgs, true)).expect("post");
            posts += 1;
        });
    });
    let after = engine.stats();
    let fsyncs = after.fsyncs - before.fsyncs;
    let sync_s = after.fsync_seconds - before.fsync_seconds;
    println!(
        "append/fdatasync/engine: {posts} posts, {fsyncs} fsyncs ({:.2} fsyncs per post), \
         mean fdatasync in the writer {:.1} µs",
        fsyncs as f64 / posts.max(1) as f64,
        sync_s * 1e6 / fsyncs.max(1) as f64
    );
    drop(engine);
    drop(dir);

    let buf = vec![7u8; post_record_bytes(BATCH, BODY_BYTES)];
    let dir = tempdir();
    let mut raw = RawOverwriter::new(&dir.path().join("zeroed"), SEGMENT);
    g.bench_function("raw_overwrite", |b| {
        b.iter(|| {
            raw.write(&buf);
            raw.sync();
        })
    });
    drop(raw);
    drop(dir);

    let dir = tempdir();
    let mut raw = RawAppender::new(dir.path(), SEGMENT);
    g.bench_function("raw_append", |b| {
        b.iter(|| {
            raw.append(&buf);
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
    targets = nosync, fdatasync
}
criterion_main!(benches);
