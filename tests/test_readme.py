"""Every Python example in the README runs as written."""

from __future__ import annotations

import ast
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


def test_readme_api_table_covers_every_public_name() -> None:
    """Every name of ``dynquant.__all__`` is in the README's API table as
    ``dq.NAME`` (the error subclasses in the Errors paragraph, which the table
    points to), every name of ``dynquant.dask.__all__`` as
    ``dynquant.dask.NAME``; and every ``dq.NAME`` of the table exists."""
    import dynquant as dq

    api = _section("API: Python ↔ Rust")
    table = "\n".join(line for line in api.splitlines() if line.startswith("|"))
    errors = re.search(
        r"^- \*\*Errors\.\*\*.*?(?=^- |\Z)", _section("Semantics worth knowing"), re.S | re.M
    )
    assert errors, "the Semantics section has no Errors paragraph"
    in_table = set(re.findall(r"`dq\.([A-Za-z_][A-Za-z0-9_]*)", table))
    missing = []
    for name in dq.__all__:
        obj = getattr(dq, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, dq.DynQuantError)
            and obj is not dq.DynQuantError
        ):
            if f"`{name}`" not in errors.group(0):
                missing.append(name)
        elif name not in in_table:
            missing.append(name)
    assert missing == [], "public names missing from the README's API table"
    assert sorted(in_table - set(dq.__all__)) == [], "the README's API table names unknown objects"

    # dynquant.dask imports dask; its __all__ is read from the source instead
    source = Path(dq.__file__).with_name("dask.py").read_text(encoding="utf-8")
    dask_all = next(
        ast.literal_eval(node.value)
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
    )
    in_table_dask = set(re.findall(r"`dynquant\.dask\.([A-Za-z_][A-Za-z0-9_]*)", table))
    assert in_table_dask == set(dask_all)
