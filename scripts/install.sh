#!/usr/bin/env bash
# Installs vmm (into its own venv), Firecracker + jailer, and the host tools vmm calls.
#
#   sudo scripts/install.sh                        # from a checkout: installs that checkout
#   curl -fsSL URL/install.sh | sudo bash -s -- --source URL-OF-A-VMM-TARBALL
#
# Run with --help for every option. Environment:
#   VMM_FIRECRACKER_BASE_URL  where releases live (default: GitHub releases of firecracker-microvm)
#   VMM_INSTALL_ARCH          override the detected architecture (x86_64 or aarch64)
#   VMM_INSTALL_PYTHON        the Python (>= 3.11) the venv is made from (default /usr/bin/python3)
set -euo pipefail

FC_DEFAULT_VERSION="1.11.0"
FC_BASE_URL="${VMM_FIRECRACKER_BASE_URL:-https://github.com/firecracker-microvm/firecracker/releases/download}"
FC_BASE_URL="${FC_BASE_URL%/}"
DEBIAN_WHEELS="/usr/share/python-wheels"

PREFIX="/usr/local"
FC_VERSION="$FC_DEFAULT_VERSION"
FC_TARBALL=""
SOURCE=""
WITH_VMM=1
WITH_FC=1
WITH_DEPS=1
WITH_QEMU=0
WITH_WEB=0

PROG="install.sh"
WORK=""
CLEANUP_FILES=()

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
usage_error() { printf 'error: %s (see %s --help)\n' "$*" "$PROG" >&2; exit 2; }

usage() {
  cat <<EOF
Usage: sudo $PROG [OPTIONS]

Installs vmm into its own venv (PREFIX/lib/vmm/venv, linked as PREFIX/bin/vmm), Firecracker and
its jailer (PREFIX/bin/firecracker, PREFIX/bin/jailer, checksum-verified) and, with apt-get, the
host tools vmm calls. Running it again upgrades in place.

Options:
  --prefix DIR             install under DIR (default: /usr/local)
  --version V              Firecracker version to install (default: $FC_DEFAULT_VERSION)
  --source DIR|FILE|URL    vmm sources: a checkout, or a source tarball (local file or URL).
                           Default: the checkout this script is in. Required when the script
                           is piped from curl.
  --firecracker-tarball F  use a release tarball downloaded by hand (F.sha256.txt must be next
                           to it) instead of downloading one
  --no-firecracker         do not install Firecracker (use the QEMU engine: vmm create --engine qemu)
  --no-vmm                 do not install vmm itself (only Firecracker and host packages)
  --no-deps                do not install host packages with apt-get
  --with-qemu              also install qemu-system-x86 (the QEMU engine)
  --with-web               also install what "vmm serve" needs (vmm's "web" extra: Starlette,
                           uvicorn, Jinja2, wsproto; fetched from the package index)
  -h, --help               show this help

Environment:
  VMM_FIRECRACKER_BASE_URL  release base URL (default: $FC_BASE_URL)
  VMM_INSTALL_ARCH          override the detected architecture (x86_64 or aarch64)
  VMM_INSTALL_PYTHON        Python >= 3.11 to make the venv from (default: /usr/bin/python3)
EOF
}

cleanup() {
  local f
  for f in "${CLEANUP_FILES[@]}"; do
    rm -f -- "$f"
  done
  if [ -n "$WORK" ]; then
    rm -rf -- "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

need_value() {
  { [ "$#" -ge 2 ] && [ -n "$2" ] && [[ "$2" != -* ]]; } || usage_error "$1 needs a value"
}

parse_args() {
  while [ "$#" -gt 0 ]; do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --prefix) need_value "$@"; PREFIX="$2"; shift 2 ;;
      --prefix=*) PREFIX="${1#*=}"; shift ;;
      --version | --firecracker-version) need_value "$@"; FC_VERSION="$2"; shift 2 ;;
      --version=* | --firecracker-version=*) FC_VERSION="${1#*=}"; shift ;;
      --source) need_value "$@"; SOURCE="$2"; shift 2 ;;
      --source=*) SOURCE="${1#*=}"; shift ;;
      --firecracker-tarball) need_value "$@"; FC_TARBALL="$2"; shift 2 ;;
      --firecracker-tarball=*) FC_TARBALL="${1#*=}"; shift ;;
      --no-firecracker) WITH_FC=0; shift ;;
      --no-vmm) WITH_VMM=0; shift ;;
      --no-deps) WITH_DEPS=0; shift ;;
      --with-qemu) WITH_QEMU=1; shift ;;
      --with-web) WITH_WEB=1; shift ;;
      *) usage_error "unknown option: $1" ;;
    esac
  done
  [ -n "$PREFIX" ] || usage_error "--prefix must not be empty"
  PREFIX="$(realpath -m -- "$PREFIX")"
  FC_VERSION="${FC_VERSION#v}"
  [[ "$FC_VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] \
    || usage_error "--version $FC_VERSION: expected a Firecracker release like $FC_DEFAULT_VERSION"
  if [ "$WITH_VMM" = 0 ] && [ "$WITH_FC" = 0 ] && [ "$WITH_DEPS" = 0 ]; then
    usage_error "--no-vmm, --no-firecracker and --no-deps together leave nothing to install"
  fi
}

is_url() {
  case "$1" in
    http://* | https://* | ftp://*) return 0 ;;
    *) return 1 ;;
  esac
}

is_vmm_source() {
  [ -f "$1/pyproject.toml" ] && grep -Eq '^name *= *"vmm"' "$1/pyproject.toml"
}

have() { command -v "$1" >/dev/null 2>&1; }

# download URL DEST: curl, or wget when curl is missing. On failure prints one line saying why.
download() {
  local url="$1" dest="$2" out
  if have curl; then
    if ! out="$(curl -fsSL --connect-timeout 15 --retry 2 -o "$dest" -- "$url" 2>&1)"; then
      printf '%s\n' "${out##*$'\n'}"
      return 1
    fi
  elif have wget; then
    if ! out="$(wget -nv --tries=2 --timeout=15 -O "$dest" -- "$url" 2>&1)"; then
      out="$(printf '%s\n' "$out" | grep -v '^ *$' | tail -n 1)"
      out="${out:-failed}"
      case "$out" in wget:*) ;; *) out="wget: $out" ;; esac
      printf '%s\n' "$out"
      return 1
    fi
  else
    printf 'neither curl nor wget is installed\n'
    return 1
  fi
}

pick_python() {
  if [ -n "${VMM_INSTALL_PYTHON:-}" ]; then
    PY="$VMM_INSTALL_PYTHON"
  elif [ -x /usr/bin/python3 ]; then
    PY=/usr/bin/python3  # the distribution's Python, not whatever a user's PATH shims point at
  else
    PY="$(command -v python3 || true)"
  fi
}

check_python() {
  pick_python
  { [ -n "$PY" ] && "$PY" -c '' >/dev/null 2>&1; } \
    || die "python3 not found: apt-get install python3 python3-venv (or run without --no-deps)"
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "vmm needs Python >= 3.11 but $PY is $("$PY" -c 'import platform; print(platform.python_version())'): install a newer python3 or set VMM_INSTALL_PYTHON"
  "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 \
    || die "$PY cannot create venvs: apt-get install python3-venv (or run without --no-deps)"
}

# ---------------------------------------------------------------------------------------------
# 1. Checks: nothing is changed before all of them pass.

preflight() {
  [ "$(id -u)" = 0 ] || die "$PROG installs into $PREFIX and needs root: run it with sudo"

  local machine="${VMM_INSTALL_ARCH:-$(uname -m)}"
  case "$machine" in
    x86_64 | amd64) ARCH=x86_64 ;;
    aarch64 | arm64) ARCH=aarch64 ;;
    *) die "unsupported architecture: $machine (Firecracker and vmm support x86_64 and aarch64)" ;;
  esac

  if [ ! -e /dev/kvm ]; then
    warn "/dev/kvm not found: Firecracker needs KVM; the QEMU engine still works without it (vmm create --engine qemu, slower TCG emulation)"
  fi

  if [ "$WITH_FC" = 1 ] && [[ "$FC_VERSION" != 1.11.* ]]; then
    warn "vmm is written against the Firecracker v1.11 API; v$FC_VERSION may not work with it"
  fi

  if [ "$WITH_FC" = 1 ] && [ -n "$FC_TARBALL" ]; then
    [ -f "$FC_TARBALL" ] || die "--firecracker-tarball $FC_TARBALL: no such file"
    [ -f "$FC_TARBALL.sha256.txt" ] \
      || die "--firecracker-tarball: $FC_TARBALL.sha256.txt is missing: download it next to the tarball"
  fi

  # Where vmm comes from: --source, else the checkout this script lives in.
  SRC_KIND=""
  if [ "$WITH_VMM" = 1 ]; then
    if [ -n "$SOURCE" ]; then
      if is_url "$SOURCE"; then
        SRC_KIND=url
      elif [ -d "$SOURCE" ]; then
        SOURCE="$(cd "$SOURCE" && pwd)"
        is_vmm_source "$SOURCE" || die "--source $SOURCE: not a vmm source tree (no pyproject.toml naming vmm)"
        SRC_KIND=dir
      elif [ -f "$SOURCE" ]; then
        SOURCE="$(realpath -- "$SOURCE")"
        SRC_KIND=tarball
      else
        die "--source $SOURCE: not a directory, a tarball or an http(s) URL"
      fi
    else
      local self="${BASH_SOURCE[0]:-}" dir
      if [ -n "$self" ] && [ -f "$self" ]; then
        dir="$(cd "$(dirname "$self")/.." && pwd)"
        if is_vmm_source "$dir"; then
          SOURCE="$dir"
          SRC_KIND=dir
        fi
      fi
      [ -n "$SRC_KIND" ] \
        || die "not run from a vmm checkout (piped from curl?): pass --source DIR|URL (a vmm checkout or source tarball), or --no-vmm to install only Firecracker"
    fi
  fi

  NEED_DOWNLOADER=0
  if { [ "$WITH_FC" = 1 ] && [ -z "$FC_TARBALL" ]; } || [ "$SRC_KIND" = url ]; then
    NEED_DOWNLOADER=1
  fi
  INSTALL_CURL=0
  if [ "$NEED_DOWNLOADER" = 1 ] && ! have curl && ! have wget; then
    if [ "$WITH_DEPS" = 1 ] && have apt-get; then
      INSTALL_CURL=1
    else
      die "neither curl nor wget is installed: apt-get install curl, or skip the download with --no-firecracker"
    fi
  fi

  if [ "$WITH_DEPS" = 0 ]; then
    { have tar && have sha256sum; } || die "tar and sha256sum are needed: apt-get install tar coreutils"
    if [ "$WITH_VMM" = 1 ]; then
      check_python
    fi
  fi
}

# ---------------------------------------------------------------------------------------------
# 2. Host packages.

DEPS_INSTALLED=()

install_host_packages() {
  local pkgs=(iproute2 nftables e2fsprogs e2tools openssh-client squashfs-tools python3 python3-venv)
  local missing=() p
  [ "$WITH_QEMU" = 1 ] && pkgs+=(qemu-system-x86)
  [ "$INSTALL_CURL" = 1 ] && pkgs+=(curl ca-certificates)
  have apt-get || die "apt-get not found: install ${pkgs[*]} by hand and run again with --no-deps"
  # Debian's wheel of `wheel` lets pip build vmm without reaching PyPI.
  if [ "$WITH_VMM" = 1 ] && apt-cache show python3-wheel-whl >/dev/null 2>&1; then
    pkgs+=(python3-wheel-whl)
  fi
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "host packages: all present"
    return 0
  fi
  log "installing host packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed: check the network and /etc/apt/sources.list, or use --no-deps"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed: run it by hand to see why, or use --no-deps"
  DEPS_INSTALLED=("${missing[@]}")
}

# ---------------------------------------------------------------------------------------------
# 3. Fetch and verify everything before changing anything under PREFIX.

fetch_firecracker() {
  local name="firecracker-v${FC_VERSION}-${ARCH}"
  local tgz="$name.tgz" url="$FC_BASE_URL/v$FC_VERSION/$name.tgz" why
  local hint="fetch it and its .sha256.txt by hand and pass --firecracker-tarball FILE, or skip Firecracker with --no-firecracker (QEMU engine: --with-qemu, vmm create --engine qemu)"
  FC_TGZ="$WORK/$tgz"
  if [ -n "$FC_TARBALL" ]; then
    log "using $FC_TARBALL"
    cp -- "$FC_TARBALL" "$FC_TGZ"
    cp -- "$FC_TARBALL.sha256.txt" "$FC_TGZ.sha256.txt"
    url="$FC_TARBALL"
  else
    log "downloading $url"
    why="$(download "$url" "$FC_TGZ")" || die "could not download $url ($why): check the network/proxy, or $hint"
    why="$(download "$url.sha256.txt" "$FC_TGZ.sha256.txt")" \
      || die "could not download $url.sha256.txt ($why): check the network/proxy, or $hint"
  fi

  local expected listed actual
  read -r expected listed _ < "$FC_TGZ.sha256.txt" || true
  expected="$(printf '%s' "${expected:-}" | tr 'A-F' 'a-f')"
  [[ "$expected" =~ ^[0-9a-f]{64}$ ]] \
    || die "checksum file $url.sha256.txt is malformed (expected '<sha256>  $tgz'): nothing was installed"
  listed="${listed#\*}"
  if [ -n "$listed" ] && [ "$listed" != "$tgz" ] && [ -z "$FC_TARBALL" ]; then
    die "checksum file $url.sha256.txt is for $listed, not $tgz: nothing was installed"
  fi
  actual="$(sha256sum -- "$FC_TGZ" | cut -d' ' -f1)"
  [ "$actual" = "$expected" ] \
    || die "checksum mismatch for $tgz: expected $expected, got $actual (corrupted or tampered download): nothing was installed"
  log "sha256 verified: $actual"

  local rel="release-v${FC_VERSION}-${ARCH}"
  FC_BIN="$WORK/x/$rel/firecracker-v${FC_VERSION}-${ARCH}"
  JAILER_BIN="$WORK/x/$rel/jailer-v${FC_VERSION}-${ARCH}"
  mkdir -p "$WORK/x"
  tar -xzf "$FC_TGZ" -C "$WORK/x" --no-same-owner --no-same-permissions \
    "$rel/firecracker-v${FC_VERSION}-${ARCH}" "$rel/jailer-v${FC_VERSION}-${ARCH}" >/dev/null 2>&1 \
    || die "$tgz does not hold $rel/firecracker-v${FC_VERSION}-${ARCH} and $rel/jailer-v${FC_VERSION}-${ARCH}: is it a Firecracker release?"
  local f
  for f in "$FC_BIN" "$JAILER_BIN"; do
    { [ -f "$f" ] && [ ! -L "$f" ]; } || die "$tgz: ${f#"$WORK/x/"} is not a regular file"
  done
}

fetch_source() {
  case "$SRC_KIND" in
    dir)
      # Build from a copy, so pip's build/ and *.egg-info never land in the checkout.
      mkdir -p "$WORK/src"
      tar -C "$SOURCE" -cf - \
        --exclude=./.git --exclude=./.venv --exclude=./venv --exclude=./build --exclude=./dist \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=.mypy_cache --exclude=.pytest_cache \
        --exclude=.ruff_cache --exclude=.benchmarks --exclude=.tox . \
        | tar -C "$WORK/src" -xf - --no-same-owner \
        || die "could not copy $SOURCE"
      SRC_DIR="$WORK/src"
      ;;
    url | tarball)
      local archive="$WORK/source.tar" why
      if [ "$SRC_KIND" = url ]; then
        log "downloading $SOURCE"
        why="$(download "$SOURCE" "$archive")" \
          || die "could not download $SOURCE ($why): check the URL and the network, or pass --source DIR with a checkout"
      else
        cp -- "$SOURCE" "$archive"
      fi
      mkdir -p "$WORK/srcx"
      tar -xf "$archive" -C "$WORK/srcx" --no-same-owner >/dev/null 2>&1 \
        || die "--source $SOURCE is not a tarball tar can read"
      SRC_DIR=""
      if is_vmm_source "$WORK/srcx"; then
        SRC_DIR="$WORK/srcx"
      else
        local d
        for d in "$WORK"/srcx/*/; do
          if is_vmm_source "${d%/}"; then
            SRC_DIR="${d%/}"
            break
          fi
        done
      fi
      [ -n "$SRC_DIR" ] || die "--source $SOURCE holds no vmm source tree (no pyproject.toml naming vmm)"
      ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# 4. Install.

venv_pip() {
  "$VENV/bin/python" -m pip --disable-pip-version-check --no-input --no-cache-dir "$@"
}

# True when the venv can build vmm without fetching a build backend: setuptools >= 61 and either
# the `wheel` package or setuptools >= 70.1 (which has bdist_wheel built in).
venv_can_build_offline() {
  "$VENV/bin/python" - <<'EOF' >/dev/null 2>&1
import importlib.util, sys
import setuptools
v = tuple(int(x) for x in setuptools.__version__.split(".")[:2])
sys.exit(0 if v >= (61, 0) and (v >= (70, 1) or importlib.util.find_spec("wheel")) else 1)
EOF
}

install_vmm() {
  VENV="$PREFIX/lib/vmm/venv"
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
    log "upgrading vmm in $VENV"
  else
    if [ -e "$VENV" ]; then
      [ -f "$VENV/pyvenv.cfg" ] || die "$VENV exists and is not a venv: move it away and run again"
      log "recreating the broken venv $VENV"
      rm -rf -- "$VENV"
    else
      log "creating the venv $VENV"
    fi
    mkdir -p "$PREFIX/lib/vmm"
    "$PY" -m venv "$VENV" || die "$PY -m venv $VENV failed: apt-get install python3-venv"
  fi

  if ! venv_can_build_offline && [ -d "$DEBIAN_WHEELS" ]; then
    venv_pip install -q --no-index --find-links "$DEBIAN_WHEELS" setuptools wheel >/dev/null 2>&1 || true
  fi
  local isolation=()
  if venv_can_build_offline; then
    isolation=(--no-build-isolation)
  else
    log "pip will fetch setuptools and wheel from the package index to build vmm"
  fi
  log "pip install vmm (from $SOURCE)"
  venv_pip install -q --upgrade "${isolation[@]}" "$SRC_DIR" \
    || die "pip could not install vmm from $SOURCE (see pip's output above)"
  if [ "$WITH_WEB" = 1 ]; then
    log "pip install vmm's web extra (vmm serve) from the package index"
    venv_pip install -q --upgrade "${isolation[@]}" "${SRC_DIR}[web]" \
      || die "pip could not install vmm's web extra (it needs the package index; see pip's output above)"
  fi
  VMM_VERSION="$("$VENV/bin/vmm" --version 2>&1)" \
    || die "$VENV/bin/vmm does not run after installing: $VMM_VERSION"

  mkdir -p "$PREFIX/bin"
  local link="$PREFIX/bin/vmm" tmp="$PREFIX/bin/.vmm.install.$$"
  if [ -e "$link" ] && [ ! -L "$link" ]; then
    warn "replacing $link (a regular file, perhaps from an earlier pip install) with a link to the venv"
  fi
  CLEANUP_FILES+=("$tmp")
  ln -sfn -- "$VENV/bin/vmm" "$tmp"
  mv -fT -- "$tmp" "$link"
}

FC_REPORT=""

install_firecracker() {
  mkdir -p "$PREFIX/bin"
  local fc_tmp="$PREFIX/bin/.firecracker.install.$$" jl_tmp="$PREFIX/bin/.jailer.install.$$"
  CLEANUP_FILES+=("$fc_tmp" "$jl_tmp")
  install -m 0755 -- "$FC_BIN" "$fc_tmp"
  install -m 0755 -- "$JAILER_BIN" "$jl_tmp"

  # Check the binary where it will live (same file system, same mount options) before the swap.
  local out rc=0 line
  out="$(timeout 10 "$fc_tmp" --version 2>&1)" || rc=$?
  line="$(printf '%s\n' "$out" | grep -v '^ *$' | head -n 1)"
  if [ "$rc" = 0 ]; then
    case "$line" in
      *"v$FC_VERSION"*) FC_REPORT="$line" ;;
      *) die "the downloaded firecracker reports '${line:-nothing}', not v$FC_VERSION: nothing was installed" ;;
    esac
  else
    warn "could not run firecracker --version (exit $rc: a binary for another architecture, or $PREFIX/bin mounted noexec?): installed without that check"
    FC_REPORT="v$FC_VERSION (not run)"
  fi

  mv -f -- "$fc_tmp" "$PREFIX/bin/firecracker"
  mv -f -- "$jl_tmp" "$PREFIX/bin/jailer"
}

summary() {
  echo
  echo "vmm install: done"
  if [ "$WITH_VMM" = 1 ]; then
    echo "  vmm          $PREFIX/bin/vmm -> $VENV/bin/vmm ($VMM_VERSION)"
  fi
  if [ "$WITH_FC" = 1 ]; then
    echo "  firecracker  $PREFIX/bin/firecracker ($FC_REPORT)"
    echo "  jailer       $PREFIX/bin/jailer"
  fi
  if [ "$WITH_DEPS" = 0 ]; then
    echo "  host packages: skipped (--no-deps)"
  elif [ "${#DEPS_INSTALLED[@]}" -gt 0 ]; then
    echo "  host packages: installed ${DEPS_INSTALLED[*]}"
  else
    echo "  host packages: already present"
  fi
  echo
  echo "Next steps:"
  if [ "$WITH_VMM" = 1 ]; then
    case ":$PATH:" in
      *":$PREFIX/bin:"*) ;;
      *) echo "  export PATH=\"$PREFIX/bin:\$PATH\"   # $PREFIX/bin is not on PATH" ;;
    esac
    echo "  vmm config init     # as your user: writes ~/.config/vmm/config.json"
    echo "  vmm version         # vmm and the engines it finds"
  fi
  if [ "$WITH_FC" = 1 ] && [ "$PREFIX" != /usr/local ]; then
    echo "  set \"firecracker_bin\": \"$PREFIX/bin/firecracker\" in the config (vmm looks on PATH and in /usr/local/bin)"
  fi
  if [ ! -e /dev/kvm ]; then
    echo "  no /dev/kvm here: create VMs with --engine qemu (install QEMU with --with-qemu)"
  fi
}

main() {
  parse_args "$@"
  preflight
  if [ "$WITH_DEPS" = 1 ]; then
    install_host_packages
    if [ "$WITH_VMM" = 1 ]; then
      check_python
    fi
  fi
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/vmm-install.XXXXXX")"
  if [ "$WITH_FC" = 1 ]; then
    fetch_firecracker
  fi
  if [ "$WITH_VMM" = 1 ]; then
    fetch_source
    install_vmm
  fi
  if [ "$WITH_FC" = 1 ]; then
    install_firecracker
  fi
  summary
}

main "$@"
