"""Cut ``minilm_extract.npz`` (committed, < 2 MB) from the project's shared
``minilm_layers.npz`` (all-MiniLM-L6-v2 activations and weights; see that
file's README for how it was captured). A user's clone has no shared data,
so the real-data tests read only this extract.

What is kept (tokens are every 8th of the 512 captured tokens: 64 tokens
from across the 64 sentences, not just the first few):

- ``l{0,5}.ffn_in.x``: (64, 384) float32, the FFN up-projection input,
  tokens ``[::8]``, exact values;
- ``l{0,5}.ffn_in.w``: (192, 384) float16, the up-projection weight, output
  rows ``[::8]``;
- ``l0.ffn_out.x``: (64, 1536) float16, the FFN down-projection input (after
  GELU), tokens ``[::8]``;
- ``l0.ffn_out.w``: (384, 1536) float16, the down-projection weight, all rows.

Weights (and the down-projection input) are stored as float16 to fit the
size budget; the tests convert them to float32 and take *those* values as
the layer's exact float weights, computing the float reference output
``x @ w.T`` themselves, so the rounding to float16 is not an error source.
Every down-projection output row is kept because one output channel has
outputs ~10x the others and dominates the relative error of the layer.

Usage: ``python tests/data/make_extract.py [path/to/minilm_layers.npz]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SOURCE = "/work/shared/data/minilm_layers.npz"  # the project's shared data
TARGET = Path(__file__).resolve().parent / "minilm_extract.npz"
TOKENS = slice(None, None, 8)
FFN_IN_ROWS = slice(None, None, 8)


def main() -> None:
    src = np.load(sys.argv[1] if len(sys.argv) > 1 else SOURCE)
    out = {}
    for layer in ("l0", "l5"):
        out[f"{layer}.ffn_in.x"] = src[f"{layer}.ffn_in.x"][TOKENS].astype(np.float32)
        out[f"{layer}.ffn_in.w"] = src[f"{layer}.ffn_in.w"][FFN_IN_ROWS].astype(np.float16)
    out["l0.ffn_out.x"] = src["l0.ffn_out.x"][TOKENS].astype(np.float16)
    out["l0.ffn_out.w"] = src["l0.ffn_out.w"].astype(np.float16)
    np.savez_compressed(TARGET, **out)
    print(f"{TARGET}: {TARGET.stat().st_size} bytes")
    for k, v in out.items():
        print(f"  {k}: {v.shape} {v.dtype}")


if __name__ == "__main__":
    main()
