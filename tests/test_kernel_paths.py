"""Kernel paths (scalar / AVX2 / NEON) and thread counts give the same bits;
kernels release the GIL; kernel control errors."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import dynquant as dq
import numpy as np
import pytest
import reference_np as ref
from dynquant import _core
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import assert_same_f32, assert_same_i8

F32 = np.float32
PATHS = list(dq.kernel_info().supported)


def test_kernel_info() -> None:
    info = dq.kernel_info()
    assert info.isa in info.supported
    assert "scalar" in info.supported
    assert info.threads >= 1
    assert info.arch in ("x86_64", "aarch64") or info.arch
    if info.arch == "x86_64":
        assert set(info.supported) <= {"scalar", "avx2", "avx512vnni", "avxvnni"}
        # The VNNI paths are AVX2 plus vpdpbusd: never one without AVX2.
        if {"avx512vnni", "avxvnni"} & set(info.supported):
            assert "avx2" in info.supported
    if info.arch == "aarch64":
        assert set(info.supported) <= {"scalar", "neon", "neondot"}
        # neondot is NEON plus sdot: never one without the other.
        if "neondot" in info.supported:
            assert "neon" in info.supported


@pytest.mark.parametrize("name", PATHS)
def test_set_kernel_changes_the_active_path(name: str) -> None:
    dq.set_kernel(name)
    assert dq.kernel_info().isa == name
    dq.set_kernel("auto")
    assert dq.kernel_info().isa == PATHS[-1]  # the best supported one


def test_set_kernel_errors() -> None:
    with pytest.raises(dq.InvalidArgumentError) as info:
        dq.set_kernel("sse9")
    assert "sse9" in str(info.value)
    unsupported = {"avx2", "avx512vnni", "avxvnni", "neon", "neondot"} - set(PATHS)
    for name in unsupported:
        with pytest.raises(dq.InvalidArgumentError) as info:
            dq.set_kernel(name)
        assert name in str(info.value)
    assert dq.kernel_info().isa in PATHS  # unchanged by the failed calls


def _all_results(buf: np.ndarray, wbuf: np.ndarray, n: int, off: int) -> list[Any]:
    """Every kernel on x = buf[off:off + n] (unaligned views of one buffer)."""
    x = buf[off : off + n]
    out: list[Any] = [
        dq.quantize_int8(x),
        dq.quantize_int4(x),
        dq.quantize_int8(x, dq.Percentile(0.9)),
        dq.compute_scale(x, 127.0),
    ]
    if n:
        w = wbuf[: 3 * n].reshape(3, n)
        out.append(dq.w8a8_matvec(w, np.array([0.5, 1e-3, 2.0], F32), x))
        out.append(dq.CalibStats.collect([x]))
        rows = buf[off : off + 3 * n].reshape(3, n)
        out.append(dq.quantize_int8_per_row(rows))
        out.append(dq.compute_smooth_factors(rows, rows[:2]))
        out.append(dq.smooth_activations(rows, np.abs(x) + F32(0.5)))
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))
    if isinstance(a, float):
        return bool(F32(a).view(np.uint32) == F32(b).view(np.uint32))
    return bool(a == b)


def test_every_path_gives_the_same_bits_on_lengths_0_to_257(rng: np.random.Generator) -> None:
    buf = (rng.standard_normal(3 * 257 + 8) * 5).astype(F32)
    buf[::11] = np.round(buf[::11]) + F32(0.5)  # ties
    wbuf = rng.integers(-128, 128, 3 * 257, dtype=np.int8)
    wbuf[::5] = -128
    results: dict[str, list[list[Any]]] = {}
    for path in PATHS:
        dq.set_kernel(path)
        results[path] = [_all_results(buf, wbuf, n, off) for n in range(258) for off in (1, 2, 3)]
    base = results["scalar"]
    for path in PATHS[1:]:
        for i, (a_list, b_list) in enumerate(zip(base, results[path], strict=True)):
            for j, (a, b) in enumerate(zip(a_list, b_list, strict=True)):
                assert _same(a, b), f"{path}: length {i // 3}, offset {i % 3 + 1}, kernel {j}"
    # and the scalar results are the model's
    for n in (0, 1, 31, 32, 33, 257):
        q, s = ref.quantize_int8(buf[1 : 1 + n])
        assert_same_i8(base[3 * n][0].data, q)
        assert_same_f32(base[3 * n][0].scales, [s])


@pytest.mark.parametrize("path", PATHS)
def test_each_path_matches_the_model_on_large_inputs(path: str, rng: np.random.Generator) -> None:
    dq.set_kernel(path)
    x = (rng.standard_normal(300_001) * 3).astype(F32)
    t = dq.quantize_int8(x)
    q, s = ref.quantize_int8(x)
    assert_same_i8(t.data, q)
    assert_same_f32(t.scales, [s])
    w = rng.integers(-128, 128, (64, 4099), dtype=np.int8)
    ws = rng.uniform(0.01, 1, 64).astype(F32)
    assert_same_f32(dq.w8a8_matvec(w, ws, x[:4099]), ref.w8a8_matvec(w, ws, x[:4099]))


def test_thread_count_does_not_change_results(rng: np.random.Generator) -> None:
    x = (rng.standard_normal((600, 1000)) * np.exp(rng.uniform(-3, 3, (600, 1)))).astype(F32)
    w = rng.integers(-128, 128, (2000, 1000), dtype=np.int8)
    ws = rng.uniform(0.01, 1, 2000).astype(F32)

    def run() -> list[Any]:
        return [
            dq.quantize_int8(x),
            dq.quantize_int8(x, dq.Percentile(0.99)),
            dq.quantize_int8_per_row(x),
            dq.compute_smooth_factors(x, x[:100]),
            dq.smooth_weights(x, np.linspace(0.5, 2, 1000, dtype=F32)),
            dq.w8a8_matvec(w, ws, x[0]),
            dq.CalibStats.collect([x, x[:7]]),
        ]

    default = run()
    dq.set_num_threads(1)
    assert dq.kernel_info().threads == 1
    single = run()
    dq.set_num_threads(3)
    assert dq.kernel_info().threads == 3
    three = run()
    for a, b, c in zip(default, single, three, strict=True):
        assert _same(a, b) and _same(a, c)
    dq.set_num_threads(0)
    assert dq.kernel_info().threads >= 1


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True, None])
def test_set_num_threads_rejects_bad_values(bad: Any) -> None:
    with pytest.raises(dq.InvalidArgumentError):
        dq.set_num_threads(bad)


def test_concurrent_calls_from_python_threads(rng: np.random.Generator) -> None:
    xs = [(rng.standard_normal(50_000) * (i + 1)).astype(F32) for i in range(8)]
    want = [ref.quantize_int8(x) for x in xs]

    def job(i: int) -> dq.DynQuantTensor:
        return dq.quantize_int8(xs[i])

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(job, range(8)))
    for t, (q, s) in zip(got, want, strict=True):
        assert_same_i8(t.data, q)
        assert t.scales[0] == s


# ─── the GIL is released while kernels run ───────────────────────────────


@contextmanager
def _counter_thread() -> Iterator[list[int]]:
    """A Python thread that counts while it holds the GIL, and gives the GIL
    up only by ``time.sleep(0)``. With the switch interval raised to 100 s,
    the main thread is never forced to hand over the GIL, so the counter can
    advance during a call of the main thread only if that call releases it."""
    count = [0]
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            count[0] += 1
            time.sleep(0)

    old = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    t = threading.Thread(target=loop, daemon=True)
    try:
        t.start()
        time.sleep(0.01)
        yield count
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old)


def _advances_during(call: Callable[[], object], attempts: int = 20) -> bool:
    with _counter_thread() as count:
        for _ in range(attempts):
            before = count[0]
            call()
            if count[0] > before:
                return True
    return False


def test_gil_detector_sees_a_gil_holding_call() -> None:
    # Control: pure-Python work holds the GIL; the counter must not move.
    def python_loop() -> None:
        total = 0
        for i in range(300_000):
            total += i

    assert not _advances_during(python_loop, attempts=2)


def test_kernels_release_the_gil(rng: np.random.Generator) -> None:
    x = rng.standard_normal(4_000_000).astype(F32)
    w = rng.integers(-128, 128, (4096, 2048), dtype=np.int8)
    ws = np.ones(4096, F32)
    a = x[: 2000 * 1024].reshape(2000, 1024)
    kernels: dict[str, Callable[[], object]] = {
        "quantize_int8": lambda: dq.quantize_int8(x),
        "percentile": lambda: dq.compute_scale(x, 127.0, dq.Percentile(0.99)),
        "per_row": lambda: dq.quantize_int8_per_row(a),
        "w8a8_matvec": lambda: dq.w8a8_matvec(w, ws, x[:2048]),
        "calib": lambda: dq.CalibStats.collect([x]),
        "smooth_factors": lambda: dq.compute_smooth_factors(a, a),
        "smooth_in_place": lambda: dq.smooth_weights(a, np.ones(1024, F32), out=a),
    }
    # One kernel thread, so that a core is free for the counter: with every
    # core busy in the kernel, a fast call (the matvec takes ~0.1 ms on a
    # Zen 4) can end before the counter thread is scheduled at all.
    dq.set_num_threads(1)
    try:
        held = [name for name, call in kernels.items() if not _advances_during(call)]
    finally:
        dq.set_num_threads(0)
    assert not held, f"these calls never let another Python thread run: {held}"


# ─── DYNQUANT_KERNEL ────────────────────────────────────────────────────


def _run_with_kernel_env(value: str, code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DYNQUANT_KERNEL=value, RUST_BACKTRACE="0")
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("path", PATHS)
def test_kernel_env_var_selects_the_path(path: str) -> None:
    r = _run_with_kernel_env(
        path, "import dynquant as dq; print(dq.kernel_info().isa, dq.quantize_int8([1.0]).data)"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == path


# A bad DYNQUANT_KERNEL is one row of the hostile-input matrix
# (tests/test_hostile_inputs.py, "kernel_info / every kernel").


_HOT_THREADS = (
    "import os, time, numpy as np, dynquant as dq\n"
    "dq.set_num_threads(2)\n"
    "x = np.ones((64, 512), np.float32)\n"
    "w, s = dq.quantize_weights_int8(np.ones((512, 512), np.float32))\n"
    "y = dq.w8a8_matmul(x, w, s)\n"
    "def helpers():\n"
    "    names = []\n"
    "    for t in os.listdir('/proc/self/task'):\n"
    "        try:  # a replaced pool's threads may be exiting meanwhile\n"
    "            names.append(open(f'/proc/self/task/{t}/comm').read().strip())\n"
    "        except OSError:\n"
    "            pass\n"
    "    return names.count('dynquant-hot')\n"
    "# A new thread names itself once it runs: on a busy machine, a while later.\n"
    "deadline = time.monotonic() + 3\n"
    "while helpers() == 0 and time.monotonic() < deadline:\n"
    "    time.sleep(0.01)\n"
    "print(helpers(), float(y[0, 0]))\n"
)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
@pytest.mark.parametrize(("value", "helpers"), [(None, 1), ("0", 0), ("1", 1)])
def test_spin_env_var_controls_the_always_awake_helper(value: str | None, helpers: int) -> None:
    # A product on two threads starts the one always-awake helper thread,
    # unless DYNQUANT_SPIN=0; the result is the same either way.
    env = {k: v for k, v in os.environ.items() if k != "DYNQUANT_SPIN"}
    if value is not None:
        env["DYNQUANT_SPIN"] = value
    r = subprocess.run(
        [sys.executable, "-c", _HOT_THREADS], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr[-500:]
    count, y = r.stdout.split()
    assert int(count) == helpers
    assert float(y) == pytest.approx(512.0, rel=1e-6)


FORMS = ["sign", "offset", "panel"]


def _gemm_weights(rng: np.random.Generator, n: int, k: int, kind: str) -> np.ndarray:
    """int8 weights: 'real' (quantize_weights_int8 of Gaussians: few pairs
    that are not pair-safe), 'uniform' (every byte: dense unsafe pairs, so
    the offset form declines the block), 'extreme' (127/-128 pairs)."""
    if kind == "real":
        w, _ = dq.quantize_weights_int8(rng.standard_normal((n, k)).astype(F32))
        return w
    if kind == "uniform":
        return rng.integers(-128, 128, (n, k)).astype(np.int8)
    w = np.zeros((n, k), np.int8)
    w[:, 0::2] = rng.choice(np.array([127, -128, 64, -64, 1], np.int8), (n, (k + 1) // 2))
    w[:, 1::2] = rng.choice(np.array([127, -128, 65, -65, 0], np.int8), (n, k // 2))
    return w


@pytest.mark.parametrize("kind", ["real", "uniform", "extreme"])
# (33, 130, 256): two full 64-row panels (the AVX-512 transpose packs them)
# and a partial one (packed in scalar code), 8 groups of 4 tokens and one.
@pytest.mark.parametrize(
    ("m", "n", "k"), [(2, 3, 32), (9, 17, 95), (70, 40, 1024), (66, 70, 1061), (33, 130, 256)]
)
def test_gemm_forms_give_the_same_bits_on_every_path(
    m: int, n: int, k: int, kind: str, rng: np.random.Generator, two_threads: None
) -> None:
    """The offset form (pair-safe weights times q + 128, residuals added
    back), the panel form (64-row panels packed on the fly, the packed
    GEMM's kernel) and the sign form give identical W8A8 GEMM results on
    every kernel path, equal to w8a8_matvec per token (so to the
    reference)."""
    w = _gemm_weights(rng, n, k, kind)
    ws = rng.uniform(0.001, 0.02, n).astype(F32)
    x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 30, (m, 1))).astype(F32)
    # Tokens of all +127 and all -127: the sums nearest i16 saturation.
    x[0], x[1] = 1.0, -1.0
    bias = rng.standard_normal(n).astype(F32)
    want = np.stack([dq.w8a8_matvec(w, ws, row) for row in x]) + bias
    for path in PATHS:
        dq.set_kernel(path)
        for form in FORMS:
            _core.set_gemm_form(form)
            assert_same_f32(dq.w8a8_matmul(x, w, ws, bias=bias), want, f"{path} {form}")
            per_tensor = dq.w8a8_matmul(x, w, ws, per_token=False)
            _core.set_gemm_form("sign")
            assert_same_f32(per_tensor, dq.w8a8_matmul(x, w, ws, per_token=False), f"{path} {form}")


@settings(max_examples=60)
@given(
    m=st.integers(2, 40),
    k=st.integers(32, 200),
    n=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    spread=st.sampled_from([1.0, 20.0, 60.0]),
)
def test_gemm_forms_agree_on_random_weights(
    m: int, k: int, n: int, seed: int, spread: float
) -> None:
    """Property: for int8 weights of any spread (from mostly pair-safe to
    mostly not), the forced offset and panel forms equal the sign form bit
    for bit."""
    rng = np.random.default_rng(seed)
    w = np.clip(np.round(rng.standard_normal((n, k)) * spread), -128, 127).astype(np.int8)
    ws = rng.uniform(0.001, 0.02, n).astype(F32)
    x = rng.standard_normal((m, k)).astype(F32)
    _core.set_gemm_form("offset")
    offset = dq.w8a8_matmul(x, w, ws)
    _core.set_gemm_form("panel")
    panel = dq.w8a8_matmul(x, w, ws)
    _core.set_gemm_form("sign")
    assert_same_f32(offset, dq.w8a8_matmul(x, w, ws))
    assert_same_f32(panel, dq.w8a8_matmul(x, w, ws), "panel")


def test_set_gemm_form_errors() -> None:
    with pytest.raises(dq.InvalidArgumentError) as info:
        _core.set_gemm_form("fast")
    assert "fast" in str(info.value) and "offset" in str(info.value) and "panel" in str(info.value)


@pytest.mark.parametrize("kind", ["real", "uniform"])
def test_auto_gemm_form_at_the_offset_thresholds(
    kind: str, rng: np.random.Generator, two_threads: None
) -> None:
    """At 64 tokens x 1024 rows x 1024 columns the default ('auto') takes
    the offset form on AVX2 where a weight block's residual is sparse
    ('real') and keeps the sign form where it is dense ('uniform'); either
    way the bits are the sign form's and w8a8_matvec's."""
    w = _gemm_weights(rng, 1024, 1024, kind)
    ws = rng.uniform(0.001, 0.02, 1024).astype(F32)
    x = rng.standard_normal((64, 1024)).astype(F32)
    x[0] = 1.0
    _core.set_gemm_form("auto")
    auto = dq.w8a8_matmul(x, w, ws)
    _core.set_gemm_form("sign")
    assert_same_f32(auto, dq.w8a8_matmul(x, w, ws))
    for i in (0, 1, 63):
        assert_same_f32(auto[i], dq.w8a8_matvec(w, ws, x[i]), f"token {i}")
