"""Binding many VFs when vfio-pci's probe is slow, on a generated node of real files.

Usage: ``python -m benchmarks.vffiles --vfs 256 --delay 2.0`` prints one JSON object, as
:mod:`benchmarks.vfbind` does for the fake kernel on pyfakefs: the wall time of
``vfio-manager bind-all`` of one VF and of ``vfs`` VFs (64 to a PF, each VF in an IOMMU
group of its own, on their native driver) with as many lanes as VFs under one deadline,
then the writes of a second run. The node is :mod:`benchmarks.fakenode`'s, in a temporary
folder in memory where there is one (as sysfs and /run are); the product writes from its
forked child as on a node, and the child runs :class:`benchmarks.fakenode.StoreFunctions`
in place of the write syscall (vfio-pci's probe sleeping ``delay`` seconds there, as a
kernel write blocks). So the product's own cost is measured at a real file system's speed.
This process imports the product and nothing of the tests' harness, as a node's would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Optional

from benchmarks import fakenode
from benchmarks.context import default_workdir_parent
from benchmarks.entry import cli_entry, import_product, run
from vfio_manager.safety.writer import ChildWriter

PER_PF = 64


def bind(vfs: int, delay: float) -> dict[str, Any]:
    """One generated node of ``vfs`` VFs; bind-all twice (the second must write nothing)."""
    entry = cli_entry()
    with tempfile.TemporaryDirectory(prefix="vffiles-", dir=default_workdir_parent()) as root:
        node = fakenode.generate(f"{root}/node", -(-vfs // PER_PF), other_share=0)
        bdfs: list[str] = []
        for pf in list(node.npus):
            count = min(PER_PF, vfs - len(bdfs))
            bdfs += [vf.bdf for vf in fakenode.add_vfs(node, pf, count)]
        store = fakenode.StoreFunctions(node, probe_delay=delay)
        argv = [
            *node.cli_args(), "--log-format", "json", "--parallel", str(max(1, vfs)),
            "bind-all", "--device-id", f"{fakenode.NPU_VF:#x}", "--json",
        ]  # fmt: skip
        defaults = ChildWriter.__init__.__kwdefaults__
        assert defaults is not None
        syscall, defaults["write"] = defaults["write"], store.write
        try:
            runs = []
            for _ in range(2):
                start = time.monotonic()
                code, out = run(entry, argv)
                runs.append((time.monotonic() - start, code, _writes(out)))
        finally:
            defaults["write"] = syscall
        links = [os.readlink(f"{node.sys_root}/bus/pci/devices/{bdf}/driver") for bdf in bdfs]
    (seconds, code, writes), (again, again_code, again_writes) = runs
    return {
        "vfs": vfs,
        "seconds": seconds,
        "exit_code": code,
        "bound": sum(1 for link in links if os.path.basename(link) == fakenode.VFIO),
        "writes": writes,
        "second_run_seconds": again,
        "second_run_exit_code": again_code,
        "second_run_writes": again_writes,
    }


def _writes(stdout: str) -> Optional[int]:
    try:
        return int(json.loads(stdout)["writes"])
    except (ValueError, KeyError, TypeError):
        return None


def measure(vfs: int, delay: float) -> dict[str, Any]:
    import_product()
    one, many = bind(1, delay), bind(vfs, delay)
    return {"delay": delay, "one": one, "many": many, "ratio": many["seconds"] / one["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vfs", type=int, default=256)
    parser.add_argument("--delay", type=float, default=2.0)
    args = parser.parse_args()
    json.dump(measure(args.vfs, args.delay), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
