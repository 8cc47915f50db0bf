#!/usr/bin/env bash
# Provide (or find in the cache) Debian's cloud kernel as a real distro bzImage for the tests,
# WITHOUT installing it on the host, plus a tiny probe initramfs that boots with it.
#
# Usage: scripts/fetch-distro-kernel.sh [--cache DIR]
#   DIR defaults to ${VMM_TEST_CACHE:-/var/cache/vmm-test}.
# The last line of stdout is the absolute path of the cached bzImage,
# DIR/distro-kernel/<package version>/vmlinuz-<release>. Beside it:
#   config-<release>   the kernel's config, from the same package
#   vmm-initrd.img     the probe initramfs (gzip'd newc cpio; see below)
#   info.txt           package names and versions, the modules in the initramfs
# Everything else (progress, tool output) goes to stderr.
#
# The kernel package is the one the metapackage linux-image-cloud-amd64 currently depends on
# (its candidate in apt's package lists); it and busybox-static are fetched with
# 'apt-get download' and unpacked with 'dpkg-deb -x' in a temp dir: nothing is installed.
# Debian's cloud kernel has virtio-mmio and virtio-blk as modules and no IP autoconfig, so it
# cannot mount a vmm rootfs by itself. The probe initramfs holds busybox and those modules
# (with their dependencies) from the same package; its /init loads them, mounts /dev/vda
# read-only, prints one line to the console,
#   VMM-DISTRO-PROBE release=<uname -r> vda=yes|no hostname=<the disk's /etc/hostname> eth0=<MAC>|- modules=<loaded,...>
# and powers the machine off.
#
# An entry is built in a temp dir under DIR/distro-kernel and renamed into place when complete,
# under DIR/distro-kernel/.lock; a rerun reuses it without any network access. The entry
# records a hash of this script and the busybox version, so editing the recipe rebuilds it.
# When the package lists are missing or out of date (the archive no longer has the version
# they name), the script runs 'apt-get update' (root) once. When apt cannot reach the archive
# it exits 1 with one line on stderr.
# Environment: VMM_TEST_CACHE (default cache dir), VMM_KEEP_WORK=1 (keep the temp dir).
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")

META_PKG=linux-image-cloud-amd64
BUSYBOX_PKG=busybox-static
# Loaded by the probe /init (modprobe resolves their dependencies).
INITRD_MODULES=(virtio_mmio virtio_blk virtio_net)
INITRD_NAME=vmm-initrd.img

log() { printf '[fetch-distro-kernel] %s\n' "$*" >&2; }
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
mkdir -p "$CACHE_DIR/distro-kernel"
BASE=$(cd "$CACHE_DIR/distro-kernel" && pwd -P)

# ---------------------------------------------------------------- resolving (local, no network)
# apt_show PKG...: the candidate stanzas of the packages apt's lists know (the others are left out).
apt_show() { apt-cache show --no-all-versions "$@" 2>/dev/null || true; }

# resolve: set KPKG, KVER, KREL, BBVER, RECIPE, OUT_DIR, VMLINUZ; false when the lists lack them.
# The metapackage pins its kernel package, "Depends: linux-image-X-cloud-amd64 (= VERSION)".
resolve() {
    local dep
    read -r KPKG dep BBVER < <(apt_show "$META_PKG" "$BUSYBOX_PKG" | awk -v meta="$META_PKG" -v bb="$BUSYBOX_PKG" '
        $1 == "Package:" { pkg = $2 }
        pkg == meta && $1 == "Depends:" {
            n = split(substr($0, 10), alts, /[,|]/)
            for (i = 1; i <= n; i++) {
                split(alts[i], w, " ")
                if (w[1] !~ /^linux-image-.+-cloud-amd64$/) continue
                kpkg = w[1]
                if (match(alts[i], /\(= *[^ )]+/)) { kver = substr(alts[i], RSTART + 2, RLENGTH - 2); sub(/^ */, "", kver) }
                break
            }
        }
        pkg == bb && $1 == "Version:" { bbver = $2 }
        END { printf "%s %s %s\n", (kpkg ? kpkg : "-"), (kver ? kver : "-"), (bbver ? bbver : "-") }'
    ) || return 1
    [[ $KPKG != - && $BBVER != - ]] || return 1
    KVER=$dep
    if [[ $KVER == - ]]; then  # not pinned: the candidate of the kernel package
        KVER=$(apt_show "$KPKG" | awk '$1 == "Version:" { print $2; exit }')
        [[ -n $KVER ]] || return 1
    fi
    KREL=${KPKG#linux-image-}
    RECIPE=$({ cat "$SCRIPT_PATH"; printf '%s\n' "$KPKG=$KVER" "$BUSYBOX_PKG=$BBVER"; } | hash_stdin)
    OUT_DIR=$BASE/$KVER
    VMLINUZ=$OUT_DIR/vmlinuz-$KREL
}

entry_complete() {
    [[ -f $OUT_DIR/.complete && $(cat "$OUT_DIR/.complete") == "$RECIPE" \
        && -f $VMLINUZ && -f $OUT_DIR/$INITRD_NAME ]]
}

done_with() { printf '%s\n' "$VMLINUZ"; exit 0; }

# First E: line of an apt log (apt's own reason), else its last line.
apt_reason() {
    grep -m1 '^E:' "$1" 2>/dev/null || tail -n1 "$1" 2>/dev/null || true
}

apt_update() {  # apt_update LOGFILE
    [[ $EUID -eq 0 ]] || die "apt's package lists need 'apt-get update', which needs root"
    log "running apt-get update"
    # --error-on=any: an unreachable archive fails the update (otherwise only a warning).
    if ! apt-get update --error-on=any >"$1" 2>&1; then
        die "apt cannot reach the Debian archive (apt-get update failed: $(apt_reason "$1"))"
    fi
}

WORK=
cleanup() {
    [[ -n $WORK ]] || return 0
    if [[ ${VMM_KEEP_WORK:-0} == 1 ]]; then
        log "kept the work dir: $WORK"
    else
        rm -rf --one-file-system -- "$WORK"
    fi
}

# Fast path: the lists name a version that is already cached (no lock, no network).
if resolve && entry_complete; then
    log "cached: $OUT_DIR"
    done_with
fi

# ---------------------------------------------------------------- slow path
# One fetcher at a time per cache dir; a concurrent caller waits and then reuses.
exec 9>"$BASE/.lock"
if ! flock -n 9; then
    log "another run holds $BASE/.lock; waiting"
    flock 9
fi

# Leftovers of interrupted runs (we hold the lock, so nobody else is building).
for d in "$BASE"/.tmp.*; do
    if [[ -e $d ]]; then rm -rf --one-file-system -- "$d"; fi
done
WORK=$(mktemp -d "$BASE/.tmp.XXXXXX")
trap cleanup EXIT
trap 'log "interrupted; no cache entry was written"; exit 130' INT
trap 'log "interrupted; no cache entry was written"; exit 143' TERM

if ! resolve; then
    log "apt's package lists have no candidate for $META_PKG or $BUSYBOX_PKG"
    apt_update "$WORK/apt-update.log"
    resolve || die "apt has no $META_PKG or $BUSYBOX_PKG for this machine (check its sources.list)"
fi
entry_complete && done_with

# apt-get download writes to the current directory. Its output goes to a log, shown on failure
# as apt's one-line reason. A failure with lists that are present usually means they name a
# version the archive has dropped: refresh them once and resolve again.
DL=$WORK/debs
mkdir -p "$DL"
download() {
    rm -f "$DL"/*.deb
    (cd "$DL" && apt-get download "$KPKG=$KVER" "$BUSYBOX_PKG=$BBVER") >"$WORK/apt-download.log" 2>&1
}
log "downloading $KPKG $KVER and $BUSYBOX_PKG $BBVER"
if ! download; then
    log "download failed ($(apt_reason "$WORK/apt-download.log")); refreshing the package lists"
    apt_update "$WORK/apt-update.log"
    resolve || die "apt has no $META_PKG or $BUSYBOX_PKG after apt-get update"
    entry_complete && done_with
    log "downloading $KPKG $KVER and $BUSYBOX_PKG $BBVER"
    download || die "apt cannot reach the Debian archive to download $KPKG $KVER and $BUSYBOX_PKG $BBVER ($(apt_reason "$WORK/apt-download.log"))"
fi

KDEB=("$DL/${KPKG}_"*.deb)
BDEB=("$DL/${BUSYBOX_PKG}_"*.deb)
[[ -f ${KDEB[0]} && -f ${BDEB[0]} ]] || die "apt-get download left no .deb in $DL"

# ---------------------------------------------------------------- unpack
log "unpacking with dpkg-deb -x"
dpkg-deb -x "${KDEB[0]}" "$WORK/kernel"
dpkg-deb -x "${BDEB[0]}" "$WORK/busybox"
BB=$WORK/busybox/bin/busybox
[[ -x $BB ]] || die "$BUSYBOX_PKG has no bin/busybox"
[[ -f $WORK/kernel/boot/vmlinuz-$KREL && -f $WORK/kernel/boot/config-$KREL ]] \
    || die "$KPKG has no boot/vmlinuz-$KREL and boot/config-$KREL"
# A bzImage has the setup header magic "HdrS" at offset 0x202.
[[ $(od -An -c -j 514 -N 4 "$WORK/kernel/boot/vmlinuz-$KREL" | tr -d ' \n') == HdrS ]] \
    || die "boot/vmlinuz-$KREL in $KPKG is not a bzImage"

STAGE=$WORK/out
mkdir -p "$STAGE"
cp "$WORK/kernel/boot/vmlinuz-$KREL" "$WORK/kernel/boot/config-$KREL" "$STAGE/"

# ---------------------------------------------------------------- probe initramfs
MODDIR=$WORK/kernel/lib/modules/$KREL
[[ -d $MODDIR/kernel ]] || die "$KPKG has no lib/modules/$KREL"
# The .deb ships no modules.dep (postinst runs depmod): make one with busybox's depmod.
"$BB" depmod -b "$WORK/kernel" "$KREL"
ROOT=$WORK/initrd
mkdir -p "$ROOT"/{bin,dev,etc,mnt,proc,sys,lib/modules/"$KREL"}
cp "$BB" "$ROOT/bin/busybox"
# Each wanted module with its dependencies (a modules.dep line lists them all).
declare -A KO=()
for m in "${INITRD_MODULES[@]}"; do
    line=$(grep -m1 -E "/${m}\\.ko(\\.[a-z]+)?:" "$MODDIR/modules.dep") \
        || die "$KPKG has no module $m"
    read -ra deps <<<"${line/:/}"
    for f in "${deps[@]}"; do KO[$f]=1; done
done
for f in "${!KO[@]}"; do
    mkdir -p "$ROOT/lib/modules/$KREL/$(dirname "$f")"
    cp "$MODDIR/$f" "$ROOT/lib/modules/$KREL/$f"
done
"$BB" depmod -b "$ROOT" "$KREL"
printf '%s\n' "${INITRD_MODULES[@]}" >"$ROOT/etc/vmm-probe-modules"
cat >"$ROOT/init" <<'EOF'
#!/bin/busybox sh
# vmm's probe initramfs (scripts/fetch-distro-kernel.sh): load the distro kernel's virtio
# modules, look at the VM's disk and NIC, print one line to the console, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
modprobe -a $(cat /etc/vmm-probe-modules)
i=0
while [ ! -b /dev/vda ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
vda=no hostname=- mac=-
if [ -b /dev/vda ]; then
    vda=yes
    if mount -t ext4 -o ro /dev/vda /mnt; then
        hostname=$(cat /mnt/etc/hostname 2>/dev/null || echo -)
        umount /mnt
    fi
fi
[ -r /sys/class/net/eth0/address ] && mac=$(cat /sys/class/net/eth0/address)
modules=$(cut -d' ' -f1 /proc/modules | sort | tr '\n' ',')
echo "VMM-DISTRO-PROBE release=$(uname -r) vda=$vda hostname=${hostname:--} eth0=$mac modules=${modules%,}"
sync
poweroff -f
EOF
chmod 0755 "$ROOT/init"
log "building $INITRD_NAME (busybox and ${#KO[@]} modules: ${INITRD_MODULES[*]} and their dependencies)"
# A newc archive (what the kernel unpacks), every entry owned by root.
(cd "$ROOT" && "$BB" find . | LC_ALL=C sort | "$BB" cpio -o -H newc -R 0:0) \
    | gzip -9n >"$STAGE/$INITRD_NAME"

# ---------------------------------------------------------------- into place
cat >"$STAGE/info.txt" <<EOF
meta_package=$META_PKG
package=$KPKG
version=$KVER
release=$KREL
busybox=$BUSYBOX_PKG $BBVER
initrd=$INITRD_NAME
initrd_modules=$(printf '%s\n' "${!KO[@]}" | LC_ALL=C sort | tr '\n' ' ')
recipe=$RECIPE
fetched=$(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF
printf '%s\n' "$RECIPE" >"$STAGE/.complete"
rm -rf --one-file-system -- "$OUT_DIR"
mv -T "$STAGE" "$OUT_DIR"
log "cached $KPKG $KVER in $OUT_DIR"
printf '%s\n' "$VMLINUZ"
