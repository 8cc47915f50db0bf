#!/usr/bin/env bash
# Removes what scripts/install.sh and scripts/install-service.sh installed.
#
#   sudo scripts/uninstall.sh [--prefix DIR] [--keep-firecracker] [--purge [--yes]]
#
# 1. stops every running VM gracefully (`vmm autostop`);
# 2. disables and removes vmm.service;
# 3. removes PREFIX/bin/vmm, the venv PREFIX/lib/vmm, and PREFIX/bin/firecracker + jailer;
# 4. only with --purge, and after you type the data dir's path (or with --yes): deletes the data
#    dir (every VM disk, image and kernel). Host packages installed with apt-get are kept.
set -euo pipefail

PREFIX="/usr/local"
PURGE=0
YES=0
KEEP_FC=0
UNIT_DIR="/etc/systemd/system"

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
usage_error() { printf 'error: %s (see %s --help)\n' "$*" "$0" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) { [ $# -ge 2 ] && [ -n "$2" ]; } || usage_error "--prefix needs a value"; PREFIX="$2"; shift 2 ;;
    --prefix=*) PREFIX="${1#*=}"; shift ;;
    --unit-dir) [ $# -ge 2 ] || usage_error "--unit-dir needs a value"; UNIT_DIR="$2"; shift 2 ;;
    --purge) PURGE=1; shift ;;
    --yes|-y) YES=1; shift ;;
    --keep-firecracker) KEEP_FC=1; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage_error "unknown option $1" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "uninstalling needs root: try sudo $0"
PREFIX="$(realpath -m -- "$PREFIX")"
VMM="$PREFIX/bin/vmm"
VENV="$PREFIX/lib/vmm/venv"

DATA_DIR=""
if [ -x "$VMM" ]; then
  # Read before vmm goes away: the data dir the config (of the sudo user) names.
  DATA_DIR="$("$VMM" config show --json 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["data_dir"]["value"])' 2>/dev/null || true)"
fi

if [ "$PURGE" = 1 ]; then
  DATA_DIR="${DATA_DIR:-${VMM_DATA_DIR:-/var/lib/vmm}}"
  case "$DATA_DIR" in
    /|/bin|/boot|/dev|/etc|/home|/lib|/proc|/root|/run|/sbin|/sys|/tmp|/usr|/usr/local|/var|"")
      die "refusing to delete data dir '$DATA_DIR'" ;;
  esac
  if [ -d "$DATA_DIR" ] && [ "$YES" != 1 ]; then
    { : </dev/tty; } 2>/dev/null || die "--purge needs a confirmation: run it in a terminal, or add --yes"
    printf 'This deletes every VM disk, image and kernel in %s.\nType the path to confirm: ' "$DATA_DIR" >/dev/tty
    read -r answer </dev/tty || answer=""
    [ "$answer" = "$DATA_DIR" ] || die "not confirmed: nothing was removed"
  fi
fi

if [ -x "$VMM" ]; then
  log "stopping running VMs"
  if ! "$VMM" autostop; then
    [ "$PURGE" = 1 ] && die "some VMs did not stop: not purging their data; fix that and run again"
    warn "some VMs did not stop (see above); continuing"
  fi
  log "removing vmm.service"
  "$VMM" service uninstall --unit-dir "$UNIT_DIR" || warn "could not remove vmm.service"
else
  warn "$VMM not found: nothing to stop (is --prefix right?)"
  if [ -e "$UNIT_DIR/vmm.service" ]; then
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
      systemctl disable vmm.service || true
    fi
    rm -f -- "$UNIT_DIR/vmm.service" "$UNIT_DIR/multi-user.target.wants/vmm.service"
    log "removed $UNIT_DIR/vmm.service"
  fi
fi

if [ -L "$VMM" ] || [ -f "$VMM" ]; then
  rm -f -- "$VMM"
  log "removed $VMM"
fi
if [ -d "$PREFIX/lib/vmm" ]; then
  rm -rf -- "$PREFIX/lib/vmm"
  log "removed $PREFIX/lib/vmm"
fi
if [ "$KEEP_FC" = 0 ]; then
  for b in firecracker jailer; do
    if [ -e "$PREFIX/bin/$b" ]; then
      rm -f -- "$PREFIX/bin/$b"
      log "removed $PREFIX/bin/$b"
    fi
  done
fi

if [ "$PURGE" = 1 ]; then
  if [ -d "$DATA_DIR" ]; then
    # Never delete through a mount (a VM's host directory, a bind mount an older vmm left):
    # unmount everything below the data dir, deepest first, and never cross into another
    # filesystem (what could not be unmounted is kept, with a warning).
    findmnt -rn -o TARGET | sort -r | while read -r m; do
      case "$m" in
        "$DATA_DIR"/*) umount -l -- "$m" || warn "could not unmount $m" ;;
      esac
    done
    if rm -rf --one-file-system -- "$DATA_DIR"; then
      log "removed the data dir $DATA_DIR"
    else
      warn "some of $DATA_DIR was not removed (still mounted?)"
    fi
  else
    log "data dir $DATA_DIR does not exist"
  fi
else
  [ -n "$DATA_DIR" ] && [ -d "$DATA_DIR" ] && log "kept the data dir $DATA_DIR (delete it with --purge)"
fi
rm -rf -- /run/vmm/sandbox  # the image sandbox's uid-range locks
log "vmm is uninstalled"
