#!/usr/bin/env bash
# prmux SAN lab: a real Linux storage stack (LIO target + tcm_loop paths + dm-multipath + multipathd)
# in a QEMU TCG guest that runs the host's own binaries through a read-only 9p share of /.
#
#   lab.sh build                         install packages, fetch + unpack the Debian kernel, build the initramfs
#   lab.sh run [--paths N] -- CMD...     boot, wait for the map, run CMD in the guest, power off; exit = CMD's status
#   lab.sh start [--paths N]             boot a persistent VM (returns once the map is ready; prints its run dir)
#   lab.sh exec [--fresh] -- CMD...      run CMD in the persistent VM; stdout/stderr/exit status are CMD's
#   lab.sh stop                          power the persistent VM off (kills it if it does not go)
#   lab.sh status                        say whether the persistent VM is up, and where its run dir is
#
# Options: --name NAME (persistent instance, default "default"), --cache DIR (default <repo>/.lab-cache),
#   --timeout S (per command, default 600), --boot-timeout S (default 420), --lifetime S (persistent VM is
#   killed after S, default 7200), --idle-timeout S (persistent VM powers off after S without a request),
#   --fresh (drop guest caches first: the root share caches host files), -q (no timings on stderr).
# Exit status of run/exec: the command's (124 = its timeout expired); 125 = the lab itself failed.
# See lab/README.md for the guest layout, the request protocol and the fault helper (lab-fault).
set -euo pipefail

LAB_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd -- "$LAB_DIR/.." && pwd)
GUEST_DIR=$LAB_DIR/guest

# Bumped when the initramfs layout changes, so a cached build is redone.
BUILD_FORMAT=3
PACKAGES=(qemu-system-x86 qemu-utils multipath-tools sg3-utils busybox-static kmod cpio udev python3)
# Modules stage 1 needs before it can reach the 9p root share; their dependencies come from modprobe.
INITRD_MODULES=(virtio_pci 9pnet_virtio 9p overlay)

CACHE_DIR=${LAB_CACHE_DIR:-$REPO_DIR/.lab-cache}
NAME=${LAB_NAME:-default}
PATHS=2
BOOT_TIMEOUT=${LAB_BOOT_TIMEOUT:-420}   # host wall seconds from qemu start to a ready map (TCG on a busy 2-core host)
CMD_TIMEOUT=${LAB_CMD_TIMEOUT:-600}     # per command, enforced in the guest (timeout) and on the host
STOP_TIMEOUT=${LAB_STOP_TIMEOUT:-60}
LIFETIME=${LAB_LIFETIME:-7200}          # a persistent VM is killed after this many seconds whatever happens
IDLE_TIMEOUT=${LAB_IDLE_TIMEOUT:-0}     # a persistent VM powers itself off after this long without a request (0 = never)
FRESH=0
MEMORY=${LAB_MEMORY:-2048}
SMP=${LAB_SMP:-2}
LUN_SIZE=${LAB_LUN_SIZE:-67108864}
QUIET=0

die() { printf 'lab: %s\n' "$*" >&2; exit 125; }
note() { [[ $QUIET == 1 ]] || printf '[lab] %s\n' "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
  exit "${1:-0}"
}

# ---------------------------------------------------------------------------------------------- build

need_root() { [[ $(id -u) == 0 ]] || die "must run as root (apt-get, configfs and the 9p passthrough share need it)"; }

missing_packages() {
  local p st
  for p in "${PACKAGES[@]}"; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [[ $st == installed ]] || printf '%s\n' "$p"
  done
}

APT_UPDATED=0
apt_update_once() {
  [[ $APT_UPDATED == 1 ]] && return 0
  note "apt-get update"
  apt-get update -qq >&2 || die "apt-get update failed"
  APT_UPDATED=1
}

# The kernel package that linux-image-amd64 depends on, e.g. linux-image-6.1.0-41-amd64.
kernel_package() {
  local dep
  dep=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  if [[ -z $dep ]]; then
    apt_update_once
    dep=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  fi
  [[ -n $dep ]] || die "cannot tell which kernel linux-image-amd64 depends on"
  printf '%s\n' "$dep"
}

build_stamp() {
  # Everything the cached initramfs depends on: format, kernel, the stage-1 script and the module list.
  printf 'format=%s kpkg=%s init=%s modules=%s\n' "$BUILD_FORMAT" "$1" \
    "$(sha256sum "$GUEST_DIR/init" | cut -c1-16)" "${INITRD_MODULES[*]}"
}

cmd_build() {
  local t0 missing kpkg kver kdir dl deb tmp initrd
  t0=$(now)
  need_root
  mkdir -p "$CACHE_DIR"

  mapfile -t missing < <(missing_packages)
  if ((${#missing[@]})); then
    apt_update_once
    note "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      >"$CACHE_DIR/apt.log" 2>&1 || { tail -n 20 "$CACHE_DIR/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
  fi

  # Fast path: a complete cache whose stamp matches is reused without asking apt anything.
  if [[ -f $CACHE_DIR/build.env ]]; then
    # shellcheck disable=SC1091
    source "$CACHE_DIR/build.env"
    if [[ -f $CACHE_DIR/initrd.img && -f $CACHE_DIR/build.stamp && -f ${LAB_KERNEL:-/nonexistent} &&
          $(cat "$CACHE_DIR/build.stamp") == "$(build_stamp "$LAB_KPKG")" ]]; then
      note "build: up to date (kernel $LAB_KVER) in $(elapsed "$t0")s"
      return 0
    fi
  fi

  kpkg=$(kernel_package)
  kver=${kpkg#linux-image-}
  kdir=$CACHE_DIR/kernel/$kver
  if [[ ! -f $kdir/.complete ]]; then
    dl=$CACHE_DIR/download
    rm -rf "$dl" "$kdir"
    # apt-get download as root wants a directory the _apt sandbox user can write to.
    mkdir -p "$dl"
    chown _apt "$dl" 2>/dev/null || true
    note "apt-get download $kpkg"
    (cd "$dl" && apt-get download -qq "$kpkg" >&2) || { apt_update_once; (cd "$dl" && apt-get download -qq "$kpkg" >&2); } \
      || die "apt-get download $kpkg failed"
    deb=$(ls "$dl"/"$kpkg"_*.deb | head -n1)
    note "dpkg -x $(basename "$deb")"
    mkdir -p "$kdir"
    dpkg -x "$deb" "$kdir"
    [[ -f $kdir/boot/vmlinuz-$kver ]] || die "no vmlinuz-$kver in $deb"
    # The package ships the .ko files but no modules.dep.
    depmod -b "$kdir" "$kver"
    rm -rf "$dl"
    touch "$kdir/.complete"
  fi

  note "initramfs"
  tmp=$(mktemp -d "$CACHE_DIR/initrd.XXXXXX")
  mkdir -p "$tmp"/{bin,dev,proc,sys,newroot,lower,ovl,lab-run,lib/modules}
  cp /bin/busybox "$tmp/bin/busybox"
  ln -s busybox "$tmp/bin/sh"
  install -m 0755 "$GUEST_DIR/init" "$tmp/init"
  local m line seen=" "
  : > "$tmp/modules.order"
  for m in "${INITRD_MODULES[@]}"; do
    while read -r line; do
      set -- $line
      [[ ${1:-} == insmod && -n ${2:-} ]] || continue   # "builtin X" lines need nothing
      local ko=$2 base
      base=$(basename "$ko")
      [[ $seen == *" $base "* ]] && continue
      seen+="$base "
      cp "$ko" "$tmp/lib/modules/$base"
      printf '%s\n' "$base" >> "$tmp/modules.order"
    done < <(modprobe -d "$kdir" -S "$kver" --show-depends "$m")
  done
  (cd "$tmp" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$CACHE_DIR/initrd.img.new"
  rm -rf "$tmp"
  mv "$CACHE_DIR/initrd.img.new" "$CACHE_DIR/initrd.img"

  cat > "$CACHE_DIR/build.env" <<EOF
LAB_KPKG=$kpkg
LAB_KVER=$kver
LAB_KERNEL=$kdir/boot/vmlinuz-$kver
LAB_MODDIR=$kdir/lib/modules/$kver
EOF
  build_stamp "$kpkg" > "$CACHE_DIR/build.stamp"
  # Old kernels left by an update of linux-image-amd64.
  for d in "$CACHE_DIR"/kernel/*; do [[ $d == "$kdir" ]] || rm -rf "$d"; done
  note "build: done (kernel $kver, initramfs $(du -k "$CACHE_DIR/initrd.img" | cut -f1) KiB) in $(elapsed "$t0")s"
}

ensure_built() {
  # run/start build on demand; a complete cache makes this a quick no-op.
  if [[ ! -f $CACHE_DIR/build.env || ! -f $CACHE_DIR/initrd.img ]]; then
    cmd_build
  else
    QUIET_SAVE=$QUIET; QUIET=1; cmd_build; QUIET=$QUIET_SAVE
  fi
  # shellcheck disable=SC1091
  source "$CACHE_DIR/build.env"
}

# ---------------------------------------------------------------------------------------------- VM

# Run directory layout (shared read-write with the guest as 9p tag "labrun", mounted at /lab-run):
#   boot.conf        sourced by the guest stages
#   state            "booting" / "ready <uptime> <paths>" / "failed <reason>" (written by the guest)
#   timings          guest-side stage timings (guest uptime seconds)
#   req/<id>.req     a request: NUL-separated timeout seconds, working directory, argv...
#   out/<id>.{out,err,time,rc}  its results; .rc is written last, in one write
#   ctl/poweroff     asks the guest to power off
#   share/           free for host<->guest files (/lab-run/share = $LAB_SHARE in the guest; no caching)
#   console.log      the serial console; qemu.pid, watchdog.pid
new_run_dir() {
  local base=$CACHE_DIR/runs id
  mkdir -p "$base"
  # Keep the 20 newest run dirs for post-mortems.
  ls -1dt "$base"/*/ 2>/dev/null | tail -n +20 | while read -r d; do
    [[ -f $d/qemu.pid ]] && kill -0 "$(cat "$d/qemu.pid")" 2>/dev/null && continue
    rm -rf "$d"
  done
  id=$(date +%Y%m%d-%H%M%S)-$$
  mkdir -p "$base/$id"/{req,out,ctl,share}
  printf '%s\n' "$base/$id"
}

boot_vm() { # run_dir mode(run|persistent)
  local rd=$1 lifetime=$2
  command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not installed (run: lab.sh build)"
  [[ $rd != *[[:space:]]* && $LAB_MODDIR != *[[:space:]]* && $GUEST_DIR != *[[:space:]]* ]] \
    || die "paths with spaces are not supported"
  cat > "$rd/boot.conf" <<EOF
LAB_KVER=$LAB_KVER
LAB_MODDIR=$LAB_MODDIR
LAB_GUEST_DIR=$GUEST_DIR
LAB_STAGE2=$GUEST_DIR/stage2.sh
LAB_PATHS=$PATHS
LAB_LUN_SIZE=$LUN_SIZE
LAB_READY_TIMEOUT=$BOOT_TIMEOUT
LAB_IDLE_TIMEOUT=$IDLE_TIMEOUT
EOF
  printf 'booting\n' > "$rd/state"
  # -no-reboot turns the guest's sysrq power-off / panic into a qemu exit. The whole host / is shared
  # read-only (multidevs=remap: the export crosses into /proc, /sys, /dev); the run dir read-write.
  local qemu=(qemu-system-x86_64 -machine q35,accel=tcg -cpu max -smp "$SMP" -m "$MEMORY"
    -nodefaults -no-user-config -display none -no-reboot
    -serial "file:$rd/console.log" -pidfile "$rd/qemu.pid"
    -kernel "$LAB_KERNEL" -initrd "$CACHE_DIR/initrd.img"
    -append "console=ttyS0 quiet panic=-1 loglevel=4"
    -virtfs local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap
    -virtfs "local,path=$rd,mount_tag=labrun,security_model=passthrough,multidevs=remap")
  # timeout is the watchdog: nothing outlives the lifetime even if every caller died.
  setsid timeout -k 10 "$lifetime" "${qemu[@]}" </dev/null >"$rd/qemu.stdout" 2>"$rd/qemu.stderr" &
  printf '%s\n' "$!" > "$rd/watchdog.pid"
}

vm_alive() { local p; p=$(cat "$1/watchdog.pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null; }

console_tail() {
  printf -- '--- last console lines (%s) ---\n' "$1/console.log" >&2
  tail -n 25 "$1/console.log" >&2 2>/dev/null || true
  [[ -s $1/qemu.stderr ]] && { printf -- '--- qemu stderr ---\n' >&2; tail -n 10 "$1/qemu.stderr" >&2; }
  return 0
}

wait_ready() { # run_dir t0 -> 0 when ready
  local rd=$1 t0=$2 st deadline
  deadline=$(( $(date +%s) + BOOT_TIMEOUT ))
  while :; do
    st=$(cat "$rd/state" 2>/dev/null || true)
    case $st in
      ready*) break ;;
      failed*) note "guest setup failed: ${st#failed }"; console_tail "$rd"; return 1 ;;
    esac
    if ! vm_alive "$rd"; then note "qemu exited before the lab was ready"; console_tail "$rd"; return 1; fi
    if (( $(date +%s) >= deadline )); then
      note "boot timeout (${BOOT_TIMEOUT}s) waiting for a ready map"; console_tail "$rd"; return 1
    fi
    sleep 0.1
  done
  local up stages
  up=$(awk '{ print $2 }' <<<"$st")
  # Guest stage marks (uptime when each stage finished), e.g. "stage2 3.8, modules+udevd 5.1, ...".
  stages=$(awk '{ t = $1; $1 = ""; sub(/^ /, ""); printf "%s%s %s", sep, $0, t; sep = ", " }' "$rd/timings" 2>/dev/null || true)
  note "boot->ready $(elapsed "$t0")s wall (guest uptime ${up}s, $PATHS paths active in mpatha; stages at uptime: $stages)"
}

kill_vm() { # run_dir: make sure the VM we started is gone
  local rd=$1 p i
  p=$(cat "$rd/qemu.pid" 2>/dev/null || true)
  [[ -n $p ]] && kill "$p" 2>/dev/null || true
  p=$(cat "$rd/watchdog.pid" 2>/dev/null || true)
  if [[ -n $p ]]; then
    kill "$p" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  fi
  p=$(cat "$rd/qemu.pid" 2>/dev/null || true)
  [[ -n $p ]] && kill -9 "$p" 2>/dev/null || true
  return 0
}

poweroff_vm() { # run_dir
  local rd=$1 deadline
  : > "$rd/ctl/poweroff"
  deadline=$(( $(date +%s) + STOP_TIMEOUT ))
  while vm_alive "$rd"; do
    if (( $(date +%s) >= deadline )); then note "guest did not power off in ${STOP_TIMEOUT}s: killing qemu"; break; fi
    sleep 0.1
  done
  kill_vm "$rd"
}

# Submit one request to the guest agent and wait for its result. Prints the command's stdout and stderr
# on ours; returns its exit status (124 = timed out in the guest), or 125 for a lab failure.
submit() { # run_dir timeout argv...
  local rd=$1 tmo=$2 id deadline t0 rc
  shift 2
  t0=$(now)
  id=$(date +%s%N)-$$-$RANDOM
  local tfield=$tmo
  [[ $FRESH == 1 ]] && tfield+=+fresh
  printf '%s\0' "$tfield" "$PWD" "$@" > "$rd/req/.$id.tmp"
  mv "$rd/req/.$id.tmp" "$rd/req/$id.req"
  deadline=$(( $(date +%s) + tmo + 30 ))
  while :; do
    if [[ -f $rd/out/$id.rc ]] && rc=$(cat "$rd/out/$id.rc") && [[ $rc =~ ^[0-9]+$ ]]; then break; fi
    if ! vm_alive "$rd"; then note "the VM is gone (command $*)"; console_tail "$rd"; return 125; fi
    if (( $(date +%s) >= deadline )); then note "no result for '$*' within ${tmo}s (+30s)"; return 125; fi
    sleep 0.05
  done
  rm -f "$rd/req/$id.req"
  cat "$rd/out/$id.out"
  cat "$rd/out/$id.err" >&2
  note "cmd $(elapsed "$t0")s wall (guest $(awk '{ printf "%.2f", $2 - $1 }' "$rd/out/$id.time")s) rc=$rc: $*"
  return "$rc"
}

instance_file() { printf '%s\n' "$CACHE_DIR/instances/$NAME"; }

current_run_dir() {
  local f rd
  f=$(instance_file)
  [[ -f $f ]] || die "no persistent lab '$NAME' (start it with: lab.sh start)"
  rd=$(cat "$f")
  vm_alive "$rd" || { rm -f "$f"; die "persistent lab '$NAME' is not running any more (see $rd/console.log)"; }
  printf '%s\n' "$rd"
}

cmd_run() {
  (($#)) || die "run: no command (usage: lab.sh run [--paths N] -- CMD...)"
  local t0 rd rc=0
  t0=$(now)
  need_root
  ensure_built
  rd=$(new_run_dir)
  note "run dir $rd"
  # Lifetime bound: boot + command + power-off with margin.
  boot_vm "$rd" $((BOOT_TIMEOUT + CMD_TIMEOUT + STOP_TIMEOUT + 60))
  LAB_RD=$rd
  trap 'kill_vm "$LAB_RD"' EXIT
  trap 'exit 130' INT TERM
  wait_ready "$rd" "$t0" || { kill_vm "$rd"; exit 125; }
  submit "$rd" "$CMD_TIMEOUT" "$@" || rc=$?
  poweroff_vm "$rd"
  trap - EXIT
  note "total $(elapsed "$t0")s wall"
  return "$rc"
}

cmd_start() {
  local t0 rd f
  t0=$(now)
  need_root
  f=$(instance_file)
  if [[ -f $f ]] && vm_alive "$(cat "$f")"; then die "persistent lab '$NAME' already running ($(cat "$f"))"; fi
  ensure_built
  rd=$(new_run_dir)
  note "run dir $rd"
  boot_vm "$rd" "$LIFETIME"
  LAB_RD=$rd
  trap 'kill_vm "$LAB_RD"' EXIT
  trap 'exit 130' INT TERM
  wait_ready "$rd" "$t0" || { kill_vm "$rd"; exit 125; }
  trap - EXIT
  mkdir -p "$(dirname "$f")"
  printf '%s\n' "$rd" > "$f"
  printf '%s\n' "$rd"
}

cmd_exec() {
  (($#)) || die "exec: no command (usage: lab.sh exec -- CMD...)"
  local rd
  rd=$(current_run_dir)
  submit "$rd" "$CMD_TIMEOUT" "$@"
}

cmd_stop() {
  local f rd t0
  t0=$(now)
  f=$(instance_file)
  [[ -f $f ]] || { note "no persistent lab '$NAME'"; return 0; }
  rd=$(cat "$f")
  if vm_alive "$rd"; then poweroff_vm "$rd"; else kill_vm "$rd"; fi
  rm -f "$f"
  note "stopped '$NAME' in $(elapsed "$t0")s"
}

cmd_status() {
  local f rd
  f=$(instance_file)
  if [[ -f $f ]] && rd=$(cat "$f") && vm_alive "$rd"; then
    printf 'running %s %s\n' "$rd" "$(cat "$rd/state")"
  else
    printf 'stopped\n'; return 3
  fi
}

# ---------------------------------------------------------------------------------------------- main

main() {
  local cmd=${1:-}
  (($#)) && shift
  case $cmd in ''|-h|--help|help) usage 0 ;; esac
  local args=()
  while (($#)); do
    case $1 in
      --paths) PATHS=${2:?--paths needs a number}; shift 2 ;;
      --paths=*) PATHS=${1#*=}; shift ;;
      --name) NAME=${2:?--name needs a value}; shift 2 ;;
      --name=*) NAME=${1#*=}; shift ;;
      --cache) CACHE_DIR=${2:?--cache needs a directory}; shift 2 ;;
      --timeout) CMD_TIMEOUT=${2:?--timeout needs seconds}; shift 2 ;;
      --boot-timeout) BOOT_TIMEOUT=${2:?--boot-timeout needs seconds}; shift 2 ;;
      --lifetime) LIFETIME=${2:?--lifetime needs seconds}; shift 2 ;;
      --idle-timeout) IDLE_TIMEOUT=${2:?--idle-timeout needs seconds}; shift 2 ;;
      --fresh) FRESH=1; shift ;;
      -q|--quiet) QUIET=1; shift ;;
      --) shift; args+=("$@"); break ;;
      -*) die "unknown option $1" ;;
      *) args+=("$1"); shift ;;
    esac
  done
  [[ $NAME =~ ^[A-Za-z0-9._-]+$ ]] || die "--name must match [A-Za-z0-9._-]+"
  [[ $PATHS =~ ^[0-9]+$ ]] && ((PATHS >= 1 && PATHS <= 16)) || die "--paths must be 1..16 (got $PATHS)"
  local v
  for v in "$CMD_TIMEOUT" "$BOOT_TIMEOUT" "$STOP_TIMEOUT" "$LIFETIME" "$IDLE_TIMEOUT"; do
    [[ $v =~ ^[0-9]+$ ]] || die "timeouts are whole seconds (got $v)"
  done
  mkdir -p "$CACHE_DIR"
  CACHE_DIR=$(cd -- "$CACHE_DIR" && pwd)
  case $cmd in
    build) cmd_build ;;
    run) cmd_run "${args[@]}" ;;
    start) cmd_start ;;
    exec) cmd_exec "${args[@]}" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) usage 2 ;;
  esac
}

main "$@"
