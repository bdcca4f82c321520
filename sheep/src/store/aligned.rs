//! Page-aligned byte buffers. A direct (O_DIRECT) write needs its memory aligned like its
//! offset and length; the server reads write payloads straight into one of these, so the
//! bytes that came off the socket go to the disk without a bounce copy.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes};

/// Alignment of direct I/O memory, offsets and lengths: a 4 KiB-sector disk's.
pub const ALIGN: usize = 4096;

/// A fixed-capacity, `ALIGN`-aligned buffer filled from the front.
pub struct Aligned {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: `Aligned` owns its allocation outright, like a `Vec<u8>`.
unsafe impl Send for Aligned {}
// SAFETY: shared access only reads the initialised bytes.
unsafe impl Sync for Aligned {}

impl Aligned {
    /// An empty buffer that holds up to `cap` bytes.
    pub fn with_capacity(cap: usize) -> Aligned {
        let layout = Self::layout(cap);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout)
        };
        Aligned { ptr, cap, len: 0 }
    }

    /// A copy of `data` in aligned memory.
    pub fn copy_of(data: &[u8]) -> Aligned {
        let mut a = Aligned::with_capacity(data.len());
        a.put_slice(data);
        a
    }

    fn layout(cap: usize) -> Layout {
        match Layout::from_size_align(cap.max(1), ALIGN) {
            Ok(l) => l,
            Err(_) => alloc::handle_alloc_error(Layout::new::<[u8; ALIGN]>()),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Shared, zero-copy, still aligned.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

/// Whether `data` may be written with O_DIRECT as it is (its memory is aligned).
pub fn is_aligned(data: &[u8]) -> bool {
    (data.as_ptr() as usize).is_multiple_of(ALIGN)
}

impl AsRef<[u8]> for Aligned {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were written through `BufMut`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `with_capacity` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
    }
}

// SAFETY: `chunk_mut` hands out exactly the unwritten tail of the allocation, and
// `advance_mut` only counts bytes the caller wrote there.
unsafe impl BufMut for Aligned {
    fn remaining_mut(&self) -> usize {
        self.cap - self.len
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        assert!(cnt <= self.cap - self.len, "advance past the end of an aligned buffer");
        self.len += cnt;
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        // SAFETY: `len..cap` lies inside the allocation.
        unsafe { UninitSlice::from_raw_parts_mut(self.ptr.as_ptr().add(self.len), self.cap - self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_filled_in_order() {
        let mut a = Aligned::with_capacity(10_000);
        assert!(a.is_empty());
        a.put_slice(b"abc");
        a.put_slice(&[7u8; 9_997]);
        assert_eq!(a.remaining_mut(), 0);
        let b = a.freeze();
        assert!(is_aligned(&b));
        assert_eq!(&b[..3], b"abc");
        assert_eq!(b.len(), 10_000);
        let c = Aligned::copy_of(&b[1..]);
        assert!(is_aligned(c.as_ref()));
        assert_eq!(c.as_ref(), &b[1..]);
        assert!(!is_aligned(&b[1..]));
    }
}
