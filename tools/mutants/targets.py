"""Every module of the package and, for each, the fast-suite files that can notice a change to it.

A module's list is its own test files first (a killed mutant stops early: ``pytest -x``), then
every file of the suite that drives it: its layer's tests, the layers above that reach it
through the pipeline or the CLI on the fake kernel. Left out everywhere, because one surviving
mutant would cost minutes: tests/pipeline/test_fault_matrix.py, test_properties.py and
test_bad_input.py (hypothesis and the fault matrix, ~20-60 s each alone),
tests/daemon/test_http_process.py (the daemon as a process under 2,000 slow clients), the
fake kernel's own tests (tests/harness_tests) and tests/deploy's manifest checks. Where a
process test is the only one that can notice a module, it stays (tests/pipeline/test_crash.py
for the plan, test_interrupt.py for the pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    path: str
    tests: tuple[str, ...]


def _files(folder: str, *names: str) -> tuple[str, ...]:
    return tuple(f"tests/{folder}/test_{name}.py" for name in names)


_KERNEL = _files("kernel", "address", "inventory", "procfs", "sysfs", "uevents")
_HOST = _files("host", "modalias", "modules", "preflight")
_SAFETY = _files(
    "safety", "intents", "holders", "hostcritical", "journal", "writer", "statedir", "lock",
    "stuck_write_process", "upgrade",
)  # fmt: skip
_PIPELINE = _files(
    "pipeline", "plan", "selection", "engine", "transition", "refusals", "as_found", "settle",
    "journal_failures", "side_by_side", "recorded_replay", "snapshots", "sriov_plan",
    "not_responding", "vfio_cdev",
)  # fmt: skip
_CLI = _files(
    "cli", "status", "transitions", "check", "json_errors", "option_values", "selection_options",
    "daemon_options", "compat", "sriov", "version",
)  # fmt: skip
_DAEMON = _files("daemon", "nodeconfig", "health", "loop", "daemon_process", "service", "sriov")
_PACKAGE = ("tests/test_layers.py", "tests/test_log.py")

# Per layer: the files that can notice a change to one of its modules (order: cheap first).
_LAYER_TESTS: dict[str, tuple[str, ...]] = {
    "kernel": (*_KERNEL, *_HOST, *_CLI, *_PIPELINE, *_SAFETY, *_DAEMON),
    "host": (*_HOST, *_CLI, *_PIPELINE, "tests/safety/test_hostcritical.py", *_DAEMON),
    "safety": (*_SAFETY, *_CLI, *_PIPELINE, "tests/pipeline/test_interrupt.py", *_DAEMON),
    "pipeline": (*_PIPELINE, *_CLI, "tests/pipeline/test_interrupt.py", *_DAEMON),
    "daemon": (*_DAEMON, "tests/cli/test_daemon_options.py"),
    "cli": (
        *_CLI,
        *_PIPELINE,
        "tests/pipeline/test_interrupt.py",
        "tests/safety/test_stuck_write_process.py",
        "tests/deploy/test_kubevirt_config.py",
        "tests/deploy/test_doc_commands.py",
        "tests/tools/test_fake_sysfs.py",
        "tests/daemon/test_daemon_process.py",
    ),
    "": (*_PACKAGE, *_CLI, *_PIPELINE, *_SAFETY, *_KERNEL, *_HOST, *_DAEMON),
}

# Per module, when its own test files are not named test_<module>.py in its layer's folder,
# or a process test is the only one that can notice it.
_OWN: dict[str, tuple[str, ...]] = {
    "kernel/catalogue": ("tests/kernel/test_inventory.py", "tests/deploy/test_kubevirt_config.py"),
    "kernel/drivers": ("tests/pipeline/test_plan.py",),
    "kernel/model": ("tests/kernel/test_inventory.py",),
    "kernel/procfs": ("tests/kernel/test_procfs.py", "tests/safety/test_holders.py"),
    "kernel/verbs": ("tests/kernel/test_sysfs.py",),
    "kernel/viability": ("tests/pipeline/test_refusals.py",),
    "host/driver_choice": ("tests/host/test_modalias.py",),
    "host/dynamic_ids": ("tests/cli/test_check.py",),
    "host/facts": ("tests/host/test_preflight.py", "tests/cli/test_check.py"),
    "host/files": ("tests/host/test_modules.py",),
    "host/summary": ("tests/cli/test_check.py",),
    "pipeline/node": ("tests/cli/test_option_values.py",),
    "pipeline/plan": ("tests/pipeline/test_crash.py",),  # after the layer: it takes ~15 s
    "pipeline/sriov": ("tests/pipeline/test_sriov_plan.py", "tests/cli/test_sriov.py"),
    "cli/version": ("tests/cli/test_version.py", "tests/tools/test_release.py"),
    "pipeline/queries": ("tests/cli/test_status.py", "tests/cli/test_check.py"),
    "daemon/reconciler": ("tests/daemon/test_loop.py",),
    "cli/main": ("tests/cli/test_transitions.py",),
    "cli/render": ("tests/cli/test_transitions.py", "tests/cli/test_status.py"),
    "cli/kubevirt": ("tests/deploy/test_kubevirt_config.py",),
    "__main__": ("tests/safety/test_stuck_write_process.py", "tests/daemon/test_daemon_process.py"),
    "errors": ("tests/cli/test_json_errors.py",),
}
_LAST = {"pipeline/plan"}  # its own file is slow: after the layer's

_MODULES = {
    "kernel": (
        "address", "catalogue", "drivers", "inventory", "model", "procfs", "sysfs", "uevents",
        "verbs", "viability",
    ),
    "host": (
        "driver_choice", "dynamic_ids", "facts", "files", "modalias", "modules", "preflight",
        "summary",
    ),
    "safety": ("holders", "hostcritical", "intents", "journal", "lock", "statedir", "writer"),
    "pipeline": ("engine", "node", "plan", "queries", "selection", "sriov", "transition"),
    "daemon": ("health", "loop", "nodeconfig", "reconciler", "service"),
    "cli": ("compat", "kubevirt", "main", "render", "version"),
    "": ("errors", "log", "__main__"),
}  # fmt: skip


def _target(layer: str, name: str) -> Target:
    key = f"{layer}/{name}" if layer else name
    own = _OWN.get(key, ())
    if not own and layer:
        own = _files(layer, name)
    layer_tests = _LAYER_TESTS[layer]
    ordered = (*layer_tests, *own) if key in _LAST else (*own, *layer_tests)
    return Target(f"vfio_manager/{key}.py", tuple(dict.fromkeys(ordered)))


TARGETS: dict[str, Target] = {
    name: _target(layer, name) for layer, names in _MODULES.items() for name in names
}
