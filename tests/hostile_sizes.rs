//! Sizes that cannot exist: dimension products that overflow usize, and
//! buffers sized by an argument rather than by data that already exists.
//! Each must be an error (`InvalidArgument`, `ShapeMismatch`,
//! `AllocationFailed`) — never a wrapped length that passes the shape
//! checks, an index panic, or an allocation failure that aborts the process.
//!
//! Huge *real* slices come from `Zeros`: an anonymous `MAP_NORESERVE`
//! mapping. Reading it maps the shared zero page and writing a page copies
//! only that page, so a 4 TiB `&[f32]` costs no memory. It is a valid slice
//! (mapped, aligned, every bit pattern a valid f32/i8), so nothing here is
//! undefined behaviour: the functions only fail their checks sooner.
#![cfg(target_os = "linux")]

use std::panic::{catch_unwind, AssertUnwindSafe};

use dynquant::{
    quantize, smooth, weights, ActQuant, DynQuantError, DynamicScaleMode, Int4Layout, NanPolicy,
};

/// `len` elements of zeros in a lazily mapped, never-committed region.
struct Zeros<T> {
    ptr: *mut T,
    len: usize,
}

impl<T: Copy> Zeros<T> {
    fn new(len: usize) -> Zeros<T> {
        let bytes = len * core::mem::size_of::<T>();
        // SAFETY: a fresh anonymous private mapping; no existing memory is
        // touched. MAP_NORESERVE: no swap/commit accounting, pages appear on
        // first touch (the zero page for reads).
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap of {bytes} bytes");
        Zeros {
            ptr: ptr.cast(),
            len,
        }
    }

    fn slice(&self) -> &[T] {
        // SAFETY: mapped, page-aligned, zero-filled (a valid T for the i8/u8/
        // f32 used here), `len` elements, alive as long as `self`.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn slice_mut(&mut self) -> &mut [T] {
        // SAFETY: as `slice`, and `&mut self` makes the borrow unique.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T> Drop for Zeros<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len * core::mem::size_of::<T>()) };
    }
}

thread_local! {
    /// Set around a call expected to panic: its message is not printed.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                default(info);
            }
        }));
    });
}

fn overflow(r: Result<(), DynQuantError>) {
    match r {
        Err(DynQuantError::InvalidArgument(msg)) => assert!(msg.contains("overflow"), "{msg}"),
        other => panic!("expected an overflow error, got {other:?}"),
    }
}

const TIB: usize = 1 << 40;

/// Whether the kernel refuses a 1 TiB allocation (overcommit modes 0 and 2;
/// mode 1 grants anything, and touching it would summon the OOM killer).
fn refuses_huge_allocations() -> bool {
    std::fs::read_to_string("/proc/sys/vm/overcommit_memory").is_ok_and(|m| m.trim() != "1")
}

#[test]
fn w8a8_matmul_rows_times_outputs_overflow() {
    // x: 2^40 tokens of one value (4 TiB of zeros); 2^24 weight rows:
    // m * n = 2^64 wraps to 0, which the empty `out` would have matched.
    let x = Zeros::<f32>::new(TIB);
    let w = Zeros::<i8>::new(1 << 24);
    let s = Zeros::<f32>::new(1 << 24);
    let r = dynquant::w8a8_matmul_into(
        x.slice(),
        TIB,
        w.slice(),
        s.slice(),
        None,
        ActQuant::PER_TOKEN,
        &mut [],
    );
    overflow(r);
}

#[test]
fn w4a8_products_that_wrap_are_errors() {
    let act = ActQuant::PER_TENSOR;
    // m * k = 2^64 wraps to 0 (and m * n too): the empty x and out matched.
    let layout = Int4Layout {
        out_features: 2,
        in_features: 2,
        group_size: 2,
    };
    let r =
        dynquant::w4a8_matmul_into(&[], 1 << 63, &[0; 2], &[1.0; 2], layout, None, act, &mut []);
    overflow(r);
    // n * row_bytes and n * groups wrap to 0; m * n too.
    let layout = Int4Layout {
        out_features: 1 << 62,
        in_features: 8,
        group_size: 2,
    };
    let r = dynquant::w4a8_matmul_into(&[1.0; 32], 4, &[], &[], layout, None, act, &mut []);
    overflow(r);
    let layout = Int4Layout {
        out_features: usize::MAX,
        in_features: 1,
        group_size: 1,
    };
    let r = dynquant::w4a8_matmul_into(&[1.0; 3], 3, &[], &[], layout, None, act, &mut []);
    overflow(r);
}

#[test]
fn matvec_and_smoothing_overflow() {
    let a = Zeros::<f32>::new(TIB);
    // Zero outputs of a 2^40-value activation: its 1 TiB int8 copy cannot
    // be allocated, which is an error, not an abort.
    if refuses_huge_allocations() {
        let r = dynquant::w8a8_matvec_into(&[], &[], a.slice(), TIB, NanPolicy::Raise, &mut []);
        assert_eq!(r, Err(DynQuantError::AllocationFailed { bytes: TIB }));
    }
    let r = dynquant::try_w8a8_matvec(&[], &[], a.slice(), TIB, TIB, NanPolicy::Raise);
    overflow(r.map(|_| ()));
    let mut data = [1.0f32; 4];
    let f = a.slice();
    overflow(smooth::smooth_activations(&mut data, f, 1 << 30, TIB));
    overflow(smooth::smooth_weights(&mut data, f, 1 << 30, TIB));
    let mut dst = [0f32; 4];
    overflow(smooth::smooth_activations_into(
        &data,
        f,
        1 << 30,
        TIB,
        &mut dst,
    ));
    // The reference's factor function caps the lengths it reads instead.
    let cfg = dynquant::SmoothQuantConfig::default_alpha();
    let factors = smooth::compute_smooth_factors(&data, &data, 2, usize::MAX, usize::MAX, &cfg);
    assert_eq!(factors.len(), 2);
}

#[test]
fn per_row_quantizers_size_nothing_by_rows_alone() {
    install_quiet_hook();
    let mode = DynamicScaleMode::MaxAbs;
    // (2^40, 0): a valid zero-size shape. No scales, no allocation.
    let t = dynquant::try_dynamic_quantize_int8_per_row(&[], TIB, 0, mode, NanPolicy::Raise)
        .expect("zero-size input");
    assert!(t.data.is_empty() && t.scales.is_empty());
    assert_eq!(t.shape, vec![TIB, 0]);
    let r = dynquant::try_dynamic_quantize_int8_per_row(&[], usize::MAX, 2, mode, NanPolicy::Raise);
    overflow(r.map(|_| ()));
    let r = dynquant::try_dynamic_quantize_int8_per_row(
        &[1.0],
        1 << 33,
        1 << 31,
        mode,
        NanPolicy::Raise,
    );
    overflow(r.map(|_| ()));
    // The `_into` form: rows come from a real (zero-page) scales slice.
    let mut scales = Zeros::<f32>::new(TIB);
    let r = quantize::quantize_per_row_into(
        &[1.0; 4],
        1 << 24,
        mode,
        NanPolicy::Raise,
        &mut [0; 4],
        scales.slice_mut(),
    );
    overflow(r);
    // The reference form pads a short input to rows * cols values: when
    // that cannot be allocated it panics (documented), it does not abort.
    let huge = if refuses_huge_allocations() {
        vec![(TIB, 1), (usize::MAX, 2), (1 << 62, 1 << 62)]
    } else {
        vec![(usize::MAX, 2), (1 << 62, 1 << 62)]
    };
    for (rows, cols) in huge {
        QUIET.with(|q| q.set(true));
        let r = catch_unwind(AssertUnwindSafe(|| {
            dynquant::dynamic_quantize_int8_per_row(&[1.0], rows, cols, mode)
        }));
        QUIET.with(|q| q.set(false));
        let msg = r.expect_err("no panic");
        let msg = msg.downcast_ref::<String>().expect("message");
        assert!(msg.contains("cannot be allocated"), "{msg}");
    }
}

#[test]
fn weight_quantizers_check_before_allocating() {
    // (2^40, 0) weights: 2^40 zero scales (4 TiB) cannot exist.
    if refuses_huge_allocations() {
        let r = weights::quantize_weights_int8(&[], TIB, 0);
        assert!(matches!(r, Err(DynQuantError::AllocationFailed { bytes }) if bytes == 4 * TIB));
    }
    let r = weights::quantize_weights_int8(&[], usize::MAX, 0);
    assert!(
        matches!(r, Err(DynQuantError::AllocationFailed { .. })),
        "{r:?}"
    );
    overflow(weights::quantize_weights_int8(&[1.0], TIB, TIB).map(|_| ()));
    overflow(weights::quantize_weights_int4(&[1.0], TIB, TIB, None).map(|_| ()));
    // (2^40, 0) int4: no groups, so no scales: a valid empty result.
    let (p, s) = weights::quantize_weights_int4(&[], TIB, 0, None).unwrap();
    assert!(p.is_empty() && s.is_empty());
    assert!(weights::unpack_int4(&[], usize::MAX).unwrap().is_empty());
    assert!(weights::pack_int4(&[], usize::MAX).unwrap().is_empty());
}

#[test]
fn percentile_index_saturates() {
    assert_eq!(
        dynquant::scale::percentile_index(1.0, usize::MAX),
        usize::MAX - 1
    );
    assert_eq!(
        dynquant::scale::percentile_index(f32::MAX, usize::MAX),
        usize::MAX - 1
    );
    assert_eq!(dynquant::scale::percentile_index(0.5, 0), 0);
}

/// 2^31 + 1 values (8 GiB, mostly the shared zero page: little real memory):
/// the percentile index is computed in f32 as the reference does, so
/// `Percentile(1.0)` picks sorted index `f32(n) - 1 = 2^31 - 1`, the second
/// largest value — not the largest, which an f64 or integer index would give.
/// The bucket of zeros holds 2^31 - 1 values: the selection narrows it with
/// histograms instead of copying it. It reads 8 GiB of zero pages several
/// times (12 s here on a quiet 2-core machine); `DYNQUANT_BIG_TESTS=0` skips it.
#[test]
fn percentile_index_at_two_to_the_31_plus_one() {
    if std::env::var("DYNQUANT_BIG_TESTS").as_deref() == Ok("0") {
        eprintln!("skipped: DYNQUANT_BIG_TESTS=0");
        return;
    }
    let n = (1usize << 31) + 1;
    let mut x = Zeros::<f32>::new(n);
    let s = x.slice_mut();
    s[0] = -4.0;
    s[n - 1] = 2.0;
    s[n / 2] = 0.25;
    let x = &*s;
    let start = std::time::Instant::now();
    let scale = |mode| dynquant::try_compute_scale(x, 127.0, mode, NanPolicy::Raise).unwrap();
    assert_eq!(scale(DynamicScaleMode::MaxAbs), 4.0 / 127.0);
    assert_eq!(dynquant::scale::percentile_index(1.0, n), (1 << 31) - 1);
    assert_eq!(scale(DynamicScaleMode::Percentile(1.0)), 2.0 / 127.0);
    // f32(0.9999999 * 2^31) rounds: ceil - 1 = 2147483391, still a zero.
    assert_eq!(scale(DynamicScaleMode::Percentile(0.9999999)), 0.0);
    assert_eq!(scale(DynamicScaleMode::Percentile(0.5)), 0.0);
    eprintln!("4 scales of 2^31 + 1 values in {:.1?}", start.elapsed());
}
