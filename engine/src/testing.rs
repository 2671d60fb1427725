//! Test support, behind the `testing` feature: storage that fails on demand and keeps crash
//! images. Never compiled into production builds.
//!
//! [`SimStorage`] is an in-memory [`Storage`]:
//! - every file keeps its live content (what reads and maps see), a *durable* image (what
//!   survives a crash), and the list of writes made since the last `sync_data`;
//! - [`SimStorage::crash_image`] builds a new storage whose files hold the durable image plus
//!   a random prefix of the unsynced writes, in order, with the last kept write torn at a
//!   random byte (the rest of that write keeps the old content);
//! - creations, renames, removals and `set_len` are durable immediately (the simulation does
//!   not model lost directory entries; the engine syncs the directory after each of them);
//! - fault injection: the Nth write, Nth `sync_data`, or Nth create/rename (or the Nth of any
//!   of those with a shared countdown) fails once with an `io::Error`. A failed write changes
//!   nothing; a failed sync leaves the writes unsynced.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

pub use crate::storage::check_bounds;
use crate::storage::{Region, Storage, StorageFile};

/// Which operation a fault targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    Write,
    Sync,
    /// `create` and `rename`.
    Meta,
    /// Any of the above, with one shared countdown.
    Any,
}

#[derive(Debug, Default)]
struct Faults {
    write: Option<u64>,
    sync: Option<u64>,
    meta: Option<u64>,
    any: Option<u64>,
    /// Counts of operations attempted so far: writes, syncs, creates+renames.
    counts: [u64; 3],
    fired: u64,
    /// The thread of each `start_write_back` call.
    write_back_threads: Vec<String>,
    /// A full file system: no file may be created or grown (see [`SimStorage::set_full`]).
    full: bool,
    /// How long each sync takes (see [`SimStorage::set_sync_delay`]).
    sync_delay: std::time::Duration,
}

/// The error of a full file system.
fn no_space() -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        "No space left on device (simulated)",
    )
}

impl Faults {
    /// Counts one operation; returns an error if a countdown reaches it.
    fn tick(&mut self, op: FaultOp) -> io::Result<()> {
        let idx = match op {
            FaultOp::Write => 0,
            FaultOp::Sync => 1,
            FaultOp::Meta => 2,
            FaultOp::Any => unreachable!("operations are never of kind Any"),
        };
        self.counts[idx] += 1;
        let own = match op {
            FaultOp::Write => &mut self.write,
            FaultOp::Sync => &mut self.sync,
            _ => &mut self.meta,
        };
        let mut fire = countdown(own);
        fire |= countdown(&mut self.any);
        if fire {
            self.fired += 1;
            return Err(io::Error::other(format!("injected {op:?} fault")));
        }
        Ok(())
    }
}

/// Decrements an armed countdown; true when it reaches zero (and disarms it).
fn countdown(c: &mut Option<u64>) -> bool {
    match c {
        Some(n) if *n <= 1 => {
            *c = None;
            true
        }
        Some(n) => {
            *n -= 1;
            false
        }
        None => false,
    }
}

struct FileState {
    durable: Vec<u8>,
    /// Writes since the last successful sync, in order.
    pending: Vec<(u64, Vec<u8>)>,
}

struct SimFile {
    data: Arc<RwLock<Vec<u8>>>,
    state: Mutex<FileState>,
    faults: Arc<Mutex<Faults>>,
}

impl SimFile {
    fn new(content: Vec<u8>, faults: Arc<Mutex<Faults>>) -> SimFile {
        SimFile {
            data: Arc::new(RwLock::new(content.clone())),
            state: Mutex::new(FileState {
                durable: content,
                pending: Vec::new(),
            }),
            faults,
        }
    }
}

fn apply(buf: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let off = offset as usize;
    if buf.len() < off + bytes.len() {
        buf.resize(off + bytes.len(), 0);
    }
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

impl StorageFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.data.read().len() as u64)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        {
            let mut f = self.faults.lock();
            f.tick(FaultOp::Write)?;
            if f.full && offset + buf.len() as u64 > self.data.read().len() as u64 {
                return Err(no_space());
            }
        }
        let mut st = self.state.lock();
        apply(&mut self.data.write(), offset, buf);
        st.pending.push((offset, buf.to_vec()));
        Ok(())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let data = self.data.read();
        check_bounds(data.len(), offset as usize, buf.len())?;
        buf.copy_from_slice(&data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let delay = {
            let mut f = self.faults.lock();
            f.tick(FaultOp::Sync)?;
            f.sync_delay
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut st = self.state.lock();
        let pending = std::mem::take(&mut st.pending);
        for (off, bytes) in pending {
            apply(&mut st.durable, off, &bytes);
        }
        Ok(())
    }
    fn start_write_back(&self, _offset: u64, _len: u64) -> io::Result<()> {
        let thread = std::thread::current();
        self.faults
            .lock()
            .write_back_threads
            .push(thread.name().unwrap_or("?").to_string());
        Ok(())
    }
    /// As `fallocate`: the file grows to `len` (zeros), and later writes inside it need no
    /// new space, even on a full file system.
    fn allocate(&self, len: u64) -> io::Result<bool> {
        if len > self.data.read().len() as u64 {
            self.set_len(len)?;
        }
        Ok(true)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.faults.lock().full && len > self.data.read().len() as u64 {
            return Err(no_space());
        }
        let mut st = self.state.lock();
        self.data.write().resize(len as usize, 0);
        st.durable.resize(len as usize, 0);
        Ok(())
    }
    fn map(&self) -> io::Result<Arc<dyn Region>> {
        Ok(Arc::new(SimRegion {
            data: self.data.clone(),
        }))
    }
}

/// A "mapping" of a sim file: sees every later write, like a shared memory map.
struct SimRegion {
    data: Arc<RwLock<Vec<u8>>>,
}

impl Region for SimRegion {
    fn len(&self) -> usize {
        self.data.read().len()
    }
    fn read(&self, offset: usize, dst: &mut [u8]) -> io::Result<()> {
        let data = self.data.read();
        check_bounds(data.len(), offset, dst.len())?;
        dst.copy_from_slice(&data[offset..offset + dst.len()]);
        Ok(())
    }
    fn with_slice(&self, offset: usize, len: usize, f: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        let data = self.data.read();
        check_bounds(data.len(), offset, len)?;
        f(&data[offset..offset + len]);
        Ok(())
    }
}

/// In-memory storage with fault injection and crash images. Cloning shares the files.
#[derive(Clone)]
pub struct SimStorage {
    root: PathBuf,
    files: Arc<Mutex<BTreeMap<String, Arc<SimFile>>>>,
    faults: Arc<Mutex<Faults>>,
}

impl Default for SimStorage {
    fn default() -> Self {
        SimStorage::new()
    }
}

/// A small deterministic generator (xorshift64*), so crash images follow their seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in `0..=max`.
    pub fn upto(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            self.next_u64()
        } else {
            self.next_u64() % (max + 1)
        }
    }
}

impl SimStorage {
    pub fn new() -> SimStorage {
        SimStorage {
            root: PathBuf::from("/sim"),
            files: Arc::new(Mutex::new(BTreeMap::new())),
            faults: Arc::new(Mutex::new(Faults::default())),
        }
    }

    /// The name of the thread of each `start_write_back` so far.
    pub fn write_back_threads(&self) -> Vec<String> {
        self.faults.lock().write_back_threads.clone()
    }

    /// Arms a countdown: the `n`th operation of kind `op` from now (1 = the next) fails once.
    /// `FaultOp::Any` counts writes, syncs, creates and renames together.
    pub fn fail_nth(&self, op: FaultOp, n: u64) {
        assert!(n >= 1, "n counts from 1");
        let mut f = self.faults.lock();
        match op {
            FaultOp::Write => f.write = Some(n),
            FaultOp::Sync => f.sync = Some(n),
            FaultOp::Meta => f.meta = Some(n),
            FaultOp::Any => f.any = Some(n),
        }
    }

    /// Disarms every countdown.
    /// Fills the file system (or frees it): while full, creating a file or writing past
    /// a file's end fails with `StorageFull`; overwrites within a file still succeed, as
    /// on a real disk where the blocks are allocated already.
    pub fn set_full(&self, full: bool) {
        self.faults.lock().full = full;
    }

    /// Makes every sync take `delay` (a slow disk): what happens while one is under way.
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        self.faults.lock().sync_delay = delay;
    }

    pub fn clear_faults(&self) {
        let mut f = self.faults.lock();
        f.write = None;
        f.sync = None;
        f.meta = None;
        f.any = None;
    }

    /// How many injected faults have fired.
    pub fn faults_fired(&self) -> u64 {
        self.faults.lock().fired
    }

    /// Operations attempted so far: (writes, syncs, creates + renames).
    pub fn op_counts(&self) -> (u64, u64, u64) {
        let c = self.faults.lock().counts;
        (c[0], c[1], c[2])
    }

    /// File names, sorted.
    pub fn file_names(&self) -> Vec<String> {
        self.files.lock().keys().cloned().collect()
    }

    /// The live content of a file (what a reader sees now).
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        self.files.lock().get(name).map(|f| f.data.read().clone())
    }

    /// The durable content of a file (what survives a crash for sure).
    pub fn durable_contents(&self, name: &str) -> Option<Vec<u8>> {
        self.files
            .lock()
            .get(name)
            .map(|f| f.state.lock().durable.clone())
    }

    /// Creates or replaces a file with `content`, already durable (for building test images).
    pub fn put_file(&self, name: &str, content: Vec<u8>) {
        self.files.lock().insert(
            name.to_string(),
            Arc::new(SimFile::new(content, self.faults.clone())),
        );
    }

    /// Where each write to `name` not yet synced begins and ends, in order.
    pub fn unsynced_write_spans(&self, name: &str) -> Vec<(u64, u64)> {
        self.files.lock().get(name).map_or_else(Vec::new, |f| {
            let st = f.state.lock();
            st.pending
                .iter()
                .map(|(off, bytes)| (*off, *off + bytes.len() as u64))
                .collect()
        })
    }

    /// Bytes written but not yet synced, over all files.
    pub fn unsynced_writes(&self) -> usize {
        self.files
            .lock()
            .values()
            .map(|f| f.state.lock().pending.len())
            .sum()
    }

    /// A new storage holding what a crash right now could leave: per file, the durable image
    /// plus a random prefix of the unsynced writes, the last kept one torn at a random byte.
    /// The image has no faults armed.
    pub fn crash_image(&self, seed: u64) -> SimStorage {
        let mut rng = Rng::new(seed);
        let out = SimStorage::new();
        let files = self.files.lock();
        for (name, f) in files.iter() {
            let st = f.state.lock();
            let mut content = st.durable.clone();
            let keep = rng.upto(st.pending.len() as u64) as usize;
            for (i, (off, bytes)) in st.pending[..keep].iter().enumerate() {
                if i + 1 == keep {
                    let torn = rng.upto(bytes.len() as u64) as usize;
                    apply(&mut content, *off, &bytes[..torn]);
                } else {
                    apply(&mut content, *off, bytes);
                }
            }
            out.put_file(name, content);
        }
        out
    }

    /// The durable image only (a crash that keeps none of the unsynced writes).
    pub fn durable_image(&self) -> SimStorage {
        let out = SimStorage::new();
        for (name, f) in self.files.lock().iter() {
            out.put_file(name, f.state.lock().durable.clone());
        }
        out
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such sim file"))
}

impl Storage for SimStorage {
    fn root(&self) -> &Path {
        &self.root
    }
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.file_names())
    }
    fn open(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        let f = self
            .files
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))?;
        Ok(f)
    }
    fn create(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        {
            let mut f = self.faults.lock();
            f.tick(FaultOp::Meta)?;
            if f.full {
                return Err(no_space());
            }
        }
        let mut files = self.files.lock();
        if files.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                name.to_string(),
            ));
        }
        let f = Arc::new(SimFile::new(Vec::new(), self.faults.clone()));
        files.insert(name.to_string(), f.clone());
        Ok(f)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.faults.lock().tick(FaultOp::Meta)?;
        let mut files = self.files.lock();
        let f = files.remove(from).ok_or_else(|| not_found(from))?;
        files.insert(to.to_string(), f);
        Ok(())
    }
    fn exchange(&self, a: &str, b: &str) -> io::Result<()> {
        self.faults.lock().tick(FaultOp::Meta)?;
        let mut files = self.files.lock();
        let fa = files.remove(a).ok_or_else(|| not_found(a))?;
        let Some(fb) = files.remove(b) else {
            files.insert(a.to_string(), fa);
            return Err(not_found(b));
        };
        files.insert(a.to_string(), fb);
        files.insert(b.to_string(), fa);
        Ok(())
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.files
            .lock()
            .remove(name)
            .map(drop)
            .ok_or_else(|| not_found(name))
    }
    fn sync_dir(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_image_keeps_durable_and_a_torn_prefix() {
        let s = SimStorage::new();
        let f = s.create("f").unwrap();
        f.write_at(0, &[0u8; 16]).unwrap();
        f.sync_data().unwrap();
        f.write_at(0, &[1u8; 8]).unwrap();
        f.write_at(8, &[2u8; 8]).unwrap();
        let region = f.map().unwrap();
        let mut b = [0u8; 16];
        region.read(0, &mut b).unwrap();
        assert_eq!(
            &b[..],
            &[[1u8; 8], [2u8; 8]].concat()[..],
            "the map sees later writes"
        );
        let mut seen_partial = false;
        for seed in 0..200 {
            let img = s.crash_image(seed).contents("f").unwrap();
            assert_eq!(img.len(), 16);
            // A prefix in order: bytes of the second write only if the first is complete.
            let ones = img[..8].iter().take_while(|&&x| x == 1).count();
            assert!(img[ones..8].iter().all(|&x| x == 0));
            let twos = img[8..].iter().take_while(|&&x| x == 2).count();
            assert!(img[8 + twos..].iter().all(|&x| x == 0));
            if twos > 0 {
                assert_eq!(ones, 8);
            }
            seen_partial |= ones > 0 && ones < 8;
        }
        assert!(seen_partial, "some image tears the first write");
        assert_eq!(s.durable_image().contents("f").unwrap(), vec![0u8; 16]);
    }

    #[test]
    fn faults_fire_once_on_the_nth_operation() {
        let s = SimStorage::new();
        let f = s.create("f").unwrap();
        s.fail_nth(FaultOp::Write, 2);
        f.write_at(0, b"a").unwrap();
        assert!(f.write_at(1, b"b").is_err());
        f.write_at(1, b"c").unwrap();
        assert_eq!(s.contents("f").unwrap(), b"ac");
        s.fail_nth(FaultOp::Sync, 1);
        assert!(f.sync_data().is_err());
        assert_eq!(s.durable_contents("f").unwrap(), b"");
        f.sync_data().unwrap();
        assert_eq!(s.durable_contents("f").unwrap(), b"ac");
        s.fail_nth(FaultOp::Any, 2);
        f.write_at(0, b"x").unwrap();
        assert!(s.rename("f", "g").is_err());
        s.rename("f", "g").unwrap();
        assert_eq!(s.file_names(), vec!["g".to_string()]);
        assert_eq!(s.faults_fired(), 3);
    }
}
