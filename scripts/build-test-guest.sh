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
# The recipes themselves live in vmm (one copy, also used by 'vmm kernel build' and
# 'vmm image build --debootstrap'): src/vmm/guest/kernelbuild.py with its config files in
# src/vmm/guest/data/, and src/vmm/guest/debootstrap.py; this script runs them with the
# system python3 (PYTHON=...), PYTHONPATH=src.
# The recipe hash covers this script and those files, so editing any of them builds a
# new entry; otherwise a
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
GUEST_PY=$REPO_ROOT/src/vmm/guest
FC_BASE_CONFIG=$GUEST_PY/data/firecracker/microvm-kernel-ci-x86_64-6.1.config
FC_CI_CONFIG=$GUEST_PY/data/firecracker/ci.config
FRAGMENT=$GUEST_PY/data/vmm-guest.fragment
KERNEL_RECIPE=$GUEST_PY/kernelbuild.py
ROOTFS_RECIPE=$GUEST_PY/debootstrap.py
PYTHON=${PYTHON:-python3}

KERNEL_SOURCE_PKG=linux-source-6.1
KERNEL_SOURCE_TARBALL=/usr/src/linux-source-6.1.tar.xz
KERNEL_BUILD_DEPS=("$KERNEL_SOURCE_PKG" build-essential flex bison bc libelf-dev libssl-dev xz-utils)

ROOTFS_SUITE=bookworm
ROOTFS_MIRROR=${VMM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS_SIZE=1G
ROOTFS_LABEL=rootfs
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
for f in "$FRAGMENT" "$FC_BASE_CONFIG" "$FC_CI_CONFIG" "$KERNEL_RECIPE" "$ROOTFS_RECIPE"; do
    [[ -f $f ]] || die "missing recipe file: $f"
done

RECIPE_HASH=$(cat "$SCRIPT_PATH" "$FRAGMENT" "$FC_BASE_CONFIG" "$FC_CI_CONFIG" \
    "$KERNEL_RECIPE" "$ROOTFS_RECIPE" | hash_stdin)
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

# Config (Firecracker's + the fragment), olddefconfig, the required-option check and
# make vmlinux: all in vmm.guest.kernelbuild (the same code as 'vmm kernel build').
kernel_build() {
    local out=$1 work start=$SECONDS
    ensure_packages "${KERNEL_BUILD_DEPS[@]}"
    [[ -f $KERNEL_SOURCE_TARBALL ]] || die "missing $KERNEL_SOURCE_TARBALL"
    new_tmp_dir kernel
    work=$TMP_DIR
    log "kernel: vmm.guest.kernelbuild from $KERNEL_SOURCE_TARBALL (about 10 minutes on 2 cores; log: $work/build.log)"
    run_logged "$work/build.log" env PYTHONPATH="$REPO_ROOT/src${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m vmm.guest.kernelbuild \
        build --version 6.1 --source "$KERNEL_SOURCE_TARBALL" --out "$work/out"
    [[ $(head -c4 "$work/out/vmlinux" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]] \
        || die "kernel: $work/out/vmlinux is not an ELF file"
    mkdir -p "$out"
    cp "$work/out/vmlinux" "$work/out/kernel.config" "$work/out/kernelrelease" "$out/"
    log "kernel: built $(cat "$out/kernelrelease") in $((SECONDS - start)) s"
    remove_tree "$work"
}

# ---------------------------------------------------------------- rootfs
# Functions named rootfs_* are part of the rootfs cache key (with the ROOTFS_* values).

rootfs_build() {
    local out=$1 work root start=$SECONDS
    ensure_packages "${ROOTFS_BUILD_DEPS[@]}"
    new_tmp_dir rootfs
    work=$TMP_DIR
    root=$work/root
    # debootstrap + the vmm preparation: vmm.guest.debootstrap (as 'vmm image build').
    log "rootfs: debootstrap $ROOTFS_SUITE from $ROOTFS_MIRROR (about a minute; log: $work/debootstrap.log)"
    run_logged "$work/debootstrap.log" env PYTHONPATH="$REPO_ROOT/src${PYTHONPATH:+:$PYTHONPATH}" \
        "$PYTHON" -m vmm.guest.debootstrap tree \
        "$ROOTFS_SUITE" "$root" --mirror "$ROOTFS_MIRROR" --packages-out "$root.packages.txt"
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
    printf '%s\n' "$KERNEL_SOURCE_PKG" "$KERNEL_SOURCE_TARBALL"
    cat "$FC_BASE_CONFIG" "$FC_CI_CONFIG" "$FRAGMENT" "$KERNEL_RECIPE"
} | part_key kernel_)
ROOTFS_KEY=$({
    printf '%s\n' "$ROOTFS_SUITE" "$ROOTFS_SIZE" "$ROOTFS_LABEL"
    cat "$ROOTFS_RECIPE"
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
