//! `ferromq-stallprobe`: does this machine freeze when it is busy *and* syncing?
//!
//! Tail-latency figures mean little if the machine itself stops now and then. On a virtual
//! machine whose host caps the CPU time of the whole VM (its vCPUs together with the I/O
//! the host does on its behalf), a guest that keeps a core busy while it issues thousands
//! of `fdatasync`s a second can be descheduled by the host for the rest of each accounting
//! period. Inside the guest this shows as steal time and as regular freezes of every
//! thread at once, which no server code can avoid.
//!
//! The probe runs three phases of `--duration` seconds each and prints one line per phase:
//! - `spin`: `--spin` threads that do nothing but read the clock (no I/O);
//! - `sync`: one thread appending `--write-bytes` to a file with an `fdatasync` after each
//!   write, paced at `--sync-rate` per second (roughly what a durable server does at load);
//! - `spin+sync`: both at once.
//!
//! For each: steal time from `/proc/stat`, the time the spinning threads lost in gaps over
//! 2 ms (the guest's own scheduler accounts for little of it when a core is left free), the
//! syncs done against those asked for, their latency percentiles, and the median spacing of
//! the syncs slower than 5 ms: a steady spacing such as 100 ms is a host's CPU-quota period.
//!
//! A fourth line, `idle pages`, times touching a 64 MiB buffer again, one byte per 4 KiB
//! page, after it lay untouched for 10 ms, 100 ms and 1 s. On the VM `benches/README.md`
//! was measured on, a page untouched for a second cost about 5 µs to touch again (read or
//! write; the host's doing, unseen by the guest), against 0.01 µs back to back: a walk over
//! a large structure under a lock (a snapshot of 16,000 chunks, one page each) pays that
//! per page, and every request waits for it.
//! The probe's file lives in `--dir` (default: a temporary directory under the current
//! one, so on the disk being measured) and is removed at the end. Ends by itself.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
#[command(
    name = "ferromq-stallprobe",
    about = "Measures whole-machine freezes under CPU + fdatasync load (see the module docs)"
)]
struct Args {
    /// Seconds per phase.
    #[arg(long, default_value_t = 8)]
    duration: u64,
    /// Spinning threads in the `spin` phases (1 leaves a core free on a 2-core machine).
    #[arg(long, default_value_t = 1)]
    spin: usize,
    /// fdatasyncs per second asked for in the `sync` phases.
    #[arg(long, default_value_t = 3000)]
    sync_rate: u64,
    /// Bytes appended before each fdatasync.
    #[arg(long, default_value_t = 32 * 1024)]
    write_bytes: usize,
    /// Directory for the probe's file (default: a new temporary directory under `.`).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// A gap in a spinning thread's clock readings longer than this counts as lost time.
const GAP: Duration = Duration::from_millis(2);
/// A sync slower than this counts as slow (its start time is kept for the spacing).
const SLOW_SYNC: Duration = Duration::from_millis(5);
/// The probe's file is cut back to empty when it reaches this size.
const FILE_BYTES_MAX: u64 = 512 << 20;
/// `/proc/stat` counts in USER_HZ ticks, 100 per second on Linux.
const TICKS_PER_S: f64 = 100.0;

#[derive(Default)]
struct SpinReport {
    gaps: u64,
    lost: Duration,
}

struct SyncReport {
    done: u64,
    latency_us: Histogram<u64>,
    slow_at: Vec<Duration>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let _tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            _tmp = tempfile::Builder::new()
                .prefix("stallprobe")
                .tempdir_in(".")
                .context("create a temporary directory")?;
            _tmp.path().to_path_buf()
        }
    };
    let path = dir.join("stallprobe.dat");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "stallprobe: {cpus} cpus, {} s per phase, spin={} sync_rate={}/s write_bytes={} file={}",
        args.duration,
        args.spin,
        args.sync_rate,
        args.write_bytes,
        path.display()
    );
    for (name, spin, sync) in [
        ("spin", true, false),
        ("sync", false, true),
        ("spin+sync", true, true),
    ] {
        phase(&args, &path, name, spin, sync)?;
    }
    let _ = std::fs::remove_file(&path);
    idle_pages();
    Ok(())
}

/// Bytes of the buffer `idle_pages` touches again.
const IDLE_BUFFER_BYTES: usize = 64 << 20;
const PAGE: usize = 4096;

/// Prints what touching a page costs after it lay idle a while (see the module docs): the
/// median of three passes per idle time.
fn idle_pages() {
    let mut buf = vec![0u8; IDLE_BUFFER_BYTES];
    let pass = |buf: &mut [u8]| {
        let t = Instant::now();
        for b in buf.iter_mut().step_by(PAGE) {
            *b = b.wrapping_add(1);
        }
        std::hint::black_box(&*buf);
        t.elapsed().as_secs_f64() * 1e6 / (buf.len() / PAGE) as f64
    };
    pass(&mut buf);
    let mut line = String::from("idle pages: µs to touch a page again after");
    for idle in [
        Duration::ZERO,
        Duration::from_millis(10),
        Duration::from_millis(100),
        Duration::from_secs(1),
    ] {
        let mut us: Vec<f64> = (0..3)
            .map(|_| {
                std::thread::sleep(idle);
                pass(&mut buf)
            })
            .collect();
        us.sort_by(f64::total_cmp);
        line += &format!(" {} ms {:.2},", idle.as_millis(), us[1]);
    }
    line.pop();
    println!("{line}");
}

fn phase(args: &Args, path: &PathBuf, name: &str, spin: bool, sync: bool) -> Result<()> {
    let duration = Duration::from_secs(args.duration);
    let stop = Arc::new(AtomicBool::new(false));
    let steal_before = steal_ticks()?;
    let started = Instant::now();
    let spinners: Vec<_> = (0..if spin { args.spin } else { 0 })
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || spin_until(&stop))
        })
        .collect();
    let syncer = if sync {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        let (rate, bytes) = (args.sync_rate.max(1), args.write_bytes.max(1));
        Some(std::thread::spawn(move || {
            sync_for(&file, duration, rate, bytes)
        }))
    } else {
        None
    };
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut spun = SpinReport::default();
    for s in spinners {
        let r = s.join().expect("spinner thread");
        spun.gaps += r.gaps;
        spun.lost += r.lost;
    }
    let synced = syncer.map(|s| s.join().expect("sync thread")).transpose()?;
    let wall = started.elapsed().as_secs_f64();
    let steal_s = (steal_ticks()? - steal_before) as f64 / TICKS_PER_S;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut line = format!(
        "{name:>9}: steal {:.1} % of cpu time",
        100.0 * steal_s / (wall * cpus)
    );
    if spin {
        let per_thread = spun.lost.as_secs_f64() / args.spin as f64;
        line += &format!(
            " | spinners lost {:.1} % of wall time in {} gaps > {} ms",
            100.0 * per_thread / wall,
            spun.gaps,
            GAP.as_millis()
        );
    }
    if let Some(s) = synced {
        let h = &s.latency_us;
        let asked = (args.sync_rate as f64 * args.duration as f64) as u64;
        line += &format!(
            " | syncs {}/{asked}, p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.1} ms, {} > {} ms{}",
            s.done,
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            h.value_at_quantile(0.999) as f64 / 1e3,
            h.max() as f64 / 1e3,
            s.slow_at.len(),
            SLOW_SYNC.as_millis(),
            spacing(&s.slow_at)
                .map(|d| format!(", median spacing {:.0} ms", d.as_secs_f64() * 1e3))
                .unwrap_or_default()
        );
    }
    println!("{line}");
    Ok(())
}

fn spin_until(stop: &AtomicBool) -> SpinReport {
    let mut r = SpinReport::default();
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let gap = now - last;
        if gap > GAP {
            r.gaps += 1;
            r.lost += gap;
        }
        last = now;
    }
    r
}

fn sync_for(file: &File, duration: Duration, rate: u64, bytes: usize) -> Result<SyncReport> {
    let buf = vec![0x5au8; bytes];
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut slow_at = Vec::new();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut next = started;
    let (mut off, mut done) = (0u64, 0u64);
    while started.elapsed() < duration {
        if off + bytes as u64 > FILE_BYTES_MAX {
            file.set_len(0)?;
            off = 0;
        }
        file.write_all_at(&buf, off)?;
        off += bytes as u64;
        let t = Instant::now();
        file.sync_data().context("fdatasync")?;
        let took = t.elapsed();
        done += 1;
        latency_us.saturating_record(took.as_micros() as u64);
        if took > SLOW_SYNC {
            slow_at.push(t - started);
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_millis(100) {
            // Far behind (the device or the machine stalled): do not try to catch up in a burst.
            next = now;
        }
    }
    Ok(SyncReport {
        done,
        latency_us,
        slow_at,
    })
}

/// The median time between consecutive slow syncs, if there were at least three.
fn spacing(at: &[Duration]) -> Option<Duration> {
    let mut d: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    if d.len() < 2 {
        return None;
    }
    d.sort();
    Some(d[d.len() / 2])
}

/// The machine's total steal time so far, in USER_HZ ticks (0 where it is not reported).
fn steal_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let cpu = stat.lines().next().unwrap_or_default();
    // "cpu user nice system idle iowait irq softirq steal ..."
    Ok(cpu
        .split_whitespace()
        .nth(8)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}
