#!/bin/sh
# ExecStart of kubelet.service in the guest: the drivers of the e1000e and the e1000 and the
# state of vfio-manager.service at the moment kubelet would start, as KEY=VALUE lines.
mkdir -p /run/vfio-e2e
{
    for bdf in 0000:03:00.0 0000:00:05.0; do
        drv=$(readlink "/sys/bus/pci/devices/$bdf/driver") && drv=${drv##*/} || drv=none
        echo "$bdf=$drv"
    done
    systemctl show -p ActiveState -p StatusText vfio-manager.service
} >/run/vfio-e2e/kubelet.tmp
mv /run/vfio-e2e/kubelet.tmp /run/vfio-e2e/kubelet
