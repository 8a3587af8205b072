"""Small real models in NumPy whose Linear layers can be swapped for quantized ones.

Optional: loading weights needs ``safetensors``, ``tokenizers`` and the
model package (``requirements-demo.txt``, ``requirements-model.txt``).
"""

from __future__ import annotations

from .minilm import (
    DEMO_SENTENCES,
    LinearFactory,
    LinearFn,
    MiniLM,
    MiniLMConfig,
    ModelNotInstalledError,
    float_linear,
    gelu,
    layer_norm,
    model_dir,
)

__all__ = [
    "DEMO_SENTENCES",
    "LinearFactory",
    "LinearFn",
    "MiniLM",
    "MiniLMConfig",
    "ModelNotInstalledError",
    "float_linear",
    "gelu",
    "layer_norm",
    "model_dir",
]
