#!/bin/bash
# L1 side of the nested-QEMU test (test/lab/nested-qemu.test.ts), run inside the lab VM through the
# lab's request agent (one subcommand per request). Everything the host must read lands in
# $LAB_SHARE/nested (uncached 9p share), so the test can watch the L2 console while L2 runs.
#
#   l1.sh failover                      map mpatha with path_grouping_policy failover, wait for it
#   l1.sh paths                         "N sdX" per tcm_loop path
#   l1.sh start-prmux NODE CLI [ARG...] prmux serve -vv [ARG...] on $SOCK (log: nested/prmux.log)
#   l1.sh start-l2 KERNEL INITRD MEM LIFETIME APPEND
#                                       nested QEMU in the background (console: nested/l2-console.log,
#                                       exit status: nested/l2.rc); returns once it runs
#   l1.sh view                          sg_persist -k on every path device, -s on the first, multipath -ll
#   l1.sh resume                        send a line to L2's control port (ttyS1): leave its sync point
#   l1.sh stop-l2                       kill the nested QEMU if it still runs
#   l1.sh stop-prmux                    SIGTERM, wait for its exit status
#
# Waits are bounded shell loops; every process started here is under setsid + timeout, so nothing
# outlives its lifetime even if the test dies (the lab VM's own lifetime bounds them all anyway).
set -u
shopt -s nullglob
N=${LAB_SHARE:?not in the lab guest}/nested
MAP=/dev/mapper/mpatha
SOCK=/tmp/prmux-nested.sock
PIDFILE=/tmp/prmux-nested.pid
CTL=/tmp/l2ctl            # QEMU pipe chardev: $CTL.in is what L2 reads on ttyS1, $CTL.out what it writes
L2PID=/tmp/l2-qemu.pid

die() { printf 'l1.sh: %s\n' "$*" >&2; exit 1; }

path_devs() {
  local n
  for ((n = 1; n <= LAB_PATHS; n++)); do printf '%s %s\n' "$n" "$(lab-fault dev "$n")"; done
}

cmd_failover() {
  # For a helper that issues ONE SG_IO per PR command on the map fd (prmux --multipath plain, Debian's
  # qemu-pr-helper): dm-multipath gives each ioctl to the path its selector picks, and with every path
  # in one group (the lab's group_by_prio default for LIO-ORG) service-time rotates among them, so
  # REGISTER and the RESERVE after it would reach different I_T nexuses. One path per group keeps
  # every ioctl on the active group's path while the map keeps all its paths.
  grep -q '^overrides {' /etc/multipath.conf || printf 'overrides {\n\tpath_grouping_policy failover\n}\n' >> /etc/multipath.conf
  multipathd reconfigure >/dev/null || die "multipathd reconfigure failed"
  local i ll
  for ((i = 0; i < 300; i++)); do
    ll=$(multipath -ll mpatha 2>/dev/null)
    if [[ $(grep -c "policy=" <<<"$ll") == "$LAB_PATHS" && $(grep -c "active ready running" <<<"$ll") == "$LAB_PATHS" ]]; then
      printf '%s\n' "$ll"
      dmsetup table mpatha
      return 0
    fi
    sleep 0.2
  done
  printf '%s\n' "$ll"
  die "mpatha did not get $LAB_PATHS path groups"
}

cmd_start_prmux() {
  local node=${1:?node} cli=${2:?cli} i
  shift 2
  rm -f "$SOCK" "$PIDFILE" "$N/prmux.log"
  # No systemd in the guest: a new session, detached from the agent's request. -vv: one debug line
  # per PR command served.
  setsid timeout -k 5 3600 "$node" "$cli" serve -vv -k "$SOCK" -f "$PIDFILE" "$@" </dev/null >/dev/null 2>"$N/prmux.log" &
  for ((i = 0; i < 600; i++)); do
    [[ -S $SOCK && -s $PIDFILE ]] && { echo "$SOCK"; return 0; }
    sleep 0.1
  done
  cat "$N/prmux.log" >&2
  die "prmux serve did not come up on $SOCK"
}

cmd_start_l2() {
  local kernel=${1:?kernel} initrd=${2:?initrd} mem=${3:?mem} lifetime=${4:?lifetime} append=${5:?append} i
  [[ -S $SOCK ]] || die "prmux is not serving $SOCK"
  rm -f "$CTL.in" "$CTL.out" "$L2PID" "$N/l2-console.log" "$N/l2-qemu.stderr" "$N/l2.rc"
  mkfifo "$CTL.in" "$CTL.out" || die "mkfifo $CTL"
  # ttyS0: the console (a file the host reads); ttyS1: the control port (a pipe chardev; QEMU opens
  # both fifos O_RDWR, so neither side blocks on open). The disk: the map as a raw host_device with
  # the pr-manager on the file node (docs/system/pr-manager.rst), passed through by scsi-block.
  local qemu=(qemu-system-x86_64 -machine q35,accel=tcg -cpu max -smp 1 -m "$mem"
    -nodefaults -no-user-config -display none -no-reboot -pidfile "$L2PID"
    -serial "file:$N/l2-console.log"
    -chardev "pipe,id=ctl,path=$CTL" -serial chardev:ctl
    -kernel "$kernel" -initrd "$initrd" -append "$append"
    -object "pr-manager-helper,id=prh,path=$SOCK"
    -blockdev "node-name=hd,driver=raw,file.driver=host_device,file.filename=$MAP,file.pr-manager=prh"
    -device virtio-scsi-pci,id=scsi0
    -device scsi-block,bus=scsi0.0,drive=hd)
  printf '%q ' "${qemu[@]}" > "$N/l2-cmdline"
  setsid bash -c 'timeout -k 5 "$0" "${@:2}" 2>"$1/l2-qemu.stderr"; echo $? > "$1/l2.rc"' "$lifetime" "$N" "${qemu[@]}" \
    </dev/null >/dev/null 2>&1 &
  # Up once QEMU wrote its pidfile (it has then connected to the pr-manager socket and opened the map).
  for ((i = 0; i < 600; i++)); do
    [[ -s $L2PID ]] && { cat "$L2PID"; return 0; }
    [[ -e $N/l2.rc ]] && break
    sleep 0.1
  done
  cat "$N/l2-qemu.stderr" >&2
  die "nested QEMU did not start (exit $(cat "$N/l2.rc" 2>/dev/null))"
}

cmd_view() {
  # READ KEYS answers the same list on every path (one key per registered I_T nexus); READ FULL
  # STATUS says which nexus holds which key: SAS address 0x5001405f0000000N = path N.
  local n dev first=
  while read -r n dev; do
    [[ -n $first ]] || first=$dev
    echo "@@VIEW path $n $dev"
    # A unit attention queued for this nexus fails its first command once: one retry.
    sg_persist -n --in --read-keys "/dev/$dev" 2>&1 || sg_persist -n --in --read-keys "/dev/$dev" 2>&1
    echo "@@VIEW rc=$?"
  done < <(path_devs)
  echo "@@VIEW full-status $first"
  sg_persist -n --in --read-full-status "/dev/$first" 2>&1
  echo "@@VIEW rc=$?"
  # The map as dm-multipath uses it now: which path group is active.
  echo "@@MAP"
  multipath -ll mpatha 2>&1
}

cmd_resume() {
  [[ -p $CTL.in ]] || die "no control pipe $CTL.in"
  echo "go" > "$CTL.in"
}

cmd_stop_l2() {
  local p
  p=$(cat "$L2PID" 2>/dev/null) || return 0
  [[ -d /proc/$p ]] || return 0
  kill "$p" 2>/dev/null
  sleep 1
  kill -9 "$p" 2>/dev/null
  echo "killed nested QEMU $p"
}

cmd_stop_prmux() {
  local p i
  p=$(cat "$PIDFILE" 2>/dev/null) || die "no $PIDFILE"
  kill -TERM "$p" || die "kill $p"
  for ((i = 0; i < 300; i++)); do [[ -d /proc/$p ]] || { echo stopped; return 0; }; sleep 0.1; done
  die "prmux $p still running 30 s after SIGTERM"
}

cmd=${1:-}
(($#)) && shift
mkdir -p "$N"
case $cmd in
  failover) cmd_failover ;;
  paths) path_devs ;;
  start-prmux) cmd_start_prmux "$@" ;;
  start-l2) cmd_start_l2 "$@" ;;
  view) cmd_view ;;
  resume) cmd_resume ;;
  stop-l2) cmd_stop_l2 ;;
  stop-prmux) cmd_stop_prmux ;;
  *) die "unknown subcommand '$cmd'" ;;
esac
