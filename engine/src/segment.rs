//! Segment files: naming, the 64-byte header, and zero-filled spares.
//!
//! Format (segment header, 64 bytes): { magic: [u8;8] = "FERROMQS" | version: u16 |
//!   header_len: u16 | segment: u32 | next_message_id: u64 | next_queue_no: u32 |
//!   reserved: [u8;32] (zero) | crc: u32 } — crc is CRC-32 over bytes 0..60.

use std::sync::Arc;

use crate::error::CorruptionKind;
use crate::ids::SegmentId;
use crate::storage::{Storage, StorageFile, write_zeros_stepped};

pub const MAGIC: [u8; 8] = *b"FERROMQS";
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_BYTES: usize = 64;
/// Prefix of preallocated, zero-filled files not yet part of the log.
pub const SPARE_PREFIX: &str = "spare-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segment: SegmentId,
    /// Message ids below this were handed out before the segment began: a floor for the
    /// id counter even when every earlier record is gone.
    pub next_message_id: u64,
    pub next_queue_no: u32,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(HEADER_BYTES as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.segment.0.to_le_bytes());
        b[16..24].copy_from_slice(&self.next_message_id.to_le_bytes());
        b[24..28].copy_from_slice(&self.next_queue_no.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8], expected: SegmentId) -> Result<SegmentHeader, CorruptionKind> {
        if b.len() < HEADER_BYTES {
            return Err(CorruptionKind::ShortSegment);
        }
        if b[0..8] != MAGIC {
            return Err(CorruptionKind::BadMagic);
        }
        let crc = u32::from_le_bytes([b[60], b[61], b[62], b[63]]);
        if crc32fast::hash(&b[0..60]) != crc {
            return Err(CorruptionKind::HeaderChecksum);
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != FORMAT_VERSION {
            return Err(CorruptionKind::UnsupportedVersion(version));
        }
        let segment = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        if segment != expected.0 {
            return Err(CorruptionKind::SegmentIdMismatch {
                expected: expected.0,
                found: segment,
            });
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[16..24]);
        Ok(SegmentHeader {
            segment: SegmentId(segment),
            next_message_id: u64::from_le_bytes(id),
            next_queue_no: u32::from_le_bytes([b[24], b[25], b[26], b[27]]),
        })
    }
}

/// A file ready to become a segment, its name and the open file: zero-filled and synced,
/// but for a new reserve where the file system reserves blocks ([`create_reserve_paced`]).
pub type Spare = (String, Arc<dyn StorageFile>);

/// The name of spare number `n`.
pub fn spare_name(n: u64) -> String {
    format!("{SPARE_PREFIX}{n:016x}.tmp")
}

/// Makes a spare of an existing file (a dropped segment renamed to `name`): zeros written
/// over it in place as in [`create_spare_paced`], then one fdatasync. A file of another
/// size (a segment from before `segment_bytes` changed) is removed, and `InvalidData`
/// returned; so is a file that fails to be zeroed.
pub fn refill_spare_paced(
    storage: &dyn Storage,
    name: String,
    bytes: u64,
    pace: &mut dyn FnMut(u64) -> bool,
) -> std::io::Result<Option<Spare>> {
    let made = storage.open(&name).and_then(|file| {
        let len = file.len()?;
        if len != bytes {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{name} has {len} bytes, not {bytes}"),
            ));
        }
        zero_fill(storage, name.clone(), file, bytes, pace)
    });
    if made.is_err() {
        // Not left behind until the next open.
        let _ = storage.remove(&name);
    }
    made
}

/// The zero-fill both kinds of spare share: `bytes` zeros over `file` from offset 0, then
/// one fdatasync. Called off by `pace`: the file is removed and `Ok(None)` returned.
fn zero_fill(
    storage: &dyn Storage,
    name: String,
    file: Arc<dyn StorageFile>,
    bytes: u64,
    pace: &mut dyn FnMut(u64) -> bool,
) -> std::io::Result<Option<Spare>> {
    if !write_zeros_stepped(&*file, bytes, pace)? {
        drop(file);
        let _ = storage.remove(&name);
        return Ok(None);
    }
    file.sync_data()?;
    Ok(Some((name, file)))
}

/// Creates a spare file of `bytes` zeros, written for real (not a sparse hole and not
/// `fallocate`), so that later `fdatasync`s overwrite allocated blocks and skip the
/// file-system metadata commit. Returns the file and its name.
pub fn create_spare(
    storage: &dyn Storage,
    n: u64,
    bytes: u64,
) -> std::io::Result<(String, Arc<dyn StorageFile>)> {
    create_spare_paced(storage, n, bytes, &mut |_| true)?
        .ok_or_else(|| std::io::Error::other("spare creation was called off"))
}

/// [`create_spare`] in steps of [`crate::storage::STEP_BYTES`], each on the device before the
/// next (past the page cache where it can: [`write_zeros_stepped`]), then one fdatasync for
/// the whole file.
/// Before each step `pace` is called with the bytes done so far; it may sleep to spread
/// the work out, and returns false to call the whole thing off (the partial file is
/// removed and `Ok(None)` returned).
///
/// Why pace: the zeros of a whole segment written right after a roll made the log's
/// group-commit syncs wait behind them for about 75 ms (see [`write_zeros_stepped`]).
pub fn create_spare_paced(
    storage: &dyn Storage,
    n: u64,
    bytes: u64,
    pace: &mut dyn FnMut(u64) -> bool,
) -> std::io::Result<Option<Spare>> {
    Ok(create_paced(storage, n, bytes, pace, true)?.map(|(spare, _)| spare))
}

/// A spare kept back for a full disk (the log's reserve): where the file system reserves
/// its blocks (`fallocate`), that is all it gets, no zeros written (it reads as zeros, and
/// the syncs of its first use commit the allocation as they go: slower, on a path taken
/// only when the disk is full). Elsewhere it is zero-filled as in [`create_spare_paced`].
/// The flag says whether it was zero-filled.
pub fn create_reserve_paced(
    storage: &dyn Storage,
    n: u64,
    bytes: u64,
    pace: &mut dyn FnMut(u64) -> bool,
) -> std::io::Result<Option<(Spare, bool)>> {
    create_paced(storage, n, bytes, pace, false)
}

/// [`create_spare_paced`], and without the zeros where the blocks were reserved and
/// `zeros` is false; the flag says whether the file was zero-filled.
fn create_paced(
    storage: &dyn Storage,
    n: u64,
    bytes: u64,
    pace: &mut dyn FnMut(u64) -> bool,
    zeros: bool,
) -> std::io::Result<Option<(Spare, bool)>> {
    let name = spare_name(n);
    // A leftover of a crashed run may have the same name.
    let _ = storage.remove(&name);
    let file = storage.create(&name)?;
    // No directory sync for the spare's name: a spare is only used under the segment
    // name it is renamed to, and that rename syncs the directory (one journal commit per
    // segment, not two). A spare lost in a crash held nothing.
    // The blocks are reserved first: on a disk without the room, the allocator finds out
    // right after a roll, while the new active segment still has all its room for the
    // consumers' records (see `Log::post_room`), not partway through the paced zero-fill.
    let made = file.allocate(bytes).and_then(|reserved| {
        if reserved && !zeros {
            return Ok(Some(((name.clone(), file), false)));
        }
        Ok(zero_fill(storage, name.clone(), file, bytes, pace)?.map(|spare| (spare, true)))
    });
    if made.is_err() {
        // Not left behind (on a full disk the allocator tries again every 200 ms).
        let _ = storage.remove(&name);
    }
    made
}
