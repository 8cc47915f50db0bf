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

# Runs a noisy command (apt-get, pip) with its output in a log file: when it fails, the log's
# last 40 lines are shown and the log is kept; otherwise nothing is shown.
quietly() {
  local out
  out="$(mktemp /tmp/vmm-output.XXXXXX)"
  if ! "$@" >"$out" 2>&1 </dev/null; then
    tail -n 40 "$out" >&2
    die "failed: $* (its whole output: $out)"
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
  quietly apt-get update
  quietly apt-get install -y --no-install-recommends "${missing[@]}"
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
    quietly "$venv/bin/pip" install -e "${REPO}[test,web]"  # web: vmm serve and its tests
    echo "$stamp" > "$venv/.stamp"
  else
    # Cheap: re-links the editable install if the tree moved.
    quietly "$venv/bin/pip" install --no-deps -e "$REPO"
  fi
}

# Builds (once, cached) the test guest: prints the directory holding vmlinux + rootfs.ext4.
# The build script's own lines are shown as they come; what the tools it runs print (apt-get,
# dpkg) goes to a log that is shown (its tail) only when the build fails. While the kernel
# compiles or debootstrap runs, a status line follows their log (see follow_guest_build).
ensure_guest() {
  local out err fd follower rc=0 tty=0
  [ -t 2 ] && tty=1
  out="$(mktemp)"
  err="$(mktemp /tmp/vmm-guest-build.XXXXXX)"
  exec {fd}> >(follow_guest_build "$err" "$tty" >&2)
  follower=$!
  "$REPO/scripts/build-test-guest.sh" >"$out" 2>&"$fd" || rc=$?
  exec {fd}>&-
  wait "$follower" || true  # its status line is erased before anything else is printed
  if ((rc != 0)); then
    rm -f "$out"
    if [ "$rc" = 130 ] || [ "$rc" = 143 ]; then die "interrupted while building the guest"; fi
    tail -n 40 "$err" >&2
    die "building the guest failed (exit $rc); the build's whole output: $err"
  fi
  tail -n 1 "$out"
  rm -f "$out" "$err"
}

# follow_guest_build LOG TTY: reads scripts/build-test-guest.sh's stderr. Its own lines
# ("[build-test-guest] ...") are shown; every line goes to LOG. While a step writes a log of
# its own ("... log: FILE)"), one status line follows that log: the step, the time it has
# taken, objects compiled (kernel) and its last line; rewritten in place every second on a
# terminal (TTY=1, cut to 79 columns), printed every 30 s elsewhere.
follow_guest_build() {
  local log=$1 tty=$2 chunk line partial="" step="" steplog="" start=0 shown=0 said=$SECONDS
  local drawn=-1 status rc
  local step_re='^\[build-test-guest\] ([a-z]+): .*log: ([^)]+)\)$'
  trap '' INT  # Ctrl-C stops the build; this reads on until the build script has exited
  while :; do
    if IFS= read -r -t 1 chunk; then
      line=$partial$chunk
      partial=""
      printf '%s\n' "$line" >>"$log"
      if [[ $line == "[build-test-guest] "* ]]; then
        if ((shown)); then printf '\r\033[K'; shown=0; fi
        printf '%s\n' "$line"
        if [[ $line =~ $step_re ]]; then
          step=${BASH_REMATCH[1]} steplog=${BASH_REMATCH[2]} start=$SECONDS
        else
          steplog=""  # the script speaks again: the step is over
        fi
      fi
    else
      rc=$?
      if ((rc <= 128)); then  # end of input: the build script has exited
        [ -n "$partial$chunk" ] && printf '%s\n' "$partial$chunk" >>"$log"
        break
      fi
      partial+=$chunk  # read timed out in the middle of a line
    fi
    [[ -n $steplog && -f $steplog && $SECONDS != "$drawn" ]] || continue
    drawn=$SECONDS
    status="$(guest_step_status "$step" "$steplog" $((SECONDS - start)))"
    if ((tty)); then
      printf '\r\033[K%s' "${status:0:79}"  # one line on an 80-column terminal
      shown=1
    elif ((SECONDS - said >= 30)); then
      printf '%s\n' "$status"
      said=$SECONDS
    fi
  done
  if ((shown)); then printf '\r\033[K'; fi
}

# guest_step_status STEP LOG SECONDS: one line on a build step in progress, from its log.
guest_step_status() {
  local step=$1 file=$2 secs=$3 last objects
  last="$(tail -n 1 "$file" 2>/dev/null | tr -s ' \t' ' ')"
  last=${last# }
  printf '    %s: %d:%02d' "$step" $((secs / 60)) $((secs % 60))
  if [[ $step == kernel ]]; then
    objects=$(grep -cE '^ +(CC|AS|HOSTCC) +[^ ]+\.o$' "$file" 2>/dev/null || true)
    printf ', %s objects compiled' "${objects:-0}"
  fi
  printf ' | %s' "$last"
}
