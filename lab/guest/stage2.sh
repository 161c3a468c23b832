#!/bin/bash
# Stage 2 of the lab guest: PID 1, the HOST's bash running on the overlay root. Brings up the storage
# stack (LIO fileio LUN exported through N tcm_loop targets, one I_T nexus each, udev, multipathd),
# reports "ready" in /lab-run/state once /dev/mapper/mpatha has N active paths, then serves requests
# from /lab-run/req until /lab-run/ctl/poweroff appears.
#
# Under TCG every exec of a binary costs 50-80 ms, so waits and the request loop use shell builtins
# only (read -t on a private FIFO instead of sleep, globs instead of ls, [[ -e ]] instead of test).
set -u
shopt -s nullglob
R=/lab-run
# shellcheck disable=SC1091
source "$R/boot.conf"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb
export LAB_RUN=$R LAB_SHARE=$R/share LAB_PATHS LAB_GUEST_DIR

CONFIGFS=/sys/kernel/config
BACKSTORE=$CONFIGFS/target/core/fileio_0/lun0
# Deterministic identities, the same as the captured samples: the unit serial gives the LU the NAA WWID
# 36001405 6001405c0ffee000000000000; target port i is naa.50014050000000<i>, its initiator
# naa.5001405f000000<i> (a SAS TransportID 0x5001405f000000<i> in READ FULL STATUS).
LUN_SERIAL=6001405c0ffee0000000000000000001

UP=0
now_up() { read -r UP _ < /proc/uptime; }
log() { now_up; printf '[lab-guest %s] %s\n' "$UP" "$*"; }
mark() { now_up; printf '%s %s\n' "$UP" "$1" >> "$R/timings"; }
tick() { read -r -t "$1" -u 9 _ || true; }   # a sleep that needs no exec (nothing ever writes the FIFO)

power_off() {
  echo o > /proc/sysrq-trigger
  while :; do read -r -t 1 _ < /dev/null || true; done
}
fail() {
  log "FAILED: $*"
  printf 'failed %s\n' "$*" > "$R/state"
  power_off
}

# ------------------------------------------------------------------------------------------ system
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
# /tmp stays the overlay: the host's /tmp is readable (fixtures), guest writes land in the tmpfs upper.
mkdir -p /run/lock /run/lab /dev/pts /dev/shm /etc/target/pr /etc/target/alua /etc/multipath /usr/local/sbin
mount -t devpts -o gid=5,mode=0620 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
ln -sfn /proc/self/fd /dev/fd
echo lab > /proc/sys/kernel/hostname
mkfifo /run/lab/tick && exec 9<> /run/lab/tick || fail "mkfifo"
mark "stage2"

modprobe -a configfs scsi_mod sd_mod sg scsi_dh_alua dm_mod dm_multipath dm_round_robin dm_service_time \
  dm_queue_length target_core_mod target_core_file target_core_iblock tcm_loop || fail "modprobe"
[[ -d $CONFIGFS/target ]] || mount -t configfs configfs "$CONFIGFS" || fail "mount configfs"
cp "$LAB_GUEST_DIR/multipath.conf" /etc/multipath.conf
: > /etc/multipath/wwids
: > /etc/multipath/bindings
ln -sfn "$LAB_GUEST_DIR/lab-fault" /usr/local/sbin/lab-fault
# multipathd builds no map without udev. No coldplug trigger: nothing that exists yet needs it (4.5 s saved).
/lib/systemd/systemd-udevd --daemon || fail "udevd"
mark "modules+udevd"

# ------------------------------------------------------------------------------------------ LIO
# Without /etc/target/pr every PR OUT fails with NOT READY / LOGICAL UNIT COMMUNICATION FAILURE:
# LIO cannot write its APTPL file (created above).
mkdir -p "$BACKSTORE" || fail "backstore mkdir"
echo "fd_dev_name=/run/lun0.img,fd_dev_size=$LAB_LUN_SIZE" > "$BACKSTORE/control" || fail "backstore control"
echo "$LUN_SERIAL" > "$BACKSTORE/wwn/vpd_unit_serial" || fail "unit serial"
echo 1 > "$BACKSTORE/enable" || fail "backstore enable"

sd_count() { local a=(/sys/block/sd*); SD_COUNT=${#a[@]}; }
: > /run/lab/paths
for ((i = 1; i <= LAB_PATHS; i++)); do
  printf -v twwn 'naa.50014050000000%02x' "$i"
  printf -v iwwn 'naa.5001405f000000%02x' "$i"
  tpg=$CONFIGFS/target/loopback/$twwn/tpgt_1
  mkdir -p "$tpg" || fail "tpg $i"
  # The nexus must exist before the LUN is linked (the link is what makes the SCSI host scan it).
  echo "$iwwn" > "$tpg/nexus" || fail "nexus $i"
  mkdir -p "$tpg/lun/lun_0" || fail "lun_0 $i"
  ln -s "$BACKSTORE" "$tpg/lun/lun_0/lab_lun" || fail "link lun $i"
  # One path at a time, so that path i is always the i-th sd disk (sd probing is asynchronous).
  for ((w = 0; w < 600; w++)); do sd_count; ((SD_COUNT >= i)) && break; tick 0.05; done
  ((SD_COUNT >= i)) || fail "no disk for path $i"
  printf '%s %s %s %s\n' "$i" "$twwn" "$iwwn" "$tpg" >> /run/lab/paths
done
cp /run/lab/paths "$R/paths"
mark "lio ($LAB_PATHS paths)"

# ------------------------------------------------------------------------------------------ multipathd
multipathd || fail "multipathd"
deadline=${LAB_READY_TIMEOUT%.*}
while :; do
  if [[ -e /dev/mapper/mpatha ]]; then
    n=0
    while read -r dev dm chk; do
      [[ $dm == active && $chk == ready ]] && ((n += 1))
    done <<< "$(multipathd show paths raw format '%d %t %T' 2> /dev/null)"
    ((n == LAB_PATHS)) && break
  fi
  now_up
  ((${UP%.*} < deadline)) || fail "mpatha did not get $LAB_PATHS active paths by uptime ${deadline}s"
  tick 0.2
done
mark "mpatha ready"
now_up
printf 'ready %s %s\n' "$UP" "$LAB_PATHS" > "$R/state"
log "ready: mpatha with $LAB_PATHS active paths"

# ------------------------------------------------------------------------------------------ agent
# Request protocol (see lab/README.md): the host writes req/.<id>.tmp and renames it to req/<id>.req
# when complete. A request is NUL-separated fields: timeout seconds, working directory, argv. We run
# each new id once, in name order, with stdin /dev/null, and write out/<id>.out, .err, .time and last
# .rc (one write, so a reader sees it whole or not at all). No shell is exec'd for a request: a
# subshell (fork only) changes directory and execs timeout, which execs argv.
declare -A seen=()
run_request() {
  local id=$1 fields tmo cwd t0 rc
  mapfile -d '' -t fields < "$R/req/$id.req"
  tmo=${fields[0]:-}
  cwd=${fields[1]:-/}
  # "<seconds>+fresh": drop the guest's caches first. The root share is mounted cache=loose, so a host
  # file that the guest already read and the host changed since is stale until then.
  if [[ $tmo == *+fresh ]]; then
    tmo=${tmo%+fresh}
    echo 3 > /proc/sys/vm/drop_caches
  fi
  [[ $tmo =~ ^[0-9]+$ ]] || tmo=600
  now_up; t0=$UP
  if ((${#fields[@]} > 2)); then
    (cd -- "$cwd" 2> /dev/null || cd /; exec timeout -k 5 "$tmo" "${fields[@]:2}") \
      < /dev/null > "$R/out/$id.out" 2> "$R/out/$id.err"
    rc=$?
  else
    echo "lab agent: empty request" > "$R/out/$id.err"; : > "$R/out/$id.out"; rc=125
  fi
  now_up
  printf '%s %s\n' "$t0" "$UP" > "$R/out/$id.time"
  printf '%d\n' "$rc" > "$R/out/$id.rc"
}
# An idle timeout (LAB_IDLE_TIMEOUT seconds without a request, 0 = none) powers off a VM whose
# driver died without stopping it.
idle_limit=${LAB_IDLE_TIMEOUT:-0}
now_up; last=${UP%.*}
while [[ ! -e $R/ctl/poweroff ]]; do
  for f in "$R"/req/*.req; do
    id=${f##*/}
    id=${id%.req}
    [[ -n ${seen[$id]:-} ]] && continue
    seen[$id]=1
    run_request "$id"
    now_up; last=${UP%.*}
  done
  if ((idle_limit > 0)); then
    now_up
    if ((${UP%.*} - last > idle_limit)); then
      log "idle for more than ${idle_limit}s"
      printf 'idle-timeout %s\n' "$UP" > "$R/state"
      break
    fi
  fi
  tick 0.05
done
log "power off"
power_off
