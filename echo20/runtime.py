"""Process tuning for a server: signals, open-file limits, glibc's allocator, loop errors."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import resource
import signal
from collections.abc import Callable
from typing import Any

from echo20.errors import describe_error

__all__ = [
    "install_exception_handler",
    "install_stop_signals",
    "raise_malloc_mmap_threshold",
    "raise_open_file_limit",
    "release_free_memory",
]


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM set ``stop``; a second signal exits at once.

    The handlers go when the loop closes (rloop 0.5's ``remove_signal_handler`` is
    broken, so nothing removes them earlier).
    """
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            # The user asked twice: do not wait for the graceful shutdown.
            os._exit(128 + signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit; returns the new soft limit.

    Each connection is a file descriptor; the usual soft limit (1024) would cap a server
    far below what the machine can hold.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        return hard
    return soft


# The block freed by raise_malloc_mmap_threshold: above every receive buffer the loops
# allocate (asyncio 256 KiB; rloop about as much).
MALLOC_PRIMER_SIZE = 1 << 20


def raise_malloc_mmap_threshold() -> None:
    """Make glibc serve receive buffers from its heap from the start, not after a client left.

    glibc maps every allocation above its mmap threshold (128 KiB) separately, and raises
    the threshold only when such a block is freed. An event loop that allocates a fresh
    256 KiB buffer per receive (rloop; asyncio's plain Protocol) pays an mmap, mremap and
    munmap per receive, about 3x the CPU per round trip, until the first connection
    closes and frees one (strace; python/cpython#85451). Freeing one 1 MiB block now
    raises the threshold at once. Harmless elsewhere.
    """
    primer = bytes(MALLOC_PRIMER_SIZE)
    del primer


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc
    return trim


def release_free_memory() -> None:
    """Hand the allocator's free memory back to the system (glibc's ``malloc_trim``).

    glibc keeps freed blocks on its heaps for reuse; after a burst of large messages,
    TLS above all, a server that has gone idle would otherwise stay tens of MiB above
    its resting size (soak: +25 MiB). Does nothing where there is no glibc.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def install_exception_handler() -> None:
    """Log the loop's OS-level errors (accept failures, TLS garbage) as one line each.

    A peer that misbehaves is not a bug in the server: its error goes to the log as one
    line without a traceback; anything else keeps asyncio's default report.
    """
    loop = asyncio.get_running_loop()
    log = logging.getLogger("echo20.loop")

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, OSError):
            log.warning("%s: %s", context.get("message", "error"), describe_error(error))
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
