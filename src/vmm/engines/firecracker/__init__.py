"""The Firecracker v1.11 engine: ``bodies`` (pure request builders), ``api`` (the Unix-socket
HTTP client), ``argv`` (the command line, through a jail) and ``engine`` (process lifecycle).

This package's own namespace holds only the facts the registry needs without importing the
engine (which imports the registry's neighbours, never the registry)."""

# Where the binary is looked for (PATH, then scripts/install.sh's place), and how to get it.
BINARIES = ("firecracker", "/usr/local/bin/firecracker")
INSTALL_HINT = (
    "install it with scripts/install.sh (Firecracker v1.11.0), set firecracker_bin in the "
    "config, or use --engine qemu"
)
