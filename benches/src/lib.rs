//! Shared helpers of the ferromq benchmarks (`benches/*.rs`) and the HTTP load tool
//! (`src/bin/ferromq-load.rs`).
//!
//! All engine data goes to a temporary directory on the real disk (under
//! `target-bench/tmp` when it exists, else `/tmp`), never to tmpfs.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::{Engine, EngineConfig, NewMessage, QueueKey, SyncPolicy};

/// Body size used by every benchmark: 100 bytes.
pub const BODY_BYTES: usize = 100;
/// Messages per post / reserve / delete batch.
pub const BATCH: usize = 100;
/// Per-message header of a post record (id, visible_at, expires_at, body_len, meta_len).
pub const POST_ITEM_HEADER_BYTES: usize = 8 + 8 + 4 + 4 + 4;
/// Record frame header plus the `(queue u32, count u16)` payload prefix.
pub const RECORD_OVERHEAD_BYTES: usize = engine::record::FRAME_HEADER_BYTES + 6;

/// Bytes the engine appends to its log for one post of `n` messages of `body` bytes.
pub fn post_record_bytes(n: usize, body: usize) -> usize {
    RECORD_OVERHEAD_BYTES + n * (POST_ITEM_HEADER_BYTES + body)
}

/// Bytes of one reserve record of `n` messages (id, reservation id, until).
pub fn reserve_record_bytes(n: usize) -> usize {
    RECORD_OVERHEAD_BYTES + n * (8 + 16 + 8)
}

/// Bytes of one delete record of `n` ids.
pub fn delete_record_bytes(n: usize) -> usize {
    RECORD_OVERHEAD_BYTES + n * 8
}

/// Where benchmark data goes: `FERROMQ_BENCH_TMP`, else `<workspace>/target-bench/tmp` if
/// that directory's parent exists, else `/tmp`. All three are on the real disk here.
pub fn tmp_root() -> PathBuf {
    if let Ok(p) = std::env::var("FERROMQ_BENCH_TMP") {
        let p = PathBuf::from(p);
        std::fs::create_dir_all(&p).expect("create FERROMQ_BENCH_TMP");
        return p;
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target-bench");
    if ws.is_dir() {
        let p = ws.join("tmp");
        if std::fs::create_dir_all(&p).is_ok() {
            return p;
        }
    }
    PathBuf::from("/tmp")
}

/// A fresh temporary directory under [`tmp_root`], removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ferromq-bench-")
        .tempdir_in(tmp_root())
        .expect("tempdir")
}

/// `n` messages of `body` bytes each.
pub fn messages(n: usize, body: usize) -> Vec<NewMessage<'static>> {
    (0..n)
        .map(|i| NewMessage {
            body: vec![b'a' + (i % 26) as u8; body].into(),
            delay_s: 0,
            meta: Vec::new(),
        })
        .collect()
}

/// The benchmark queue.
pub fn queue_key() -> QueueKey {
    QueueKey::new("bench", "q")
}

/// Opens an engine in `dir` with the given sync policy and default segment size.
pub fn open_engine(dir: &Path, sync: SyncPolicy) -> Engine {
    let mut cfg = EngineConfig::new(dir);
    cfg.sync = sync;
    // For experiments only (e.g. segments so large that no roll, and so no spare zero-fill,
    // happens during a run); the figures in the README use the default.
    if let Some(b) = std::env::var("FERROMQ_BENCH_SEGMENT_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.segment_bytes = b;
    }
    Engine::open(cfg).expect("open engine")
}

/// Posts `total` messages (batches of [`BATCH`] × [`BODY_BYTES`]) from `tasks` concurrent
/// tasks on the current runtime.
pub async fn fill(engine: &Engine, key: &QueueKey, total: usize, tasks: usize) {
    let batches = total.div_ceil(BATCH);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let engine = engine.clone();
        let key = key.clone();
        let mine = batches / tasks + usize::from(t < batches % tasks);
        handles.push(tokio::spawn(async move {
            let msgs = messages(BATCH, BODY_BYTES);
            for _ in 0..mine {
                engine.post(&key, &msgs, true).await.expect("post");
            }
        }));
    }
    for h in handles {
        h.await.expect("fill task");
    }
}

/// A kB value from `/proc/self/status` (e.g. `VmRSS`, `RssAnon`), in bytes.
pub fn proc_status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for line in s.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let kb: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            return kb * 1024;
        }
    }
    0
}

/// Raw baseline: a plain file written with `write_all`, rolled to a new file every
/// `roll_bytes` (like the engine's segments).
pub struct RawAppender {
    dir: PathBuf,
    file: File,
    written: u64,
    roll_bytes: u64,
    counter: u64,
}

impl RawAppender {
    pub fn new(dir: &Path, roll_bytes: u64) -> RawAppender {
        let file = File::create(dir.join("raw-0")).expect("create raw file");
        RawAppender {
            dir: dir.to_path_buf(),
            file,
            written: 0,
            roll_bytes,
            counter: 0,
        }
    }

    pub fn append(&mut self, buf: &[u8]) {
        if self.written + buf.len() as u64 > self.roll_bytes {
            self.counter += 1;
            let old = self.dir.join(format!("raw-{}", self.counter - 1));
            self.file = File::create(self.dir.join(format!("raw-{}", self.counter)))
                .expect("roll raw file");
            let _ = std::fs::remove_file(old);
            self.written = 0;
        }
        self.file.write_all(buf).expect("raw write");
        self.written += buf.len() as u64;
    }

    pub fn sync(&self) {
        self.file.sync_data().expect("fdatasync");
    }
}

/// Raw baseline: a pre-zero-filled (written and synced, not fallocated) file overwritten
/// in place, wrapping around at its end, with an optional `fdatasync` per write.
pub struct RawOverwriter {
    file: File,
    pos: u64,
    size: u64,
}

impl RawOverwriter {
    pub fn new(path: &Path, size: u64) -> RawOverwriter {
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .expect("open");
        let zeros = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < size {
            let n = ((size - off) as usize).min(zeros.len());
            file.write_all(&zeros[..n]).expect("zero fill");
            off += n as u64;
        }
        file.sync_all().expect("sync zero fill");
        file.seek(SeekFrom::Start(0)).expect("seek");
        RawOverwriter { file, pos: 0, size }
    }

    pub fn write(&mut self, buf: &[u8]) {
        if self.pos + buf.len() as u64 > self.size {
            self.pos = 0;
        }
        self.file
            .write_all_at(buf, self.pos)
            .expect("raw overwrite");
        self.pos += buf.len() as u64;
    }

    pub fn sync(&self) {
        self.file.sync_data().expect("fdatasync");
    }
}

/// Formats a rate with SI suffix.
pub fn fmt_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Per-second rate from a count and a duration.
pub fn rate(count: f64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        count / d.as_secs_f64()
    }
}
