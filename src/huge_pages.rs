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
    // SAFETY: madvise(MADV_HUGEPAGE) is memory-safe on any range: it only
    // changes which page size the kernel backs mapped pages with, never
    // their contents or whether they may be read or written (an unmapped
    // range is refused with ENOMEM), so no Rust reference can observe it.
    // The caller passes its own fresh buffer so that the advice lands on
    // nothing else; [first, end) is the whole pages inside it.
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

/// The `VmFlags` of the mapping of this process that holds `addr`, from
/// /proc/self/smaps (None when it cannot be read or has no such line).
#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
pub(crate) fn vm_flags(addr: usize) -> Option<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        let range = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = range.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = (lo..hi).contains(&addr);
                continue;
            }
        }
        if inside {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                return Some(flags.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers hold their values; small ones are plain; a large one from
    /// `try_vec` is advised: wherever the kernel accepts the advice at all,
    /// the mapping holding the buffer's middle carries the `hg` flag
    /// (checked on x86-64 Linux).
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
        // Does this kernel take the advice? (It does wherever transparent
        // huge pages are built in, whatever their mode; this project's
        // machines have them, and sysfs says so.)
        let probe = try_reserved::<u8>(3 * MIN_BYTES).unwrap();
        let accepted = advise(probe.as_ptr(), 3 * MIN_BYTES);
        if cfg!(target_os = "linux")
            && std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists()
        {
            assert!(accepted > 3 * MIN_BYTES - 2 * 65536, "{accepted}");
        }
        let v = try_vec(3 * MIN_BYTES, 1i8).unwrap();
        assert!(v.iter().all(|&b| b == 1));
        // On x86-64 only: the aarch64 tests run here under qemu-user, whose
        // synthesized smaps has no `hg` flag.
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        if accepted > 0 {
            let middle = v.as_ptr() as usize + v.len() / 2;
            let flags = vm_flags(middle).expect("the buffer's mapping in /proc/self/smaps");
            assert!(
                flags.split_whitespace().any(|f| f == "hg"),
                "VmFlags {flags}"
            );
        }
    }
}
