"""``--tls``: the run's own certificate authority and server certificate, made at run time.

A throwaway authority (``trustme``) signs one certificate for ``localhost``, 127.0.0.1
and ::1; every server of the run serves it, and the load generator (and the priming
exchange) trust that authority alone and check the name, as a real client would.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SERVER_NAME", "TLSFiles", "make_tls_files"]

# The name the clients ask for and check.
SERVER_NAME = "localhost"


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: ``certfile`` holds the private key and the certificate chain (a server
    given only it finds both), ``keyfile`` the key alone, ``cafile`` what clients trust."""

    certfile: Path
    keyfile: Path
    cafile: Path

    def client_context(self) -> ssl.SSLContext:
        """What the priming exchange connects with: the run's authority, the name checked."""
        return ssl.create_default_context(cafile=str(self.cafile))


def make_tls_files(directory: Path) -> TLSFiles:
    """A fresh authority and a server certificate signed by it, written into ``directory``."""
    import trustme

    authority = trustme.CA()
    issued = authority.issue_cert(SERVER_NAME, "127.0.0.1", "::1")
    files = TLSFiles(directory / "server.pem", directory / "server.key", directory / "ca.pem")
    issued.private_key_and_cert_chain_pem.write_to_path(str(files.certfile))
    issued.private_key_pem.write_to_path(str(files.keyfile))
    authority.cert_pem.write_to_path(str(files.cafile))
    return files
