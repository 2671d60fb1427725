//! The binary's global allocator: jemalloc for blocks under [`LARGE`], the system
//! allocator (glibc) for larger ones.
//!
//! Why two. jemalloc keeps small blocks in slabs without headers, so the parts of a block
//! nobody wrote never become resident: hyper's two 8 KiB buffers per connection cost an
//! idle long poll one page instead of two or three (10,000 idle long polls: 127 MB of RSS
//! with glibc alone, 86 MB with jemalloc). But jemalloc grows a large block by copying it,
//! while glibc's `realloc` of an mmapped block moves page tables (`mremap`); the engine's
//! per-queue tables reach hundreds of MB and grow under the state lock, and with jemalloc
//! alone each doubling was a copy plus fresh page faults: stalls of ~100 ms (p99 of durable
//! batch posts at half the peak rate: 62–66 ms with jemalloc alone, 15–18 ms with glibc).
//!
//! Ownership follows the size in the `Layout`, which Rust passes unchanged to `dealloc` and
//! `realloc`: a block is the system allocator's exactly when its size is at least
//! [`LARGE`]. A `realloc` across the line allocates on the other side, copies and frees.

use std::alloc::{GlobalAlloc, Layout, System};

use tikv_jemallocator::Jemalloc;

/// Blocks of this size and more go to the system allocator.
const LARGE: usize = 256 * 1024;

pub struct Split;

fn large(size: usize) -> bool {
    size >= LARGE
}

#[expect(
    unsafe_code,
    reason = "a global allocator is an unsafe trait; every call forwards to jemalloc or the system allocator"
)]
// SAFETY: each call is forwarded to the allocator that owns the block (decided by the
// layout's size, which callers must pass unchanged, as `GlobalAlloc` requires); a realloc
// across the line is an allocation on the new side, a copy of the smaller of the two sizes
// and a free on the old side.
unsafe impl GlobalAlloc for Split {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if large(layout.size()) {
                System.alloc(layout)
            } else {
                Jemalloc.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if large(layout.size()) {
                System.alloc_zeroed(layout)
            } else {
                Jemalloc.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the allocator its layout's size names (see above).
        unsafe {
            if large(layout.size()) {
                System.dealloc(ptr, layout)
            } else {
                Jemalloc.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same-side reallocs are forwarded; across the line, the new block is
        // valid for `new_size` bytes, the old one for `layout.size()`, and they are
        // distinct blocks.
        unsafe {
            match (large(layout.size()), large(new_size)) {
                (true, true) => System.realloc(ptr, layout, new_size),
                (false, false) => Jemalloc.realloc(ptr, layout, new_size),
                _ => {
                    let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                    let new = self.alloc(new_layout);
                    if !new.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    new
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(
        unsafe_code,
        reason = "drives the allocator the way Rust's collections do"
    )]
    fn blocks_keep_their_bytes_across_the_line() {
        let a = Split;
        let small = Layout::from_size_align(1000, 8).unwrap();
        // SAFETY: every pointer is used within its current size and freed once, with the
        // layout it has at that moment.
        unsafe {
            let p = a.alloc(small);
            assert!(!p.is_null());
            for i in 0..1000 {
                *p.add(i) = (i % 251) as u8;
            }
            // Small to large, large to larger (the system allocator), large to small.
            let p = a.realloc(p, small, LARGE + 10);
            let big = Layout::from_size_align(LARGE + 10, 8).unwrap();
            *p.add(LARGE + 9) = 7;
            let p = a.realloc(p, big, 4 * LARGE);
            let bigger = Layout::from_size_align(4 * LARGE, 8).unwrap();
            assert_eq!(*p.add(LARGE + 9), 7);
            let p = a.realloc(p, bigger, 500);
            for i in 0..500 {
                assert_eq!(*p.add(i), (i % 251) as u8);
            }
            a.dealloc(p, Layout::from_size_align(500, 8).unwrap());
            let z = a.alloc_zeroed(bigger);
            assert!((0..4 * LARGE).all(|i| *z.add(i) == 0));
            a.dealloc(z, bigger);
        }
    }
}
