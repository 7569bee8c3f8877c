"""A synthetic /proc of many busy processes, as real files and symlinks (``--proc-root``).

What the product's in-use scan reads per process: ``PID/fd/`` (one symlink per descriptor,
its target as the kernel prints it: a path, ``socket:[N]``, ``pipe:[N]``,
``anon_inode:[...]``), ``PID/maps`` (libraries and anonymous mappings, read when a BAR file
is a target) and ``PID/comm``. PID 1 also has a ``mountinfo``, and ``mounts`` exists, so the
host guard reads what it would on a host. No process holds a benchmark function: the scan
finds nothing and the bind proceeds; only its cost is measured.
"""

from __future__ import annotations

import os

_LIBS = (
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/usr/lib/x86_64-linux-gnu/libm.so.6",
    "/usr/lib/x86_64-linux-gnu/libpthread.so.0",
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib/x86_64-linux-gnu/libcrypto.so.3",
    "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
)
_MOUNTINFO = (
    "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
    "23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n"
    "24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
)


def _fd_target(pid: int, fd: int) -> str:
    """What ``readlink /proc/PID/fd/FD`` shows: stdio, sockets, pipes, files, libraries."""
    if fd < 3:
        return "/dev/null" if fd == 0 else f"/dev/pts/{pid % 8}"
    kinds = (
        *(f"socket:[{100000 + pid * 256 + fd}]",) * 4,
        *(f"pipe:[{200000 + pid * 256 + fd}]",) * 2,
        "anon_inode:[eventfd]",
        f"/var/log/app-{pid % 50}/{fd}.log",
        _LIBS[fd % len(_LIBS)],
        f"/run/work-{pid}/{fd} (deleted)",
    )
    return kinds[(pid * 7 + fd) % len(kinds)]


def _maps(pid: int, lines: int) -> str:
    out = []
    address = 0x5555_0000_0000 + pid * 0x1000_0000
    for index in range(lines):
        name = _LIBS[index % len(_LIBS)] if index % 3 else ("[heap]" if index == 0 else "")
        start, address = address, address + 0x21000
        out.append(f"{start:012x}-{address:012x} r-xp 00000000 fe:01 {1000 + index:<8d} {name}")
    return "\n".join(out) + "\n"


def generate(root: str, processes: int, fds: int, *, maps_lines: int = 60) -> str:
    """Write ``processes`` processes (PIDs 1..N) with ``fds`` descriptors each under ``root``."""
    os.makedirs(root, exist_ok=False)
    with open(os.path.join(root, "mounts"), "w", encoding="utf-8") as handle:
        handle.write("/dev/vda1 / ext4 rw,relatime 0 0\nproc /proc proc rw 0 0\n")
    for pid in range(1, processes + 1):
        base = os.path.join(root, str(pid))
        fd_dir = os.path.join(base, "fd")
        os.makedirs(fd_dir)
        for fd in range(fds):
            os.symlink(_fd_target(pid, fd), os.path.join(fd_dir, str(fd)))
        with open(os.path.join(base, "maps"), "w", encoding="utf-8") as handle:
            handle.write(_maps(pid, maps_lines))
        with open(os.path.join(base, "comm"), "w", encoding="utf-8") as handle:
            handle.write(f"worker-{pid}\n")
        if pid == 1:
            with open(os.path.join(base, "mountinfo"), "w", encoding="utf-8") as handle:
                handle.write(_MOUNTINFO)
    return root
