#!/usr/bin/env bash
# Installs what the tests need (apt + pip), builds the test guest once (cached), then runs
# lint, type checks and the whole test suite: unit, integration (network namespaces, real
# processes, real ext4) and e2e (real VMs booted through the CLI under QEMU).
#
#   sudo scripts/test.sh                 # everything; a skipped test fails the run
#   sudo scripts/test.sh -m unit         # extra arguments go to pytest
#   VMM_TEST_STRICT=0 scripts/test.sh    # allow skips (e.g. without root)
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$REPO"

require_root
apt_install_missing "${TEST_PACKAGES[@]}"
ensure_venv

log "building the test guest (cached after the first run)"
VMM_TEST_GUEST="$(ensure_guest)"
export VMM_TEST_GUEST
[ -f "$VMM_TEST_GUEST/vmlinux" ] && [ -f "$VMM_TEST_GUEST/rootfs.ext4" ] \
  || die "the test guest was not built ($VMM_TEST_GUEST)"

log "fetching Debian's cloud kernel (a real distro bzImage; cached)"
VMM_TEST_BZIMAGE="$(bash "$REPO/scripts/fetch-distro-kernel.sh" | tail -n 1)"
export VMM_TEST_BZIMAGE

log "ruff"
.venv/bin/ruff check src tests
log "mypy"
.venv/bin/mypy

export VMM_TEST_STRICT="${VMM_TEST_STRICT:-1}"
log "pytest"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
