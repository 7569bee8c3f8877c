"""Run the product's CLI in a child process and count what it opens and lists under a path.

Usage: ``python -m benchmarks.audited COUNTS.json PREFIX -- ARGS...`` (the CLI's arguments)

A ``sys.addaudithook`` hook counts the ``open``, ``os.listdir`` and ``os.scandir`` events
whose path starts with PREFIX (the synthetic /proc): a converged run must show none, a run
that scans shows one listing per process. The product is started as ``python -m
vfio_manager`` would start it (``runpy``), so nothing of its internals is imported here.
No strace is needed; what the hook cannot see (``readlink``, ``stat``) always follows a
listing it does see.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from typing import Any

_EVENTS = ("open", "os.listdir", "os.scandir")


def main() -> None:
    counts_path, prefix, sep, *argv = sys.argv[1:]
    if sep != "--" or not argv:
        raise SystemExit("usage: python -m benchmarks.audited COUNTS.json PREFIX -- ARGS...")
    prefix = prefix.rstrip("/")
    counts = dict.fromkeys(_EVENTS, 0)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in counts and args:
            path = args[0]
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            if isinstance(path, str) and (path == prefix or path.startswith(prefix + "/")):
                counts[event] += 1

    sys.addaudithook(hook)
    sys.argv = ["vfio-manager", *argv]
    try:
        runpy.run_module("vfio_manager", run_name="__main__", alter_sys=True)
    finally:
        with open(counts_path, "w", encoding="utf-8") as handle:
            json.dump(counts, handle)


if __name__ == "__main__":
    main()
