"""The commands the docs show are commands the CLI takes, and the command table lists every command."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from lighthouse.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SUBCOMMANDS = ("train", "eval", "plot", "export", "sample")
PLACEHOLDERS = ("...", "[", "\\|", "<", "N ")  # a synopsis, not a command


def fenced_commands(text: str) -> list[str]:
    """Lines of code blocks that run `lighthouse <command>` (continuations joined), from `lighthouse` on."""
    found = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            m = re.search(rf"(?:^|-m )(lighthouse (?:{'|'.join(SUBCOMMANDS)})\b.*)", line.strip())
            if m:
                found.append(m.group(1))
    return found


def inline_commands(text: str) -> list[str]:
    """Code spans that are a whole command with arguments (`lighthouse eval --checkpoint RUN`), not a name."""
    spans = re.findall(rf"`(lighthouse (?:{'|'.join(SUBCOMMANDS)}) [^`]+)`", text)
    return [s for s in spans if not any(p in s for p in PLACEHOLDERS)]


COMMANDS = sorted({(doc.name, cmd) for doc in DOCS for cmd in fenced_commands(doc.read_text(encoding="utf-8"))
                   + inline_commands(doc.read_text(encoding="utf-8"))})


def test_the_docs_show_commands():
    assert len(COMMANDS) > 10 and {c.split()[1] for _, c in COMMANDS} == set(SUBCOMMANDS)


@pytest.mark.parametrize("doc,command", COMMANDS, ids=[f"{d}: {c[:60]}" for d, c in COMMANDS])
def test_documented_commands_parse(doc, command, capsys):
    argv = shlex.split(command, comments=True)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{doc}: `{command}` is not a command lighthouse takes: {capsys.readouterr().err.strip()}")


def test_the_command_table_lists_every_command():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(SUBCOMMANDS)
    text = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    table = text[text.index("## Commands"):text.index("## Configuration")]
    rows = {m for m in re.findall(r"^\| `lighthouse (\w+)", table, re.M)}
    assert rows == set(SUBCOMMANDS)
    for flag in ("--resume", "--resume-weights-only", "--overwrite", "--baseline"):
        assert f"`  {flag}`" in table
