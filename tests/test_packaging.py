"""What an installed echo20 is: one top-level package that never imports a top-level module.

A user's own ``protocol.py``, or another project's ``echo_server`` module, must not
change what echo20 does. The decoys here raise on import; every module of the package,
every command and ``python -m echo20.bench --help`` must work beside them.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import echo20

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# The card's names, which the checkout presents at its top and the wheel must not carry.
DECOYS = ("protocol", "echo_server", "echo_client")

COMMANDS = ("echo20-server", "echo20-client", "echo20-bench", "echo20-conformance")

# Building the wheel compiles the C accelerator: well within this, even on a busy machine.
BUILD_TIMEOUT = 300


@pytest.fixture
def decoy_dir(tmp_path: Path) -> Path:
    for name in DECOYS:
        (tmp_path / f"{name}.py").write_text(
            f"raise ImportError('the decoy {name}.py was imported')\n"
        )
    return tmp_path


def package_modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(echo20.__path__, "echo20.")
        # The conformance scenarios are pytest test modules, run by the runner; a
        # __main__ module runs its command when imported (the commands are tested below).
        if ".scenarios." not in info.name and not info.name.endswith(".__main__")
    )


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_every_module_imports_beside_decoys(decoy_dir: Path) -> None:
    modules = package_modules()
    assert "echo20.protocol" in modules
    assert "echo20.servers.streams" in modules
    script = "import importlib, sys\nfor name in sys.argv[1:]: importlib.import_module(name)\n"
    result = run([sys.executable, "-c", script, *modules], decoy_dir)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        *([command, "--help"] for command in COMMANDS),
        ["-m", "echo20.bench", "--help"],
        ["-m", "echo20.server", "--help"],
        ["-m", "echo20.client", "--help"],
        ["-m", "echo20.conformance", "--help"],
    ],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_every_command_runs_beside_decoys(decoy_dir: Path, argv: list[str]) -> None:
    executable = [sys.executable] if argv[0] == "-m" else [str(BIN / argv[0])]
    result = run([*executable, *argv[argv[0] != "-m" :]], decoy_dir)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_no_package_file_imports_a_top_level_module() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in (ROOT / "echo20").rglob("*.py")
        for line in path.read_text().splitlines()
        if line.strip().startswith(
            tuple(f"{verb} {name}" for name in DECOYS for verb in ("import", "from"))
        )
        and line.strip().split()[1] in DECOYS
    ]
    assert offenders == []


def test_the_card_works_from_a_checkout() -> None:
    """``import protocol`` from the checkout is the package's core, with no asyncio."""
    script = (
        "import sys; import protocol, echo20.protocol; "
        "assert protocol.EchoSession is echo20.protocol.EchoSession; "
        "assert protocol.build_reply(b'hello') == b'helloolleh'; "
        "print('asyncio' in sys.modules)"
    )
    result = run([sys.executable, "-c", script], ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_the_wheel_holds_one_top_level_name(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--quiet",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        timeout=BUILD_TIMEOUT,
    )
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith("echo20-")
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"echo20"}
