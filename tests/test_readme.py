"""README.md stays true to the commands: every flag a user can pass is documented there."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from echo20 import client as echo_client
from echo20 import server as echo_server
from echo20.bench import cli as bench_cli
from echo20.conformance import runner
from echo20.reference import tornado_client, tornado_server

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

PARSERS = {
    "echo20-server": echo_server.build_parser,
    "echo20-client": echo_client.build_parser,
    "echo20-bench": bench_cli.build_parser,
    "echo20-conformance": runner.build_parser,
    "tornado_server": tornado_server.build_parser,
    "tornado_client": tornado_client.build_parser,
}


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
def test_every_flag_is_in_the_readme(command: str) -> None:
    missing = sorted(
        flag
        for flag in documented_flags(PARSERS[command]())
        # A whole flag, in the text or in an example: `--out` does not count for --out-dir.
        if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", README)
    )
    assert not missing, f"{command}: not in README.md: {missing}"
