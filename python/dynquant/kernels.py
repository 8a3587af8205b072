"""Which kernel path and how many threads run, and how to change them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _core

__all__ = ["KernelInfo", "kernel_info", "set_kernel", "set_num_threads"]


@dataclass(frozen=True, slots=True)
class KernelInfo:
    """The active instruction-set path, the thread count, what this CPU supports.

    ``packed_gemm``: whether the active path has the kernel for weights from
    ``pack_weights_int8`` (AVX-512 VNNI); elsewhere such weights are unpacked
    on every call. ``QuantizedLinear(bits=8)`` packs its weights when it is.
    """

    isa: str
    threads: int
    supported: tuple[str, ...]
    arch: str
    packed_gemm: bool


def kernel_info() -> KernelInfo:
    """The path (``DYNQUANT_KERNEL`` or detected) and threads in use."""
    info = _core.kernel_info()
    return KernelInfo(
        info["isa"], info["threads"], tuple(info["supported"]), info["arch"], info["packed_gemm"]
    )


def set_kernel(name: str) -> None:
    """Force a kernel path: ``"auto"``, ``"scalar"``, ``"avx2"``,
    ``"avx512vnni"``, ``"avxvnni"``, ``"neon"`` or ``"neondot"``
    (``kernel_info().supported`` lists this CPU's, slowest first; ``"auto"``
    takes the last).

    The same as setting ``DYNQUANT_KERNEL`` before import; every path gives
    the same bits, only the speed differs. The VNNI paths are the AVX2 path
    with ``vpdpbusd`` as the int8 multiply-add of the W8A8 products, and
    ``neondot`` the NEON path with the ARMv8.2 ``sdot``.
    """
    if not isinstance(name, str):
        from .errors import ArgumentTypeError

        raise ArgumentTypeError(f"set_kernel needs a str, got {type(name).__name__} {name!r}")
    _core.set_kernel(name)


MAX_THREADS = 4096
"""The most threads ``set_num_threads`` takes (the Rust side's limit)."""


def set_num_threads(n: int) -> None:
    """Threads for the kernels; 0 restores the default (``RAYON_NUM_THREADS``
    or the CPU count). Safe while other threads run kernels."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= MAX_THREADS:
        from .errors import InvalidArgumentError

        raise InvalidArgumentError(f"set_num_threads needs an int in [0, {MAX_THREADS}], got {n!r}")
    _core.set_num_threads(int(n))
