"""Every Python example in the README runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int) -> None:
    exec(compile(BLOCKS[index], f"README.md example {index}", "exec"), {})


def _section(title: str) -> str:
    """The README's ``## title`` section, up to the next ``## ``."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def _demo_options_paragraph() -> str:
    match = re.search(
        r"^Options\b.*?(?=\n\n)", _section("The demo: a real model, quantized"), re.S | re.M
    )
    assert match, "the demo section has no 'Options' paragraph"
    return match.group(0)


def test_readme_lists_every_demo_option() -> None:
    """The demo's 'Options' paragraph names exactly the options of its parser."""
    from dynquant.demo import build_parser

    parser_options = {
        o
        for action in build_parser()._actions
        for o in action.option_strings
        if o.startswith("--") and o != "--help"
    }
    readme_options = set(re.findall(r"`(--[a-z][a-z0-9-]*)", _demo_options_paragraph()))
    assert parser_options - readme_options == set(), "options missing from the README"
    assert readme_options - parser_options == set(), "README options the demo does not have"
