#!/usr/bin/env bash
# Installs vmm.service and enables it: VMs start when the host boots (the ones flagged with
# `vmm create --autostart` / `vmm autostart enable NAME`, or with autostart_policy "running"
# exactly the ones running at shutdown) and are stopped gracefully, in parallel, at shutdown.
#
#   sudo scripts/install-service.sh [--prefix DIR] [--unit-dir DIR] [--no-enable]
#
# The unit runs PREFIX/bin/vmm (as installed by scripts/install.sh) with the config of the user
# running sudo. It is written by `vmm service install`; `vmm service status` checks it.
set -euo pipefail

PREFIX="/usr/local"
PASS=()
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a value"; PREFIX="$2"; shift 2 ;;
    --prefix=*) PREFIX="${1#*=}"; shift ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) PASS+=("$1"); shift ;;
  esac
done

VMM="$PREFIX/bin/vmm"
if [ ! -x "$VMM" ]; then
  VMM="$(command -v vmm || true)"
  [ -n "$VMM" ] || die "vmm is not installed in $PREFIX/bin (run scripts/install.sh first, or pass --prefix)"
fi
case " ${PASS[*]:-} " in
  *" --unit-dir"*) ;;
  *) [ "$(id -u)" = 0 ] || die "installing a systemd unit needs root: try sudo $0" ;;
esac
exec "$VMM" service install --vmm "$VMM" ${PASS[@]+"${PASS[@]}"}
