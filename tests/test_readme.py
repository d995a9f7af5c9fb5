"""The README's promises: its two commands exist, and every command and flag its CLI reference names is real."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from retinaedge.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _cli_block() -> list[str]:
    start = README.index("## CLI")
    block = README[start:].split("```")[1]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("retinaedge ")]


def _subparsers() -> dict[str, object]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(action.choices)


def test_readme_two_commands_exist_in_makefile_and_ci():
    makefile = (ROOT / "Makefile").read_text()
    assert "make demo" in README and "make test" in README
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("line", _cli_block())
def test_every_documented_flag_exists(line):
    words = line.split()
    subs = _subparsers()
    name = words[1]
    assert name in subs, f"README documents `retinaedge {name}`, which the CLI does not have"
    parser = subs[name]
    if name == "data":  # `data synth ...`: one level deeper
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[words[2]]
    known = {opt for action in parser._actions for opt in action.option_strings}
    for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line):
        assert flag in known, f"README documents {flag} for `retinaedge {name}`; the CLI has {sorted(known)}"
