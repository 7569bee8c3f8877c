# Piped into the RBLN operator's vfio-manager container (docs/operator.md, step 3):
#   kubectl -n "$NS" exec -i "$POD" -- sh -s < deploy/kubernetes/rbln-operator/neutralise-prestop.sh
# Makes /bin/vfio-manage.sh a no-op inside this running container, so the pod's preStop hook
# (`vfio-manage.sh unbind --all` or `cleanup --all`) touches no device when the pod goes. A
# bind mount over the script (itself a subPath bind mount of the operator's ConfigMap): with
# the image's mount(8), or else the host's through the pod's /host into this container's
# mount namespace. Only sh, cat, chmod, readlink and chroot of the image are used, all of
# which the operator's own script needs.
set -eu
noop=/tmp/vfio-manage.sh.noop
printf '#!/bin/sh\n# vfio-manager cut-over: no-op\nexit 0\n' >"$noop"
chmod 0755 "$noop"
if command -v mount >/dev/null 2>&1; then
    mount --bind "$noop" /bin/vfio-manage.sh
else
    me=$(readlink /proc/self/ns/mnt)
    pid=
    for proc in /host/proc/[0-9]*; do
        if [ "$(readlink "$proc/ns/mnt" 2>/dev/null)" = "$me" ]; then
            pid=${proc##*/}
            break
        fi
    done
    if [ -z "$pid" ]; then
        echo "neutralise: no process of this container under /host/proc" >&2
        exit 1
    fi
    chroot /host mount -N "/proc/$pid/ns/mnt" --bind "$noop" /bin/vfio-manage.sh
fi
if [ "$(cat /bin/vfio-manage.sh)" != "$(cat "$noop")" ]; then
    echo "neutralise: /bin/vfio-manage.sh is still the operator's script" >&2
    exit 1
fi
echo "neutralised: /bin/vfio-manage.sh is a no-op in this container"
