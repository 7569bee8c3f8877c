"""How the kernel's store functions read the bytes a writer handed to a sysfs file.

A sysfs store gets a buffer, not a string: C string functions stop at the first NUL, most
stores ignore one trailing newline, and numbers go through ``kstrtoul``/``sscanf``. Each
rule module parses its input with these so the errnos match the kernel's.
"""

from __future__ import annotations

import errno
import os
import re


def oserror(code: int) -> OSError:
    """The error ``os.write`` raises when a store returns ``-code``."""
    return OSError(code, os.strerror(code))


def device_name(data: bytes) -> str:
    """The name a bus store receives: C string (cut at NUL), one trailing newline ignored."""
    text = data.split(b"\0", 1)[0]
    if text.endswith(b"\n"):
        text = text[:-1]
    return text.decode("utf-8", "replace")


def scan_hex(data: bytes, limit: int) -> list[int]:
    """sscanf("%x %x ...") on a sysfs buffer: the fields that parsed, in order."""
    values: list[int] = []
    for token in data.split(b"\0", 1)[0].decode("ascii", "replace").split()[:limit]:
        digits = token[2:] if token.lower().startswith("0x") else token
        match = re.match(r"[0-9a-fA-F]+", digits)
        if match is None:
            break
        values.append(int(match.group(0), 16) & 0xFFFFFFFF)
        if match.end() != len(digits):
            break
    return values


def kstrtoul(data: bytes) -> int:
    """kstrtoul(buf, 0): one optional trailing newline, base from the prefix; EINVAL else."""
    text = data.split(b"\0", 1)[0].decode("ascii", "replace")
    if text.endswith("\n"):
        text = text[:-1]
    try:
        if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
            return int(text, 16)
        if re.fullmatch(r"0[0-7]+", text):
            return int(text, 8)
        if re.fullmatch(r"[0-9]+", text):
            return int(text, 10)
    except ValueError:
        pass
    raise oserror(errno.EINVAL)
