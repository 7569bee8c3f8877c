"""HostCritical on a fake node (pyfakefs): a root disk, NICs, a boot GPU and an NPU."""

from __future__ import annotations

import socket
import struct

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.safety.hostcritical import HostCritical

ROOT = "/sys/devices/pci0000:00"
DISK = "0000:00:04.0"
NIC = "0000:00:03.0"
QUIET_NIC = "0000:00:05.0"
BRIDGED_NIC = "0000:00:06.0"
GPU = "0000:00:02.0"
NPU = "0000:03:00.0"
NVME = "0000:00:07.0"
ANY = "0.0.0.0"  # noqa: S104 - route fields: default destination, no gateway, no mask


def hex4(ip: str) -> str:
    """An IPv4 address as /proc/net/route prints it (native-endian integer of its bytes)."""
    return f"{struct.unpack('=I', socket.inet_aton(ip))[0]:08X}"


def hex16(ip: str) -> str:
    return socket.inet_pton(socket.AF_INET6, ip).hex()


def pci(fs: FakeFilesystem, bdf: str, path: str, boot_vga: str | None = None) -> None:
    fs.create_dir(path)
    fs.create_symlink(f"/sys/bus/pci/devices/{bdf}", path)
    if boot_vga is not None:
        fs.create_file(f"{path}/boot_vga", contents=boot_vga + "\n")


def block(fs: FakeFilesystem, name: str, path: str, numbers: str) -> None:
    fs.create_file(f"{path}/dev", contents=numbers + "\n")
    fs.create_dir(f"{path}/holders")
    fs.create_dir(f"{path}/slaves")
    fs.create_symlink(f"/sys/class/block/{name}", path)


def netdev(fs: FakeFilesystem, name: str, path: str) -> None:
    fs.create_dir(path)
    fs.create_symlink(f"/sys/class/net/{name}", path)


def route_line(iface: str, dest: str, gateway: str, mask: str, flags: int) -> str:
    return f"{iface}\t{hex4(dest)}\t{hex4(gateway)}\t{flags:04X}\t0\t0\t100\t{hex4(mask)}\t0\t0\t0"


def route6_line(iface: str, dest: str, length: int, hop: str = "::", flags: int = 1) -> str:
    zero = "0" * 32
    return (
        f"{hex16(dest)} {length:02x} {zero} 00 {hex16(hop)} 00000100 00000001 00000000 "
        f"{flags:08x} {iface:>8}"
    )


@pytest.fixture
def node(fs: FakeFilesystem) -> Sysfs:
    fs.create_dir("/sys/class/block")
    fs.create_dir("/sys/class/net")
    # virtio disk: vda1 mounted at /, vda2 under LVM (dm-0) mounted at /data, vda3 swap.
    pci(fs, DISK, f"{ROOT}/{DISK}")
    vda = f"{ROOT}/{DISK}/virtio1/block/vda"
    block(fs, "vda", vda, "253:0")
    block(fs, "vda1", f"{vda}/vda1", "253:1")
    block(fs, "vda2", f"{vda}/vda2", "253:2")
    block(fs, "vda3", f"{vda}/vda3", "253:3")
    dm0 = "/sys/devices/virtual/block/dm-0"
    block(fs, "dm-0", dm0, "254:0")
    fs.create_file(f"{dm0}/dm/name", contents="vg-data\n")
    fs.create_symlink(f"{vda}/vda2/holders/dm-0", dm0)
    fs.create_symlink(f"{dm0}/slaves/vda2", f"{vda}/vda2")
    # An NVMe drive that is not mounted at all.
    pci(fs, NVME, f"{ROOT}/{NVME}")
    block(fs, "nvme0n1", f"{ROOT}/{NVME}/nvme/nvme0/nvme0n1", "259:0")
    block(fs, "loop0", "/sys/devices/virtual/block/loop0", "7:0")
    # NICs: eth0 with addresses and routes; enp0s5 up with only link-local; eth1 in br0.
    pci(fs, NIC, f"{ROOT}/{NIC}")
    netdev(fs, "eth0", f"{ROOT}/{NIC}/virtio0/net/eth0")
    pci(fs, QUIET_NIC, f"{ROOT}/{QUIET_NIC}")
    netdev(fs, "enp0s5", f"{ROOT}/{QUIET_NIC}/net/enp0s5")
    pci(fs, BRIDGED_NIC, f"{ROOT}/{BRIDGED_NIC}")
    netdev(fs, "eth1", f"{ROOT}/{BRIDGED_NIC}/net/eth1")
    netdev(fs, "br0", "/sys/devices/virtual/net/br0")
    fs.create_symlink(f"{ROOT}/{BRIDGED_NIC}/net/eth1/master", "/sys/devices/virtual/net/br0")
    fs.create_symlink("/sys/devices/virtual/net/br0/lower_eth1", f"{ROOT}/{BRIDGED_NIC}/net/eth1")
    netdev(fs, "lo", "/sys/devices/virtual/net/lo")
    # The boot GPU and the NPU.
    pci(fs, GPU, f"{ROOT}/{GPU}", boot_vga="1")
    pci(fs, NPU, f"{ROOT}/0000:00:01.0/{NPU}", boot_vga=None)
    fs.create_file(f"{ROOT}/0000:00:01.0/{NPU}/rebellions/rbln0/dev", contents="240:0\n")

    fs.create_file(
        "/proc/self/mountinfo",
        contents=(
            "22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro\n"
            "23 22 0:21 / /run rw,nosuid shared:5 - tmpfs tmpfs rw,mode=755\n"
            "30 22 254:0 / /data rw,relatime shared:9 - xfs /dev/mapper/vg-data rw\n"
            "31 22 254:0 /kubelet /var/lib/kube\\040let rw - xfs /dev/mapper/vg-data rw\n"
            "40 22 7:0 / /snap/core rw - squashfs /dev/loop0 ro\n"
        ),
    )
    fs.create_file(
        "/proc/swaps",
        contents=(
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
            "/dev/vda3                               partition\t1048572\t\t0\t\t-2\n"
        ),
    )
    fs.create_file(
        "/proc/net/route",
        contents="\n".join(
            [
                "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow"
                "\tIRTT",
                route_line("eth0", ANY, "10.0.2.2", ANY, 0x3),
                route_line("eth0", "10.0.2.0", ANY, "255.255.255.0", 0x1),
                route_line("br0", "192.168.1.0", ANY, "255.255.255.0", 0x1),
                route_line("enp0s5", "172.16.0.0", ANY, "255.255.0.0", 0x201),  # reject
            ]
        )
        + "\n",
    )
    fs.create_file(
        "/proc/net/fib_trie",
        contents=(
            "Main:\n"
            "  +-- 0.0.0.0/0 3 0 5\n"
            "     |-- 0.0.0.0\n"
            "        /0 universe UNICAST\n"
            "     +-- 10.0.2.0/24 2 0 2\n"
            "        |-- 10.0.2.0\n"
            "           /24 link UNICAST\n"
            "        |-- 10.0.2.15\n"
            "           /32 host LOCAL\n"
            "        |-- 10.0.2.255\n"
            "           /32 link BROADCAST\n"
            "     |-- 127.0.0.1\n"
            "        /32 host LOCAL\n"
            "     |-- 192.168.1.10\n"
            "        /32 host LOCAL\n"
            "Local:\n"
            "  +-- 0.0.0.0/0 3 0 5\n"
            "     |-- 10.0.2.15\n"
            "        /32 host LOCAL\n"
        ),
    )
    fs.create_file(
        "/proc/net/if_inet6",
        contents=(
            f"{hex16('::1')} 01 80 10 80       lo\n"
            f"{hex16('fe80::5054:ff:fe12:3456')} 02 40 20 80     eth0\n"
            f"{hex16('2001:db8::5')} 02 40 00 00     eth0\n"
            f"{hex16('fe80::5054:ff:fe12:3457')} 03 40 20 80   enp0s5\n"
        ),
    )
    fs.create_file(
        "/proc/net/ipv6_route",
        contents="\n".join(
            [
                route6_line("eth0", "fe80::", 64),
                route6_line("enp0s5", "fe80::", 64),
                route6_line("enp0s5", "ff00::", 8),
                route6_line("eth0", "2001:db8::", 64),
                route6_line("lo", "::", 0, flags=0x200),
            ]
        )
        + "\n",
    )
    return Sysfs("/sys", "/dev")


def reasons(sysfs: Sysfs, bdf: str) -> list[str]:
    return HostCritical(sysfs, proc_root="/proc").reasons(PciAddress.parse(bdf))


def test_root_disk_is_protected(node: Sysfs) -> None:
    found = reasons(node, DISK)
    assert found == [
        "it backs the xfs filesystem mounted at /data, /var/lib/kube let "
        "(on /dev/mapper/vg-data (dm-0), stacked on vda2)",
        "it backs the ext4 filesystem mounted at / (on /dev/vda1)",
        "it backs active swap on /dev/vda3",
    ]


def test_nic_with_addresses_is_protected(node: Sysfs) -> None:
    (reason,) = reasons(node, NIC)
    assert reason.startswith("its network interface eth0 has address 10.0.2.15, 2001:db8::5")
    assert "routes default via 10.0.2.2, 10.0.2.0/24, 2001:db8::/64" in reason
    assert "fe80" not in reason


def test_bridged_nic_is_protected_through_its_bridge(node: Sysfs) -> None:
    assert reasons(node, BRIDGED_NIC) == [
        "its network interface br0 (on eth1) has address 192.168.1.10 and routes 192.168.1.0/24"
    ]


def test_boot_gpu_is_protected(node: Sysfs) -> None:
    (reason,) = reasons(node, GPU)
    assert "boot_vga=1" in reason


@pytest.mark.parametrize("bdf", [NPU, QUIET_NIC, NVME])
def test_functions_the_host_does_not_need(node: Sysfs, bdf: str) -> None:
    assert reasons(node, bdf) == []


def test_one_guard_reads_the_tables_once(node: Sysfs, fs: FakeFilesystem) -> None:
    guard = HostCritical(node)
    assert guard.reasons(PciAddress.parse(DISK))
    fs.remove("/proc/self/mountinfo")
    assert guard.reasons(PciAddress.parse(DISK)), "the snapshot is reused"
    assert guard.reasons(PciAddress.parse(NPU)) == []


def test_hosts_mountinfo_and_udev_symlinks(node: Sysfs, fs: FakeFilesystem) -> None:
    """btrfs shows an anonymous 0:N device: the source (a by-uuid link) is resolved via /dev."""
    fs.remove("/proc/self/mountinfo")
    fs.create_file("/proc/self/mountinfo", contents="1 0 0:50 / / rw - overlay overlay rw\n")
    fs.create_file(
        "/proc/1/mountinfo",
        contents="22 1 0:33 / / rw shared:1 - btrfs /dev/disk/by-uuid/abcd rw\n",
    )
    fs.create_file("/dev/vda1")
    fs.create_symlink("/dev/disk/by-uuid/abcd", "../../vda1")
    assert reasons(node, DISK) == [
        "it backs the btrfs filesystem mounted at / (on /dev/vda1)",
        "it backs active swap on /dev/vda3",
    ]


def test_falls_back_to_proc_mounts(node: Sysfs, fs: FakeFilesystem) -> None:
    fs.remove("/proc/self/mountinfo")
    fs.create_file("/proc/mounts", contents="/dev/vda1 / ext4 rw 0 0\n")
    assert reasons(node, DISK)[0] == "it backs the ext4 filesystem mounted at / (on /dev/vda1)"


def test_garbage_tables_never_raise(node: Sysfs, fs: FakeFilesystem) -> None:
    for path in (
        "/proc/self/mountinfo",
        "/proc/swaps",
        "/proc/net/route",
        "/proc/net/fib_trie",
        "/proc/net/if_inet6",
        "/proc/net/ipv6_route",
    ):
        fs.remove(path)
        fs.create_file(
            path,
            contents="garbage - x\n\n|-- 1.2.3\n/32 host LOCAL\nzz zz zz zz zz zz zz zz zz zz\n",
        )
    for bdf in (DISK, NIC, BRIDGED_NIC, GPU, NPU):
        reasons(node, bdf)


def test_no_proc_at_all(fs: FakeFilesystem) -> None:
    fs.create_dir(f"{ROOT}/{NPU}")
    fs.create_symlink(f"/sys/bus/pci/devices/{NPU}", f"{ROOT}/{NPU}")
    assert HostCritical(Sysfs("/sys"), proc_root="/nowhere").reasons(PciAddress.parse(NPU)) == []
