"""The echo20 conformance suite, installable: black-box scenarios over raw TCP, a runner.

``pip install 'echo20[conformance]'`` installs it; then::

    echo20-conformance --server-cmd "python tcp_server.py" --port 8888
    echo20-conformance --server-cmd "./my_server --port {port}"
    echo20-conformance --server-addr 127.0.0.1:8888
    echo20-conformance --client-cmd "./my_client --port {port}"
    echo20-conformance compare tornado --server-cmd "./my_server --port {port}"

(or ``python -m echo20.conformance``). ``compare`` puts two or more servers side by side
(``compare``, ``matrix``, ``observe``). The scenarios speak raw TCP and import nothing
of the rest of echo20: they judge any implementation, this project's own included,
by the rules written down in ``docs/protocol.md``. ``runner`` is the command line,
``plugin`` the pytest plugin behind it, ``scenarios`` the tests, ``wire`` the reply
checker and raw clients, ``scripted`` the servers that judge a client.
"""

import sys

from echo20 import cli

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``echo20-conformance``: the runner, or one line if pytest is not installed."""
    if cli.missing_extra("echo20-conformance", "conformance", ["pytest"]):
        return 1
    from echo20.conformance import runner

    return runner.main(sys.argv[1:] if argv is None else argv)
