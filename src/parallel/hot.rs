//! One dedicated helper thread that stays awake between products.
//!
//! Waking a sleeping pool thread costs ~60–70 µs on this project's VM
//! (measured), a sixth of a MiniLM-sized product (~400 µs), and a model
//! calls such products back to back with a little NumPy work in between. So
//! one helper thread, after each product it helped with, spins for
//! [`SPIN`] waiting for the next one before it parks — the trade OpenBLAS
//! and OpenMP runtimes make too. It is a plain thread, not a pool worker, so
//! its spinning never holds up the pool's other work.
//!
//! A product [`offer`]s the helper one job; if the helper is busy with
//! another caller's job, the offer fails and the product uses the pool
//! alone. The job lives on the caller's stack: [`Ticket`]'s drop either
//! takes the job back (the helper never started it, and now never will) or
//! waits until the helper has finished with it, so the helper never touches
//! it after the caller's frame is gone — also when the caller unwinds.
//!
//! Each process has its own helper: a `fork`ed child does not have the
//! parent's thread, so the first offer there starts a new one (with its own
//! slot and lock — the parent's may have been mid-use at the fork).

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Whether products use the helper: on unless `DYNQUANT_SPIN=0` (for
/// machines shared with other busy processes) or [`set_enabled`] says no.
pub(crate) fn enabled() -> bool {
    match ENABLED.load(Ordering::Relaxed) {
        UNSET => {
            let on = std::env::var("DYNQUANT_SPIN").map_or(true, |v| v.trim() != "0");
            let _ =
                ENABLED.compare_exchange(UNSET, u8::from(on), Ordering::Relaxed, Ordering::Relaxed);
            ENABLED.load(Ordering::Relaxed) == 1
        }
        v => v == 1,
    }
}

/// Turns the helper on or off for the products that start from now on.
#[allow(dead_code)] // used by tests
pub(crate) fn set_enabled(on: bool) {
    ENABLED.store(u8::from(on), Ordering::Relaxed);
}

const UNSET: u8 = 2;
static ENABLED: AtomicU8 = AtomicU8::new(UNSET);

/// How long the helper keeps polling after its last job.
const SPIN: Duration = Duration::from_millis(2);

/// A job for the helper: a closure borrowed from the caller's stack.
pub(crate) struct Job<'a> {
    run: &'a (dyn Fn() + Sync),
    done: AtomicBool,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl<'a> Job<'a> {
    pub(crate) fn new(run: &'a (dyn Fn() + Sync)) -> Self {
        Job {
            run,
            done: AtomicBool::new(false),
            panic: Mutex::new(None),
        }
    }
}

/// One process's helper: the job on offer (null: none; its lifetime is
/// erased, see [`Ticket`]) and the helper's parking place (`parked` is true
/// while it waits on the condvar).
struct Helper {
    pid: u32,
    offered: AtomicPtr<Job<'static>>,
    parked: Mutex<bool>,
    wake: Condvar,
}

/// This process's helper, leaked (never freed), so `&'static` is sound.
static CURRENT: AtomicPtr<Helper> = AtomicPtr::new(ptr::null_mut());

/// The helper of this process, started on first use; `None` if another
/// thread is starting one right now.
fn current() -> Option<&'static Helper> {
    let pid = std::process::id();
    let seen = CURRENT.load(Ordering::Acquire);
    // SAFETY: CURRENT only ever holds null or a leaked `Box<Helper>`.
    if let Some(helper) = unsafe { seen.as_ref() } {
        if helper.pid == pid {
            return Some(helper);
        }
    }
    // None yet, or the parent's (we are a forked child, without its thread).
    let fresh: &'static Helper = Box::leak(Box::new(Helper {
        pid,
        offered: AtomicPtr::new(ptr::null_mut()),
        parked: Mutex::new(false),
        wake: Condvar::new(),
    }));
    let fresh_ptr = (fresh as *const Helper).cast_mut();
    CURRENT
        .compare_exchange(seen, fresh_ptr, Ordering::AcqRel, Ordering::Acquire)
        .ok()?;
    // If the OS refuses a thread, offers are still accepted but never
    // claimed: every caller takes its job back and does the work itself.
    let _ = std::thread::Builder::new()
        .name("dynquant-hot".into())
        .spawn(move || helper(fresh));
    Some(fresh)
}

/// An accepted offer; dropping it ends the job's loan (see the module docs).
pub(crate) struct Ticket<'j, 'a> {
    helper: &'static Helper,
    job: &'j Job<'a>,
}

/// Offers `job` to the helper. `None` when the helper is taken by another
/// caller (or cannot start): then nobody will run it.
pub(crate) fn offer<'j, 'a>(job: &'j Job<'a>) -> Option<Ticket<'j, 'a>> {
    let helper = current()?;
    let erased = (job as *const Job<'a>).cast_mut().cast::<Job<'static>>();
    helper
        .offered
        .compare_exchange(ptr::null_mut(), erased, Ordering::AcqRel, Ordering::Relaxed)
        .ok()?;
    let parked = helper.parked.lock().unwrap_or_else(|e| e.into_inner());
    if *parked {
        helper.wake.notify_one();
    }
    Some(Ticket { helper, job })
}

impl Ticket<'_, '_> {
    /// Ends the loan and rethrows a panic of the job on the helper.
    pub(crate) fn finish(self) {
        let panic = self.end_loan();
        core::mem::forget(self);
        if let Some(panic) = panic {
            resume_unwind(panic);
        }
    }

    /// Takes the job back if the helper has not claimed it, else waits until
    /// the helper is done with it; returns the job's panic, if any.
    fn end_loan(&self) -> Option<Box<dyn Any + Send>> {
        let mine = (self.job as *const Job<'_>)
            .cast_mut()
            .cast::<Job<'static>>();
        if self
            .helper
            .offered
            .compare_exchange(mine, ptr::null_mut(), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return None; // never claimed, and no longer on offer
        }
        let mut spins = 0u32;
        while !self.job.done.load(Ordering::Acquire) {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                core::hint::spin_loop();
            }
        }
        self.job
            .panic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

impl Drop for Ticket<'_, '_> {
    /// Unwinding (the caller panicked): end the loan all the same; a panic of
    /// the job itself is dropped, the caller's is already on its way.
    fn drop(&mut self) {
        let _ = self.end_loan();
    }
}

/// Claims the job on offer, if any.
fn claim(helper: &Helper) -> Option<&'static Job<'static>> {
    let offered = helper.offered.load(Ordering::Acquire);
    if offered.is_null() {
        return None;
    }
    helper
        .offered
        .compare_exchange(
            offered,
            ptr::null_mut(),
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .ok()?;
    // SAFETY: a claimed job stays alive until its `done` is set: its owner's
    // Ticket cannot take it back any more (the pointer is gone from the
    // slot) and waits for `done`, which `run` sets last.
    Some(unsafe { &*offered })
}

fn run(job: &Job<'_>) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(job.run)) {
        *job.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(panic);
    }
    // The last access: after this store the owner may free the job.
    job.done.store(true, Ordering::Release);
}

fn helper(helper: &'static Helper) {
    let mut last_job = Instant::now();
    let mut polls = 0u32;
    loop {
        if let Some(job) = claim(helper) {
            run(job);
            last_job = Instant::now();
            continue;
        }
        polls = polls.wrapping_add(1);
        if !polls.is_multiple_of(256) {
            core::hint::spin_loop();
            continue;
        }
        if last_job.elapsed() < SPIN {
            std::thread::yield_now();
            continue;
        }
        // Park until a job is offered. The offer is published before the
        // offerer takes the lock, and checked here under it: no lost wake-up.
        let mut parked = helper.parked.lock().unwrap_or_else(|e| e.into_inner());
        *parked = true;
        while helper.offered.load(Ordering::Acquire).is_null() {
            parked = helper.wake.wait(parked).unwrap_or_else(|e| e.into_inner());
        }
        *parked = false;
        drop(parked);
        last_job = Instant::now();
    }
}
