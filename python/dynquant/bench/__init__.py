"""``python -m dynquant.bench``: dynquant's kernels side by side with NumPy,
PyTorch and ONNX Runtime, in one process, on the same inputs.

Each implementation is warmed up, then timed as the median of ``--repeat``
samples; the table gives each time, the ratio dynquant ÷ peer (< 1 means
dynquant is faster), and for memory-bound kernels the achieved GB/s next to
the machine's copy bandwidth measured in the same run. PyTorch and ONNX
Runtime columns appear when those packages are installed (``pip install
dynquant[bench]`` for ONNX Runtime; PyTorch separately), and are skipped
otherwise. ``--quick`` runs tiny shapes once: a smoke test, never a timing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Any

import dynquant as dq

from ..kernels import MAX_THREADS
from ._cases import Case, Config, iter_cases
from ._harness import (
    Row,
    Timing,
    format_table,
    machine_info,
    measure,
    measure_interleaved,
    memory_bandwidth,
    write_json,
)
from ._peers import PEER_NAMES, Peers

__all__ = ["main"]

LEGEND = """\
ratio = dynquant's median / the row's median: < 1 means dynquant is faster.
  The first row of each case is dynquant's; later dynquant rows are ratioed too.
GB/s = compulsory traffic of one call (inputs read once, outputs written once,
  weights in the row's own format: int8, packed int4, or float32 for NumPy) / median;
  %bw = that over the NumPy copy bandwidth at the same thread count (header).
  Data that stays in the last-level cache between calls (header) can exceed 100%.
GOP/s = 2·M·N·K / median.  best = the fastest sample (median is the figure; a
  large gap between them means the machine was busy).
Each time includes the library's own Python call path (wrapper, argument checks,
  output allocation; torch dispatch; InferenceSession.run).
NumPy peers use preallocated buffers and round with np.rint (half to even), not
  dynquant's round half away from zero: a fast peer, not a bit-exact one.
torch: quantize_per_tensor_dynamic(qint8) and torch's dynamic int8 Linear
  (fbgemm engine, torch.ao.nn.quantized.dynamic.Linear — what quantize_dynamic
  installs — holding dynquant's own int8 weights and per-row scales) quantize
  activations per tensor, asymmetric; dynquant's w8a8_matmul is per token,
  exact, and on AVX2 from 64 tokens (and 1024 rows and columns) takes the
  offset form, which splits the weights anew on every call; on VNNI it
  multiplies w + 128 by the tokens with vpdpbusd, nothing prepared (README:
  Kernels and threads); the peers' weights are packed once, ahead of time.
onnxruntime: DynamicQuantizeLinear gives uint8 with a zero point;
  DynamicQuantizeMatMul (com.microsoft) is what quantization.quantize_dynamic
  (per_channel=True) on a float MatMul turns into after ORT's graph fusion;
  MatMulNBits(bits=4, accuracy_level=4) quantizes activations to int8 per block
  (ORT's W4A8) and holds dynquant's packed int4 weights and group scales.
MiniLM encode: all-MiniLM-L6-v2 end to end (tokenize, forward, pool) over the
  demo's sentences; every Linear a QuantizedLinear in the dynquant rows; cos =
  each embedding's cosine to the NumPy float32 forward's. torch rows: the same
  weights in torch.nn (padded batches, as sentence-transformers runs them);
  quantize_dynamic: per-tensor activations (reduced range), per-tensor int8
  weights. Skipped when the model package is not installed. Its samples are
  taken in turn (one encode of each, --repeat rounds, 0.1 s idle before each)
  so that the machine's drift over the seconds of a run hits all alike."""


def _parse(argv: list[str] | None, prog: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark dynquant against NumPy, PyTorch and ONNX Runtime.",
    )
    ap.add_argument(
        "--quick", action="store_true", help="tiny shapes, one repetition (a smoke test)"
    )
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run the cases whose name or tag contains NAME (repeatable, or comma-separated; "
        "default: every case)",
    )
    ap.add_argument(
        "--threads",
        default="1,2",
        metavar="N[,N...]",
        help="comma-separated thread counts (default: 1,2)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=None,
        metavar="N",
        help="timed samples per row (default: 7; 1 with --quick)",
    )
    ap.add_argument(
        "--json", metavar="PATH", help="also write the header and table as JSON (default: no)"
    )
    ap.add_argument(
        "--peers",
        default=",".join(PEER_NAMES),
        metavar="NAME[,NAME...]",
        help=f"peers to load if installed (default: {','.join(PEER_NAMES)}; NumPy always runs)",
    )
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)
    try:
        args.thread_counts = [int(t) for t in str(args.threads).split(",") if t.strip()]
    except ValueError:
        ap.error(f"--threads must be comma-separated integers, got {args.threads!r}")
    if not args.thread_counts or not all(1 <= t <= MAX_THREADS for t in args.thread_counts):
        ap.error(f"--threads needs at least one count, each in [1, {MAX_THREADS}]")
    if args.json:
        parent = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(parent):
            ap.error(f"--json: directory {parent!r} does not exist")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 7
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    args.patterns = [p.strip() for o in args.only for p in o.split(",") if p.strip()]
    args.wanted_peers = {p.strip() for p in str(args.peers).split(",") if p.strip()}
    unknown = args.wanted_peers - set(PEER_NAMES)
    if unknown:
        ap.error(f"--peers: unknown peer(s) {sorted(unknown)}; choose from {PEER_NAMES}")
    return args


def _header_text(info: dict[str, Any], bw: dict[int, float], args: argparse.Namespace) -> str:
    v = info["versions"]
    k = info["kernel"]
    peers = "; ".join(f"{n} {v[n] or 'not available'}" for n in ("torch", "onnxruntime", "onnx"))
    lines = [
        f"dynquant benchmark — {info['date']}",
        f"machine: {info['cpu']}; {info['logical_cpus']} logical CPUs, "
        f"{info['physical_cores']} physical cores, {info['usable_cpus']} usable; "
        f"last-level cache {info['last_level_cache'] or '?'}; {info['platform']}",
        f"python {info['python']}; numpy {v['numpy']}; {peers}; "
        f"threadpoolctl {v['threadpoolctl'] or 'not available'}",
        f"dynquant {v['dynquant']}: kernel {k['isa']} (supported: {', '.join(k['supported'])}), "
        f"{k['threads']} threads by default, {k['arch']}",
    ]
    if info.get("torch_quantized_engine"):
        lines.append(f"torch quantized engine: {info['torch_quantized_engine']}")
    for b in info.get("blas", []):
        lines.append(
            f"threadpool: {b['user_api']} {b['internal_api']} {b['version']} "
            f"({b['architecture'] or '-'}, {b['prefix']})"
        )
    if info.get("openblas_env"):
        lines.append(
            f"note: {info['openblas_env']} is set; NumPy's OpenBLAS may run a slower kernel"
        )
    size = info["bandwidth_bytes"] // (1 << 20)
    lines.append(
        f"memory bandwidth (NumPy copy of {size} MiB, bytes read + written / time): "
        + "; ".join(f"{n} thread{'s' if n > 1 else ''} {g:.1f} GB/s" for n, g in bw.items())
    )
    lines.append(
        f"timing: median of {args.repeat} sample(s) after warm-up"
        + (" (--quick: tiny shapes, one call — not a measurement)" if args.quick else "")
    )
    for name, why in info["skipped"].items():
        lines.append(f"skipped: {why}" if why.startswith(name) else f"skipped: {name}: {why}")
    return "\n".join(lines)


def _run_case(
    case: Case, args: argparse.Namespace, peers: Peers, bw: dict[int, float], rows: list[Row]
) -> bool:
    """Time every implementation of ``case`` at each thread count; True when a
    dynquant function failed."""
    failed = False
    group = case.tags[0] if case.tags else case.label
    try:
        make = case.build()
    except Exception as e:
        for n in args.thread_counts:
            rows.append(_error_row(case, group, n, "dynquant (case setup)", e))
        return True
    for n in args.thread_counts:
        print(f"  {case.label} ({n} thread{'s' if n > 1 else ''})", file=sys.stderr, flush=True)
        with peers.threads(n):
            try:
                impls = make(n)
            except Exception as e:
                rows.append(_error_row(case, group, n, "dynquant (case setup)", e))
                failed = True
                continue
            ref: float | None = None
            timings: dict[int, Timing | Exception] = {}
            if case.interleaved and not args.quick:
                timings = measure_interleaved(
                    {i: impl.fn for i, impl in enumerate(impls) if impl.fn is not None},
                    repeat=args.repeat,
                    idle=case.idle,
                )
            for i, impl in enumerate(impls):
                row = Row(case.label, group, n, impl.name, None, note=impl.note)
                row.reference, row.dynquant = i == 0, impl.dynquant
                rows.append(row)
                if impl.fn is None:
                    continue
                try:
                    t = timings.get(i) or measure(impl.fn, repeat=args.repeat, quick=args.quick)
                    if isinstance(t, Exception):
                        raise t
                except Exception as e:
                    row.error = True
                    row.note = f"error: {type(e).__name__}: {str(e)[:100]}"
                    failed = failed or impl.dynquant
                    continue
                row.seconds, row.best_seconds = t.median, t.best
                row.inner, row.samples = t.inner, t.samples
                if i == 0:
                    ref = t.median
                elif ref is not None:
                    row.ratio = ref / t.median
                nbytes = impl.nbytes if impl.nbytes is not None else case.nbytes
                if nbytes is not None:
                    row.gbps = nbytes / t.median / 1e9
                    row.bw_fraction = row.gbps / bw[n] if n in bw else None
                if case.ops is not None:
                    row.gops = case.ops / t.median / 1e9
                if not args.quick:
                    # Let this library's worker threads stop spinning (OpenBLAS spins
                    # ~0.1 s after a call) before the next one runs on the same cores.
                    time.sleep(0.1)
    return failed


def _error_row(case: Case, group: str, n: int, name: str, e: Exception) -> Row:
    note = f"error: {type(e).__name__}: {str(e)[:100]}"
    return Row(case.label, group, n, name, None, note=note, dynquant=True, error=True)


def main(argv: list[str] | None = None, *, prog: str = "python -m dynquant.bench") -> int:
    """Run the benchmark; 0 on success, 1 when a dynquant function failed.
    Bad arguments exit through argparse (``SystemExit(2)``)."""
    args = _parse(argv, prog)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices and the like
        return _main(args, Peers.load(args.wanted_peers))


def _main(args: argparse.Namespace, peers: Peers) -> int:
    cfg = Config(quick=args.quick, peers=peers)
    cases = [c for c in iter_cases(cfg) if c.matches(args.patterns)]
    if args.list:
        for c in cases:
            print(f"{c.label:40s} {', '.join(c.tags)}")
        return 0
    bw_bytes = (16 if args.quick else 256) << 20
    bw = {
        n: memory_bandwidth(n, bw_bytes, repeat=1 if args.quick else 5) for n in args.thread_counts
    }
    k = dq.kernel_info()
    env = [
        f"{e}={os.environ[e]}" for e in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if e in os.environ
    ]
    info = machine_info(
        peers.versions(),
        {
            "kernel": {
                "isa": k.isa,
                "threads": k.threads,
                "supported": list(k.supported),
                "arch": k.arch,
            },
            "torch_quantized_engine": peers.torch_engine,
            "blas": peers.blas_info(),
            "openblas_env": " ".join(env),
            "bandwidth_bytes": bw_bytes,
            "bandwidth_gbps": {str(n): g for n, g in bw.items()},
            "threads": args.thread_counts,
            "repeat": args.repeat,
            "quick": args.quick,
            "only": args.patterns,
            "skipped": peers.why_not,
        },
    )
    print(_header_text(info, bw, args), flush=True)
    print(file=sys.stderr)
    rows: list[Row] = []
    failed = False
    for case in cases:
        failed = _run_case(case, args, peers, bw, rows) or failed
    print()
    print(format_table(rows))
    print()
    print(LEGEND)
    if args.json:
        write_json(args.json, info, rows, LEGEND)
        print(f"\nwrote {args.json}")
    return 1 if failed else 0
