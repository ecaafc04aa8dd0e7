"""The documentation stays true and findable: every flag a user can pass is on its
command's page, every page is in the index, every link resolves, the README stays short."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from echo20 import client as echo_client
from echo20 import server as echo_server
from echo20.bench import cli as bench_cli
from echo20.conformance import compare, runner
from echo20.reference import tornado_client, tornado_server

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Each command's flags are documented on its own page.
PARSERS = {
    "echo20-server": (echo_server.build_parser, "server.md"),
    "echo20-client": (echo_client.build_parser, "client.md"),
    "echo20-bench": (bench_cli.build_parser, "bench.md"),
    "echo20-conformance": (runner.build_parser, "conformance-runner.md"),
    "echo20-conformance compare": (compare.build_parser, "conformance-runner.md"),
    "tornado_server": (tornado_server.build_parser, "conformance-runner.md"),
    "tornado_client": (tornado_client.build_parser, "conformance-runner.md"),
}

# A newcomer reads the README in a couple of minutes; the rest lives in docs/.
README_MAX_LINES = 250


def documented_flags(parser: argparse.ArgumentParser) -> set[str]:
    """The long flags of ``parser`` and its subcommands that --help shows."""
    flags: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                flags |= documented_flags(subparser)
        elif action.help != argparse.SUPPRESS:
            flags |= {flag for flag in action.option_strings if flag.startswith("--")}
    return flags - {"--help"}


@pytest.mark.parametrize("command", PARSERS)
def test_every_flag_is_on_its_page(command: str) -> None:
    build_parser, page = PARSERS[command]
    text = (DOCS / page).read_text()
    missing = sorted(
        flag
        for flag in documented_flags(build_parser())
        # A whole flag, in the text or in an example: `--out` does not count for --out-dir.
        if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)
    )
    assert not missing, f"{command}: not in docs/{page}: {missing}"


def test_the_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES


def test_every_page_is_in_the_index() -> None:
    index = (DOCS / "index.md").read_text()
    pages = sorted(path.name for path in DOCS.glob("*.md") if path.name != "index.md")
    assert [page for page in pages if f"]({page})" not in index] == []


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    # Code spans are not links: `LABEL@...(<=|>=)RATIO` is a flag's syntax.
    text = re.sub(r"`[^`]*`", "", path.read_text())
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    broken = [
        target for target in targets if "://" not in target and not (path.parent / target).exists()
    ]
    assert broken == []
