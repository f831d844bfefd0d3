#!/usr/bin/env bash
# The real SocketCAN path, tested: boot a Debian kernel in qemu (TCG, no KVM
# needed) with the can, can-raw and vcan modules, create vcan0, and run
# vcan-selftest (crates/evos-vcan-selftest, built static) there: the
# `socketcan` driver path against a module emulator on vcan0. Build machines
# have no vcan module and cannot open AF_CAN sockets; this needs neither.
#
# Steps, each timed:
#   1. build vcan-selftest with +crt-static (x86_64-unknown-linux-gnu) into
#      <target>/vcan/build;
#   2. the kernel, once: `apt-get download` the versioned package that the
#      linux-image-amd64 metapackage depends on, extract vmlinuz and the
#      modules (can, can-raw, vcan and what they depend on, per their
#      modinfo), decompress them if they are .ko.xz/.ko.zst; kept in
#      <target>/vcan/kernel, the .deb is not;
#   3. an initramfs: busybox-static, the modules, the test program and an
#      /init that loads the modules, creates vcan0 (up) and vcan1 (down),
#      runs the test and powers off;
#   4. qemu-system-x86_64 -accel tcg, with a timeout.
#
# Exit status: 0 only on `VCAN-SELFTEST PASS` and the program's exit status
# 0; 1 on failure; 77 when a tool is missing (the message names the Debian
# package). Usage: tests/vcan/run.sh [vcan-selftest options], e.g.
# `--frames 5000`. <target> is $CARGO_TARGET_DIR or target/.
#
# Environment: EVOS_VCAN_TIMEOUT (seconds for the VM, default 180),
# EVOS_VCAN_ACCEL (default tcg; `kvm` where /dev/kvm works),
# EVOS_VCAN_REFRESH=1 (fetch the kernel again: the newest in the apt lists).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
[[ $target == /* ]] || target=$PWD/$target
work=$target/vcan
mkdir -p "$work"

# Progress on stderr; stdout carries only the VM's console.
say() { printf 'vcan: %s\n' "$*" >&2; }
die() {
  say "FAIL: $*"
  exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
# Whether an x86_64 ELF file asks for a program interpreter (PT_INTERP), i.e.
# is dynamically linked. (Searching for "ld-linux" does not tell: a static
# busybox carries that string too.)
dynamic() {
  local f=$1 phoff phentsize phnum i
  phoff=$(od -An -t u8 -j 32 -N 8 "$f" | tr -d ' ')
  phentsize=$(od -An -t u2 -j 54 -N 2 "$f" | tr -d ' ')
  phnum=$(od -An -t u2 -j 56 -N 2 "$f" | tr -d ' ')
  for ((i = 0; i < phnum; i++)); do
    [[ $(od -An -t u4 -j $((phoff + i * phentsize)) -N 4 "$f" | tr -d ' ') == 3 ]] && return 0
  done
  return 1
}

# ---------------------------------------------------------------------------
# Tools.
missing=()
need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null || missing+=("$1 (Debian package $2)")
}
need qemu-system-x86_64 qemu-system-x86
need cpio cpio
need gzip gzip
need flock util-linux
busybox=$(command -v busybox || true)
if [[ -z $busybox ]]; then
  missing+=("busybox (Debian package busybox-static)")
elif dynamic "$busybox"; then
  missing+=("a static busybox; $busybox is dynamically linked (Debian package busybox-static)")
fi
kernel=$work/kernel
if [[ ! -f $kernel/ready || ${EVOS_VCAN_REFRESH:-} == 1 ]]; then
  need apt-get apt
  need apt-cache apt
  need dpkg-deb dpkg
fi
[[ $(uname -m) == x86_64 ]] || missing+=("an x86_64 host (this is $(uname -m))")
if ((${#missing[@]})); then
  say "missing tools:"
  printf '  %s\n' "${missing[@]}" >&2
  say "on Debian/Ubuntu: apt-get install qemu-system-x86 busybox-static cpio xz-utils"
  exit 77
fi

# One run at a time per target directory (tests may run in parallel).
exec 9>"$work/lock"
flock 9

# ---------------------------------------------------------------------------
# 1. The test program, static.
t=$(now)
say "building vcan-selftest (static, x86_64-unknown-linux-gnu) in $work/build"
env -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS \
  RUSTFLAGS="-C target-feature=+crt-static" \
  CARGO_PROFILE_DEV_DEBUG=false CARGO_PROFILE_DEV_STRIP=debuginfo \
  "${CARGO:-cargo}" build --quiet --manifest-path "$root/Cargo.toml" \
  -p evos-vcan-selftest --bin vcan-selftest \
  --target x86_64-unknown-linux-gnu --target-dir "$work/build"
selftest=$work/build/x86_64-unknown-linux-gnu/debug/vcan-selftest
if dynamic "$selftest"; then
  die "$selftest is not static"
fi
say "built in $(since "$t") ($(du -h "$selftest" | cut -f1))"

# ---------------------------------------------------------------------------
# 2. The kernel and its CAN modules, once.
apt_as_root=()
((EUID == 0)) && apt_as_root=(-o APT::Sandbox::User=root) # no _apt sandbox warning
updated=0
apt_update() {
  ((updated)) && return 1
  updated=1
  if ((EUID != 0)); then
    say "the apt lists are missing or stale; run \`sudo apt-get update\` and try again"
    return 1
  fi
  say "apt-get update"
  apt-get update -q >&2
}

# The module file for a module name (names mix - and _).
module_file() {
  local name=$1 alt=${1//-/_} alt2=${1//_/-} f
  for f in "$2"/lib/modules/*/kernel/{net/can,drivers/net/can}/{,*/}{"$name","$alt","$alt2"}.ko{,.xz,.zst}; do
    [[ -f $f ]] && {
      printf '%s\n' "$f"
      return 0
    }
  done
  return 1
}

fetch_kernel() {
  local pkg version deb tree t
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 ~ /^\|?Depends:$/ && $2 ~ /^linux-image-/ { print $2; exit }') || true
  if [[ -z $pkg ]]; then
    apt_update || die "apt knows no linux-image-amd64"
    pkg=$(apt-cache depends linux-image-amd64 |
      awk '$1 ~ /^\|?Depends:$/ && $2 ~ /^linux-image-/ { print $2; exit }')
    [[ -n $pkg ]] || die "linux-image-amd64 depends on no linux-image-* package"
  fi
  rm -rf "$work/deb"
  mkdir -p "$work/deb"
  t=$(now)
  say "downloading $pkg (linux-image-amd64 depends on it) with apt-get download"
  if ! (cd "$work/deb" && apt-get download -q "${apt_as_root[@]}" "$pkg" >&2); then
    # Stale lists name a version the mirror no longer has.
    apt_update || die "apt-get download $pkg failed"
    (cd "$work/deb" && apt-get download -q "${apt_as_root[@]}" "$pkg" >&2) ||
      die "apt-get download $pkg failed"
  fi
  deb=$(ls "$work/deb"/*.deb)
  version=$(dpkg-deb -f "$deb" Version)
  say "downloaded $(basename "$deb"): $(du -h "$deb" | cut -f1) in $(since "$t")"

  t=$(now)
  tree=$work/deb/tree
  mkdir -p "$tree"
  say "extracting vmlinuz and the CAN modules"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tree" --wildcards \
    './boot/vmlinuz-*' './lib/modules/*/kernel/net/can/*' './lib/modules/*/kernel/drivers/net/can/*'

  # can, can-raw, vcan and their dependencies, each after what it needs.
  local order=() seen=" "
  add_module() {
    local name=$1 file dep
    [[ $seen == *" $name "* ]] && return 0
    seen+="$name "
    file=$(module_file "$name" "$tree") || die "module $name is not in $pkg"
    case $file in
      *.ko.xz)
        command -v xz >/dev/null || die "$file is xz-compressed: install xz-utils"
        xz -d -f "$file"
        file=${file%.xz}
        ;;
      *.ko.zst)
        command -v zstd >/dev/null || die "$file is zstd-compressed: install zstd"
        zstd -q -d -f --rm "$file"
        file=${file%.zst}
        ;;
    esac
    for dep in $(tr '\0' '\n' <"$file" | sed -n 's/^depends=//p' | tr ',' ' '); do
      add_module "$dep"
    done
    order+=("$name")
  }
  for m in can can-raw vcan; do add_module "$m"; done

  rm -rf "$kernel"
  mkdir -p "$kernel/modules"
  cp "$tree"/boot/vmlinuz-* "$kernel/vmlinuz"
  for m in "${order[@]}"; do cp "$(module_file "$m" "$tree")" "$kernel/modules/$m.ko"; done
  printf '%s\n' "${order[@]}" >"$kernel/modules/order"
  printf '%s %s\n' "$pkg" "$version" >"$kernel/ready"
  rm -rf "$work/deb"
  say "extracted in $(since "$t"): vmlinuz, modules ${order[*]}"
}

if [[ ! -f $kernel/ready || ${EVOS_VCAN_REFRESH:-} == 1 ]]; then
  fetch_kernel
else
  say "kernel $(cat "$kernel/ready") (cached in $kernel)"
fi
mapfile -t modules <"$kernel/modules/order"

# ---------------------------------------------------------------------------
# 3. The initramfs.
t=$(now)
ird=$work/initramfs
rm -rf "$ird"
mkdir -p "$ird"/{bin,dev,proc,sys,lib/modules}
cp "$busybox" "$ird/bin/busybox"
ln -s busybox "$ird/bin/sh"
cp "$kernel"/modules/*.ko "$ird/lib/modules/"
cp "$selftest" "$ird/bin/vcan-selftest"
args=""
for a in "$@"; do args+=" $(printf '%q' "$a")"; done
cat >"$ird/init" <<EOF
#!/bin/sh
# No /dev/console in the archive (making one needs root): mount devtmpfs and
# take the console from there.
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec 0</dev/console 1>/dev/console 2>&1
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox --install -s /bin
export PATH=/bin
fail() {
  echo "VCAN-SELFTEST FAIL init: \$*"
  poweroff -f
}
echo "vcan-init: Linux \$(uname -r), booted in \$(cut -d' ' -f1 /proc/uptime) s"
for m in ${modules[*]}; do
  insmod /lib/modules/\$m.ko || fail "insmod \$m.ko"
done
ip link add dev vcan0 type vcan || fail "ip link add dev vcan0 type vcan"
ip link set up vcan0 || fail "ip link set up vcan0"
# Left down: sending on it must fail.
ip link add dev vcan1 type vcan || fail "ip link add dev vcan1 type vcan"
/bin/vcan-selftest vcan0 --down vcan1$args
echo "VCAN-SELFTEST-EXIT \$?"
poweroff -f
EOF
chmod +x "$ird/init"
(cd "$ird" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -1) >"$work/initramfs.cpio.gz"
say "initramfs in $(since "$t") ($(du -h "$work/initramfs.cpio.gz" | cut -f1))"

# ---------------------------------------------------------------------------
# 4. Boot.
accel=${EVOS_VCAN_ACCEL:-tcg}
limit=${EVOS_VCAN_TIMEOUT:-180}
log=$work/console.log
t=$(now)
say "booting: qemu-system-x86_64 -accel $accel (timeout ${limit} s)"
status=0
timeout -k 5 "$limit" qemu-system-x86_64 -accel "$accel" -m 256 -smp 1 \
  -nographic -no-reboot -nic none \
  -kernel "$kernel/vmlinuz" -initrd "$work/initramfs.cpio.gz" \
  -append "console=ttyS0 quiet panic=-1" </dev/null 2>&1 |
  sed -u -e 's/\r$//' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' | tee "$log" || status=$?
took=$(since "$t")
if grep -q '^VCAN-SELFTEST PASS ' "$log" && grep -qx 'VCAN-SELFTEST-EXIT 0' "$log"; then
  say "PASS: VM boot and test in $took"
  exit 0
fi
if ((status == 124)); then
  die "the VM did not finish within ${limit} s (console: $log)"
fi
grep -q '^VCAN-SELFTEST FAIL' "$log" || die "no result line from the VM after $took (console: $log)"
die "the test failed after $took (console: $log)"
