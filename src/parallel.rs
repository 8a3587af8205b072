//! The thread pool the kernels share, and how they split work.
//!
//! dynquant keeps its own rayon pool (not rayon's global one) so that
//! [`set_num_threads`] can resize it at any time: calls already running keep
//! the pool they started on. Its default size follows `RAYON_NUM_THREADS`,
//! else the number of CPUs. Work below a grain runs on the caller's thread,
//! because handing a job to the pool costs microseconds.
//!
//! Kernels split work into blocks taken from a shared counter by the calling
//! thread, the always-awake helper (`hot`) and pool tasks
//! (`RowBlocks`, [`for_each_block`] and the chunk helpers built on it): the
//! caller starts at once and never sleeps waiting for the pool. Only
//! [`run`] (offline weight quantization) still hands its work to the pool.

use core::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use rayon::ThreadPool;

use crate::DynQuantError;

mod hot;

/// Elements of streaming work (one read, one write) worth one task.
pub const GRAIN: usize = 1 << 16;

/// The pool, and the process it was built in.
struct Slot {
    pool: Arc<ThreadPool>,
    pid: u32,
}

fn slot() -> &'static RwLock<Slot> {
    static POOL: OnceLock<RwLock<Slot>> = OnceLock::new();
    POOL.get_or_init(|| {
        RwLock::new(Slot {
            pool: Arc::new(build(0).expect("building the default thread pool")),
            pid: std::process::id(),
        })
    })
}

/// Most threads the pool may have: [`set_num_threads`] refuses more, and a
/// larger `RAYON_NUM_THREADS` counts as this many (rayon would start them
/// all: 100000 threads took a 24 GiB machine down).
pub const MAX_THREADS: usize = 4096;

/// The default size: `RAYON_NUM_THREADS` when it is a positive integer (as
/// rayon reads it), else the CPU count; at most [`MAX_THREADS`].
fn default_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    threads_for(std::env::var("RAYON_NUM_THREADS").ok().as_deref(), cpus)
}

/// [`default_threads`] for a `RAYON_NUM_THREADS` value and a CPU count.
fn threads_for(env_value: Option<&str>, cpus: usize) -> usize {
    env_value
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(cpus)
        .min(MAX_THREADS)
}

/// A pool of `threads` threads (0: [`default_threads`]).
fn build(threads: usize) -> Result<ThreadPool, DynQuantError> {
    let threads = if threads == 0 {
        default_threads()
    } else {
        threads
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("dynquant-{i}"))
        .build()
        .map_err(|e| DynQuantError::InvalidArgument(format!("cannot start {threads} threads: {e}")))
}

/// Installs `fresh` as the pool. A pool built in another process (we are a
/// `fork`ed child: its threads were not copied) is leaked, not dropped:
/// dropping it would signal threads that do not exist here, through locks
/// they may have held at the fork.
fn replace(slot: &mut Slot, fresh: Arc<ThreadPool>, pid: u32) {
    let old = core::mem::replace(&mut slot.pool, fresh);
    if slot.pid != pid {
        core::mem::forget(old);
    }
    slot.pid = pid;
}

/// The pool for a new call. In a `fork`ed child the parent's pool has no
/// threads (every product would wait for them forever), so the first call
/// there builds a pool of the same size.
pub fn pool() -> Arc<ThreadPool> {
    let pid = std::process::id();
    {
        let slot = slot().read().unwrap_or_else(|e| e.into_inner());
        if slot.pid == pid {
            return slot.pool.clone();
        }
    }
    let mut slot = slot().write().unwrap_or_else(|e| e.into_inner());
    if slot.pid != pid {
        let threads = slot.pool.current_num_threads();
        let fresh = Arc::new(build(threads).expect("rebuilding the thread pool after fork"));
        replace(&mut slot, fresh, pid);
    }
    slot.pool.clone()
}

/// Threads the kernels use.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// Resizes the pool; `0` means the default (`RAYON_NUM_THREADS` or the CPU
/// count, at most [`MAX_THREADS`]). Safe while other threads run kernels: they finish on the old pool.
pub fn set_num_threads(threads: usize) -> Result<(), DynQuantError> {
    if threads > MAX_THREADS {
        return Err(DynQuantError::InvalidArgument(format!(
            "num_threads must be between 0 (default) and {MAX_THREADS}, got {threads}"
        )));
    }
    let fresh = Arc::new(build(threads)?);
    let mut slot = slot().write().unwrap_or_else(|e| e.into_inner());
    replace(&mut slot, fresh, std::process::id());
    Ok(())
}

/// Runs `f` on the pool when `work` is worth splitting and the pool has more
/// than one thread, else on this thread. `f` gets whether to split.
pub fn run<R: Send>(work: usize, f: impl FnOnce(bool) -> R + Send) -> R {
    if work < 2 * GRAIN {
        return f(false);
    }
    let pool = pool();
    if pool.current_num_threads() < 2 {
        return f(false);
    }
    pool.install(|| f(true))
}

/// Whether `work` items are worth splitting across the pool.
pub(crate) fn worth_splitting(work: usize) -> bool {
    work >= 2 * GRAIN && num_threads() >= 2
}

/// Runs `f(b)` for every block `b < blocks`, on every thread (the caller,
/// the always-awake helper, pool tasks) when `work` items are worth
/// splitting, else on the calling thread in order. Unlike `pool.install`,
/// the caller starts at once and never sleeps waiting for the pool.
pub fn for_each_block(work: usize, blocks: usize, f: impl Fn(usize) + Sync + Send) {
    RowBlocks {
        work,
        n: blocks,
        rows_per_block: 1,
    }
    .run(|range| range.for_each(&f));
}

/// A lock per block: lets the one thread that takes block `b` have
/// `&mut` access to its part without `unsafe` (never contended).
fn locked<U: Send>(parts: impl Iterator<Item = U>) -> Vec<Mutex<U>> {
    parts.map(Mutex::new).collect()
}

fn lock<U>(m: &Mutex<U>) -> std::sync::MutexGuard<'_, U> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Maps `map` over chunks of `grain` items of `data` and folds the results
/// with `reduce`, in chunk order (so the result does not depend on which
/// thread ran what). Small inputs: `reduce(identity, map(data))`.
pub fn map_reduce<T: Sync, R: Send + Clone + Sync>(
    data: &[T],
    grain: usize,
    identity: R,
    map: impl Fn(&[T]) -> R + Sync + Send,
    reduce: impl Fn(R, R) -> R + Sync + Send,
) -> R {
    if !worth_splitting(data.len()) {
        return reduce(identity, map(data));
    }
    let chunks: Vec<&[T]> = data.chunks(grain.max(1)).collect();
    let results = locked(chunks.iter().map(|_| None));
    for_each_block(data.len(), chunks.len(), |b| {
        *lock(&results[b]) = Some(map(chunks[b]));
    });
    results
        .into_iter()
        .map(|r| r.into_inner().unwrap_or_else(|e| e.into_inner()))
        .fold(identity, |acc, r| reduce(acc, r.expect("every block ran")))
}

/// Calls `f(input_chunk, output_chunk)` over matching chunks of `input_len`
/// and `output_len` items, `items_per_task` at a time. `input.len()` and
/// `output.len()` must be whole multiples of the per-item lengths.
pub fn zip_chunks<T: Sync, U: Send>(
    input: &[T],
    input_len: usize,
    output: &mut [U],
    output_len: usize,
    items_per_task: usize,
    f: impl Fn(&[T], &mut [U]) + Sync + Send,
) {
    let (input_len, output_len) = (input_len.max(1), output_len.max(1));
    let items_per_task = items_per_task.max(1);
    let work = input.len().max(output.len());
    if !worth_splitting(work) {
        return f(input, output);
    }
    let inputs: Vec<&[T]> = input.chunks(input_len * items_per_task).collect();
    let outputs = locked(output.chunks_mut(output_len * items_per_task));
    for_each_block(work, inputs.len().min(outputs.len()), |b| {
        f(inputs[b], &mut lock(&outputs[b]))
    });
}

/// Calls `f` on chunks of `items_per_task * item_len` items of `data`.
pub fn chunks_mut<U: Send>(
    data: &mut [U],
    item_len: usize,
    items_per_task: usize,
    f: impl Fn(&mut [U]) + Sync + Send,
) {
    chunks_mut_at(data, item_len, items_per_task, |_, chunk| f(chunk))
}

/// [`chunks_mut`], with `f` also told where its chunk starts in `data`
/// (an index of `U`s), so it can take the matching part of other inputs.
pub fn chunks_mut_at<U: Send>(
    data: &mut [U],
    item_len: usize,
    items_per_task: usize,
    f: impl Fn(usize, &mut [U]) + Sync + Send,
) {
    let work = data.len();
    if !worth_splitting(work) {
        return f(0, data);
    }
    let chunk_len = item_len.max(1) * items_per_task.max(1);
    let chunks = locked(data.chunks_mut(chunk_len));
    for_each_block(work, chunks.len(), |b| {
        f(b * chunk_len, &mut lock(&chunks[b]))
    });
}

/// The output of a product, shared by tasks that each write their own
/// columns (weight rows) of it. It holds the `&mut` borrow of the output for
/// its lifetime `'a`, so nothing else can read or write the slice meanwhile.
pub(crate) struct DisjointOut<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: core::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: tasks write disjoint indices (see `write`), so sharing the pointer
// across threads cannot race; the `&'a mut` borrow it holds outlives the
// tasks (they run inside the scope that owns the `DisjointOut`).
unsafe impl Send for DisjointOut<'_> {}
unsafe impl Sync for DisjointOut<'_> {}

impl<'a> DisjointOut<'a> {
    pub(crate) fn new(out: &'a mut [f32]) -> Self {
        Self {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            _borrow: core::marker::PhantomData,
        }
    }

    /// # Safety
    /// No other thread writes `index` while this call runs.
    pub(crate) unsafe fn write(&self, index: usize, value: f32) {
        assert!(
            index < self.len,
            "DisjointOut: index {index} of {}",
            self.len
        );
        // SAFETY: in bounds (asserted); exclusive per the caller's contract.
        unsafe { *self.ptr.add(index) = value };
    }

    /// The run `index .. index + len` to write in place (a kernel's stores
    /// straight into the output, no staging copy).
    ///
    /// # Safety
    /// No other thread reads or writes those indices while the slice lives.
    #[allow(clippy::mut_from_ref)] // disjointness is the caller's contract
    pub(crate) unsafe fn run_mut(&self, index: usize, len: usize) -> &mut [f32] {
        assert!(
            index <= self.len && self.len - index >= len,
            "DisjointOut: {len} values at {index} of {}",
            self.len
        );
        // SAFETY: in bounds (asserted) of the borrowed buffer, which
        // outlives `self`; exclusive per the caller's contract.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(index), len) }
    }

    /// Writes `values` at `index ..`.
    ///
    /// # Safety
    /// No other thread writes those indices while this call runs.
    pub(crate) unsafe fn write_run(&self, index: usize, values: &[f32]) {
        assert!(
            index <= self.len && self.len - index >= values.len(),
            "DisjointOut: {} values at {index} of {}",
            values.len(),
            self.len
        );
        // SAFETY: all in bounds (asserted); `values` is another allocation
        // (this one is borrowed mutably); exclusive per the caller's contract.
        unsafe {
            let dst = self.ptr.add(index);
            match values.len() {
                // The kernels' usual runs, as single stores rather than a
                // call to memcpy.
                2 => dst
                    .cast::<[f32; 2]>()
                    .write_unaligned([values[0], values[1]]),
                4 => dst
                    .cast::<[f32; 4]>()
                    .write_unaligned([values[0], values[1], values[2], values[3]]),
                32 => dst
                    .cast::<[f32; 32]>()
                    .write_unaligned(core::array::from_fn(|i| values[i])),
                len => core::ptr::copy_nonoverlapping(values.as_ptr(), dst, len),
            }
        };
    }
}

/// How a product's `n` weight rows are split into blocks for the threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowBlocks {
    /// Whether the product is worth splitting (in units of [`GRAIN`]).
    work: usize,
    n: usize,
    rows_per_block: usize,
}

/// [`Prepared`]'s states.
const PENDING: u8 = 0;
const READY: u8 = 1;
const FAILED: u8 = 2;

/// A value the calling thread computes while helper threads wait for it.
struct Prepared<P> {
    value: OnceLock<P>,
    state: AtomicU8,
}

impl<P> Prepared<P> {
    /// Spins until the value is published (`Some`) or will never be (`None`).
    /// The wait is short: the caller publishes as soon as `prepare` returns,
    /// and marks failure even when `prepare` panics (see [`FailUnlessDone`]).
    fn wait(&self) -> Option<&P> {
        let mut spins = 0u32;
        loop {
            match self.state.load(Ordering::Acquire) {
                READY => return self.value.get(),
                FAILED => return None,
                _ => {
                    spins = spins.wrapping_add(1);
                    if spins.is_multiple_of(64) {
                        // More threads than cores: let the preparing thread run.
                        std::thread::yield_now();
                    } else {
                        core::hint::spin_loop();
                    }
                }
            }
        }
    }
}

/// Marks a [`Prepared`] failed when dropped still pending: if `prepare`
/// panics, the waiting helpers stop instead of spinning forever (and the
/// scope then rethrows the panic).
struct FailUnlessDone<'a>(&'a AtomicU8);

impl Drop for FailUnlessDone<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .compare_exchange(PENDING, FAILED, Ordering::Release, Ordering::Relaxed);
    }
}

/// Blocks `0..count` handed out from both ends: [`BlockQueue::take`] from
/// the front or from the back, each block once, until the ends meet.
struct BlockQueue {
    /// The next block from the front in the low 32 bits, one past the next
    /// from the back in the high 32 bits.
    ends: AtomicU64,
}

impl BlockQueue {
    fn new(count: usize) -> Self {
        // More blocks than u32 holds cannot occur (each has >= 4 rows of
        // an allocation), but clamp rather than wrap.
        let count = count.min(u32::MAX as usize) as u64;
        BlockQueue {
            ends: AtomicU64::new(count << 32),
        }
    }

    fn take(&self, from_back: bool) -> Option<usize> {
        let mut ends = self.ends.load(Ordering::Relaxed);
        loop {
            let (front, back) = (ends & 0xffff_ffff, ends >> 32);
            if front >= back {
                return None;
            }
            let (taken, new) = if from_back {
                (back - 1, front | ((back - 1) << 32))
            } else {
                (front, (front + 1) | (back << 32))
            };
            match self
                .ends
                .compare_exchange_weak(ends, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(taken as usize),
                Err(current) => ends = current,
            }
        }
    }
}

impl RowBlocks {
    /// Blocks of an `[m, k] x [n, k]^T` product: sized for L2 (or, for one
    /// token, a grain of streaming work), with a few per thread.
    pub(crate) fn weight_rows(m: usize, n: usize, k: usize) -> Self {
        let k1 = k.max(1);
        let rows_per_block = if m == 1 {
            (GRAIN / k1).max(4)
        } else {
            ((256 << 10) / k1).max(4)
        };
        RowBlocks {
            work: m.saturating_mul(n).saturating_mul(k1) / 4,
            n,
            rows_per_block: rows_per_block.min(n.div_ceil(4 * num_threads()).max(4)),
        }
    }

    /// `count` blocks of one unit each (panels of a packed matrix, say),
    /// `work` in all (the same threshold as [`RowBlocks::weight_rows`]).
    pub(crate) fn units(count: usize, work: usize) -> Self {
        RowBlocks {
            work,
            n: count,
            rows_per_block: 1,
        }
    }

    /// Blocks of a one-token product (`n` rows of `k` bytes each): the same
    /// threshold as [`RowBlocks::weight_rows`], but fewer, larger blocks
    /// (about `tasks_per_thread` per thread, at least `min_rows` rows, a
    /// multiple of 4) for kernels that are compute-bound, where the per-task
    /// cost shows.
    pub(crate) fn one_token(n: usize, k: usize, tasks_per_thread: usize, min_rows: usize) -> Self {
        RowBlocks {
            work: n.saturating_mul(k.max(1)) / 4,
            n,
            rows_per_block: n
                .div_ceil(tasks_per_thread.max(1) * num_threads())
                .max(min_rows)
                .next_multiple_of(4)
                .max(1),
        }
    }

    /// Runs `f` over the blocks, on every thread when the product is worth
    /// it, else on the calling thread, block by block.
    pub(crate) fn run(&self, f: impl Fn(core::ops::Range<usize>) + Sync + Send) {
        self.run_ahead(|rows, _| f(rows));
    }

    /// [`RowBlocks::run`], with `f` also told the block its thread will
    /// probably take next (see [`RowBlocks::run_prepared_ahead`]).
    pub(crate) fn run_ahead(&self, f: impl Fn(Range<usize>, Option<Range<usize>>) + Sync + Send) {
        let ready: Result<(), core::convert::Infallible> =
            self.run_prepared_ahead(|| Ok(()), |(), rows, next| f(rows, next));
        let Ok(()) = ready;
    }

    /// [`RowBlocks::run_prepared_ahead`] without the next block.
    pub(crate) fn run_prepared<P: Send + Sync, E: Send>(
        &self,
        prepare: impl FnOnce() -> Result<P, E> + Send,
        f: impl Fn(&P, Range<usize>) + Sync + Send,
    ) -> Result<(), E> {
        self.run_prepared_ahead(prepare, |p, rows, _| f(p, rows))
    }

    /// Runs `prepare` on the calling thread, then `f(&prepared, block)` over
    /// the blocks as [`RowBlocks::run`] does. The helper threads are woken
    /// *before* `prepare` runs, so their wake-up (tens of microseconds, more
    /// in a VM) overlaps it instead of delaying the blocks; they wait for its
    /// value, and take no block if it fails. The calling thread takes blocks
    /// too: it takes them from the front, the helpers from the back, so a
    /// helper that wakes late finds them taken, and each thread's next
    /// block is usually the one beside its current block (until the two
    /// ends meet). `f(&prepared, block, next)` gets that guess as `next`, for
    /// a kernel to prefetch it while it works on `block` (a wrong guess costs
    /// only the wasted prefetch). Each block is computed the same way by any
    /// thread.
    pub(crate) fn run_prepared_ahead<P: Send + Sync, E: Send>(
        &self,
        prepare: impl FnOnce() -> Result<P, E> + Send,
        f: impl Fn(&P, Range<usize>, Option<Range<usize>>) + Sync + Send,
    ) -> Result<(), E> {
        let RowBlocks {
            work,
            n,
            rows_per_block,
        } = *self;
        let pool = pool();
        let threads = pool.current_num_threads();
        let blocks = n.div_ceil(rows_per_block);
        let block = |b: usize| b * rows_per_block..((b + 1) * rows_per_block).min(n);
        if work < 2 * GRAIN || threads < 2 || blocks < 2 {
            // Block by block all the same: the blocks are sized for the
            // cache, which one call over all rows would overrun.
            return prepare().map(|p| {
                for b in 0..blocks {
                    f(&p, block(b), (b + 1 < blocks).then(|| block(b + 1)));
                }
            });
        }
        let queue = BlockQueue::new(blocks);
        let take_blocks = |p: &P, from_back: bool| {
            while let Some(b) = queue.take(from_back) {
                let next = if from_back {
                    b.checked_sub(1)
                } else {
                    Some(b + 1).filter(|&c| c < blocks)
                };
                f(p, block(b), next.map(block));
            }
        };
        let prepared = Prepared {
            value: OnceLock::new(),
            state: AtomicU8::new(PENDING),
        };
        let helper_part = || {
            if let Some(p) = prepared.wait() {
                take_blocks(p, true);
            }
        };
        pool.in_place_scope(|scope| {
            // One helper is the always-awake thread when it is free (see
            // `hot`), the others pool tasks.
            let job = hot::Job::new(&helper_part);
            let ticket = if hot::enabled() {
                hot::offer(&job)
            } else {
                None
            };
            let pool_tasks =
                (threads.min(blocks) - 1).saturating_sub(usize::from(ticket.is_some()));
            for _ in 0..pool_tasks {
                scope.spawn(|_| helper_part());
            }
            // Declared after the ticket, so dropped first when `prepare`
            // panics: the helpers stop waiting before the ticket waits for them.
            let guard = FailUnlessDone(&prepared.state);
            let outcome = prepare().map(|p| {
                let _ = prepared.value.set(p);
            });
            let state = if outcome.is_ok() { READY } else { FAILED };
            prepared.state.store(state, Ordering::Release);
            drop(guard);
            if let Some(p) = prepared.value.get() {
                take_blocks(p, false);
            }
            if let Some(ticket) = ticket {
                ticket.finish();
            }
            outcome
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    /// `RAYON_NUM_THREADS` as rayon reads it (a positive integer, else the
    /// CPU count), but never more than `set_num_threads` allows.
    #[test]
    fn the_default_follows_rayon_num_threads_up_to_the_limit() {
        assert_eq!(threads_for(None, 2), 2);
        assert_eq!(threads_for(Some("3"), 2), 3);
        assert_eq!(threads_for(Some(" 7 "), 2), 7);
        assert_eq!(threads_for(Some("4096"), 2), 4096);
        assert_eq!(threads_for(Some("100000"), 2), MAX_THREADS);
        for ignored in ["0", "", "two", "-1", "1.5", "99999999999999999999999"] {
            assert_eq!(threads_for(Some(ignored), 2), 2, "{ignored:?}");
        }
        assert_eq!(threads_for(None, 10_000), MAX_THREADS);
        assert!(set_num_threads(MAX_THREADS + 1).is_err());
    }

    /// A product big enough to split (`work` past two grains) into `n` rows.
    fn split_rows(n: usize) -> RowBlocks {
        RowBlocks {
            work: 4 * GRAIN,
            n,
            rows_per_block: 3,
        }
    }

    #[test]
    fn block_queue_hands_out_each_block_once_from_both_ends() {
        for count in [0, 1, 2, 3, 10, 1000] {
            let queue = BlockQueue::new(count);
            let (front, back) = std::thread::scope(|s| {
                let back = s.spawn(|| {
                    let mut taken = vec![];
                    while let Some(b) = queue.take(true) {
                        taken.push(b);
                    }
                    taken
                });
                let mut front = vec![];
                while let Some(b) = queue.take(false) {
                    front.push(b);
                }
                (front, back.join().unwrap())
            });
            // The front counts up from 0, the back down from count - 1, and
            // together they take every block exactly once.
            assert!(front.iter().enumerate().all(|(i, &b)| b == i), "{front:?}");
            assert!(
                back.iter().enumerate().all(|(i, &b)| b == count - 1 - i),
                "{back:?}"
            );
            let mut all: Vec<usize> = front.into_iter().chain(back).collect();
            all.sort_unstable();
            assert_eq!(all, (0..count).collect::<Vec<_>>());
        }
    }

    #[test]
    fn the_next_block_is_a_neighbour_or_none() {
        let _ = set_num_threads(2);
        for n in [1, 3, 7, 64, 301] {
            let seen = Mutex::new(vec![]);
            let blocks = split_rows(n);
            let _: Result<(), ()> = blocks.run_prepared_ahead(
                || Ok(()),
                |(), rows, next| seen.lock().unwrap().push((rows, next)),
            );
            let seen = seen.into_inner().unwrap();
            let mut covered = vec![0u32; n];
            for (rows, next) in &seen {
                rows.clone().for_each(|r| covered[r] += 1);
                if let Some(next) = next {
                    // Just after or just before, never the block itself.
                    assert!(
                        next.start == rows.end || next.end == rows.start,
                        "{rows:?} {next:?}"
                    );
                    assert!(next.end <= n && !next.is_empty());
                }
            }
            assert!(covered.iter().all(|&c| c == 1), "n={n}");
            // The last block from the front (or the only one) has no
            // neighbour after it.
            let last = seen.iter().find(|(rows, _)| rows.end == n).unwrap();
            assert!(last.1.as_ref().is_none_or(|next| next.end == last.0.start));
        }
    }

    #[test]
    fn prepared_blocks_cover_every_row_once_and_see_the_value() {
        let _ = set_num_threads(2);
        for n in [1, 2, 3, 7, 64, 301] {
            let seen = Mutex::new(vec![0u32; n]);
            let result: Result<(), ()> = split_rows(n).run_prepared(
                || Ok(vec![5u32; n]),
                |value, rows| {
                    let mut seen = seen.lock().unwrap();
                    for r in rows {
                        seen[r] += value[r];
                    }
                },
            );
            assert_eq!(result, Ok(()));
            assert_eq!(seen.into_inner().unwrap(), vec![5u32; n], "n = {n}");
        }
    }

    #[test]
    fn small_products_still_go_block_by_block_in_order() {
        // Below the splitting threshold the caller runs every block itself,
        // in order, each no larger than `rows_per_block` (cache-sized).
        for n in [0, 1, 3, 7, 301] {
            let calls = Mutex::new(Vec::new());
            RowBlocks {
                work: 0,
                n,
                rows_per_block: 3,
            }
            .run(|rows| calls.lock().unwrap().push(rows));
            let calls = calls.into_inner().unwrap();
            let expected: Vec<_> = (0..n.div_ceil(3))
                .map(|b| 3 * b..(3 * b + 3).min(n))
                .collect();
            assert_eq!(calls, expected, "n = {n}");
        }
    }

    #[test]
    fn a_panicking_block_reaches_the_caller_and_the_helpers_survive() {
        let _ = set_num_threads(2);
        for round in 0..20 {
            // Whichever thread runs block 5 (the caller, the always-awake
            // helper or a pool task), its panic must surface here.
            let outcome = std::panic::catch_unwind(|| {
                let _: Result<(), ()> = split_rows(60).run_prepared(
                    || Ok(()),
                    |(), rows| {
                        if rows.contains(&15) {
                            panic!("block panicked (round {round})");
                        }
                    },
                );
            });
            assert!(outcome.is_err(), "round {round}");
        }
        // Still working afterwards.
        let count = AtomicUsize::new(0);
        let r: Result<(), ()> = split_rows(60).run_prepared(
            || Ok(()),
            |(), rows| {
                count.fetch_add(rows.len(), Ordering::Relaxed);
            },
        );
        assert_eq!((r, count.load(Ordering::Relaxed)), (Ok(()), 60));
    }

    #[test]
    fn concurrent_products_with_and_without_the_awake_helper() {
        // Several callers at once compete for the one always-awake helper
        // (the losers use the pool alone); every product must still cover
        // its rows exactly once and return.
        let _ = set_num_threads(2);
        for hot_on in [true, false, true] {
            hot::set_enabled(hot_on);
            std::thread::scope(|s| {
                for caller in 0..4usize {
                    s.spawn(move || {
                        for i in 0..200usize {
                            let n = 1 + (caller * 31 + i * 17) % 90;
                            let seen = Mutex::new(vec![0u8; n]);
                            let r: Result<(), ()> = split_rows(n).run_prepared(
                                || Ok(i),
                                |&v, rows| {
                                    assert_eq!(v, i);
                                    let mut seen = seen.lock().unwrap();
                                    rows.for_each(|r| seen[r] += 1);
                                },
                            );
                            assert_eq!(r, Ok(()));
                            assert!(seen.into_inner().unwrap().iter().all(|&c| c == 1));
                            if i % 50 == 0 {
                                // Let the helper park now and then.
                                std::thread::sleep(std::time::Duration::from_millis(3));
                            }
                        }
                    });
                }
            });
        }
        hot::set_enabled(true);
    }

    #[test]
    fn a_failed_prepare_runs_no_block_and_returns_its_error() {
        let _ = set_num_threads(2);
        let blocks_run = AtomicUsize::new(0);
        let result = split_rows(100).run_prepared(
            || Err::<u8, _>("bad input"),
            |_, _| {
                blocks_run.fetch_add(1, Ordering::Relaxed);
            },
        );
        assert_eq!(result, Err("bad input"));
        assert_eq!(blocks_run.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_panicking_prepare_releases_the_waiting_helpers() {
        // Without the failure mark the helpers would spin forever and the
        // scope would never return the panic.
        let _ = set_num_threads(2);
        let outcome = std::panic::catch_unwind(|| {
            let _: Result<(), ()> = split_rows(100)
                .run_prepared(|| -> Result<u8, ()> { panic!("prepare failed") }, |_, _| {});
        });
        assert!(outcome.is_err());
    }
}
