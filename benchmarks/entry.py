"""The ``vfio-manager`` console script's entry point, run inside a benchmark's own process.

The in-process benchmarks (a fake kernel on pyfakefs, or a generated node whose writes run
the kernel's store functions) enter through the entry point found in the package metadata,
and nothing deeper.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import vfio_manager

Entry = Callable[[Sequence[str]], None]


def cli_entry() -> Entry:
    """The function the ``vfio-manager`` console script calls (wherever the CLI module is)."""
    every: Any = importlib.metadata.entry_points()
    scripts = (
        every.select(group="console_scripts")
        if hasattr(every, "select")
        else every.get("console_scripts", [])  # Python 3.9
    )
    found = [ep for ep in scripts if ep.name == "vfio-manager"]
    if not found:
        raise LookupError("no vfio-manager console script: pip install -e . first")
    entry: Entry = found[0].load()
    return entry


def import_product() -> None:
    """Import every product module now (before pyfakefs starts: it patches modules it sees)."""
    for module in pkgutil.walk_packages(vfio_manager.__path__, "vfio_manager."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)


def run(
    entry: Entry, argv: Sequence[str], env: Optional[Mapping[str, str]] = None
) -> tuple[int, str]:
    """Run the CLI with ``argv`` here (``env`` set meanwhile): its exit status and stdout."""
    from click.testing import CliRunner

    with CliRunner().isolation(env=env) as streams:
        try:
            entry(list(argv))
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        return code, streams[0].getvalue().decode("utf-8", "replace")
