"""The QEMU engine (``qemu-system-x86_64 -M microvm``): ``argv``, ``qmp``, ``accel`` and
``engine``. This package's own namespace holds only the facts the registry needs."""

BINARIES = ("qemu-system-x86_64",)
INSTALL_HINT = "apt-get install qemu-system-x86"
