"""The event loops echo20 runs on, chosen by name: one table for every entry point.

The server, the client, the Tornado reference, the benchmark and the tests all pick a
loop here and hand the factory to ``asyncio.Runner(loop_factory=...)``; nothing installs
a global policy (``uvloop.install()`` and event-loop policies are deprecated from Python
3.12 on). Example::

    with asyncio.Runner(loop_factory=loops.loop_factory("uvloop")) as runner:
        runner.run(main())

Every loop but asyncio is an optional extra (``pip install 'echo20[veloxloop]'``).
Where a loop lacks something the servers need, the factory here fills the gap, so no
server code tests which loop it runs on for that:

* rloop 0.5 hands ``connection_lost()`` an ``OSError`` as a ``RuntimeError``
  (``"Broken pipe (os error 32)"``): its protocols get the ``OSError`` back.
* veloxloop 0.2 has no ``add_signal_handler``, calls ``data_received`` on every
  protocol, ``BufferedProtocol`` included, lacks ``can_write_eof`` and more on its
  transports, writes only ``bytes``, raises from ``write()`` to a reset peer, leaves
  Nagle's algorithm on, has no Unix sockets, and resolves names in threads that keep
  waking once started. Its loops get what is missing: signals through
  ``signal.set_wakeup_fd`` (as asyncio's own loop does), buffered protocols fed by
  asyncio's own adapter (one copy per receive), a fuller transport with TCP_NODELAY
  whose failed sends reach ``connection_lost()``, numeric addresses resolved without
  a thread, and Unix sockets refused with an ``OSError``.
* aiofastnet is not a loop but a faster transport layer for another loop's sockets:
  ``aiofastnet-asyncio`` and ``aiofastnet-uvloop`` are those loops with aiofastnet's
  ``create_server``/``create_connection`` (``aiofastnet.loop_factory(base)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import functools
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from echo20.errors import LoopUnavailableError

__all__ = [
    "AUTO",
    "LOOPS",
    "LOOP_NAMES",
    "LoopInfo",
    "LoopUnavailableError",
    "ReceiveStyle",
    "available_loops",
    "is_rloop",
    "loop_factory",
    "loop_versions",
    "receive_style",
]

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

AUTO = "auto"


@dataclass(frozen=True)
class LoopInfo:
    """One row of the loop table."""

    name: str
    # Importable modules the loop needs ("asyncio" alone: the standard library's loop).
    modules: tuple[str, ...]
    # The pip extra that installs it (None: always there).
    extra: str | None
    # One line on how far it is trusted; the README's "Event loops" section says more.
    note: str


# The order is the order of preference for ``auto`` after uvloop, and of every listing.
LOOPS: tuple[LoopInfo, ...] = (
    LoopInfo("asyncio", ("asyncio",), None, "the standard library's selector loop"),
    LoopInfo("uvloop", ("uvloop",), "uvloop", "libuv; fully supported"),
    LoopInfo("rloop", ("rloop",), "rloop", "Rust; leaks a descriptor per connection (README)"),
    LoopInfo(
        "veloxloop",
        ("veloxloop",),
        "veloxloop",
        "Rust (tokio); pre-alpha: signals and buffered protocols filled in here",
    ),
    LoopInfo(
        "aiofastnet-asyncio",
        ("aiofastnet",),
        "aiofastnet",
        "aiofastnet's transports on the standard library's loop",
    ),
    LoopInfo(
        "aiofastnet-uvloop",
        ("aiofastnet", "uvloop"),
        "aiofastnet",
        "aiofastnet's transports on uvloop",
    ),
)

LOOP_NAMES: tuple[str, ...] = tuple(info.name for info in LOOPS)
_BY_NAME = {info.name: info for info in LOOPS}


def info(name: str) -> LoopInfo:
    """The table's row for ``name`` (LoopUnavailableError if there is none)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise LoopUnavailableError(
            f"unknown loop {name!r} (choose from {', '.join((AUTO, *LOOP_NAMES))})"
        ) from None


def is_available(name: str) -> bool:
    """True when the loop's packages can be imported (without importing them)."""
    row = _BY_NAME.get(name)
    return row is not None and all(importlib.util.find_spec(m) is not None for m in row.modules)


def available_loops() -> list[str]:
    """The loop names usable on this machine, ``asyncio`` first."""
    return [name for name in LOOP_NAMES if is_available(name)]


def resolve(name: str) -> str:
    """The concrete loop name for ``name``: ``auto`` is uvloop when installed, else asyncio."""
    if name == AUTO:
        return "uvloop" if is_available("uvloop") else "asyncio"
    row = info(name)
    if not is_available(name):
        raise LoopUnavailableError(
            f"loop {name!r} is not installed (pip install 'echo20[{row.extra}]')"
        )
    return name


def loop_factory(name: str) -> LoopFactory:
    """A zero-argument callable that makes a new event loop of the named kind."""
    concrete = resolve(name)
    if concrete == "asyncio":
        return asyncio.new_event_loop
    if concrete == "rloop":
        return _new_rloop
    if concrete == "veloxloop":
        return _new_veloxloop
    if concrete.startswith("aiofastnet-"):
        aiofastnet = importlib.import_module("aiofastnet")
        wrapped: LoopFactory = aiofastnet.loop_factory(loop_factory(concrete.split("-", 1)[1]))
        return wrapped
    module = importlib.import_module(concrete)
    factory: LoopFactory = module.new_event_loop
    return factory


def loop_versions(names: tuple[str, ...] | list[str] | None = None) -> dict[str, str]:
    """Each named (default: every installed) loop's package versions, for a report:
    ``{"uvloop": "0.23.0", "aiofastnet-uvloop": "aiofastnet 1.2.0, uvloop 0.23.0"}``."""
    versions: dict[str, str] = {}
    for name in names if names is not None else available_loops():
        if not is_available(name):
            versions[name] = "not installed"
            continue
        parts = []
        for module in _BY_NAME[name].modules:
            if module == "asyncio":
                parts.append(f"Python {platform.python_version()}")
                continue
            try:
                parts.append(f"{module} {importlib.metadata.version(module)}")
            except importlib.metadata.PackageNotFoundError:
                parts.append(f"{module} (version unknown)")
        versions[name] = ", ".join(parts)
    return versions


# --- rloop: its connection errors, as OSErrors ------------------------------------------


def _new_rloop() -> asyncio.AbstractEventLoop:
    return _rloop_class()()


def is_rloop(loop: asyncio.AbstractEventLoop) -> bool:
    """True for rloop's loop, with or without the fixes here."""
    return any(cls.__module__.startswith("rloop") for cls in type(loop).__mro__)


class ReceiveStyle(enum.Enum):
    """How a protocol that answers each received batch should take its bytes on a loop.

    The fast path and the benchmark's bare servers choose their protocol class by this,
    so the choice is made in one place.
    """

    # data_received with the bytes the loop hands over: cheapest on uvloop and the others.
    PLAIN = "plain"
    # A BufferedProtocol receiving into one shared buffer: asyncio's own loop receives each
    # batch into a fresh 256 KiB buffer, which glibc maps and unmaps per receive until its
    # mmap threshold rises, about 3x the CPU per round trip (python/cpython#85451).
    SHARED_BUFFER = "shared buffer"
    # PLAIN, writing only bytes: rloop 0.5's transport.write costs about 21 ns per byte
    # for anything else (measured: 680 us for a 32 KiB memoryview, 12.5 us as bytes).
    BYTES_WRITES = "bytes writes"


def receive_style(loop: asyncio.AbstractEventLoop) -> ReceiveStyle:
    """The :class:`ReceiveStyle` for protocols on ``loop``."""
    if isinstance(loop, asyncio.BaseEventLoop):
        return ReceiveStyle.SHARED_BUFFER
    if is_rloop(loop):
        return ReceiveStyle.BYTES_WRITES
    return ReceiveStyle.PLAIN


@functools.cache
def _rloop_class() -> type[asyncio.AbstractEventLoop]:
    """rloop's loop whose protocols hear of a failed connection as an OSError (made once)."""
    rloop = importlib.import_module("rloop")
    base: type[Any] = rloop.RLoop
    return type("RLoop", (_RloopFixes, base), {})


# How Rust prints an io::Error, which rloop 0.5 hands to connection_lost() inside a
# RuntimeError: "Broken pipe (os error 32)".
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)$")


def _as_os_error(error: Exception | None) -> Exception | None:
    """The OSError that rloop reports as a ``RuntimeError``; any other value unchanged.

    asyncio's streams and the servers treat an ``OSError`` from a lost connection as
    the peer's doing (``BrokenPipeError``, ``ConnectionResetError``); a ``RuntimeError``
    looks like a bug, and ``StreamWriter.drain()`` re-raised it as one, with a traceback
    in the server's log for every client that reset while owed replies.
    """
    if type(error) is not RuntimeError:
        return error
    match = _RUST_OS_ERROR.search(str(error))
    converted: OSError
    if match:
        code = int(match.group(1))
        converted = OSError(code, os.strerror(code))  # OSError picks the subclass
    else:
        # No errno ("socket transport failed"): a write failed for a reason rloop did
        # not keep; still the connection's failure, not the program's.
        converted = ConnectionError(str(error))
    converted.__cause__ = error
    return converted


def _reporting_os_errors(
    factory: Callable[[], asyncio.BaseProtocol],
) -> Callable[[], asyncio.BaseProtocol]:
    def make() -> asyncio.BaseProtocol:
        protocol = factory()
        lost = protocol.connection_lost
        # An instance attribute: rloop looks the callback up on the object, once per
        # connection, so nothing is added to the path of the bytes.
        attributes: Any = protocol
        attributes.connection_lost = lambda error: lost(_as_os_error(error))
        return protocol

    return make


def _passing_os_errors(name: str) -> Callable[..., Any]:
    """The loop method ``name`` with its protocol factory wrapped by _reporting_os_errors."""

    async def method(self: Any, protocol_factory: Any, *args: Any, **kwargs: Any) -> Any:
        parent: Any = getattr(super(_RloopFixes, self), name)
        return await parent(_reporting_os_errors(protocol_factory), *args, **kwargs)

    method.__name__ = name
    return method


class _RloopFixes:
    """Mixed in before rloop's ``RLoop``: every way a protocol gets a connection."""

    create_server = _passing_os_errors("create_server")
    create_connection = _passing_os_errors("create_connection")
    connect_accepted_socket = _passing_os_errors("connect_accepted_socket")

    # rloop 0.5 raises a bare NotImplementedError for Unix sockets: an OSError is what
    # callers report as "cannot listen" (or "cannot connect") in one line.
    async def create_unix_server(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EAFNOSUPPORT, "rloop 0.5 has no Unix sockets")

    async def create_unix_connection(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EAFNOSUPPORT, "rloop 0.5 has no Unix sockets")


# --- veloxloop: what its 0.2 loop lacks -------------------------------------------------


def _new_veloxloop() -> asyncio.AbstractEventLoop:
    return _veloxloop_class()()


_VELOXLOOP_CLASS: type[asyncio.AbstractEventLoop] | None = None


def _veloxloop_class() -> type[asyncio.AbstractEventLoop]:
    """veloxloop's loop with signal handlers and buffered protocols (made once)."""
    global _VELOXLOOP_CLASS
    if _VELOXLOOP_CLASS is None:
        veloxloop = importlib.import_module("veloxloop")
        base: type[Any] = veloxloop.VeloxLoop
        _VELOXLOOP_CLASS = type("VeloxLoop", (_VeloxLoopFixes, base), {})
    return _VELOXLOOP_CLASS


class _VeloxTransport(asyncio.Transport):
    """veloxloop 0.2's transport with what asyncio's has and it lacks (``can_write_eof``,
    ``writelines``, ``is_reading``, ``get_protocol``...) and a ``write`` that takes any
    bytes-like object (one Python call more per write than veloxloop's own).

    Its other methods are copied onto the instance and called directly.
    """

    def __init__(self, inner: Any, protocol: asyncio.BaseProtocol) -> None:
        super().__init__()
        self._inner = inner
        self._protocol = protocol
        self._reading = True
        self.lost_error: OSError | None = None
        for name in _VELOX_TRANSPORT_METHODS:
            setattr(self, name, getattr(inner, name))
        # asyncio, uvloop and rloop set TCP_NODELAY on every TCP transport; veloxloop 0.2
        # does not, so a reply written in two pieces waited for the peer's delayed ACK:
        # a 44 ms p99.99 in every veloxloop cell of the benchmark until this line.
        with contextlib.suppress(AttributeError, OSError):
            inner.set_tcp_nodelay(True)

    def write(self, data: Any) -> None:
        try:
            # veloxloop 0.2 takes only bytes ("'memoryview' object cannot be cast as
            # 'bytes'"); the servers hand it views of large replies.
            self._inner.write(data if type(data) is bytes else bytes(data))
        except OSError as error:
            # asyncio's transports never raise from write(): a failed send closes the
            # transport and the protocol hears why in connection_lost(). veloxloop 0.2
            # raises (a peer's reset shows up nowhere else), and its abort() then
            # reports no error: the protocol is told this one (see _fit_protocol).
            self.lost_error = error
            self._inner.abort()

    def can_write_eof(self) -> bool:
        return True

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def pause_reading(self) -> None:
        self._reading = False
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._reading = True
        self._inner.resume_reading()

    def is_reading(self) -> bool:
        return self._reading and not self._inner.is_closing()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        raise NotImplementedError("veloxloop 0.2 cannot change a transport's protocol")


# veloxloop's own transport methods, used as they are.
_VELOX_TRANSPORT_METHODS = (
    "write_eof",
    "close",
    "abort",
    "is_closing",
    "get_extra_info",
    "get_write_buffer_size",
    "set_write_buffer_limits",
)


def _fit_protocol(
    protocol: asyncio.BaseProtocol, made: list[_VeloxTransport] | None = None
) -> asyncio.BaseProtocol:
    """Make ``protocol`` work on veloxloop, without a layer between it and the loop.

    Its ``connection_made`` is handed the fuller transport above, and its
    ``connection_lost`` the error of a send that failed. A ``BufferedProtocol``
    gets a ``data_received`` (veloxloop calls only that) that copies each batch into the
    protocol's own buffer with asyncio's own adapter (the one its TLS transport uses).
    """
    connection_made_first = protocol.connection_made
    connection_lost_first = protocol.connection_lost
    fuller: _VeloxTransport | None = None

    def connection_made(transport: asyncio.BaseTransport) -> None:
        nonlocal fuller
        fuller = _VeloxTransport(transport, protocol)
        if made is not None:
            made.append(fuller)
        connection_made_first(fuller)

    def connection_lost(error: Exception | None) -> None:
        if error is None and fuller is not None:
            error = fuller.lost_error
        connection_lost_first(error)

    # Instance attributes: veloxloop looks the callbacks up on the object it was given.
    attributes: Any = protocol
    attributes.connection_made = connection_made
    attributes.connection_lost = connection_lost
    if isinstance(protocol, asyncio.BufferedProtocol):
        # asyncio's private helper (3.7 on): what its TLS transport feeds buffered
        # protocols with.
        feed = asyncio.protocols._feed_data_to_buffered_proto  # type: ignore[attr-defined]
        attributes.data_received = functools.partial(feed, protocol)
    return protocol


def _fitted(
    factory: Callable[[], asyncio.BaseProtocol], made: list[_VeloxTransport] | None = None
) -> Callable[[], asyncio.BaseProtocol]:
    return lambda: _fit_protocol(factory(), made)


class _VeloxLoopFixes:
    """Mixed in before veloxloop's ``VeloxLoop`` (whose methods ``super()`` reaches)."""

    _signal_handlers: dict[int, tuple[Callable[..., object], tuple[Any, ...]]]
    _signal_sockets: tuple[socket.socket, socket.socket] | None

    async def create_server(self, protocol_factory: Any, *args: Any, **kwargs: Any) -> Any:
        parent: Any = super()
        return await parent.create_server(_fitted(protocol_factory), *args, **kwargs)

    async def create_connection(self, protocol_factory: Any, *args: Any, **kwargs: Any) -> Any:
        parent: Any = super()
        made: list[_VeloxTransport] = []
        transport, protocol = await parent.create_connection(
            _fitted(protocol_factory, made), *args, **kwargs
        )
        # The caller gets the transport its protocol was given.
        return (made[0] if made else transport), protocol

    async def create_unix_server(self, *args: Any, **kwargs: Any) -> Any:
        # veloxloop 0.2 raises a bare NotImplementedError: an OSError is what callers
        # report as "cannot listen" in one line.
        raise OSError(errno.EAFNOSUPPORT, "veloxloop 0.2 has no Unix sockets")

    async def create_unix_connection(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EAFNOSUPPORT, "veloxloop 0.2 has no Unix sockets")

    async def getaddrinfo(self, host: Any, port: Any, **kwargs: Any) -> Any:
        # veloxloop 0.2 resolves in worker threads that, once started, wake about 7,000
        # times a second for good (futex; 13 % of a CPU in an idle server, measured).
        # A numeric address needs no resolver: asked for as such, it answers at once.
        flags = kwargs.pop("flags", 0)
        try:
            return socket.getaddrinfo(host, port, flags=flags | socket.AI_NUMERICHOST, **kwargs)
        except socket.gaierror:
            parent: Any = super()
            return await parent.getaddrinfo(host, port, flags=flags, **kwargs)

    def add_signal_handler(self, sig: int, callback: Callable[..., object], *args: Any) -> None:
        # As asyncio's Unix loop does it: the C-level handler writes the signal number
        # to a socket the loop watches, which wakes the loop from its wait.
        if not hasattr(self, "_signal_handlers"):
            self._signal_handlers = {}
            self._signal_sockets = None
        if self._signal_sockets is None:
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            signal.set_wakeup_fd(writer.fileno())
            parent: Any = self
            # veloxloop's add_reader takes no arguments for the callback.
            parent.add_reader(reader.fileno(), functools.partial(self._read_signals, reader))
            self._signal_sockets = (reader, writer)
        self._signal_handlers[sig] = (callback, args)
        # A Python-level handler that does nothing, so the default action (exit) is off
        # and the wake-up byte is written.
        signal.signal(sig, _ignore_signal)

    def remove_signal_handler(self, sig: int) -> bool:
        handlers = getattr(self, "_signal_handlers", {})
        if sig not in handlers:
            return False
        del handlers[sig]
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        return True

    def _read_signals(self, reader: socket.socket) -> None:
        try:
            data = reader.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        for signum in data:
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                callback, args = handler
                parent: Any = self
                parent.call_soon(callback, *args)

    def close(self) -> None:
        sockets = getattr(self, "_signal_sockets", None)
        if sockets is not None:
            parent: Any = self
            parent.remove_reader(sockets[0].fileno())
            signal.set_wakeup_fd(-1)
            for sock in sockets:
                sock.close()
            self._signal_sockets = None
        for sig in list(getattr(self, "_signal_handlers", {})):
            self.remove_signal_handler(sig)
        grand: Any = super()
        grand.close()


def _ignore_signal(signum: int, frame: object) -> None:
    """The Python-level handler while a veloxloop loop handles the signal."""
