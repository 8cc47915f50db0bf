# Shared by scripts/test.sh and scripts/demo.sh: host packages and the project venv.
# shellcheck shell=bash

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# Packages from src/vmm/host/tools.txt (one line per program the code runs): "run" ones
# for vmm and the demo, "test" ones for the test suite as well.
host_packages() {  # host_packages run|test
  local want=$1
  awk -v want="$want" '!/^#/ && NF >= 3 && $2 != "-" && ($3 == "run" || ($3 == "test" && want == "test")) { print $2 }' \
    "$REPO/src/vmm/host/tools.txt" | sort -u
}
mapfile -t RUN_PACKAGES < <(host_packages run)
mapfile -t TEST_PACKAGES < <(host_packages test)

# Runs a noisy command with its output in a log that is shown only when it fails.
quietly() {
  local out
  out="$(mktemp)"
  if ! "$@" >"$out" 2>&1; then
    cat "$out" >&2
    rm -f "$out"
    die "failed: $*"
  fi
  rm -f "$out"
}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

require_root() {
  [ "$(id -u)" = 0 ] || die "$(basename "$0") must run as root (it creates network namespaces and boots VMs): try sudo $0"
}

apt_install_missing() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} by hand"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The venv uses Debian's python3 (fast start-up; the CLI latency is part of the product).
ensure_venv() {
  local venv="$REPO/.venv" stamp
  stamp="$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)"
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
    log "creating the Python environment in $venv"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    quietly "$venv/bin/pip" install --upgrade pip
    quietly "$venv/bin/pip" install -e "$REPO[test]"
    echo "$stamp" > "$venv/.stamp"
  else
    # Cheap: re-links the editable install if the tree moved.
    quietly "$venv/bin/pip" install --no-deps -e "$REPO"
  fi
}

# Builds (once, cached) the test guest: prints the directory holding vmlinux + rootfs.ext4.
ensure_guest() {
  "$REPO/scripts/build-test-guest.sh" | tail -n 1
}
