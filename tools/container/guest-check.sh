#!/bin/sh
# tools/container/guest-check.sh - runs INSIDE the QEMU guest of tools/e2e/run, started by
# tools/container/guest. Never run it anywhere else: it binds a real function to vfio-pci.
#
# It runs the container image as a privileged pod would: the image's own filesystem (from
# `podman export`) as the root, the guest's real /sys, /dev and /proc mounted into it, the
# guest's / at /host (HOST_ROOT), a fresh /run, and the image's own environment and
# entrypoint. Then bind-all, status and unbind-all on the emulated e1000e (8086:10d3, class
# 0x020000, 0000:03:00.0), which stands in for an NPU as in tests/e2e.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
BDF=0000:03:00.0
SELECT="--vendor 0x8086 --class 0x020000 --device-id 0x10d3"
IMG=/tmp/vfio-manager-image # the guest's RAM

say() { echo "container-guest: [$(cut -d' ' -f1 /proc/uptime)s] $*"; }
fail() { say "FAIL: $*"; exit 1; }

# The same guard as tests/e2e/conftest.py: only in the e2e guest.
if ! grep -qw vfio_e2e.guest=1 /proc/cmdline || [ ! -f /etc/vfio-manager-e2e-guest ]; then
    say "not the vfio-manager e2e guest; refusing to write to this /sys"
    exit 4
fi

say "unpacking the image's filesystem ($(du -h "$here/image.tar" | cut -f1))"
mkdir -p "$IMG"
tar -xf "$here/image.tar" -C "$IMG"
mount --bind /sys "$IMG/sys"
mount --rbind /dev "$IMG/dev"
mount -t proc proc "$IMG/proc"
mount -t tmpfs tmpfs "$IMG/run"
mkdir -p "$IMG/host" # the one thing a runtime adds: the mount point of the host's /
mount --rbind / "$IMG/host"
mount -o remount,bind,ro "$IMG/host"

# image.run (written by tools/container/guest from `podman image inspect`): the image's Env
# and Entrypoint as one `exec env -i VAR=value... ENTRYPOINT "$@"` line, shell-quoted.
launcher=$(cat "$here/image.run")
run() { # run ARGS...: the image's entrypoint with ARGS, as the container would start it
    chroot "$IMG" /bin/sh -c "$launcher" vfio-manager "$@"
}
driver() { basename "$(readlink "/sys/bus/pci/devices/$BDF/driver" 2>/dev/null)" 2>/dev/null || echo none; }

say "$(run --version)"
start=$(driver)
say "$BDF starts on $start"
[ "$start" != vfio-pci ] || fail "$BDF is already on vfio-pci"

# shellcheck disable=SC2086
run status $SELECT

say "bind-all (loads vfio-pci through chroot /host modprobe)"
# shellcheck disable=SC2086
run bind-all $SELECT || fail "bind-all exited $?"
[ "$(driver)" = vfio-pci ] || fail "after bind-all $BDF is on $(driver)"
group=$(basename "$(readlink "/sys/bus/pci/devices/$BDF/iommu_group")")
[ -e "/dev/vfio/$group" ] || fail "no /dev/vfio/$group after bind-all"
[ -d "$IMG/run/vfio-manager" ] || fail "no state directory in the container's /run"

say "bind-all again: converged, no writes"
# shellcheck disable=SC2086
out=$(run --log-format json bind-all --json $SELECT) || fail "second bind-all exited $?"
echo "$out" | grep -q '"writes": 0' || fail "second bind-all wrote: $out"

# shellcheck disable=SC2086
run status --check $SELECT || fail "status --check after bind-all exited $?"

say "unbind-all"
# shellcheck disable=SC2086
run unbind-all $SELECT || fail "unbind-all exited $?"
[ "$(driver)" = "$start" ] || fail "after unbind-all $BDF is on $(driver), not $start"
# shellcheck disable=SC2086
if run status --check $SELECT >/dev/null; then fail "status --check passes with $BDF on $start"; fi

say "the checker contract: $(chroot "$IMG" /bin/sh -c 'date -u +%FT%TZ; sleep 0.1; echo sh-date-sleep-ok' | tr '\n' ' ')"
say "PASS"
