"""Build a Firecracker-compatible guest ``vmlinux`` from kernel sources.

The one kernel recipe: ``vmm kernel build`` uses it, and so does
``scripts/build-test-guest.sh`` (``python3 -m vmm.guest.kernelbuild build ...``).

Config = Firecracker v1.11's CI guest config (``data/firecracker/``, x86_64 6.1) + its
``ci.config`` + vmm's ``data/vmm-guest.fragment`` + the user's fragments, in that order (later
assignments win in kconfig), then ``make olddefconfig``. kconfig silently drops a symbol whose
dependencies are unmet (Firecracker issue #4881), so before compiling every REQUIRED option
must be ``=y`` and every explicit line of the fragments must have survived; otherwise the build
stops at once with the list. The build is out of tree (``make O=``), so a source directory is
never written to.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from vmm.errors import CommandError, ValidationError, VmmError
from vmm.guest.progress import Progress, quiet
from vmm.runner import Runner

DATA = Path(__file__).resolve().parent / "data"
FRAGMENT = DATA / "vmm-guest.fragment"
FC_CONFIGS = (
    DATA / "firecracker" / "microvm-kernel-ci-x86_64-6.1.config",
    DATA / "firecracker" / "ci.config",
)
# Must be =y after olddefconfig: virtio-mmio with cmdline devices, virtio blk/net/rng, ext4,
# 8250 console, i8042 + atkbd (Ctrl-Alt-Del), IP_PNP, devtmpfs, PVH entry (modules stay off:
# the fragment's "# CONFIG_MODULES is not set" is checked with the fragment).
REQUIRED = (
    "VIRTIO_MMIO", "VIRTIO_MMIO_CMDLINE_DEVICES", "VIRTIO_BLK", "VIRTIO_NET", "HW_RANDOM_VIRTIO",
    "EXT4_FS", "SERIAL_8250", "SERIAL_8250_CONSOLE", "SERIO_I8042", "KEYBOARD_ATKBD",
    "IP_PNP", "DEVTMPFS", "DEVTMPFS_MOUNT", "UNIX", "INET", "PACKET", "ACPI", "PVH",
)
VERSIONS = ("5.10", "6.1", "6.6")
DEBIAN_SOURCE = {"6.1": (Path("/usr/src/linux-source-6.1.tar.xz"), "linux-source-6.1")}
KERNEL_ORG = "https://cdn.kernel.org/pub/linux/kernel/v{major}.x/linux-{version}.tar.xz"
BUILD_ENV = ("KBUILD_BUILD_USER=vmm", "KBUILD_BUILD_HOST=vmm")
SET_RE = re.compile(r"(CONFIG_[A-Za-z0-9_]+)=(.*)")
UNSET_RE = re.compile(r"# (CONFIG_[A-Za-z0-9_]+) is not set")
COMPILED = ("CC", "AS", "HOSTCC")  # kbuild's tags for a line that built an object file
STATUS_EVERY, PROGRESS_EVERY = 0.5, 15.0  # seconds between make vmlinux's status/progress lines


# -- config --------------------------------------------------------------------------------


def config_text(fragments: Sequence[Path] = ()) -> str:
    """The .config given to olddefconfig: Firecracker's configs, vmm's fragment, ``fragments``."""
    parts = []
    for p in (*FC_CONFIGS, FRAGMENT, *fragments):
        try:
            text = p.read_text()
        except OSError as exc:
            raise ValidationError(f"cannot read kernel config {p}: {exc.strerror}") from None
        parts.append(f"# ---- {p.name}\n{text.rstrip()}\n")
    return "".join(parts)


def check_config(config: str, fragments: Sequence[str]) -> list[str]:
    """What did not survive olddefconfig: REQUIRED options and every line of ``fragments``.

    A fragment's later line for the same symbol wins over an earlier one (as in kconfig), and
    fragments given later win over earlier ones.
    """
    values: dict[str, str] = {}
    for line in config.splitlines():
        if m := SET_RE.fullmatch(line.strip()):
            values[m.group(1)] = m.group(2)
    wanted: dict[str, str | None] = {}  # symbol -> value, None = "is not set"
    for text in fragments:
        for line in text.splitlines():
            line = line.strip()
            if m := SET_RE.fullmatch(line):
                wanted[m.group(1)] = m.group(2)
            elif m := UNSET_RE.fullmatch(line):
                wanted[m.group(1)] = None
    missing = []
    for opt in REQUIRED:
        if values.get(f"CONFIG_{opt}") != "y":
            why = " (turned off by a fragment)" if wanted.get(f"CONFIG_{opt}", "y") is None else ""
            missing.append(f"{opt}=y (required){why}")
    for sym, val in wanted.items():
        name = sym.removeprefix("CONFIG_")
        if val is None:
            if values.get(sym) not in (None, "n"):
                missing.append(f"{name}=n (fragment), got {values[sym]}")
        elif values.get(sym) != val and not any(m.startswith(f"{name}=") for m in missing):
            missing.append(f"{name}={val} (fragment), got {values.get(sym, 'unset')}")
    return missing


# -- sources -------------------------------------------------------------------------------


def _makefile_version(src: Path) -> str | None:
    try:
        head = (src / "Makefile").read_text(errors="replace")[:2000]
    except OSError:
        return None
    v = re.search(r"^VERSION = (\d+)", head, re.M)
    p = re.search(r"^PATCHLEVEL = (\d+)", head, re.M)
    return f"{v.group(1)}.{p.group(1)}" if v and p else None


def check_tree(src: Path, version: str) -> None:
    found = _makefile_version(src)
    if found is None:
        raise ValidationError(f"{src} is not a Linux source tree (no Makefile with VERSION)")
    if found != version:
        raise ValidationError(
            f"{src} holds Linux {found}, not {version}",
            hint=f"use --version {found}, or a {version} source",
        )
    if (src / ".config").exists():
        raise ValidationError(
            f"{src} is configured in-tree (has a .config); vmm builds out of tree (make O=)",
            hint=f"run 'make -C {src} mrproper' or unpack a clean copy",
        )


def default_source(runner: Runner, version: str, progress: Progress) -> Path | None:
    """Debian's linux-source package for 6.1 (installed when missing); None: none here."""
    if version in DEBIAN_SOURCE:
        tarball, pkg = DEBIAN_SOURCE[version]
        if not tarball.is_file() and runner.which("apt-get"):
            progress(f"installing {pkg} (apt-get)")
            runner.run(["apt-get", "install", "-y", "--no-install-recommends", pkg],
                       check=False, timeout=1800)
        if tarball.is_file():
            return tarball
    return None


def download_source(
    version: str, work: Path, progress: Progress, status: Progress | None = None
) -> Path:
    """The release tarball from kernel.org; a clear error (pass --source) when unreachable."""
    from vmm.guest import pull

    url = KERNEL_ORG.format(major=version.split(".")[0], version=version)
    dest = work / url.rsplit("/", 1)[1]
    try:
        pull.download(url, dest, progress=progress, timeout=10, status=status)
    except VmmError as exc:
        raise VmmError(
            f"no local source for Linux {version}, and {url} cannot be downloaded ({exc.brief})",
            hint="download it elsewhere (or use a git checkout) and pass --source TARBALL|DIR",
        ) from None
    return dest


def unpack(runner: Runner, tarball: Path, dest: Path, progress: Progress) -> Path:
    """Unpack a source tarball into ``dest``; returns its top directory."""
    progress(f"unpacking {tarball}")
    runner.run(["tar", "-C", str(dest), "-xf", str(tarball)], timeout=1800)
    tops = [p for p in dest.iterdir() if (p / "Makefile").is_file()]
    if len(tops) != 1:
        raise ValidationError(f"{tarball} is not a Linux source tarball (one top directory)")
    return tops[0]


# -- build ---------------------------------------------------------------------------------


def configure(
    runner: Runner, src: Path, build: Path, fragments: Sequence[Path] = (),
    progress: Progress = quiet,
) -> str:
    """Write build/.config, ``make olddefconfig``, check it; returns the final config."""
    build.mkdir(parents=True, exist_ok=True)
    (build / ".config").write_text(config_text(fragments))
    progress("make olddefconfig")
    result = runner.run(["make", "-C", str(src), f"O={build}", "olddefconfig"],
                        check=False, timeout=600)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise VmmError("make olddefconfig failed: " + " | ".join(tail),
                       hint="apt-get install build-essential flex bison bc libelf-dev libssl-dev")
    config = (build / ".config").read_text()
    missing = check_config(config, [FRAGMENT.read_text(), *(f.read_text() for f in fragments)])
    if missing:
        raise ValidationError(
            f"kernel config check failed: {len(missing)} option(s) did not survive "
            "'make olddefconfig': " + "; ".join(missing),
            hint="a symbol is dropped when its dependencies are off; fix the fragment "
            "(nothing was compiled)",
        )
    progress(f"config checked: {len(REQUIRED)} required options and the fragments survived")
    return config


def compiled_object(line: str) -> str | None:
    """The object file a line of make's output reports built (``  CC      kernel/fork.o``)."""
    parts = line.split()
    if len(parts) == 2 and parts[0] in COMPILED and parts[1].endswith(".o"):
        return parts[1]
    return None


def compile_vmlinux(
    runner: Runner, src: Path, build: Path, jobs: int, progress: Progress = quiet,
    *, status: Progress | None = None, output: Progress | None = None,
) -> Path:
    """``make vmlinux``, its output read as it comes.

    Objects built so far, elapsed time and the file make is on go to ``status`` at most every
    ``STATUS_EVERY`` s when given (a terminal's status line), else to ``progress`` every
    ``PROGRESS_EVERY`` s; every line of make's output goes to ``output`` when given (a log)."""
    start = last = time.monotonic()
    objects = 0
    errors: list[str] = []

    def on_line(line: str) -> None:
        nonlocal objects, last
        if output is not None:
            output(line)
        built = compiled_object(line)
        if built is None:  # "  CC  .../uterror.o" is no error; "x.c:1:2: error: ..." is
            if "error" in line.lower() and len(errors) < 5:
                errors.append(line.strip())
            return
        objects += 1
        now = time.monotonic()
        if now - last >= (STATUS_EVERY if status else PROGRESS_EVERY):
            last = now
            summary = f"make vmlinux: {objects} objects, {now - start:.0f} s"
            if status is not None:
                status(f"{summary}: {built}")
            else:
                progress(summary)

    progress(f"make -j{jobs} vmlinux (about 10 minutes on 2 cores)")
    try:
        runner.stream(["env", *BUILD_ENV, "make", "-C", str(src), f"O={build}", f"-j{jobs}",
                       "vmlinux"], on_line, timeout=4 * 3600, tail_lines=40)
    except CommandError as exc:
        if exc.returncode is None:  # timed out
            raise
        raise VmmError("make vmlinux failed: " + (" | ".join(errors) or exc.stderr[-500:])) from None
    vmlinux = build / "vmlinux"
    if vmlinux.read_bytes()[:4] != b"\x7fELF":
        raise VmmError(f"{vmlinux} is not an ELF file")
    progress(f"built vmlinux in {time.monotonic() - start:.0f} s ({objects} objects)")
    return vmlinux


def build(
    runner: Runner,
    version: str,
    out: Path,
    *,
    source: Path | None = None,
    fragments: Sequence[Path] = (),
    jobs: int | None = None,
    work_parent: Path | None = None,
    progress: Progress = quiet,
    status: Progress | None = None,
    output: Progress | None = None,
    compile: bool = True,
) -> dict[str, str]:
    """Build into ``out`` (vmlinux, kernel.config, kernelrelease); returns facts for metadata.

    ``status`` and ``output``: see ``compile_vmlinux``."""
    import os

    if version not in VERSIONS:
        raise ValidationError(f"unsupported kernel version {version!r}",
                              hint=f"use one of {', '.join(VERSIONS)}")
    for f in fragments:
        if not f.is_file():
            raise ValidationError(f"config fragment {f} does not exist or is not a file")
    if source is None:
        source = default_source(runner, version, progress)
    elif not source.exists():
        raise ValidationError(f"kernel source {source} does not exist")
    jobs = jobs or os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix=".kbuild-", dir=work_parent)).resolve()
    try:
        if source is None:  # not available locally: kernel.org, if it can be reached
            source = download_source(version, work, progress, status)
        src = source.resolve() if source.is_dir() else unpack(runner, source, work, progress)
        check_tree(src, version)
        bdir = work / "build"
        config = configure(runner, src, bdir, fragments, progress)
        out.mkdir(parents=True, exist_ok=True)
        (out / "kernel.config").write_text(config)
        if not compile:
            return {"source": str(source)}
        vmlinux = compile_vmlinux(runner, src, bdir, jobs, progress, status=status,
                                  output=output)
        release = runner.run(["make", "-s", "-C", str(src), f"O={bdir}", "kernelrelease"]).stdout.strip()
        shutil.copyfile(vmlinux, out / "vmlinux")
        (out / "kernelrelease").write_text(release + "\n")
        return {"source": str(source), "release": release}
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # scripts/build-test-guest.sh; the printing is in vmm.guest.buildmain
    from vmm.guest.buildmain import kernelbuild_main

    sys.exit(kernelbuild_main())
