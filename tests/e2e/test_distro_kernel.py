"""A real distro kernel through the CLI: Debian's cloud bzImage, imported with 'vmm kernel import'
(which extracts the ELF vmlinux inside it) and booted with QEMU under TCG.

scripts/fetch-distro-kernel.sh provides the bzImage (``VMM_TEST_BZIMAGE``, set by scripts/test.sh)
and, beside it, ``vmm-initrd.img``: busybox and the kernel's own virtio modules (Debian's cloud
kernel has virtio-mmio and virtio-blk as modules, so it cannot mount a rootfs by itself). Its
/init loads them, reads the VM's disk and NIC, prints one ``VMM-DISTRO-PROBE`` line and powers
off. Without that initramfs (a bzImage from elsewhere) only the kernel's banner is checked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VmmEnv, make_ext4
from tests.netns import NetNS
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

PROBE_INITRD = "vmm-initrd.img"  # scripts/fetch-distro-kernel.sh puts it beside the bzImage
BOOT_TIMEOUT = 120.0  # each of: the banner, the probe line, the power-off (TCG, 1 vCPU)
PROBE = re.compile(
    r"^VMM-DISTRO-PROBE release=(?P<release>\S+) vda=(?P<vda>\S+) hostname=(?P<hostname>\S+) "
    r"eth0=(?P<eth0>\S+) modules=(?P<modules>\S*)\r?$",
    re.M,
)


@pytest.fixture
def distro_bzimage() -> Path:
    value = os.environ.get("VMM_TEST_BZIMAGE")
    if not value:
        pytest.skip("VMM_TEST_BZIMAGE unset: run scripts/test.sh (scripts/fetch-distro-kernel.sh provides it)")
    path = Path(value)
    if not path.is_file():
        pytest.fail(f"VMM_TEST_BZIMAGE={value} is not a file")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    return path


def test_distro_kernel_boots(
    vmm_env: VmmEnv, netns: NetNS, distro_bzimage: Path, tmp_path: Path
) -> None:
    release = distro_bzimage.name.removeprefix("vmlinuz-")
    initrd = distro_bzimage.parent / PROBE_INITRD
    vmm_env.write_config(engine="qemu", accel="tcg")

    def vmm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return vmm_env.run(*args, ns=netns, check=check, timeout=300)

    def console() -> str:
        return vmm("logs", "distro", check=False).stdout

    extra = ["--initrd", str(initrd)] if initrd.is_file() else []
    out = vmm("kernel", "import", str(distro_bzimage), "--name", "debian", *extra).stdout
    assert "extracted from a bzImage" in out and release in out and "PVH" in out, out
    vmm("image", "import", str(make_ext4(tmp_path / "root.ext4", 64)), "--name", "probe")
    vmm("create", "distro", "--kernel", "debian", "--image", "probe", "--cpus", "1", "--memory", "256",
        "--disk", "64")
    try:
        vmm("start", "distro", "--no-wait")
        mac = json.loads(vmm("inspect", "distro").stdout)["mac"].lower()

        # The booted guest's own banner: the extracted vmlinux runs.
        banner = f"Linux version {release} "
        wait_until(lambda: banner in console(), BOOT_TIMEOUT, interval=0.5,
                   what=f"{banner!r} in the console log")
        if extra:
            # The initramfs ran on that kernel: its modules found the VM's disk and NIC.
            wait_until(lambda: PROBE.search(console()), BOOT_TIMEOUT, interval=0.5,
                       what="the VMM-DISTRO-PROBE line in the console log")
            probe = PROBE.search(console())
            assert probe is not None
            assert probe["release"] == release
            assert probe["vda"] == "yes" and probe["hostname"] == "distro", probe.group(0)
            assert probe["eth0"] == mac, probe.group(0)
            loaded = set(probe["modules"].split(","))
            assert {"virtio_mmio", "virtio_blk", "virtio_net"} <= loaded, probe.group(0)
            # ... and powered off: QEMU (-no-reboot) is gone from the namespace.
            wait_until(lambda: not netns.pids(), BOOT_TIMEOUT, interval=0.5, what="QEMU to exit")
    except BaseException:
        print("console log:\n" + console()[-4000:])
        raise
    finally:
        vmm("delete", "-f", "distro", check=False)
    assert not (vmm_env.data_dir / "vms" / "distro.json").exists()
    assert netns.pids() == []
