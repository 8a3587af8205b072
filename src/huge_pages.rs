//! Weight buffers on transparent huge pages.
//!
//! At a few tokens a product streams its weights from memory once per call.
//! On 4 KiB pages each row of a 4096-column int8 matrix is a page of its
//! own, and the TLB and the hardware prefetchers (which stop at page
//! boundaries) start cold on every row. So weight buffers of 4 MiB and more
//! (NumPy's threshold for its own arrays) are advised for 2 MiB pages
//! (`madvise(MADV_HUGEPAGE)`, which Linux honours when transparent huge
//! pages are in `madvise` or `always` mode) before they are first written.
//! Measured on this project's VM (interleaved A/B, medians of 60 calls):
//! `w8a8_matmul` at M = 1 and 8 on 4096x4096 and 11008x4096 took 0.88-0.97
//! of the time with the same weights on 4 KiB pages at one thread, and
//! 0.94-1.03 at two (within the noise there); M = 128 was unchanged.
//! Elsewhere (other systems, or Linux without transparent huge pages) the
//! advice is skipped or refused, and the buffer is an ordinary one.

use crate::error::try_reserved;
use crate::DynQuantError;

/// Buffers of at least this many bytes are advised (NumPy's threshold).
pub(crate) const MIN_BYTES: usize = 4 << 20;

/// `vec![value; n]` as `try_vec` gives it, with its memory advised for huge
/// pages before it is first written (the kernel picks the page size when a
/// page is first touched) when it takes at least [`MIN_BYTES`].
pub(crate) fn try_vec<T: Clone>(n: usize, value: T) -> Result<Vec<T>, DynQuantError> {
    let mut v = try_reserved::<T>(n)?;
    let bytes = n.saturating_mul(core::mem::size_of::<T>());
    if bytes >= MIN_BYTES {
        advise(v.as_ptr().cast(), bytes);
    }
    v.resize(n, value);
    Ok(v)
}

/// Advises the whole pages inside `bytes` bytes from `start` for huge
/// pages; returns how many bytes the kernel accepted the advice for (0 when
/// it refused, or on other systems).
#[cfg(target_os = "linux")]
fn advise(start: *const u8, bytes: usize) -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return 0,
    };
    let first = (start as usize).next_multiple_of(page);
    let end = (start as usize).saturating_add(bytes) / page * page;
    if end <= first {
        return 0;
    }
    // SAFETY: [first, end) is whole pages inside the caller's own
    // allocation of `bytes` bytes at `start`. MADV_HUGEPAGE only changes
    // which page size the kernel backs those pages with; it does not change
    // their contents or whether they may be read or written, and no Rust
    // reference to them can observe the difference.
    let refused =
        unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
    if refused == 0 {
        end - first
    } else {
        0
    }
}

#[cfg(not(target_os = "linux"))]
fn advise(_start: *const u8, _bytes: usize) -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large buffers hold their values, are advised wherever the kernel has
    /// transparent huge pages, and small ones are plain `try_vec`s.
    #[test]
    fn buffers_hold_their_values_and_large_ones_are_advised() {
        for n in [
            0usize,
            1,
            4095,
            MIN_BYTES - 1,
            MIN_BYTES,
            MIN_BYTES + 12_345,
        ] {
            let v = try_vec(n, 7u8).unwrap();
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&b| b == 7), "{n}");
        }
        let wide = try_vec(MIN_BYTES / 4 + 3, -1.5f32).unwrap();
        assert!(wide.iter().all(|&v| v == -1.5));
        assert!(matches!(
            try_vec(usize::MAX / 2, 0u8),
            Err(DynQuantError::AllocationFailed { .. })
        ));
        let mut buf = try_reserved::<u8>(3 * MIN_BYTES).unwrap();
        let advised = advise(buf.as_ptr(), 3 * MIN_BYTES);
        let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists();
        if cfg!(target_os = "linux") && thp {
            // All but the partial pages at either end.
            assert!(advised > 3 * MIN_BYTES - 2 * 65536, "{advised}");
        } else {
            assert_eq!(advised, 0);
        }
        buf.resize(3 * MIN_BYTES, 1);
        assert!(buf.iter().all(|&b| b == 1));
    }
}
