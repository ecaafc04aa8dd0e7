"""`make demo`: start the server on a free port, run a scripted client session, stop it.

What a newcomer sees is the seed's demo (server in one terminal, client in another) in
one command: a short message, one longer than 20 bytes, then ``over``.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = ["hello", "a message longer than twenty bytes", "over"]
# Seconds to wait for the server's ready line or its exit: generous for a loaded machine.
STARTUP_TIMEOUT = 20.0


def main() -> int:
    server_cmd = [sys.executable, "echo_server.py", "--port", "0", "--loop", "auto"]
    print(f"$ {shlex.join(server_cmd[1:])}", flush=True)
    server = subprocess.Popen(server_cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        assert server.stdout is not None
        ready = server.stdout.readline().strip()
        if not ready.startswith("echo20 listening on "):
            print(f"demo: the server did not start (said {ready!r})", file=sys.stderr)
            return 1
        print(ready, flush=True)
        port = ready.split()[3].rsplit(":", 1)[1]
        client_cmd = [sys.executable, "echo_client.py", "--port", port]
        for message in MESSAGES:
            client_cmd += ["-m", message]
        print(f"\n$ {shlex.join(client_cmd[1:])}", flush=True)
        client = subprocess.run(client_cmd, cwd=ROOT, timeout=STARTUP_TIMEOUT, check=False)
        if client.returncode != 0:
            print(f"demo: the client exited with status {client.returncode}", file=sys.stderr)
            return 1
        print("\n(stopping the server with SIGTERM)", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            status = server.wait(timeout=STARTUP_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            status = server.wait()
    if status != 0:
        print(f"demo: the server exited with status {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
