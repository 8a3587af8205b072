"""The command line: ``python -m dynquant`` and its commands' argparse parsers
(help, bad arguments) and ``demo --synthetic --plot``. No model needed."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dynquant import demo
from dynquant.__main__ import COMMANDS, main

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.help != argparse.SUPPRESS and a.dest != "help"]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m dynquant")
    for name, (_, description) in COMMANDS.items():
        assert f"\n    {name}" in out
        assert " ".join(description.split()[:4]) in " ".join(out.split())


def test_python_dash_m_help() -> None:
    """The real entry point, in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-m", "dynquant", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in COMMANDS)
    done = subprocess.run(
        [sys.executable, "-m", "dynquant", "demo", "--no-such-option"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "python -m dynquant demo: error: unrecognized arguments: --no-such-option" in (
        done.stderr
    )


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_help_documents_every_option(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m dynquant {command} ")
    assert "options:" in out


def test_every_demo_option_gives_its_default() -> None:
    options = _options(demo.build_parser())
    assert len(options) >= 9
    for action in options:
        assert action.help and "(default: " in action.help, action.option_strings


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["nope"], "invalid choice: 'nope'"),
        (["--nope"], "error:"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["demo", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
        (["demo", "--repeat", "-1"], "argument --repeat: must be >= 1"),
        (["demo", "--threads", "two"], "argument --threads: must be an integer, got 'two'"),
        (["demo", "--sentences", "1"], "argument --sentences: must be between 2 and"),
        (["demo", "--sentences", "1000"], "argument --sentences: must be between 2 and"),
        (["demo", "--plot", "x.png", "--plot-layer", "l9.q"], "argument --plot-layer:"),
        (["demo", "--plot-layer", "l1.q"], "--plot-layer chooses the layer of --plot"),
        (["demo", "--synthetic", "--sentences", "4"], "--synthetic runs no model: --sentences"),
        (["demo", "--synthetic", "--repeat", "3", "--batch-size", "2"], "--batch-size"),
        (["demo", "--synthetic", "--no-torch"], "--synthetic runs no model: --no-torch"),
        (["demo", "--synthetic", "--no-progress"], "--synthetic runs no model: --no-progress"),
        (["demo", "--sentences", "0"], "argument --sentences: must be between 2 and"),
        (["demo", "--sentences", "x"], "argument --sentences: must be an integer, got 'x'"),
        (["bench", "--peers", "numpy,foo"], "unknown peer(s) ['foo']"),
        (["bench", "--threads", "0"], "--threads needs at least one count"),
        (["demo", "--threads", "4097"], "argument --threads: must be at most 4096, got 4097"),
        (["bench", "--threads", "1,5000"], "each in [1, 4096]"),
        (["bench", "--json", "/no/such/dir/x.json"], "--json: directory '/no/such/dir' does not"),
        (["bench", "--repeat", "x"], "argument --repeat: invalid int value"),
        (["observer-bench", "--sizes", "0.5"], "argument --sizes: must be a whole number"),
        (["observer-bench", "--workers", "0"], "argument --workers: must be a whole number"),
    ],
)
def test_bad_arguments_exit_2_with_argparse_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: python -m dynquant")
    assert message in captured.err
    assert "error: " in captured.err.splitlines()[-1]


def test_synthetic_plot_draws_the_synthetic_activations(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--plot with --synthetic draws the synthetic activations and weight (the
    drawing itself is stubbed: this runs without matplotlib)."""
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(demo, "_matplotlib_missing", lambda: False)
    monkeypatch.setattr(demo, "plot_smoothing", lambda *args: calls.append(args))
    out = tmp_path / "synthetic.png"
    assert main(["demo", "--synthetic", "--plot", str(out)]) == 0
    assert "SmoothQuant 0.5 + per-token" in capsys.readouterr().out
    (path, _, weight, activations, alpha) = calls[0]
    data = demo.synthetic_data()
    assert path == str(out) and alpha == demo.SYNTHETIC_ALPHA
    assert (weight == data.weight).all() and (activations == data.activations).all()


def test_plot_without_matplotlib_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    real = demo._optional
    monkeypatch.setattr(demo, "_optional", lambda m: None if m == "matplotlib" else real(m))
    assert main(["demo", "--synthetic", "--plot", str(tmp_path / "x.png")]) == 1
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")
def test_synthetic_plot_writes_a_png(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "synthetic.png"
    assert main(["demo", "--synthetic", "--plot", str(out)]) == 0
    assert f"to {out}" in capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
