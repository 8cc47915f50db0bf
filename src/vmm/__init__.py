"""vmm: manage Firecracker and QEMU microVMs for development environments."""

__version__ = "0.1.0"
