#!/usr/bin/env bash
# Print the path of the kernel the nested (L2) guest of test/lab/nested-qemu.test.ts boots: the lab's
# own kernel (lab.sh build unpacked it into <repo>/.lab-cache; build.env names it).
#
#   l2-kernel.sh        -> <cache>/nested/vmlinux-<kver>  (or the bzImage itself, see below)
#
# The Debian bzImage carries an xz-compressed ELF kernel. Under TCG inside TCG, SeaBIOS's real-mode
# setup plus the in-guest xz decompression of ~66 MB cost ~30 s of a ~120 s boot, so the ELF is
# unpacked here once (host speed, ~1 s) and QEMU starts it through its PVH entry point (-kernel with
# an ELF that has the XEN_ELFNOTE_PHYS32_ENTRY note; the kernel needs CONFIG_PVH=y). When that is not
# possible (no CONFIG_PVH, no xz payload, xz missing) it prints the bzImage path, which boots too,
# only slower; the reason goes to stderr.
set -euo pipefail

NESTED_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd -- "$NESTED_DIR/../.." && pwd)
CACHE_DIR=${LAB_CACHE_DIR:-$REPO_DIR/.lab-cache}

die() { printf 'l2-kernel: %s\n' "$*" >&2; exit 1; }
fallback() { printf 'l2-kernel: booting the bzImage (%s)\n' "$*" >&2; printf '%s\n' "$LAB_KERNEL"; exit 0; }

[[ -f $CACHE_DIR/build.env ]] || die "no $CACHE_DIR/build.env (run: lab.sh build)"
# shellcheck disable=SC1091
source "$CACHE_DIR/build.env"
[[ -f ${LAB_KERNEL:-} && -n ${LAB_KVER:-} ]] || die "build.env names no kernel"

out=$CACHE_DIR/nested/vmlinux-$LAB_KVER
if [[ -f $out ]]; then printf '%s\n' "$out"; exit 0; fi

config=$(dirname "$LAB_KERNEL")/config-$LAB_KVER
grep -qx 'CONFIG_PVH=y' "$config" 2>/dev/null || fallback "no CONFIG_PVH=y in $config"
command -v xz >/dev/null || fallback "xz not installed"
# The payload starts at the xz stream magic FD 37 7A 58 5A 00. --single-stream: stop at the end of
# that stream and ignore what the bzImage has after it (a truncated or corrupt stream still fails).
offset=$(LC_ALL=C grep -abo $'\xfd7zXZ\x00' "$LAB_KERNEL" | head -n1 | cut -d: -f1)
[[ -n $offset ]] || fallback "no xz payload in $LAB_KERNEL"
mkdir -p "$CACHE_DIR/nested"
tmp=$(mktemp "$CACHE_DIR/nested/.vmlinux.XXXXXX")
trap 'rm -f "$tmp"' EXIT
# tail gets SIGPIPE when xz stops reading at the stream's end: only xz's status counts.
{ tail -c "+$((offset + 1))" "$LAB_KERNEL" || true; } | xz -dc --single-stream > "$tmp" || fallback "xz could not unpack the payload"
[[ $(head -c 4 "$tmp" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]] || fallback "the xz payload is not an ELF image"
chmod 0644 "$tmp"
# Atomic: a concurrent run sees the whole file or none. Kernels of earlier lab builds go.
mv "$tmp" "$out"
trap - EXIT
find "$CACHE_DIR/nested" -maxdepth 1 -name 'vmlinux-*' ! -name "vmlinux-$LAB_KVER" -delete
printf '%s\n' "$out"
