"""glibc's allocator and the server: no cold-start penalty, memory handed back.

A fresh server's receives must not map memory each time.

glibc maps every allocation above its mmap threshold (128 KiB) on its own and raises
the threshold only when such a block is freed. A loop that receives into a fresh
256 KiB buffer and shrinks it to the bytes received (``socket.recv``, rloop's reads)
frees only small mapped blocks, so until a client disconnects every receive costs an
mmap, an mremap and a munmap (python/cpython#85451). The server calls
``runtime.raise_malloc_mmap_threshold()`` at start; this shows the difference in page
faults, in fresh interpreters, receiving over a Unix socket pair. No timing involved.
"""

from __future__ import annotations

import platform
import subprocess

import pytest
from support import PYTHON, ROOT, TIMEOUT

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the mmap threshold is glibc's"
)

RECEIVES = 2000

# Receive 8 bytes into a fresh buffer RECEIVES times, as asyncio's Protocol transport
# and rloop do per read (with 256 KiB); print the minor page faults that took. The
# buffer is bigger here (768 KiB) because importing cli (asyncio...) may already free a
# block of a few hundred KiB, which raises the threshold that far.
PROBE = f"""
import resource, socket, sys
from echo20 import runtime
if sys.argv[1] == "primed":
    runtime.raise_malloc_mmap_threshold()
a, b = socket.socketpair()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({RECEIVES}):
    a.send(b"8 bytes!")
    data = b.recv(768 * 1024)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    result = subprocess.run(
        [PYTHON, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=TIMEOUT,
        check=True,
    )
    return int(result.stdout)


def test_fresh_receives_map_memory_each_time_without_the_primer() -> None:
    # The problem the primer solves, shown on this machine: at least one fault each.
    assert page_faults("fresh") >= RECEIVES


def test_primed_receives_reuse_the_heap() -> None:
    assert page_faults("primed") < RECEIVES // 20


# Allocate 64 blocks of 512 KiB (heap blocks once the threshold is raised), free all but
# the last, which pins the heap's top so that free() alone cannot shrink it; print the
# resident KiB before and after runtime.release_free_memory().
TRIM_PROBE = """
import sys
from echo20 import runtime
runtime.raise_malloc_mmap_threshold()
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
blocks = [b"%d" % n * (512 * 1024 // 2) for n in range(64)]
del blocks[:-1]
before = rss()
runtime.release_free_memory()
print(before, rss())
"""


def test_release_free_memory_returns_freed_heap_blocks() -> None:
    result = subprocess.run(
        [PYTHON, "-c", TRIM_PROBE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=TIMEOUT,
        check=True,
    )
    before, after = map(int, result.stdout.split())
    # 63 freed blocks of 512 KiB: about 31 MiB resident until the trim.
    assert before - after > 16 * 1024, (before, after)
