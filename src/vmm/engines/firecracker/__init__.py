"""The Firecracker v1.11 engine: ``bodies`` (pure request builders), ``api`` (the Unix-socket
HTTP client) and ``engine`` (process lifecycle)."""

from vmm.engines.firecracker.engine import FirecrackerEngine

__all__ = ["FirecrackerEngine"]
