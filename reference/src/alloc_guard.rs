//! Global allocator guard against allocation bombs in decoded network input.
//!
//! `kafka-protocol` 0.18 decodes an array by calling `Vec::with_capacity(count)` with the
//! count read from the wire *before* reading any element. A 20-byte request claiming 2^31
//! topics asks for hundreds of GB; under Linux's default overcommit heuristic that allocation
//! fails and Rust aborts the whole process (allocation failure is not a panic). One frame
//! would take the broker down.
//!
//! This allocator serves every allocation of at least [`HUGE`] bytes with an anonymous
//! `MAP_NORESERVE` mapping: address space is reserved but no memory is committed or
//! accounted until pages are touched. The decoder fails on the next element read (the
//! frame is short), the untouched mapping is unmapped, and the connection is closed with a
//! log line. Smaller allocations go to the system allocator unchanged. Legitimate huge
//! allocations (e.g. the model checker's state tables) still work; they are committed on
//! first touch like any anonymous memory.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations from this size up are served by lazily committed mappings.
pub const HUGE: usize = 1 << 30;
const PAGE: usize = 4096;

pub struct NoReserveHuge;

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= PAGE
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: anonymous private mapping with no fixed address; checked for MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

unsafe impl GlobalAlloc for NoReserveHuge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            unsafe { map(layout.size()) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            unsafe { map(layout.size()) } // anonymous mappings are zero-filled
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        if !is_huge(&layout) && !is_huge(&new_layout) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        if is_huge(&layout) && is_huge(&new_layout) {
            // Move the page tables instead of copying (and so committing) the whole block.
            let p =
                unsafe { libc::mremap(ptr.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE) };
            return if p == libc::MAP_FAILED {
                std::ptr::null_mut()
            } else {
                p.cast()
            };
        }
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller of the two sizes and distinct.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn absurd_capacity_is_reserved_not_committed() {
        // 256 GiB: more than the machine has; with the guard this succeeds lazily.
        let v: Vec<u64> = Vec::with_capacity(1 << 35);
        assert!(v.capacity() >= 1 << 35);
        let mut w: Vec<u8> = Vec::with_capacity(super::HUGE);
        w.extend_from_slice(b"abc");
        w.reserve(super::HUGE); // realloc huge -> huge keeps the contents
        assert_eq!(&w[..], b"abc");
        w.shrink_to_fit(); // huge -> small
        assert_eq!(&w[..], b"abc");
    }
}
