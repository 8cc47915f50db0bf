#!/usr/bin/env bash
# The main job, end to end, on a bare Debian/Ubuntu machine:
# install what is needed, build a guest (kernel + rootfs) if none is cached, create a VM,
# start it, run a command in it over `vmm ssh`, show the output, stop and delete it.
#
# Safe on any machine: it runs inside a network namespace it creates (the bridge, TAP and
# firewall rules live there, and the guest has no route out of it), with a private config and
# data dir, and removes all of it at the end.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$REPO"

require_root
apt_install_missing "${RUN_PACKAGES[@]}"
ensure_venv
VMM="$REPO/.venv/bin/vmm"

log "building the guest kernel and rootfs (cached after the first run; the first takes ~15 min, its progress below)"
GUEST="$(ensure_guest)"

NS="vmm-demo-$$"
WORK="$(mktemp -d /tmp/vmm-demo.XXXXXX)"
export VMM_CONFIG="$WORK/config.json" VMM_DATA_DIR="$WORK/data"
cleanup() {
  set +e
  ip netns exec "$NS" "$VMM" delete -f demo >/dev/null 2>&1
  for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
  ip netns del "$NS" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

ip netns add "$NS"
ip -n "$NS" link set lo up

ssh-keygen -q -t ed25519 -N "" -f "$WORK/id_ed25519" -C vmm-demo
# QEMU engine (the Firecracker binary is optional); accel "auto" picks KVM when it can run
# guests and TCG otherwise.
cat > "$VMM_CONFIG" <<JSON
{ "engine": "qemu", "accel": "auto" }
JSON

# Each step is shown as the command a user would type; the ones that touch the network run in
# the demo's namespace.
step() { printf '\n$ vmm %s\n' "$*"; "$VMM" "$@"; }
step_ns() { printf '\n$ vmm %s\n' "$*"; ip netns exec "$NS" "$VMM" "$@"; }
step kernel import "$GUEST/vmlinux" --name default
step image import "$GUEST/rootfs.ext4" --name default
step create demo --cpus 1 --memory 512 --disk 2048 --ssh-key "$WORK/id_ed25519.pub"
step_ns start demo
step_ns list
step_ns ssh demo -- 'echo "hello from $(hostname)"; uname -srm; ip -4 -br addr show eth0; df -h / | tail -1'
step_ns stop demo
step_ns delete demo
printf '\nDemo finished: the VM booted, answered over SSH, and was stopped and deleted.\n'
