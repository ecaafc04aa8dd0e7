"""The benchmark's two C programs, shipped as sources and compiled on first use.

``c_loadgen.c`` is the load generator, ``c_echo_server.c`` the C reference server. They
travel inside the package (package data), so an installed ``echo20-bench`` finds them
wherever site-packages is; each binary's name carries a hash of its source, so an
edited source is rebuilt and a stale binary never runs.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from echo20.errors import BenchError

__all__ = ["Tools", "build_tools"]

# Seconds to compile one program (a few on a quiet machine).
COMPILE_TIMEOUT = 120.0
SOURCES = ("c_echo_server", "c_loadgen")


@dataclass(frozen=True)
class Tools:
    """The compiled C programs."""

    server: Path
    loadgen: Path


# The header both programs include for TLS, put in place of its #include line, so the
# source written out (and hashed) is whole.
HEADER = "c_tls.h"


def source_text(name: str) -> bytes:
    """The C source ``name`` (without ``.c``) from the installed package, its header in it."""
    package = resources.files("echo20.bench")
    header = package.joinpath(HEADER).read_bytes()
    text = package.joinpath(f"{name}.c").read_bytes()
    return text.replace(f'#include "{HEADER}"\n'.encode(), header)


def build_tools(build_dir: Path, *, tls: bool = False) -> Tools:
    """Compile the C server and load generator unless this exact source is built already;
    with ``tls``, their TLS builds (OpenSSL: ``-DECHO20_TLS -lssl -lcrypto``).

    Raises BenchError with one line when there is no compiler, no OpenSSL for ``tls``, or
    a build fails.
    """
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise BenchError(
            f"no C compiler ({compiler} not found): the load generator and the C reference "
            "are compiled on first use; install one (Debian: apt-get install gcc) or set CC"
        )
    build_dir.mkdir(parents=True, exist_ok=True)
    if tls:
        require_openssl(compiler, build_dir)
    built: dict[str, Path] = {}
    for name in SOURCES:
        text = source_text(name)
        digest = hashlib.sha256(text).hexdigest()[:12]
        binary = build_dir / f"{name}{'-tls' if tls else ''}-{digest}"
        if not binary.exists():
            # The source is written out next to its binary: the package may be a zip.
            source = build_dir / f"{name}-{digest}.c"
            source.write_bytes(text)
            # Built under a temporary name and renamed, so two runs never see half a binary.
            partial = binary.with_suffix(f".{os.getpid()}.tmp")
            command = [compiler, "-O2", "-Wall", "-o", str(partial), str(source)]
            compile_c(command + TLS_FLAGS if tls else command)
            partial.replace(binary)
        built[name] = binary
    return Tools(server=built["c_echo_server"], loadgen=built["c_loadgen"])


def compile_c(command: list[str]) -> None:
    """Run one compiler command; BenchError with its first line of complaint if it fails."""
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT, check=False
    )
    if result.returncode != 0:
        error = result.stderr.strip().splitlines()
        raise BenchError(f"{shlex.join(command)} failed: {error[0] if error else 'no message'}")


def require_openssl(compiler: str, build_dir: Path) -> None:
    """BenchError in one line unless a program using OpenSSL compiles and links here."""
    probe = build_dir / "openssl-probe.c"
    probe.write_text(OPENSSL_PROBE)
    command = [compiler, "-o", str(probe.with_suffix(f".{os.getpid()}.tmp")), str(probe)]
    try:
        compile_c(command + TLS_FLAGS)
    except BenchError:
        raise BenchError(
            "--tls needs OpenSSL to build the C server and load generator, and "
            f"{compiler} cannot compile against it: install its headers "
            "(Debian: apt-get install libssl-dev)"
        ) from None
    finally:
        probe.with_suffix(f".{os.getpid()}.tmp").unlink(missing_ok=True)


# What the TLS builds add to the command line, and the program that tells whether it
# works at all.
TLS_FLAGS = ["-DECHO20_TLS", "-lssl", "-lcrypto"]
OPENSSL_PROBE = """\
#include <openssl/ssl.h>
int main(void) { return SSL_CTX_new(TLS_method()) == NULL; }
"""
