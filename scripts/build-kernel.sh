#!/usr/bin/env bash
# Build a Firecracker-compatible guest kernel and import it into vmm: a thin wrapper over
# 'vmm kernel build' (the recipe is vmm.guest.kernelbuild).
#
# Usage: sudo scripts/build-kernel.sh --name NAME [--version 5.10|6.1|6.6]
#            [--source TARBALL|DIR] [--config-fragment FILE] [-j N] [-f]
# 6.1 defaults to Debian's /usr/src/linux-source-6.1.tar.xz (apt-get install linux-source-6.1
# when missing); other versions need --source. See 'vmm kernel build --help'.
set -euo pipefail
REPO_ROOT=$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
fi
if [[ -x $REPO_ROOT/.venv/bin/python ]]; then
    exec env PYTHONPATH="$REPO_ROOT/src${PYTHONPATH:+:$PYTHONPATH}" "$REPO_ROOT/.venv/bin/python" -m vmm kernel build "$@"
elif command -v vmm >/dev/null; then
    exec vmm kernel build "$@"
else
    exec env PYTHONPATH="$REPO_ROOT/src${PYTHONPATH:+:$PYTHONPATH}" python3 -m vmm kernel build "$@"
fi
