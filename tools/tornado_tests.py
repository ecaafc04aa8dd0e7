"""Tornado's own tests of IOStream, TCPServer and TCPClient, run against the port.

Tornado 6.6.1's ``tornado/test/iostream_test.py``, ``tcpserver_test.py`` and
``tcpclient_test.py`` come from its source distribution on PyPI, fetched with pip on
first use and kept in ``.cache/tornado-tests/`` (nothing of them is in this repository).
They run unchanged, with Tornado's test helpers (``tornado.testing``,
``tornado.test.util``) and everything else from the installed Tornado, except that
``tornado.iostream``, ``tornado.tcpserver`` and ``tornado.tcpclient`` name the port's
classes while they load (:func:`port_modules`). That shim translates names and
signatures only: Tornado's ``TCPServer.add_sockets()`` and ``listen()`` are plain calls
and the port's are coroutines, so the shim runs them; the port's loggers speak through
Tornado's, so that ``ExpectLog`` hears them; and where a test ends with
``IOLoop.close(all_fds=True)``, which closes every socket Tornado's IOLoop watches, the
port's streams are closed too (asyncio's transports watch their sockets). It implements
nothing a test checks. As Tornado's own runner fails a run that wrote to stderr, a
test that leaves an unclosed socket or transport behind fails.

A test that cannot apply is listed in :data:`NOT_APPLICABLE` with the reason; every
other test must pass. ``make test-tornado`` runs this; ``tests/test_tornado_suite.py``
runs it under pytest. Usage::

    python tools/tornado_tests.py [--loop asyncio|uvloop] [--verbose] [--json FILE]
                                  [--list-not-applicable]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import importlib.util
import json
import logging
import subprocess
import sys
import tarfile
import tempfile
import time
import types
import unittest
import warnings
from collections.abc import Coroutine, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Run from a checkout: the package sits one folder up.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from echo20 import errors, iostream, tcpclient, tcpserver, tls  # noqa: E402

TORNADO_VERSION = "6.6.1"
CACHE = ROOT / ".cache" / "tornado-tests"
TEST_FILES = ("iostream_test.py", "tcpserver_test.py", "tcpclient_test.py")
# Beside the tests in the source distribution: the certificate the TLS tests load.
DATA_FILES = ("test.crt", "test.key")
# The fewest tests that must apply (and pass) for the run to count.
MIN_APPLICABLE = 55

# The port's loggers, and the Tornado logger each one speaks through in this run.
LOGGERS = {
    "echo20.iostream": "tornado.general",
    "echo20.tls": "tornado.general",
    "echo20.netutil": "tornado.general",
    "echo20.tcpserver": "tornado.application",
}

_PIPE = "exercises PipeIOStream (pipes); the port has no pipe stream"
_HANDSHAKE_FIRST = "needs handle_stream() to run before the TLS handshake is done; the port's TCPServer hands over a TLS stream once its handshake is done (TLSTransport tells the stream of its connection only then; docs/tornado-semantics.md, TLS)"  # noqa: E501
_PRIVATE = "exercises Tornado's private classes or functions, which the port does not have"
_WEB_ONLY = "uses only Tornado's HTTP client and server; no code of the port runs"

# Test ids that do not apply, and why: file::class, file::class::method, or
# file::*::method for that method in every class of the file.
NOT_APPLICABLE: dict[str, str] = {
    "iostream_test.py::WaitForHandshakeTest::test_wait_for_handshake_future": _HANDSHAKE_FIRST,
    "iostream_test.py::WaitForHandshakeTest::test_wait_for_handshake_already_waiting_error": _HANDSHAKE_FIRST,  # noqa: E501
    "iostream_test.py::TestPipeIOStream": _PIPE,
    "iostream_test.py::TestStreamBuffer": "unit tests of Tornado's private _StreamBuffer (its write buffer); the port's writes go to the asyncio transport",  # noqa: E501
    "iostream_test.py::*::test_connection_closed": _WEB_ONLY,
    "iostream_test.py::*::test_read_until_close_with_error": "patches Tornado's private BaseIOStream._try_inline_read",  # noqa: E501
    "iostream_test.py::*::test_read_until_close_after_connection_reset": "replaces Tornado's read_from_fd() to turn an end of stream into a reset; the port never reads the socket itself (the asyncio transport does); tests/test_iostream.py::test_read_until_close_treats_a_reset_as_a_close holds the behaviour",  # noqa: E501
    "iostream_test.py::*::test_async_read_error_logging": "replaces Tornado's read_from_fd() to make a socket read fail; the port never reads the socket itself (the asyncio transport does)",  # noqa: E501
    "iostream_test.py::*::test_inline_read_error": "closes the file descriptor behind the event loop's back so that Tornado's inline socket read fails; the port never reads the socket itself (the transport reads when the loop reports the socket readable), so there is no inline read to fail: the read waits (docs/tornado-semantics.md, Reads)",  # noqa: E501
    "iostream_test.py::*::test_write_bytearray_resizable_after_close": "reads Tornado's private IOStream._write_buffer",  # noqa: E501
    "iostream_test.py::*::test_write_bytearray_resizable_after_close_while_writing": "reads Tornado's private IOStream._write_buffer",  # noqa: E501
    "iostream_test.py::*::test_write_bytearray_resizable_after_error": "reads Tornado's private IOStream._write_buffer",  # noqa: E501
    "tcpserver_test.py::TestMultiprocess": "runs Tornado's TCPServer in child processes (fork_processes, bind()/start()), where this shim is not installed; the port's processes are echo20-server --workers (tests/test_workers.py)",  # noqa: E501
    "tcpclient_test.py::TestFormatAddr": _PRIVATE + " (_format_addr)",
    "tcpclient_test.py::TestConnectorSplit": _PRIVATE + " (_Connector)",
    "tcpclient_test.py::ConnectorTest": _PRIVATE
    + " (_Connector, Tornado's happy-eyeballs connector; the port connects with the event loop's create_connection)",  # noqa: E501
    "tcpclient_test.py::TCPClientTest::test_connect_timeout_during_tcp_connect": "overrides Tornado's private TCPClient._create_stream and passes TCPClient(resolver=)",  # noqa: E501
}


# --- fetching Tornado's tests --------------------------------------------------------------


def fetch_tests(cache: Path = CACHE) -> Path:
    """The folder holding Tornado's test files, downloaded once into ``cache``."""
    folder = cache / TORNADO_VERSION
    if all((folder / name).is_file() for name in (*TEST_FILES, *DATA_FILES)):
        return folder
    with tempfile.TemporaryDirectory() as download:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"tornado=={TORNADO_VERSION}",
            "--no-binary",
            ":all:",
            "--no-deps",
            "--quiet",
            "-d",
            download,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        archives = list(Path(download).glob("tornado-*.tar.gz"))
        if result.returncode != 0 or not archives:
            reason = (result.stderr.strip().splitlines() or ["no archive"])[-1]
            raise SystemExit(f"tornado_tests: cannot download tornado {TORNADO_VERSION}: {reason}")
        folder.mkdir(parents=True, exist_ok=True)
        prefix = f"tornado-{TORNADO_VERSION}/tornado/test/"
        with tarfile.open(archives[0]) as archive:
            for name in (*TEST_FILES, *DATA_FILES):
                member = archive.extractfile(prefix + name)
                if member is None:
                    raise SystemExit(f"tornado_tests: {prefix + name} missing from the sdist")
                (folder / name).write_bytes(member.read())
    return folder


# --- the shim: Tornado's names for the port ------------------------------------------------


def _run_now_or_soon(coro: Coroutine[Any, Any, None]) -> None:
    """Tornado's call is synchronous, the port's a coroutine: run it to completion when
    no loop runs, or start it on the running loop (the sockets already listen, so
    connections wait in the kernel's queue until it has run)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        asyncio.get_event_loop().run_until_complete(coro)
        return
    task = loop.create_task(coro)
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)


_PENDING: set[asyncio.Task[None]] = set()


class TCPServer(tcpserver.TCPServer):
    """The port's TCPServer with Tornado's constructor and synchronous listening calls."""

    def __init__(
        self,
        ssl_options: Any = None,
        max_buffer_size: int | None = None,
        read_chunk_size: int | None = None,
    ) -> None:
        super().__init__(max_buffer_size=max_buffer_size, read_chunk_size=read_chunk_size)
        # Tornado takes a context or a dictionary of ssl options; the port a context.
        self.ssl_options = (
            None if ssl_options is None else tls.ssl_context_from_options(ssl_options, True)
        )

    def add_socket(self, socket: Any) -> None:
        self.add_sockets([socket])

    def add_sockets(self, sockets: Iterable[Any]) -> None:  # type: ignore[override]
        _run_now_or_soon(super().add_sockets(list(sockets), ssl=self.ssl_options))

    def listen(  # type: ignore[override]
        self, port: int, address: str | None = None, **kwargs: Any
    ) -> None:
        _run_now_or_soon(super().listen(port, address, ssl=self.ssl_options, **kwargs))


def _not_ported(name: str) -> type:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"{name} is not part of the port")

    return type(name, (), {"__init__": refuse})


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name, f"The port's classes under Tornado's names ({__name__}).")
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


def port_modules() -> dict[str, types.ModuleType]:
    """``tornado.iostream``, ``tornado.tcpserver``, ``tornado.tcpclient`` for the port."""
    return {
        "tornado.iostream": _module(
            "tornado.iostream",
            IOStream=iostream.IOStream,
            StreamClosedError=errors.StreamClosedError,
            StreamBufferFullError=errors.StreamBufferFullError,
            UnsatisfiableReadError=errors.UnsatisfiableReadError,
            SSLIOStream=iostream.SSLIOStream,
            # Imported by the test files; the tests that use them do not apply.
            PipeIOStream=_not_ported("PipeIOStream"),
            BaseIOStream=_not_ported("BaseIOStream"),
            _StreamBuffer=_not_ported("_StreamBuffer"),
        ),
        "tornado.tcpserver": _module("tornado.tcpserver", TCPServer=TCPServer),
        "tornado.tcpclient": _module(
            "tornado.tcpclient",
            TCPClient=tcpclient.TCPClient,
            _Connector=_not_ported("_Connector"),
            _format_addr=_not_ported("_format_addr"),
        ),
    }


class _ToTornado(logging.Handler):
    """Hands a record of the port's logger to a Tornado logger, as if logged there."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        if self.target.isEnabledFor(record.levelno):
            self.target.handle(record)


def _close_port_streams(loop: asyncio.AbstractEventLoop) -> None:
    """Abort the port's streams still open on ``loop``, and let their transports go.

    Tornado's ``AsyncTestCase`` ends each test with ``IOLoop.close(all_fds=True)``,
    which closes every socket its IOLoop watches, so a test need not close its
    streams; the port's sockets are watched by asyncio's transports instead, which
    that call does not know of.
    """
    streams = [
        thing
        for thing in gc.get_objects()
        if isinstance(thing, iostream.IOStream) and thing._loop is loop
    ]
    for stream in streams:
        stream.abort()
    if streams and not loop.is_running() and not loop.is_closed():
        loop.run_until_complete(asyncio.sleep(0))


@contextmanager
def port_installed() -> Iterator[None]:
    """While inside: the shim's modules in ``sys.modules``, the port's loggers routed."""
    # Everything the test files use that itself imports tornado.iostream, tcpserver or
    # tcpclient (the web framework, the HTTP client and server, the test helpers)
    # loads first, with Tornado's own classes.
    for name in (
        "tornado.web",
        "tornado.httpclient",
        "tornado.simple_httpclient",
        "tornado.httpserver",
        "tornado.testing",
        "tornado.test.util",
        "tornado.netutil",
        "tornado.queues",
        "tornado.locks",
        "tornado.platform.asyncio",
    ):
        importlib.import_module(name)
    saved = {name: sys.modules.get(name) for name in port_modules()}
    sys.modules.update(port_modules())
    base_loop = importlib.import_module("tornado.platform.asyncio").BaseAsyncIOLoop
    close_loop = base_loop.close

    def close(ioloop: Any, all_fds: bool = False) -> None:
        if all_fds:
            _close_port_streams(ioloop.asyncio_loop)
        close_loop(ioloop, all_fds)

    base_loop.close = close
    routed = []
    for name, target in LOGGERS.items():
        logger = logging.getLogger(name)
        routed.append((logger, logger.level, logger.propagate))
        handler = _ToTornado(logging.getLogger(target))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
    try:
        yield
    finally:
        base_loop.close = close_loop
        for logger, level, propagate in routed:
            logger.handlers = [h for h in logger.handlers if not isinstance(h, _ToTornado)]
            logger.setLevel(level)
            logger.propagate = propagate
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


# --- running ---------------------------------------------------------------------------------


def load_tests(folder: Path) -> list[tuple[str, unittest.TestCase]]:
    """Every test of the three files as (id, test), ids ``file::Class::method``."""
    loader = unittest.TestLoader()
    tests: list[tuple[str, unittest.TestCase]] = []
    for file_name in TEST_FILES:
        module_name = f"tornado_port_tests.{file_name.removesuffix('.py')}"
        spec = importlib.util.spec_from_file_location(module_name, folder / file_name)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        for class_name, cls in vars(module).items():
            if not (isinstance(cls, type) and issubclass(cls, unittest.TestCase)):
                continue
            if cls.__module__ != module_name:
                # Imported (TestCase, AsyncTestCase...), or an abstract base: Tornado's
                # @abstract_base_test returns a class of its own module, never run.
                continue
            for test in loader.loadTestsFromTestCase(cls):
                assert isinstance(test, unittest.TestCase)
                method = test.id().rsplit(".", 1)[1]
                tests.append((f"{file_name}::{class_name}::{method}", test))
    return tests


def not_applicable_reason(test_id: str) -> str | None:
    file_name, class_name, method = test_id.split("::")
    return (
        NOT_APPLICABLE.get(test_id)
        or NOT_APPLICABLE.get(f"{file_name}::{class_name}")
        or NOT_APPLICABLE.get(f"{file_name}::*::{method}")
    )


class _Result(unittest.TestResult):
    def __init__(self) -> None:
        super().__init__()
        self.outcome = "passed"
        self.detail = ""

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self.outcome, self.detail = "failed", self.failures[-1][1]

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self.outcome, self.detail = "failed", self.errors[-1][1]

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self.outcome, self.detail = "skipped", reason

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self.outcome = "failed"


def run_one(test: unittest.TestCase) -> tuple[str, str]:
    """Run one test with its class set up and torn down around it.

    As Tornado's runner fails a run that wrote to stderr, a test after which garbage
    collection finds an unclosed socket or transport (a ResourceWarning) fails here.
    """
    result = _Result()
    suite = unittest.TestSuite([test])
    unraisable: list[Any] = []
    hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        suite.run(result)
        gc.collect()
    finally:
        sys.unraisablehook = hook
    if unraisable and result.outcome == "passed":
        leaks = "; ".join(f"{u.exc_value} ({u.object!r})" for u in unraisable)
        return "failed", f"left behind: {leaks}"
    return result.outcome, result.detail


def tornado_runner_settings() -> None:
    """What Tornado's own runner (``tornado/test/runtests.py``) sets before its tests:
    strict warnings (the port held to them as Tornado is), no access log."""
    warnings.filterwarnings("error")
    warnings.filterwarnings("ignore", category=ImportWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
    for package in (r"tornado\..*", r"echo20\..*"):
        warnings.filterwarnings("error", category=DeprecationWarning, module=package)
        warnings.filterwarnings("error", category=PendingDeprecationWarning, module=package)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tornado.access").setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--verbose", action="store_true", help="one line per test")
    parser.add_argument("--json", metavar="FILE", help="write every test's outcome here")
    parser.add_argument(
        "--list-not-applicable",
        action="store_true",
        help="also print each test that does not apply, with the reason",
    )
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    import tornado

    if tornado.version != TORNADO_VERSION:
        print(
            f"tornado_tests: Tornado {TORNADO_VERSION}'s helpers are needed, found "
            f"{tornado.version}: pip install tornado=={TORNADO_VERSION}",
            file=sys.stderr,
        )
        return 2
    folder = fetch_tests()
    tornado_runner_settings()
    started = time.monotonic()
    outcomes: dict[str, tuple[str, str]] = {}
    with port_installed():
        tests = load_tests(folder)
        known = {test_id for test_id, _ in tests}
        known |= {test_id.rsplit("::", 1)[0] for test_id in known}
        known |= {f"{t.split('::')[0]}::*::{t.split('::')[2]}" for t, _ in tests}
        stale = sorted(set(NOT_APPLICABLE) - known)
        for test_id, test in tests:
            reason = not_applicable_reason(test_id)
            if reason is not None:
                outcomes[test_id] = ("not applicable", reason)
                continue
            began = time.monotonic()
            outcomes[test_id] = run_one(test)
            if args.verbose or outcomes[test_id][0] == "failed":
                took = time.monotonic() - began
                print(f"{outcomes[test_id][0].upper():8} {test_id} ({took:.2f} s)", flush=True)
                if outcomes[test_id][0] == "failed" and args.verbose:
                    print(outcomes[test_id][1])
    counts = {kind: 0 for kind in ("passed", "failed", "skipped", "not applicable")}
    for outcome, _ in outcomes.values():
        counts[outcome] += 1
    applicable = counts["passed"] + counts["failed"] + counts["skipped"]
    for test_id, (outcome, detail) in outcomes.items():
        if outcome == "skipped":
            print(f"SKIPPED  {test_id}: {detail} (the test's own condition)")
        elif outcome == "not applicable" and args.list_not_applicable:
            print(f"N/A      {test_id}: {detail}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "counts": counts,
                    "applicable": applicable,
                    "stale": stale,
                    "tests": {
                        test_id: {"outcome": outcome, "detail": detail}
                        for test_id, (outcome, detail) in outcomes.items()
                    },
                },
                indent=1,
            )
        )
    for entry in stale:
        print(f"tornado_tests: NOT_APPLICABLE names {entry}, which is not a test", file=sys.stderr)
    print(
        f"Tornado {TORNADO_VERSION}'s iostream, tcpserver and tcpclient tests against the port "
        f"({args.loop}, {time.monotonic() - started:.1f} s): {applicable} apply, "
        f"{counts['not applicable']} do not apply"
    )
    print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    ok = not counts["failed"] and not stale and applicable >= MIN_APPLICABLE
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
