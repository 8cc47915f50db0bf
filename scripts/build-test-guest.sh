#!/usr/bin/env bash
# Build (or find in the cache) the vmm test guest: an ELF `vmlinux` and a Debian
# bookworm `rootfs.ext4` that boot under QEMU `-M microvm` (TCG) and Firecracker v1.11.
#
# Usage: scripts/build-test-guest.sh [--cache DIR]
#   DIR defaults to ${VMM_TEST_CACHE:-/var/cache/vmm-test}.
# The last line of stdout is the absolute path DIR/<recipe hash>, which holds
# vmlinux, rootfs.ext4, kernel.config, packages.txt and info.txt. Everything else
# (progress, tool output) goes to stderr.
#
# The recipe hash covers this script, scripts/kernel/vmm-guest.fragment and the
# Firecracker guest configs, so editing any of them builds a new entry; otherwise a
# rerun returns at once. Kernel and rootfs are also cached separately
# (DIR/parts/kernel-<key>, DIR/parts/rootfs-<key>, keyed by only their own inputs),
# so a rootfs-only change does not rebuild the kernel. Every entry is built in a
# temp dir under DIR and renamed into place when complete.
#
# The images in the cache are shared: copy rootfs.ext4 before booting it.
# Environment: VMM_TEST_CACHE (default cache dir), VMM_KEEP_WORK=1 (keep temp dirs),
# VMM_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPT_DIR=$(dirname "$SCRIPT_PATH")
REPO_ROOT=$(dirname "$SCRIPT_DIR")
SHARED_DIR=$(dirname "$REPO_ROOT")/shared
FC_CONFIG_DIR=$SHARED_DIR/firecracker/v1.11.0/guest-configs
FC_BASE_CONFIG=$FC_CONFIG_DIR/microvm-kernel-ci-x86_64-6.1.config
FC_CI_CONFIG=$FC_CONFIG_DIR/ci.config
FRAGMENT=$SCRIPT_DIR/kernel/vmm-guest.fragment

KERNEL_SOURCE_PKG=linux-source-6.1
KERNEL_SOURCE_TARBALL=/usr/src/linux-source-6.1.tar.xz
# Options that must be =y after `make olddefconfig` (kconfig silently drops symbols
# whose dependencies are unmet; Firecracker issue #4881).
KERNEL_REQUIRED_OPTIONS=(
    VIRTIO_MMIO VIRTIO_MMIO_CMDLINE_DEVICES VIRTIO_BLK VIRTIO_NET HW_RANDOM_VIRTIO
    EXT4_FS SERIAL_8250 SERIAL_8250_CONSOLE SERIO_I8042 KEYBOARD_ATKBD
    IP_PNP DEVTMPFS DEVTMPFS_MOUNT UNIX INET PACKET ACPI PVH
)
KERNEL_BUILD_DEPS=("$KERNEL_SOURCE_PKG" build-essential flex bison bc libelf-dev libssl-dev xz-utils)

ROOTFS_SUITE=bookworm
ROOTFS_MIRROR=${VMM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS_INCLUDE=systemd,systemd-sysv,openssh-server,iproute2,iputils-ping,udev,kmod,procps,ca-certificates
ROOTFS_SIZE=1G
ROOTFS_LABEL=rootfs
ROOTFS_HOSTNAME=vmm-guest
ROOTFS_BUILD_DEPS=(debootstrap e2fsprogs)

log() { printf '[build-test-guest] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "$SCRIPT_PATH" | sed '$d; s/^# \{0,1\}//' >&2
}

hash_stdin() { sha256sum | cut -c1-16; }

# ---------------------------------------------------------------- arguments
CACHE_DIR=${VMM_TEST_CACHE:-/var/cache/vmm-test}
while (($#)); do
    case $1 in
        --cache) (($# >= 2)) || die "--cache needs a directory"; CACHE_DIR=$2; shift 2 ;;
        --cache=*) CACHE_DIR=${1#--cache=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage; die "unknown argument: $1" ;;
    esac
done
[[ -n $CACHE_DIR ]] || die "empty cache directory"
for f in "$FRAGMENT" "$FC_BASE_CONFIG" "$FC_CI_CONFIG"; do
    [[ -f $f ]] || die "missing recipe file: $f"
done

RECIPE_HASH=$(cat "$SCRIPT_PATH" "$FRAGMENT" "$FC_BASE_CONFIG" "$FC_CI_CONFIG" | hash_stdin)
mkdir -p "$CACHE_DIR"
CACHE_DIR=$(cd "$CACHE_DIR" && pwd -P)
OUT_DIR=$CACHE_DIR/$RECIPE_HASH

entry_complete() { [[ -f $1/.complete && -f $1/vmlinux && -f $1/rootfs.ext4 ]]; }

# Fast path: nothing to check, install or lock.
if entry_complete "$OUT_DIR"; then
    printf '%s\n' "$OUT_DIR"
    exit 0
fi

# ---------------------------------------------------------------- slow path
[[ $EUID -eq 0 ]] || die "building the test guest needs root (debootstrap, apt-get)"

# One builder at a time per cache dir; a concurrent caller waits and then reuses.
exec 9>"$CACHE_DIR/.lock"
if ! flock -n 9; then
    log "another build holds $CACHE_DIR/.lock; waiting"
    flock 9
fi
if entry_complete "$OUT_DIR"; then
    printf '%s\n' "$OUT_DIR"
    exit 0
fi

# remove_tree DIR: rm -rf, after unmounting whatever an interrupted debootstrap
# left mounted below DIR (proc, sys, ...).
remove_tree() {
    local d=$1 m
    [[ -n $d && -e $d ]] || return 0
    while read -r m; do
        if [[ $m == "$d"/* ]]; then umount -l "$m" 2>/dev/null || true; fi
    done < <(findmnt -rn -o TARGET | sort -r)
    rm -rf --one-file-system -- "$d"
}

TMP_DIRS=()
cleanup() {
    local d
    if [[ ${VMM_KEEP_WORK:-0} == 1 ]]; then
        ((${#TMP_DIRS[@]})) && log "kept work dirs: ${TMP_DIRS[*]}"
        return 0
    fi
    for d in "${TMP_DIRS[@]}"; do
        remove_tree "$d" || true
    done
    return 0
}
# Long steps run in their own process group (see run_logged), so an interrupt can
# stop the whole tree (make and its compilers, debootstrap and dpkg) at once.
CHILD_PGID=
on_signal() {
    if [[ -n $CHILD_PGID ]]; then
        kill -TERM -- "-$CHILD_PGID" 2>/dev/null || true
        wait "$CHILD_PGID" 2>/dev/null || true
    fi
    log "interrupted; no cache entry was written"
    exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# Leftovers of interrupted runs (we hold the lock, so nobody else is building).
for d in "$CACHE_DIR"/.tmp.*; do remove_tree "$d" || true; done

# new_tmp_dir NAME: sets TMP_DIR (not a $(...) call: the subshell would lose TMP_DIRS).
new_tmp_dir() {
    TMP_DIR=$(mktemp -d "$CACHE_DIR/.tmp.$1.XXXXXX")
    TMP_DIRS+=("$TMP_DIR")
}

ensure_packages() {
    local pkg missing=()
    for pkg in "$@"; do
        if [[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null) != installed ]]; then
            missing+=("$pkg")
        fi
    done
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y --no-install-recommends "${missing[@]}" >&2
}

# Run a long command with its output in a log file; on failure show the tail.
# Waiting on a background child (rather than running it in the foreground) lets
# the INT/TERM traps run at once instead of after the child finishes.
run_logged() {
    local logfile=$1 rc=0; shift
    setsid "$@" </dev/null >"$logfile" 2>&1 &
    CHILD_PGID=$!
    wait "$CHILD_PGID" || rc=$?
    CHILD_PGID=
    if ((rc != 0)); then
        tail -n 40 "$logfile" >&2
        die "failed (exit $rc): $* (full log: $logfile; rerun with VMM_KEEP_WORK=1 to keep it)"
    fi
}

# ---------------------------------------------------------------- kernel
# Functions named kernel_* are part of the kernel cache key (with their inputs).

kernel_check_config() {
    local config=$1 opt missing=() line sym
    for opt in "${KERNEL_REQUIRED_OPTIONS[@]}"; do
        grep -qx "CONFIG_$opt=y" "$config" || missing+=("$opt")
    done
    # Every explicit setting of the fragment must survive too.
    while IFS= read -r line; do
        if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            grep -qxF -- "$line" "$config" || missing+=("${line#CONFIG_} (fragment)")
        elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            sym=${BASH_REMATCH[1]}
            if grep -q "^$sym=" "$config"; then missing+=("${sym#CONFIG_}=n (fragment)"); fi
        fi
    done <"$FRAGMENT"
    if ((${#missing[@]})); then
        log "kernel options that did not survive 'make olddefconfig':"
        printf '  %s\n' "${missing[@]}" >&2
        die "kernel config check failed"
    fi
}

kernel_build() {
    local out=$1 work src
    ensure_packages "${KERNEL_BUILD_DEPS[@]}"
    [[ -f $KERNEL_SOURCE_TARBALL ]] || die "missing $KERNEL_SOURCE_TARBALL"
    new_tmp_dir kernel
    work=$TMP_DIR
    log "kernel: unpacking $KERNEL_SOURCE_TARBALL"
    tar -C "$work" -xJf "$KERNEL_SOURCE_TARBALL"
    src=$work/linux-source-6.1
    [[ -f $src/Makefile ]] || die "unexpected layout in $KERNEL_SOURCE_TARBALL"
    # Later assignments win in kconfig: CI base, then ci.config, then ours.
    cat "$FC_BASE_CONFIG" "$FC_CI_CONFIG" "$FRAGMENT" >"$src/.config"
    run_logged "$work/olddefconfig.log" make -C "$src" olddefconfig
    kernel_check_config "$src/.config"
    log "kernel: make -j$(nproc) vmlinux (about 10 minutes on 2 cores; log: $work/build.log)"
    local start=$SECONDS
    run_logged "$work/build.log" env KBUILD_BUILD_USER=vmm KBUILD_BUILD_HOST=vmm-test \
        make -C "$src" -j"$(nproc)" vmlinux
    [[ $(head -c4 "$src/vmlinux" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]] \
        || die "kernel: $src/vmlinux is not an ELF file"
    mkdir -p "$out"
    cp "$src/vmlinux" "$out/vmlinux"
    cp "$src/.config" "$out/kernel.config"
    make -s -C "$src" kernelrelease >"$out/kernelrelease"
    log "kernel: built $(cat "$out/kernelrelease") in $((SECONDS - start)) s"
    remove_tree "$src"
}

# ---------------------------------------------------------------- rootfs
# Functions named rootfs_* are part of the rootfs cache key (with the ROOTFS_* values).

rootfs_write() {  # rootfs_write ROOT PATH MODE <<<content
    local root=$1 path=$2 mode=$3
    mkdir -p "$(dirname "$root$path")"
    cat >"$root$path"
    chmod "$mode" "$root$path"
}

rootfs_configure() {
    local root=$1 unit

    # Identity: vmm (or the test) sets hostname, keys and network per VM.
    rootfs_write "$root" /etc/hostname 0644 <<<"$ROOTFS_HOSTNAME"
    rootfs_write "$root" /etc/hosts 0644 <<EOF
127.0.0.1	localhost
127.0.1.1	$ROOTFS_HOSTNAME
::1		localhost ip6-localhost ip6-loopback
EOF
    rootfs_write "$root" /etc/fstab 0644 <<<"/dev/vda / ext4 defaults 0 1"
    # minbase has no locales; C.UTF-8 is built into libc (and silences pam_env).
    rootfs_write "$root" /etc/default/locale 0644 <<<"LANG=C.UTF-8"
    # debootstrap copied the build host's resolver. DNS servers given with the
    # kernel's ip= land in /proc/net/pnp (resolv.conf syntax).
    rm -f "$root/etc/resolv.conf"
    ln -s /proc/net/pnp "$root/etc/resolv.conf"

    # root: no password can match ('*'), logins only with keys vmm injects.
    chroot "$root" usermod -p '*' root
    install -d -m 0700 -o 0 -g 0 "$root/root/.ssh"
    rm -f "$root/root/.ssh/authorized_keys"

    # sshd: keys only; host keys are made at first boot, never shared between VMs.
    # Only ed25519, because RSA key generation takes seconds under TCG.
    rm -f "$root"/etc/ssh/ssh_host_*
    rootfs_write "$root" /etc/ssh/sshd_config.d/00-vmm.conf 0644 <<'EOF'
# vmm test guest
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
HostKey /etc/ssh/ssh_host_ed25519_key
UseDNS no
EOF
    rootfs_write "$root" /etc/systemd/system/vmm-ssh-hostkeys.service 0644 <<'EOF'
[Unit]
Description=Generate this VM's SSH host key
DefaultDependencies=no
After=local-fs.target
Before=ssh.service sshd.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -C "" -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=ssh.service
EOF
    chroot "$root" systemctl --quiet enable vmm-ssh-hostkeys.service ssh.service >&2

    # Console and network: a serial getty on ttyS0; systemd-networkd applies the
    # .network file vmm writes per VM (none baked in: the kernel's ip= works alone).
    chroot "$root" systemctl --quiet enable serial-getty@ttyS0.service systemd-networkd.service >&2

    # Things that only cost CPU in a short-lived guest under TCG (one emulated CPU:
    # everything in parallel competes for it), or could prompt on the console
    # (firstboot with an empty machine-id). Masked, so that presets cannot bring
    # them back. The kernel has no modules, so modprobe@/modules-load do nothing;
    # getty-static starts gettys on tty2-6 because there is no logind.
    for unit in getty@tty1.service getty-static.service systemd-firstboot.service \
        apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
        e2scrub_all.timer e2scrub_reap.service fstrim.timer systemd-pstore.service \
        modprobe@.service systemd-modules-load.service \
        sys-kernel-debug.mount sys-kernel-tracing.mount dev-hugepages.mount; do
        chroot "$root" systemctl disable --quiet "$unit" 2>/dev/null || true
        chroot "$root" systemctl mask --quiet "$unit" >&2
    done

    # A fresh machine-id per VM (systemd creates and commits it at boot).
    : >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"

    chroot "$root" dpkg-query -W -f='${Package} ${Version}\n' >"$root.packages.txt"
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
        "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
        "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/* "$root"/var/tmp/*
    mkdir -p "$root/var/lib/apt/lists/partial"
}

rootfs_build() {
    local out=$1 work root start=$SECONDS
    ensure_packages "${ROOTFS_BUILD_DEPS[@]}"
    new_tmp_dir rootfs
    work=$TMP_DIR
    root=$work/root
    log "rootfs: debootstrap $ROOTFS_SUITE from $ROOTFS_MIRROR (about a minute; log: $work/debootstrap.log)"
    run_logged "$work/debootstrap.log" debootstrap --variant=minbase \
        --include="$ROOTFS_INCLUDE" "$ROOTFS_SUITE" "$root" "$ROOTFS_MIRROR"
    rootfs_configure "$root"
    mkdir -p "$out"
    truncate -s "$ROOTFS_SIZE" "$out/rootfs.ext4"
    run_logged "$work/mkfs.log" mkfs.ext4 -F -q -L "$ROOTFS_LABEL" -d "$root" "$out/rootfs.ext4"
    mv "$root.packages.txt" "$out/packages.txt"
    log "rootfs: built in $((SECONDS - start)) s"
    remove_tree "$root"
}

# ---------------------------------------------------------------- parts
part_key() {  # part_key PREFIX: hash of the prefix's functions + extra stdin inputs
    { declare -f $(compgen -A function "$1"); cat; } | hash_stdin
}

KERNEL_KEY=$({
    printf '%s\n' "$KERNEL_SOURCE_PKG" "$KERNEL_SOURCE_TARBALL" "${KERNEL_REQUIRED_OPTIONS[@]}"
    cat "$FC_BASE_CONFIG" "$FC_CI_CONFIG" "$FRAGMENT"
} | part_key kernel_)
ROOTFS_KEY=$({
    printf '%s\n' "$ROOTFS_SUITE" "$ROOTFS_INCLUDE" "$ROOTFS_SIZE" \
        "$ROOTFS_LABEL" "$ROOTFS_HOSTNAME"
} | part_key rootfs_)

# build_part NAME KEY FILE: make DIR/parts/NAME-KEY/FILE exist, atomically.
build_part() {
    local name=$1 key=$2 file=$3 dest tmp
    dest=$CACHE_DIR/parts/$name-$key
    if [[ -f $dest/.complete && -f $dest/$file ]]; then
        log "$name: cached ($dest)"
        return 0
    fi
    mkdir -p "$CACHE_DIR/parts"
    new_tmp_dir "$name"
    tmp=$TMP_DIR
    "${name}_build" "$tmp/out"
    touch "$tmp/out/.complete"
    remove_tree "$dest"
    mv -T "$tmp/out" "$dest"
}

START=$SECONDS
build_part kernel "$KERNEL_KEY" vmlinux
build_part rootfs "$ROOTFS_KEY" rootfs.ext4

KPART=$CACHE_DIR/parts/kernel-$KERNEL_KEY
RPART=$CACHE_DIR/parts/rootfs-$ROOTFS_KEY
new_tmp_dir entry
STAGE=$TMP_DIR/out
mkdir -p "$STAGE"
for f in "$KPART/vmlinux" "$KPART/kernel.config" "$RPART/rootfs.ext4" "$RPART/packages.txt"; do
    ln "$f" "$STAGE/" 2>/dev/null || cp --sparse=always "$f" "$STAGE/"
done
cat >"$STAGE/info.txt" <<EOF
recipe=$RECIPE_HASH
kernel_part=$KPART
kernel_release=$(cat "$KPART/kernelrelease")
rootfs_part=$RPART
rootfs_suite=$ROOTFS_SUITE
rootfs_label=$ROOTFS_LABEL
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF
touch "$STAGE/.complete"
remove_tree "$OUT_DIR"
mv -T "$STAGE" "$OUT_DIR"
log "done in $((SECONDS - START)) s"
printf '%s\n' "$OUT_DIR"
