"""The wheel users install: built by maturin, installed with pip into a fresh
virtualenv, and used from outside the source tree.

Everything else in the test suite imports the package that `maturin develop`
left in the source tree; this is the one test that sees what `pip install`
gives a user (the extension, the type stubs, the pure-Python modules, the
console script), so a module missing from the wheel or a path that only
exists in a checkout fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MATURIN = Path(sys.executable).with_name("maturin")

# Runs in the fresh environment, from a directory with no dynquant in it.
USER_SCRIPT = r"""
import pathlib, sys
import numpy as np
import dynquant as dq

here = pathlib.Path(dq.__file__).resolve()
assert "site-packages" in here.parts, here
package = here.parent
for name in ("_core.pyi", "py.typed", "models/sentences.py", "bench/_cases.py"):
    assert (package / name).is_file(), f"{name} missing from the wheel"

rng = np.random.default_rng(0)
x = rng.standard_normal((3, 70)).astype(np.float32)
w = rng.standard_normal((5, 70)).astype(np.float32)
w_i8, w_scales = dq.quantize_weights_int8(w)
y = dq.w8a8_matmul(x, w_i8, w_scales)
for i in range(3):
    assert np.array_equal(y[i], dq.w8a8_matvec(w_i8, w_scales, x[i]))
layer = dq.QuantizedLinear.from_float(w, bits=4, group_size=32)
assert layer(x).shape == (3, 5)
try:
    dq.quantize_int8(np.array([1.0, np.nan], dtype=np.float32), nan_policy="raise")
except dq.NonFiniteError:
    pass
else:
    raise AssertionError("NaN was accepted")
print("wheel ok", dq.kernel_info())
"""


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.skipif(not MATURIN.exists(), reason="maturin is not in this environment")
def test_the_wheel_installs_and_runs_outside_the_source_tree(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    # Same features and profile as `make build`, so cargo reuses its artifacts.
    _run([str(MATURIN), "build", "--release", "-q", "-o", str(wheels)], cwd=ROOT)
    (wheel,) = wheels.glob("dynquant-*.whl")

    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # numpy is the wheel's one dependency; take the version this suite runs on.
    import numpy

    _run(
        [str(python), "-m", "pip", "install", "-q", str(wheel), f"numpy=={numpy.__version__}"],
        cwd=tmp_path,
    )

    user_dir = tmp_path / "user"
    user_dir.mkdir()
    clean_env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    out = _run([str(python), "-c", USER_SCRIPT], cwd=user_dir, env=clean_env)
    assert out.startswith("wheel ok"), out

    # The console script and the demo's model-free mode, as installed.
    script = env_dir / "bin" / "dynquant"
    assert shutil.which(str(script)) is not None
    out = _run([str(script), "demo", "--synthetic"], cwd=user_dir, env=clean_env)
    assert "SmoothQuant" in out, out
