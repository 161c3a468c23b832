#!/usr/bin/env bash
# Build the initramfs of the nested (L2) guest of test/lab/nested-qemu.test.ts, on the host.
#
#   build-l2-initramfs.sh OUT.img
#
# The L2 guest runs the lab's own kernel (lab.sh build unpacked it into <repo>/.lab-cache; its
# build.env names it) and needs no root share: the initramfs carries busybox-static, the host's
# sg_persist with the shared libraries ldd lists for it, and the modules its virtio-scsi disk needs
# (virtio_pci, virtio_scsi, sd_mod and their dependencies, from modprobe --show-depends against the
# unpacked modules). lab/nested/l2-init is its PID 1. The result is checked by running sg_persist
# chrooted into the tree before it is packed, so a missing library fails here, not 2 minutes into
# a nested boot. Prints the module load order on stdout.
set -euo pipefail

NESTED_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd -- "$NESTED_DIR/../.." && pwd)
CACHE_DIR=${LAB_CACHE_DIR:-$REPO_DIR/.lab-cache}
# The modules the L2 disk needs; builtin ones show up as "builtin X" lines and need nothing.
L2_MODULES=(virtio_pci virtio_scsi sd_mod)

die() { printf 'build-l2-initramfs: %s\n' "$*" >&2; exit 1; }

out=${1:-}
[[ -n $out ]] || die "usage: build-l2-initramfs.sh OUT.img"
[[ -f $CACHE_DIR/build.env ]] || die "no $CACHE_DIR/build.env (run: lab.sh build)"
# shellcheck disable=SC1091
source "$CACHE_DIR/build.env"
[[ -d ${LAB_MODDIR:-} && -n ${LAB_KVER:-} ]] || die "build.env names no unpacked kernel modules"
kdir=${LAB_MODDIR%/lib/modules/$LAB_KVER}
busybox=$(command -v busybox) || die "busybox not installed (lab.sh build installs busybox-static)"
sg_persist=$(command -v sg_persist) || die "sg_persist not installed (sg3-utils)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/l2-initrd.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"/{bin,dev,proc,sys,lib/modules}
cp "$busybox" "$tmp/bin/busybox"
# The applet links are made here, not by `busybox --install` in L2: under TCG inside TCG that alone
# takes seconds.
for applet in $("$busybox" --list); do [[ -e $tmp/bin/$applet ]] || ln -s busybox "$tmp/bin/$applet"; done
install -m 0755 "$NESTED_DIR/l2-init" "$tmp/init"

# sg_persist and the libraries its loader resolves (ldd prints "name => /path (addr)" and, for the
# loader itself, "/lib64/ld-linux-x86-64.so.2 (addr)"); each lands at the same path in the tree.
cp "$sg_persist" "$tmp/bin/sg_persist"
while read -r lib; do
  mkdir -p "$tmp/$(dirname "$lib")"
  cp -L "$lib" "$tmp/$lib"
done < <(ldd "$sg_persist" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
chroot "$tmp" /bin/sg_persist --version >/dev/null 2>&1 || die "sg_persist does not run inside the L2 tree (missing library?)"

: > "$tmp/modules.order"
seen=" "
for m in "${L2_MODULES[@]}"; do
  while read -r verb ko _; do
    [[ $verb == insmod && -n $ko ]] || continue
    base=$(basename "$ko")
    [[ $seen == *" $base "* ]] && continue
    seen+="$base "
    cp "$ko" "$tmp/lib/modules/$base"
    printf '%s\n' "$base" >> "$tmp/modules.order"
  done < <(modprobe -d "$kdir" -S "$LAB_KVER" --show-depends "$m")
done
grep -qx 'virtio_scsi.ko' "$tmp/modules.order" || die "virtio_scsi.ko not found under $kdir"

mkdir -p "$(dirname "$out")"
(cd "$tmp" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$out.tmp"
mv "$out.tmp" "$out"
tr '\n' ' ' < "$tmp/modules.order"
echo
