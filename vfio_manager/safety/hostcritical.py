"""Refuse to take away what the host itself runs on: its disks, its network, its console
(a mount or swap on a block device under the function, or stacked on one; an interface with
an address or route under it, or a bridge, bond or VLAN on one; the boot VGA device)."""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.procfs import DEFAULT_PROC_ROOT, Procfs
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.log import get_logger

log = get_logger("vfio_manager.safety.hostcritical")

_MAX_LISTED = 3
_RTF_UP = 0x0001
_RTF_GATEWAY = 0x0002
_RTF_REJECT = 0x0200
_IPV6_SCOPE_HOST_OR_LINK = 0x10 | 0x20
_LINK_LOCAL6 = ipaddress.IPv6Network("fe80::/10")
_MULTICAST6 = ipaddress.IPv6Network("ff00::/8")


@dataclass(frozen=True)
class _Mount:
    numbers: str
    source: str
    mountpoint: str
    fstype: str


def _unescape(text: str) -> str:
    """Mount tables escape space, tab, newline and backslash as ``\\NNN`` (octal)."""
    return re.sub(r"\\([0-7]{3})", lambda octal: chr(int(octal[1], 8)), text)


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"{shown} (and {more} more)" if more > 0 else shown


def _ipv4(hex_text: str) -> ipaddress.IPv4Address:
    """/proc/net/route prints each address as the native-endian integer of its bytes."""
    return ipaddress.IPv4Address(struct.pack("=I", int(hex_text, 16)))


class HostCritical:
    """Why a function must not be taken from the host; reads the host's tables once."""

    def __init__(self, sysfs: Sysfs, *, proc_root: str = DEFAULT_PROC_ROOT) -> None:
        self.sysfs = sysfs
        self.proc = Procfs(proc_root)
        self._loaded = False  # the tables below, read on the first reasons() call

    def reasons(self, address: PciAddress) -> list[str]:
        """Human-readable reasons naming the disk, mount, interface or console at stake."""
        self._load()
        prefix = self.sysfs.device_realpath(address).rstrip("/") + "/"
        reasons = self._storage_reasons(prefix)
        reasons += self._network_reasons(prefix)
        if self.sysfs.read_device_attr(address, "boot_vga") == "1":
            reasons.append(
                "it is the boot VGA device (boot_vga=1): the firmware and kernel console draw on it"
            )
        if reasons:
            log.info("guard", bdf=str(address), outcome="protected", reasons=reasons)
        return reasons

    def _storage_reasons(self, prefix: str) -> list[str]:
        direct = {name for name, real in self._blocks.items() if real.startswith(prefix)}
        if not direct:
            return []
        stacked = self._stacked_on(direct)
        names = direct | set(stacked)
        numbers = {n: self.sysfs.block_dev_numbers(n) for n in names}
        by_numbers = {num: name for name, num in numbers.items() if num is not None}
        dm_names = {self.sysfs.block_dm_name(n): n for n in names if n.startswith("dm-")}
        dm_names.pop(None, None)

        def device_of(numbers_field: str, source: str) -> Optional[str]:
            if numbers_field in by_numbers:
                return by_numbers[numbers_field]
            resolved = self.sysfs.resolve_dev_name(source)
            if resolved in names:
                return resolved
            if source.startswith("/dev/mapper/"):
                return dm_names.get(source[len("/dev/mapper/") :])
            return None

        mounted: dict[str, list[_Mount]] = {}
        for mount in self._mounts:
            device = device_of(mount.numbers, mount.source)
            if device is not None:
                mounted.setdefault(device, []).append(mount)
        reasons: list[str] = []
        for device in sorted(mounted):
            mounts = mounted[device]
            points = _listed(sorted({m.mountpoint for m in mounts}))
            fstypes = "/".join(sorted({m.fstype for m in mounts}))
            reasons.append(
                f"it backs the {fstypes} filesystem mounted at {points} "
                f"(on {self._label(device, stacked)})"
            )
        for source in self._swaps:
            device = device_of("", source)
            if device is not None:
                reasons.append(f"it backs active swap on {self._label(device, stacked)}")
        return reasons

    def _stacked_on(self, direct: set[str]) -> dict[str, str]:
        """Devices stacked (transitively) on ``direct``: name -> the device below it."""
        below: dict[str, str] = {}
        todo = sorted(direct)
        while todo:
            name = todo.pop()
            for holder in self.sysfs.block_holders(name):
                if holder not in direct and holder not in below:
                    below[holder] = name
                    todo.append(holder)
        # The reverse links too: a dm/md device whose slaves sit under the function.
        for name in self._blocks:  # and the reverse links: a dm/md device on slaves below
            if name not in direct and name not in below:
                slaves = self.sysfs.block_slaves(name)
                slave = next((s for s in slaves if s in direct or s in below), None)
                if slave is not None:
                    below[name] = slave
        return below

    def _label(self, device: str, stacked: dict[str, str]) -> str:
        if device not in stacked:
            return f"/dev/{device}"
        dm = self.sysfs.block_dm_name(device) if device.startswith("dm-") else None
        name = f"/dev/mapper/{dm} ({device})" if dm else f"/dev/{device}"
        chain = [stacked[device]]
        while chain[-1] in stacked and len(chain) < 8:
            chain.append(stacked[chain[-1]])
        return f"{name}, stacked on {' on '.join(chain)}"

    def _network_reasons(self, prefix: str) -> list[str]:
        direct = sorted(n for n, real in self._ifaces.items() if real.startswith(prefix))
        reasons: list[str] = []
        seen: set[str] = set()
        todo = [(name, name) for name in direct]
        while todo:
            iface, lower = todo.pop(0)
            if iface in seen:
                continue
            seen.add(iface)
            todo.extend((upper, iface) for upper in self.sysfs.net_uppers(iface))
            addrs = self._addrs.get(iface, [])
            routes = self._routes.get(iface, [])
            if not addrs and not routes:
                continue
            what = f"interface {iface}" if iface == lower else f"interface {iface} (on {lower})"
            parts = [f"address {_listed(addrs)}"] if addrs else []
            parts += [f"routes {_listed(routes)}"] if routes else []
            reasons.append(f"its network {what} has {' and '.join(parts)}")
        return reasons

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # names -> resolved /sys paths, and what the host uses them for
        self._blocks = self.sysfs.class_devices("block")
        self._mounts = self._read_mounts()
        self._swaps = self._read_swaps()
        self._ifaces = self.sysfs.class_devices("net")
        self._addrs, self._routes = self._read_network() if self._ifaces else ({}, {})

    def _lines(self, *parts: str) -> Optional[list[str]]:
        try:
            with open(self.proc.path(*parts), encoding="utf-8", errors="replace") as handle:
                return handle.read().splitlines()
        except OSError:
            return None

    def _read_mounts(self) -> list[_Mount]:
        mounts: set[_Mount] = set()
        readable = False
        for who in ("1", "self"):
            lines = self._lines(who, "mountinfo")
            if lines is None:
                continue
            readable = True
            for fields in map(str.split, lines):  # ID PARENT MAJ:MIN ROOT POINT ... - TYPE SOURCE
                sep = fields.index("-", 6) if "-" in fields[6:] else len(fields)
                if len(fields) >= sep + 3:
                    source, point = _unescape(fields[sep + 2]), _unescape(fields[4])
                    mounts.add(_Mount(fields[2], source, point, fields[sep + 1]))
        for fields in map(str.split, [] if readable else self._lines("mounts") or []):
            if len(fields) >= 3:
                mounts.add(_Mount("", _unescape(fields[0]), _unescape(fields[1]), fields[2]))
        if not mounts:
            log.warning("guard: no mount table readable", proc=self.proc.root)
        return sorted(mounts, key=lambda m: (m.mountpoint, m.source))

    def _read_swaps(self) -> list[str]:
        lines = self._lines("swaps") or []
        return [_unescape(line.split()[0]) for line in lines[1:] if line.split()]

    def _read_network(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Addresses and routes per interface."""
        addrs: dict[str, list[str]] = {}
        routes: dict[str, list[str]] = {}
        connected: list[tuple[str, ipaddress.IPv4Network]] = []  # place local addresses
        for iface, network, gateway in self._routes4():
            dest = "default" if network.prefixlen == 0 else str(network)
            routes.setdefault(iface, []).append(
                dest if gateway is None else f"{dest} via {gateway}"
            )
            if gateway is None:
                connected.append((iface, network))
        connected.sort(key=lambda route: route[1].prefixlen, reverse=True)
        for local in self._local4():
            owner = next((iface for iface, net in connected if local in net), None)
            if owner is not None:
                addrs.setdefault(owner, []).append(str(local))
        for iface, addr in self._addrs6():
            addrs.setdefault(iface, []).append(addr)
        for iface, route_text in self._routes6():
            routes.setdefault(iface, []).append(route_text)
        return (
            {k: list(dict.fromkeys(v)) for k, v in addrs.items()},
            {k: list(dict.fromkeys(v)) for k, v in routes.items()},
        )

    def _routes4(
        self,
    ) -> Iterator[tuple[str, ipaddress.IPv4Network, Optional[ipaddress.IPv4Address]]]:
        for line in (self._lines("net", "route") or [])[1:]:
            fields = line.split()
            if len(fields) < 8 or fields[0] == "lo":
                continue
            try:
                flags = int(fields[3], 16)
                dest, gateway, mask = _ipv4(fields[1]), _ipv4(fields[2]), _ipv4(fields[7])
                network = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
            except (ValueError, struct.error):
                continue
            if not flags & _RTF_UP or flags & _RTF_REJECT:
                continue
            yield fields[0], network, gateway if flags & _RTF_GATEWAY and int(gateway) else None

    def _local4(self) -> list[ipaddress.IPv4Address]:
        """Local IPv4 addresses: ``|-- A.B.C.D`` leaves followed by ``/32 host LOCAL``."""
        found: dict[ipaddress.IPv4Address, None] = {}
        leaf: Optional[ipaddress.IPv4Address] = None
        for line in self._lines("net", "fib_trie") or []:
            text = line.strip()
            if text.startswith("|--"):
                try:
                    leaf = ipaddress.IPv4Address(text[3:].strip())
                except ValueError:
                    leaf = None
            elif text.startswith("/32") and text.split()[-1:] == ["LOCAL"] and leaf is not None:
                if not leaf.is_loopback:
                    found[leaf] = None
            elif not text.startswith("/"):
                leaf = None
        return list(found)

    def _addrs6(self) -> Iterator[tuple[str, str]]:
        for line in self._lines("net", "if_inet6") or []:
            fields = line.split()
            if len(fields) < 6 or fields[5] == "lo":
                continue
            try:
                addr = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
                scope = int(fields[3], 16)
            except ValueError:
                continue
            if not scope & _IPV6_SCOPE_HOST_OR_LINK:
                yield fields[5], str(addr)

    def _routes6(self) -> Iterator[tuple[str, str]]:
        for line in self._lines("net", "ipv6_route") or []:
            fields = line.split()
            if len(fields) < 10 or fields[9] == "lo":
                continue
            try:
                dest = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
                length = int(fields[1], 16)
                hop = ipaddress.IPv6Address(bytes.fromhex(fields[4]))
                flags = int(fields[8], 16)
                network = ipaddress.IPv6Network(f"{dest}/{length}", strict=False)
            except ValueError:
                continue
            if flags & _RTF_REJECT or any(map(network.subnet_of, (_LINK_LOCAL6, _MULTICAST6))):
                continue
            text = "default" if length == 0 else str(network)
            yield fields[9], f"{text} via {hop}" if int(hop) else text
