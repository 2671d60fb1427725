//! All file I/O goes through [`Storage`], so tests can inject failed writes, failed fsyncs
//! and crash images without touching a disk.
//!
//! The engine's files are preallocated to their full size before use and never shrink
//! while open, which is what makes the read-only memory maps in [`OsStorage`] sound.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// A directory of named files.
pub trait Storage: Send + Sync + 'static {
    /// Where the files are, for error messages.
    fn root(&self) -> &Path;
    /// Names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Opens an existing file.
    fn open(&self, name: &str) -> io::Result<Arc<dyn StorageFile>>;
    /// Creates a new file (fails if it exists).
    fn create(&self, name: &str) -> io::Result<Arc<dyn StorageFile>>;
    /// Atomically renames, then makes the rename durable.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Atomically swaps the names of two existing files, then makes the swap durable.
    /// `NotFound` if either is missing, `InvalidInput` or `Unsupported` where the file
    /// system cannot swap; an error of another kind once the swap happened.
    fn exchange(&self, a: &str, b: &str) -> io::Result<()>;
    /// Removes a file, then makes the removal durable.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes creations and removals in the directory durable.
    fn sync_dir(&self) -> io::Result<()>;
}

/// One open file.
pub trait StorageFile: Send + Sync {
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// fdatasync.
    fn sync_data(&self) -> io::Result<()>;
    /// Writes `offset..offset + len` back to the device and waits for it, without a
    /// device cache flush or a journal commit: not durable until a later `sync_data`.
    /// The default is `sync_data` (stronger, never weaker).
    fn write_back(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        self.sync_data()
    }
    /// Starts writing `offset..offset + len` back to the device and returns without
    /// waiting (a hint: nothing is promised until a later `sync_data`). The default does
    /// nothing.
    fn start_write_back(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Grows or shrinks the file. Never called on a file that is mapped.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves the blocks of `0..len` at once (`fallocate`), so that a file system without
    /// the room says so before anything is written rather than partway through; the file
    /// reads as zeros there. Whether it did: where the file system cannot, it does nothing
    /// and answers false (the writes that follow allocate).
    fn allocate(&self, len: u64) -> io::Result<bool> {
        let _ = len;
        Ok(false)
    }
    /// A read-only view of the whole file at its current length.
    fn map(&self) -> io::Result<Arc<dyn Region>>;
    /// Writes `zeros` (all zero bytes) at `offset` past the page cache (`O_DIRECT`), where
    /// the file system takes it: no copy into cached pages, and the write is on the
    /// device when it returns (durable after a later `sync_data`). `offset`, the length
    /// and the buffer's address are multiples of [`DIRECT_ALIGN`]. Whether it did: false
    /// where direct I/O is not available, and the caller writes the zeros as usual. The
    /// default answers false.
    fn write_zeros_direct(&self, offset: u64, zeros: &[u8]) -> io::Result<bool> {
        let _ = (offset, zeros);
        Ok(false)
    }
}

/// Bytes between two write-backs of [`write_zeros_stepped`] (and of the restart index's
/// writer), and between two calls of its pacing callback. Smaller steps interleave finer
/// with the log's syncs: 256 KiB against 1 MiB cut the requests over 5 ms in batch posts
/// at 7,000 req/s from 3,843-6,901 to 729-2,069 (3 runs each, alternated).
pub const STEP_BYTES: u64 = 256 << 10;

/// Alignment of offsets, lengths and buffers for direct I/O
/// ([`StorageFile::write_zeros_direct`]): a page, which covers every logical block size.
pub const DIRECT_ALIGN: u64 = 4096;

/// [`STEP_BYTES`] zeros at an address aligned to [`DIRECT_ALIGN`] (allocated once; the
/// pages of a zeroed allocation stay shared until written, and nothing writes them).
fn step_of_zeros() -> &'static [u8] {
    static ZEROS: OnceLock<Vec<u8>> = OnceLock::new();
    let v = ZEROS.get_or_init(|| vec![0u8; (STEP_BYTES + DIRECT_ALIGN) as usize]);
    let skip = v.as_ptr().align_offset(DIRECT_ALIGN as usize);
    &v[skip..skip + STEP_BYTES as usize]
}

/// Writes `len` zeros into `file` from offset 0 in steps of [`STEP_BYTES`], each on the
/// device before the next, so that a large file (a spare segment; the restart index is
/// written the same way by its own loop) never reaches the device as one burst. Every
/// `fdatasync` of the log ends with a device cache flush, which has to write out whatever
/// else was sent since the last one: a whole dirty file left to one final sync made the
/// log's syncs wait behind it for tens to hundreds of milliseconds.
///
/// Each step goes past the page cache where the file system allows
/// ([`StorageFile::write_zeros_direct`]): no 64 MiB of zeros copied into cached pages and
/// written back beside the log's syncs (with it, the p99 of batch posts at 9,000 req/s was
/// lower in 19 of 25 alternated pairs). The log's writes then land in pages that are not cached
/// (the writer allocates them, as the allocator did); it writes whole pages so as not to
/// read them first (`WRITE_END_ALIGN` in `log.rs`). Elsewhere, and for a last part shorter
/// than [`DIRECT_ALIGN`], a step is written through the cache and written back on its
/// own ([`StorageFile::write_back`]).
///
/// Why write back each step rather than fdatasync it: in a new file each step allocates
/// blocks, so an fdatasync per step was also a metadata commit and a device flush, and
/// the log's syncs queued behind them. Written back, a step is only data writes; the
/// caller's one final fdatasync makes the data and the allocation durable together.
///
/// Before each step `pace(done)` is called; it may sleep to spread the work out, and
/// returns false to call the write off (then `Ok(false)`). Does not sync the file.
pub fn write_zeros_stepped(
    file: &dyn StorageFile,
    len: u64,
    pace: &mut dyn FnMut(u64) -> bool,
) -> io::Result<bool> {
    let zeros = step_of_zeros();
    let mut direct = true;
    let mut off = 0u64;
    while off < len {
        if !pace(off) {
            return Ok(false);
        }
        let n = (len - off).min(STEP_BYTES);
        // `off` is a multiple of STEP_BYTES, so aligned; the length is cut to the alignment.
        let aligned = n - n % DIRECT_ALIGN;
        let mut done = 0;
        if direct && aligned > 0 {
            if file.write_zeros_direct(off, &zeros[..aligned as usize])? {
                done = aligned;
            } else {
                direct = false;
            }
        }
        if done < n {
            file.write_at(off + done, &zeros[..(n - done) as usize])?;
            file.write_back(off + done, n - done)?;
        }
        off += n;
    }
    Ok(true)
}

/// Read access to a mapped file. Reads past the end return an error instead of faulting.
pub trait Region: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies `dst.len()` bytes at `offset` into `dst`.
    fn read(&self, offset: usize, dst: &mut [u8]) -> io::Result<()>;
    /// Calls `f` with the bytes at `offset..offset + len` without copying where possible.
    fn with_slice(&self, offset: usize, len: usize, f: &mut dyn FnMut(&[u8])) -> io::Result<()>;
}

/// The real file system.
pub struct OsStorage {
    dir: PathBuf,
}

impl OsStorage {
    /// Storage in `dir`, created (with its parents) if missing. What the engine creates is
    /// private to the user running it: the directory 0700, files 0600 (the log holds every
    /// message body and the credentials' records). An existing directory keeps its mode.
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<OsStorage> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = dir.into();
        if !dir.is_dir() {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent)?;
            }
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(OsStorage { dir })
    }
}

impl Storage for OsStorage {
    fn root(&self) -> &Path {
        &self.dir
    }
    fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                out.push(name.to_string());
            }
        }
        out.sort();
        Ok(out)
    }
    fn open(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join(name))?;
        Ok(Arc::new(OsFile::new(file)))
    }
    fn create(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.dir.join(name))?;
        Ok(Arc::new(OsFile::new(file)))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.dir.join(from), self.dir.join(to))?;
        self.sync_dir()
    }
    fn exchange(&self, a: &str, b: &str) -> io::Result<()> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let path = |name: &str| {
            CString::new(self.dir.join(name).as_os_str().as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
        };
        let (a, b) = (path(a)?, path(b)?);
        #[expect(
            unsafe_code,
            reason = "renameat2 has no std wrapper; it only reads the two paths"
        )]
        // SAFETY: both pointers are to NUL-terminated strings that outlive the call, which
        // only reads them.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // Swapped: a failure from here on must not read as "not swapped" (the caller falls
        // back to a rename for `NotFound` and `InvalidInput`).
        self.sync_dir()
            .map_err(|e| io::Error::other(format!("syncing the directory after a swap: {e}")))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))?;
        self.sync_dir()
    }
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

struct OsFile {
    file: File,
    /// The same file opened again with `O_DIRECT`, for [`StorageFile::write_zeros_direct`]:
    /// opened at the first call, `None` where the file system refuses it.
    direct: OnceLock<Option<File>>,
}

impl OsFile {
    fn new(file: File) -> OsFile {
        OsFile {
            file,
            direct: OnceLock::new(),
        }
    }

    /// The file again, with `O_DIRECT` (through `/proc/self/fd`: the same inode, whatever
    /// its name is by now), or `None` where that cannot be opened.
    fn direct(&self) -> Option<&File> {
        self.direct
            .get_or_init(|| {
                use std::os::fd::AsRawFd;
                use std::os::unix::fs::OpenOptionsExt;
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
                    .ok()
            })
            .as_ref()
    }

    fn sync_file_range(&self, offset: u64, len: u64, flags: libc::c_uint) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range too large",
            ));
        };
        #[expect(
            unsafe_code,
            reason = "sync_file_range on a descriptor we own; no memory is involved"
        )]
        // SAFETY: the descriptor is open for the duration of the call, which only reads it
        // and the three integers; no memory is passed.
        let rc = unsafe { libc::sync_file_range(self.file.as_raw_fd(), off, n, flags) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl StorageFile for OsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn write_back(&self, offset: u64, len: u64) -> io::Result<()> {
        self.sync_file_range(
            offset,
            len,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )
    }
    fn start_write_back(&self, offset: u64, len: u64) -> io::Result<()> {
        self.sync_file_range(offset, len, libc::SYNC_FILE_RANGE_WRITE)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        let Ok(n) = i64::try_from(len) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "length too large",
            ));
        };
        #[expect(
            unsafe_code,
            reason = "fallocate on a descriptor we own; no memory is involved"
        )]
        // SAFETY: the descriptor is open for the duration of the call, which only reads it
        // and the integers; no memory is passed.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, 0, n) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // A file system without fallocate: the zero-fill allocates as it writes.
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(false),
            _ => Err(e),
        }
    }
    fn write_zeros_direct(&self, offset: u64, zeros: &[u8]) -> io::Result<bool> {
        debug_assert!(
            offset.is_multiple_of(DIRECT_ALIGN)
                && (zeros.len() as u64).is_multiple_of(DIRECT_ALIGN)
                && (zeros.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN as usize)
        );
        let Some(direct) = self.direct() else {
            return Ok(false);
        };
        match direct.write_all_at(zeros, offset) {
            Ok(()) => Ok(true),
            // The file system takes the open but not the write (or not this alignment):
            // the caller writes these zeros through the cache.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
    fn map(&self) -> io::Result<Arc<dyn Region>> {
        if self.len()? == 0 {
            return Ok(Arc::new(EmptyRegion));
        }
        // SAFETY: the engine maps only segment files and the restart index. Segments are
        // preallocated to their full size before they are mapped and are never truncated or
        // shrunk afterwards (a torn tail is zeroed in place, not cut). The index is written
        // whole under a temporary name, synced and renamed into place, and mapped only while
        // the open loads it (the map is gone when the open returns). A later index write
        // swaps it out to the temporary name and the write after that rewrites and resizes
        // it there, long after that map was dropped. A dropped segment is unlinked, and on
        // Linux an unlinked file stays valid for existing mappings; or, when the log's own
        // map was the last one (no reader holds it), it is renamed to a spare and zeroed in
        // place, at its full size, after that map is gone. So no access through this map can fault. Concurrent writes
        // through `write_at` only touch bytes past every position a reader is given (readers
        // wait for the writer first).
        #[expect(
            unsafe_code,
            reason = "memmap2 requires unsafe; see the SAFETY comment"
        )]
        let map = unsafe { memmap2::Mmap::map(&self.file)? };
        Ok(Arc::new(MmapRegion { map }))
    }
}

struct EmptyRegion;

impl Region for EmptyRegion {
    fn len(&self) -> usize {
        0
    }
    fn read(&self, offset: usize, dst: &mut [u8]) -> io::Result<()> {
        check_bounds(0, offset, dst.len())
    }
    fn with_slice(&self, offset: usize, len: usize, f: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        check_bounds(0, offset, len)?;
        f(&[]);
        Ok(())
    }
}

struct MmapRegion {
    map: memmap2::Mmap,
}

pub fn check_bounds(total: usize, offset: usize, len: usize) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= total => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "read past the end of a segment",
        )),
    }
}

impl Region for MmapRegion {
    fn len(&self) -> usize {
        self.map.len()
    }
    fn read(&self, offset: usize, dst: &mut [u8]) -> io::Result<()> {
        check_bounds(self.map.len(), offset, dst.len())?;
        dst.copy_from_slice(&self.map[offset..offset + dst.len()]);
        Ok(())
    }
    fn with_slice(&self, offset: usize, len: usize, f: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        check_bounds(self.map.len(), offset, len)?;
        f(&self.map[offset..offset + len]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stepped_writes_land_whole_and_can_be_called_off() {
        let dir = tempfile::tempdir().unwrap();
        let s = OsStorage::new(dir.path()).unwrap();
        // Two whole steps, then one of a page and a bit: the page goes past the cache where
        // the file system allows (`O_DIRECT`), the bit through it.
        let len = 2 * STEP_BYTES as usize + DIRECT_ALIGN as usize + 123;
        let z = s.create("zeros").unwrap();
        z.write_at(0, &vec![7u8; len + 5]).unwrap();
        let mut calls = Vec::new();
        let done = write_zeros_stepped(&*z, len as u64, &mut |d| {
            calls.push(d);
            true
        })
        .unwrap();
        assert!(done);
        assert_eq!(calls, [0, STEP_BYTES, 2 * STEP_BYTES]);
        let mut back = vec![1u8; len + 5];
        z.read_at(0, &mut back).unwrap();
        assert!(back[..len].iter().all(|&b| b == 0) && back[len..] == [7u8; 5]);
        // What a direct write wrote is what a read through the cache (and a map) sees,
        // also where the cache held the old bytes.
        z.write_at(0, &[9u8; 8192]).unwrap();
        z.read_at(0, &mut back[..8192]).unwrap();
        let direct = z.write_zeros_direct(0, &step_of_zeros()[..8192]).unwrap();
        if !direct {
            // A file system without direct I/O: nothing to check here.
            z.write_at(0, &step_of_zeros()[..8192]).unwrap();
        }
        let map = z.map().unwrap();
        let mut first = [1u8; 8192];
        map.read(0, &mut first).unwrap();
        assert!(first.iter().all(|&b| b == 0), "direct: {direct}");

        let off = s.create("off").unwrap();
        let stopped = write_zeros_stepped(&*off, len as u64, &mut |d| d < STEP_BYTES);
        assert!(!stopped.unwrap());
        assert_eq!(off.len().unwrap(), STEP_BYTES);
    }

    #[test]
    fn what_the_engine_creates_is_private_to_its_user() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("parent").join("data");
        let st = OsStorage::new(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        st.create("0000000000000001.seg").unwrap();
        assert_eq!(mode(&dir.join("0000000000000001.seg")), 0o600);
        // An existing directory keeps its mode.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
        OsStorage::new(&dir).unwrap();
        assert_eq!(mode(&dir), 0o750);
    }
}
