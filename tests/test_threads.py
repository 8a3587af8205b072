"""Many Python threads calling every kernel at once.

Kernels release the GIL and run on dynquant's rayon pool, so inference
servers call them from many threads. Eight threads calling every kernel
concurrently on shared read-only inputs must get the serial results bit for
bit; ``dq.set_num_threads`` and ``dq.set_kernel`` called meanwhile must not
change any result. Each scenario runs in a child process with a timeout, so
a deadlock (GIL against the rayon pool) fails the test instead of hanging
CI; ``DYNQUANT_THREAD_ROUNDS`` scales the rounds (default 8).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dynquant as dq
import numpy as np
import numpy.typing as npt
import pytest

F32 = np.float32
ROUNDS = int(os.environ.get("DYNQUANT_THREAD_ROUNDS", "8"))
THREADS = 8
TIMEOUT = 300


def _ro(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    a.flags.writeable = False
    return a


def kernels() -> list[tuple[str, Callable[[], Any]]]:
    """Every kernel on shared read-only inputs, some past the parallel threshold."""
    rng = np.random.default_rng(7)
    big = _ro(rng.standard_normal(300_000).astype(F32))  # parallel paths
    x = _ro(rng.standard_normal((64, 384)).astype(F32))
    xs = _ro(rng.standard_normal((3, 384)).astype(F32))
    w = _ro(rng.standard_normal((96, 384)).astype(F32) / 8)
    wq, ws = dq.quantize_weights_int8(w)
    wq, ws = _ro(wq), _ro(ws)
    p1, s1 = (_ro(a) for a in dq.quantize_weights_int4(w))
    p32, s32 = (_ro(a) for a in dq.quantize_weights_int4(w, 32))
    f = _ro(dq.compute_smooth_factors(x, w))
    t = dq.quantize_int8_per_row(x)
    layer8 = dq.QuantizedLinear.from_float(w, smooth=(dq.SmoothQuantConfig(0.5), x))
    layer4 = dq.QuantizedLinear.from_float(w, bits=4, group_size=32)
    ints = _ro(rng.integers(-8, 8, (96, 384)).astype(np.int8))
    pct = dq.Percentile(0.999)
    return [
        ("quantize_int8", lambda: dq.quantize_int8(big)),
        ("quantize_int8 percentile", lambda: dq.quantize_int8(big, pct)),
        ("quantize_int4", lambda: dq.quantize_int4(x)),
        ("quantize_int8_per_row", lambda: dq.quantize_int8_per_row(x, pct)),
        ("compute_scale", lambda: dq.compute_scale(big, 127.0, pct)),
        ("dequantize", lambda: t.dequantize()),
        ("quantization_mae", lambda: dq.quantization_mae(x, t)),
        ("compute_smooth_factors", lambda: dq.compute_smooth_factors(x, w)),
        ("smooth_activations", lambda: dq.smooth_activations(x, f)),
        ("smooth_weights", lambda: dq.smooth_weights(w, f)),
        ("w8a8_matvec", lambda: dq.w8a8_matvec(wq, ws, x[0])),
        ("w8a8_matmul", lambda: dq.w8a8_matmul(x, wq, ws)),
        ("w8a8_matmul per tensor", lambda: dq.w8a8_matmul(x, wq, ws, per_token=False)),
        ("w8a8_matmul small", lambda: dq.w8a8_matmul(xs, wq, ws, bias=ws)),
        ("w4a8_matmul", lambda: dq.w4a8_matmul(x, p1, s1)),
        ("w4a8_matmul groups", lambda: dq.w4a8_matmul(x, p32, s32, group_size=32)),
        ("w4a8_matvec", lambda: dq.w4a8_matvec(p32, s32, x[1], group_size=32)),
        ("quantize_weights_int8", lambda: dq.quantize_weights_int8(w)),
        ("quantize_weights_int4", lambda: dq.quantize_weights_int4(w, 64)),
        ("pack/unpack_int4", lambda: dq.unpack_int4(dq.pack_int4(ints), 384)),
        ("CalibStats.collect", lambda: dq.CalibStats.collect([big, x])),
        ("QuantizedLinear int8 + smooth", lambda: layer8(x)),
        ("QuantizedLinear int4", lambda: layer4(xs)),
        ("error path", lambda: _error(lambda: dq.w8a8_matvec(wq, ws, x[0, :5]))),
    ]


def _error(call: Callable[[], Any]) -> str:
    try:
        call()
    except dq.DynQuantError as e:
        return f"{type(e).__name__}: {e}"
    raise AssertionError("no error")


def digest(r: Any) -> Any:
    if isinstance(r, np.ndarray):
        return (r.shape, str(r.dtype), r.tobytes())
    if isinstance(r, dq.DynQuantTensor):
        return (r.format, r.shape, digest(r.data), digest(r.scales))
    if isinstance(r, tuple):
        return tuple(digest(v) for v in r)
    if isinstance(r, dq.CalibStats):
        return (r.min, r.max, r.mean, r.std_dev, r.p99, r.suggested_scale)
    return r


def scenario(rounds: int, meddle: bool) -> int:
    """Runs in the child: serial results, then THREADS threads x ``rounds``
    of every kernel in random order; with ``meddle``, another thread keeps
    changing the thread count and the kernel path. Returns calls checked."""
    ks = kernels()
    paths = list(dq.kernel_info().supported)
    serial = {name: digest(fn()) for name, fn in ks}
    stop = threading.Event()

    def worker(seed: int) -> int:
        order = list(ks) * rounds
        random.Random(seed).shuffle(order)
        for name, fn in order:
            got = digest(fn())
            assert got == serial[name], f"{name} differs from the serial result"
        return len(order)

    def meddler() -> int:
        changes, rng = 0, random.Random(99)
        while not stop.is_set():
            dq.set_num_threads(rng.choice([0, 1, 2, 3, 4, 8]))
            dq.set_kernel(rng.choice(paths))
            changes += 1
            stop.wait(0.002)
        return changes

    with ThreadPoolExecutor(THREADS + 1) as pool:
        side = pool.submit(meddler) if meddle else None
        futures = [pool.submit(worker, seed) for seed in range(THREADS)]
        done = sum(f.result(timeout=TIMEOUT) for f in futures)
        stop.set()
        changes = side.result(timeout=TIMEOUT) if side else 0
    print(f"threads: {THREADS} x {done // THREADS} calls, {changes} pool/path changes")
    return done


def _in_child(rounds: int, meddle: bool) -> str:
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import test_threads as t\n"
        f"t.scenario({rounds}, {meddle})\n"
    )
    env = dict(os.environ, RUST_BACKTRACE="0")
    try:
        r = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"deadlock or hang: no result in {TIMEOUT} s")
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip()


def test_eight_threads_get_the_serial_results() -> None:
    print(_in_child(ROUNDS, meddle=False))


def test_set_num_threads_and_set_kernel_during_concurrent_use() -> None:
    print(_in_child(ROUNDS, meddle=True))


def fork_scenario() -> str:
    """Runs in the child: every kernel, then ``os.fork()``; the forked
    process (which has none of the parent's threads) runs every kernel again
    and must get the same bits, on 1 and 2 threads, before an alarm fires."""
    import signal

    ks = kernels()
    before = {name: digest(fn()) for name, fn in ks}
    pid = os.fork()
    if pid == 0:  # the forked child
        signal.alarm(60)  # a hang ends the child with SIGALRM
        ok = all(digest(fn()) == before[name] for name, fn in ks)
        dq.set_num_threads(1)
        ok = ok and all(digest(fn()) == before[name] for name, fn in ks)
        dq.set_num_threads(2)
        ok = ok and all(digest(fn()) == before[name] for name, fn in ks)
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise AssertionError(f"forked child killed by signal {os.WTERMSIG(status)} (a hang)")
    assert os.WEXITSTATUS(status) == 0, "forked child got different results"
    return f"fork: {len(ks)} kernels x 3 in the child"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kernels_work_in_a_forked_child() -> None:
    # multiprocessing forks on Linux: the child has none of the parent's
    # pool threads, so dynquant must start its own instead of waiting for
    # them forever.
    code = (
        "import sys, os\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import dynquant as dq\n"
        "import test_threads as t\n"
        "dq.set_num_threads(2)\n"
        "print(t.fork_scenario())\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fork:" in r.stdout


@pytest.mark.parametrize(("value", "want"), [("3", 3), ("zero", None)])
def test_rayon_num_threads_sets_the_default(value: str, want: int | None) -> None:
    # A value rayon ignores ("zero") leaves the CPU count. (The cap at 4096
    # is a Rust unit test: starting 4096 threads here takes ~12 s.)
    code = (
        "import os, dynquant as dq, numpy as np\n"
        "print(dq.kernel_info().threads, os.cpu_count())\n"
        "y = dq.w8a8_matmul(np.ones((64, 256), np.float32), np.ones((512, 256), np.int8), "
        "np.ones(512, np.float32))\n"
        "assert abs(float(y[0, 0]) - 256.0) < 1e-3, y[0, 0]\n"
    )
    env = {**os.environ, "RAYON_NUM_THREADS": value}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    threads, cpus = (int(v) for v in r.stdout.split())
    assert threads == (want if want is not None else min(cpus, 4096))
