"""Results of a conformance run, read back from its JUnit XML: a summary and Markdown.

The runner always has pytest write JUnit XML (to ``--junit-xml FILE`` or a temporary
file), so a CI system, the one-line summary and the Markdown report all read the same
record. ``echo20-conformance compare`` puts several runs side by side with
:func:`render_matrix` and its verdicts (:mod:`echo20.conformance.matrix`).
"""

from __future__ import annotations

import platform
import re
import xml.etree.ElementTree as ElementTree
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from echo20.conformance.observe import Samples

__all__ = [
    "Column",
    "Result",
    "counts_text",
    "read_junit",
    "render_matrix",
    "render_report",
]

# The outcomes, as the report spells them; failures in capitals so they stand out.
PASS, FAIL, ERROR, SKIPPED = "pass", "FAIL", "ERROR", "skipped"

# The suite's two files, as report sections.
KINDS = {"server": "Server scenarios", "client": "Client scenarios"}

# How pytest marks a message it cut to its first line in the JUnit attribute.
TRUNCATION = re.compile(r"\s*\[\+\d+ more lines?; full report in element text\]$")

# A note in a table cell is cut to this length (the JUnit file has it whole).
NOTE_LENGTH = 300


@dataclass
class Result:
    """One scenario's outcome in one run."""

    scenario: str
    kind: str
    outcome: str
    detail: str = ""
    seconds: float = 0.0
    properties: dict[str, str] = field(default_factory=dict)


def _one_line(text: str) -> str:
    text = " ".join(text.split()).removeprefix("AssertionError: ")
    return text if len(text) <= NOTE_LENGTH else text[: NOTE_LENGTH - 3] + "..."


def read_junit(path: Path) -> list[Result]:
    """Every test case of a pytest JUnit XML file (``junit_family=xunit1``), in order."""
    results = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        kind = case.get("classname", "").rpartition(".")[2].removeprefix("test_")
        result = Result(
            scenario=case.get("name", "").removeprefix("test_"),
            kind=kind,
            outcome=PASS,
            seconds=float(case.get("time", "0") or 0),
        )
        for prop in case.iter("property"):
            result.properties[prop.get("name", "")] = prop.get("value", "")
        for child in case:
            message = child.get("message") or (child.text or "").strip()
            # pytest appends its own rendering of the failed assert (or, in the
            # attribute, a count of those lines); the message before it is ours.
            message = TRUNCATION.sub("", message.partition("\nassert ")[0])
            if child.tag == "failure":
                result.outcome, result.detail = FAIL, _one_line(message)
            elif child.tag == "error" and result.outcome != FAIL:
                result.outcome, result.detail = ERROR, _one_line(message)
            elif child.tag == "skipped" and result.outcome == PASS:
                result.outcome, result.detail = SKIPPED, _one_line(message)
        results.append(result)
    return results


def counts_text(results: list[Result]) -> str:
    """``61 passed, 2 failed, 1 skipped``."""
    counts = Counter(result.outcome for result in results)
    words = {PASS: "passed", FAIL: "failed", ERROR: "errors", SKIPPED: "skipped"}
    parts = [f"{counts[outcome]} {word}" for outcome, word in words.items() if counts[outcome]]
    return ", ".join(parts) or "no scenario ran"


@dataclass
class Column:
    """One implementation's run: a column of the matrix."""

    name: str
    command: str
    results: list[Result]
    about: str = ""
    kind: str = "server"
    # What ``compare`` observed of a server (:mod:`echo20.conformance.observe`).
    observations: dict[str, Samples] = field(default_factory=dict)
    # What went wrong with the run itself (would not start, died, no clean exit).
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # Whether it had to exit 0 on SIGTERM with no traceback (echo20's own servers).
    clean_exit: bool = False
    # What a comparison's report says about it (a preset's note).
    note: str = ""
    # Its failures are documented and do not fail a comparison (the seed's client).
    known_to_fail: bool = False

    def passed(self) -> bool:
        """Every scenario passed (or was skipped), and nothing went wrong."""
        return (
            bool(self.results)
            and not self.problems
            and all(r.outcome in (PASS, SKIPPED) for r in self.results)
        )


def render_matrix(
    columns: list[Column], notes: list[str], verdicts: dict[tuple[str, str], str] | None = None
) -> list[str]:
    """Markdown tables, one per kind of scenario: scenario x column, failures footnoted.

    A failure's reason, or a passing scenario's note, goes into ``notes`` (numbered on
    from what is there, each text once); the cell refers to it as ``[n]``. With
    ``verdicts`` (by kind and scenario), a verdict column ends each row.
    """
    lines: list[str] = []
    for kind, title in KINDS.items():
        shown = [c for c in columns if any(r.kind == kind for r in c.results)]
        if not shown:
            continue
        scenarios: list[str] = []
        for column in shown:
            for result in column.results:
                if result.kind == kind and result.scenario not in scenarios:
                    scenarios.append(result.scenario)
        cells = {
            (column.name, result.scenario): result
            for column in shown
            for result in column.results
            if result.kind == kind
        }
        lines += [
            "",
            f"### {title}",
            "",
            "| scenario | "
            + " | ".join(f"`{c.name}`" for c in shown)
            + (" | verdict |" if verdicts is not None else " |"),
            "|---|" + "---|" * (len(shown) + (verdicts is not None)),
        ]
        for scenario in scenarios:
            texts = []
            for column in shown:
                cell = cells.get((column.name, scenario))
                if cell is None:
                    texts.append("not run")
                    continue
                text = cell.outcome if cell.outcome in (PASS, SKIPPED) else f"**{cell.outcome}**"
                note = cell.detail or cell.properties.get("note", "")
                if note:
                    # The same note on several columns is written out once.
                    entry = f"`{scenario}`: {note}"
                    if entry not in notes:
                        notes.append(entry)
                    text += f" [{notes.index(entry) + 1}]"
                texts.append(text)
            ending = f" | {verdicts.get((kind, scenario), '')} |" if verdicts is not None else " |"
            lines.append(f"| `{scenario}` | " + " | ".join(texts) + ending)
    return lines


def render_report(column: Column, *, seconds: float, problem: str | None = None) -> str:
    """The Markdown report of one run (``--markdown FILE``)."""
    lines = [
        f"# echo20 conformance: {column.name}",
        "",
        f"`{column.command}`: {counts_text(column.results)} in {seconds:.1f} s.",
        "",
        f"Run with echo20-conformance on Python {platform.python_version()}, "
        f"{platform.system()}. The scenarios and the rules they check: "
        "`echo20-conformance --list`, and `docs/protocol.md` in the echo20 "
        "repository.",
    ]
    if problem:
        lines += ["", f"**The run stopped early: {problem}**"]
    lines += ["", "## Results"]
    notes: list[str] = []
    lines += render_matrix([column], notes)
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"{index}. {note}" for index, note in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"
