"""Containers of the rendered manifests as vfio-manager invocations, checked by the real CLI.

A container's ``command`` + ``args`` and its environment are parsed by the click group the
wheel installs (``make_context``: every option, type, choice and environment variable is
checked, nothing runs), and can be run in-process against a fake node: every absolute path
the command would use inside the container is followed through the pod's volume mounts to
the host path it names, and from there onto the fake kernel's host root. So a manifest that
mounts host /sys somewhere the command does not look, sets HOST_ROOT to a path no volume
backs, or passes a flag the CLI does not have, fails here as it would on a node.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import click

from vfio_manager.cli.main import cli

PROGRAM = "vfio-manager"
ENV_PREFIXES = ("VFIO_MANAGER_",)
ENV_NAMES = ("HOST_ROOT", "NODE_NAME")
WORKLOAD_KINDS = {"DaemonSet", "Deployment", "StatefulSet", "Job", "ReplicaSet"}
# CLI paths the command writes under: they must not sit on a read-only mount
WRITTEN_PATHS = ("sysfs_root", "state_dir", "nfd_features_file", "validation_file", "ready_file")
# the downward API fields a test can fill in for a node it names
DOWNWARD = {"spec.nodeName"}


class UnknownSubcommand(LookupError):
    """The manifest calls a vfio-manager subcommand the CLI does not have (yet)."""


@dataclass(frozen=True)
class Mount:
    container_path: str
    host_path: str
    read_only: bool


@dataclass(frozen=True)
class Invocation:
    """One container of one rendered kustomization."""

    source: str  # the kustomization directory, relative to deploy/kubernetes
    workload: str  # kind/name
    pod: dict[str, Any]
    container: dict[str, Any]
    init: bool

    @property
    def id(self) -> str:
        role = "init" if self.init else "main"
        return f"{self.source}:{self.workload}:{role}:{self.container['name']}"

    @property
    def argv(self) -> list[str]:
        return [*self.container.get("command", []), *self.container.get("args", [])]

    @property
    def env(self) -> dict[str, str]:
        """Literal environment values (valueFrom entries are not knowable here)."""
        return {e["name"]: str(e["value"]) for e in self.container.get("env", []) if "value" in e}

    def env_on(self, node: str) -> dict[str, str]:
        """The environment the container gets on the node named ``node``: the literal values
        and the downward API's node name (any other valueFrom fails: not knowable here)."""
        found = self.env
        for entry in self.container.get("env", []):
            if "valueFrom" in entry:
                field = entry["valueFrom"].get("fieldRef", {}).get("fieldPath")
                if field not in DOWNWARD:
                    raise AssertionError(f"{self.id}: {entry['name']} from {entry['valueFrom']}")
                found[entry["name"]] = node
        return found

    def create_host_paths(self, fake_host_root: str) -> None:
        """What kubelet does for ``type: DirectoryOrCreate`` hostPaths, on the fake node."""
        for volume in self.pod.get("volumes", []):
            host = volume.get("hostPath")
            if host is not None and host.get("type") == "DirectoryOrCreate":
                os.makedirs(fake_host_root.rstrip("/") + host["path"], exist_ok=True)

    def config_maps(self) -> dict[str, str]:
        """``{mount path: ConfigMap name}`` of the container's whole-volume ConfigMap mounts."""
        volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        return {
            m["mountPath"]: volumes[m["name"]]["configMap"]["name"]
            for m in self.container.get("volumeMounts", [])
            if "configMap" in volumes[m["name"]] and "subPath" not in m
        }

    def mounts(self) -> list[Mount]:
        """hostPath volume mounts, plus host /proc when the pod shares the host PID namespace."""
        volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        found = []
        for mount in self.container.get("volumeMounts", []):
            host = volumes[mount["name"]].get("hostPath")
            if host is not None and "subPath" not in mount:
                found.append(Mount(mount["mountPath"], host["path"], bool(mount.get("readOnly"))))
        if self.pod.get("hostPID"):
            found.append(Mount("/proc", "/proc", False))
        return found

    def host_path(self, container_path: str) -> Optional[tuple[str, bool]]:
        """``(host path, read only)`` behind a container path, ``None`` if no hostPath backs it."""
        best: Optional[Mount] = None
        best_root = ""
        for mount in self.mounts():
            root = mount.container_path.rstrip("/")  # "" for a mount at /
            inside = container_path == (root or "/") or container_path.startswith(root + "/")
            if inside and (best is None or len(root) > len(best_root)):
                best, best_root = mount, root
        if best is None:
            return None
        rest = container_path[len(best_root) :]
        host = (best.host_path.rstrip("/") + rest) or "/"
        return host, best.read_only


def invocations(source: str, objects: list[dict[str, Any]]) -> list[Invocation]:
    found = []
    for obj in objects:
        if obj.get("kind") not in WORKLOAD_KINDS:
            continue
        pod = obj["spec"]["template"]["spec"]
        workload = f"{obj['kind']}/{obj['metadata']['name']}"
        for init, key in ((True, "initContainers"), (False, "containers")):
            for container in pod.get(key, []):
                found.append(Invocation(source, workload, pod, container, init))
    return found


@contextmanager
def container_environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ holds the container's vfio-manager variables and none of this process's."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES) or name in ENV_NAMES:
            del os.environ[name]
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass(frozen=True)
class Parsed:
    """What click made of an argv: the group's and the subcommand's resolved parameters."""

    global_tokens: list[str]  # argv between the program and the subcommand
    group_params: dict[str, Any]
    subcommand: str
    sub_tokens: list[str]
    sub_params: dict[str, Any]
    envvars: frozenset[str]  # every environment variable the group and subcommand read


def _rest(ctx: click.Context) -> list[str]:
    protected = ctx.__dict__.get("_protected_args")
    if protected is None:
        protected = ctx.protected_args
    return [*protected, *ctx.args]


def subcommand_of(argv: list[str]) -> str:
    """The subcommand an argv names, found by click's own parser (errors ignored)."""
    with container_environment({}):
        ctx = cli.make_context(PROGRAM, list(argv[1:]), resilient_parsing=True)
    rest = _rest(ctx)
    return rest[0] if rest else ""


def _envvars(command: click.Command) -> set[str]:
    names: set[str] = set()
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            names.add(envvar)
        elif envvar:
            names.update(envvar)
    return names


def parse(argv: list[str], env: Mapping[str, str]) -> Parsed:
    """Parse like the container would, raising click's error for a bad flag or value.

    Raises :class:`UnknownSubcommand` for a subcommand the CLI lacks. Every vfio-manager
    variable in ``env`` must be one the command reads (a typo would be silently ignored).
    """
    if not argv or argv[0] != PROGRAM:
        raise click.UsageError(f"the container does not run {PROGRAM}: {argv}")
    with container_environment(env):
        ctx = cli.make_context(PROGRAM, list(argv[1:]))
        rest = _rest(ctx)
        if not rest:
            raise click.UsageError("no subcommand")
        name, sub_tokens = rest[0], rest[1:]
        command = cli.get_command(ctx, name)
        if command is None:
            raise UnknownSubcommand(f"{PROGRAM} has no subcommand {name!r}")
        sub_ctx = command.make_context(name, list(sub_tokens), parent=ctx)
    envvars = frozenset(_envvars(cli) | _envvars(command))
    unread = sorted(
        n for n in env if (n.startswith(ENV_PREFIXES) or n in ENV_NAMES) and n not in envvars
    )
    if unread:
        raise click.UsageError(f"{PROGRAM} {name} reads none of {unread}")
    return Parsed(
        global_tokens=list(argv[1 : len(argv) - len(rest)]),
        group_params=dict(ctx.params),
        subcommand=name,
        sub_tokens=list(sub_tokens),
        sub_params=dict(sub_ctx.params),
        envvars=envvars,
    )


def group_path_options(invocation: Invocation, parsed: Parsed, fake_host_root: str) -> list[str]:
    """The group's path options, followed through the mounts onto a fake host root.

    Each absolute path the command resolved (explicit, from the environment, or a default)
    must be backed by a hostPath volume; those it writes under must be writable.
    """
    options: list[str] = []
    by_name = {p.name: p for p in cli.params if isinstance(p, click.Option)}
    for name, value in parsed.group_params.items():
        if not (isinstance(value, str) and value.startswith("/")):
            continue
        backed = invocation.host_path(value)
        if backed is None:
            raise AssertionError(
                f"{invocation.id}: {name}={value} is not on a hostPath volume: the command "
                "would see the container's own filesystem, not the node's"
            )
        host, read_only = backed
        if read_only and name in WRITTEN_PATHS:
            raise AssertionError(f"{invocation.id}: {name}={value} is on a read-only mount")
        fake = fake_host_root.rstrip("/") + (host if host != "/" else "")
        options += [by_name[name].opts[-1], fake or "/"]
    return options


def subcommand_path_options(
    invocation: Invocation, parsed: Parsed, fake_host_root: str, config_maps: Mapping[str, str]
) -> list[str]:
    """The subcommand's path options, each followed through the pod's volumes: a hostPath
    onto the fake host root, a ConfigMap mount onto ``config_maps[name]`` (a directory the
    test projected the ConfigMap into). A path no volume backs fails, as does a written
    path on a read-only mount."""
    command = cli.get_command(click.Context(cli), parsed.subcommand)
    assert command is not None
    by_name = {p.name: p for p in command.params if isinstance(p, click.Option)}
    mounted = invocation.config_maps()
    options: list[str] = []
    for name, value in parsed.sub_params.items():
        if not (isinstance(value, str) and value.startswith("/")):
            continue
        flag = by_name[name].opts[-1]
        inside = [m for m in mounted if value == m or value.startswith(m.rstrip("/") + "/")]
        if inside:
            if name in WRITTEN_PATHS:
                raise AssertionError(f"{invocation.id}: {name}={value} is on a ConfigMap")
            (mount,) = inside
            options += [flag, config_maps[mounted[mount]] + value[len(mount.rstrip("/")) :]]
            continue
        backed = invocation.host_path(value)
        if backed is None:
            raise AssertionError(f"{invocation.id}: {name}={value} is on no volume")
        host, read_only = backed
        if read_only and name in WRITTEN_PATHS:
            raise AssertionError(f"{invocation.id}: {name}={value} is on a read-only mount")
        options += [flag, fake_host_root.rstrip("/") + host]
    return options


def fake_node_argv(
    invocation: Invocation,
    parsed: Parsed,
    fake_host_root: str,
    config_maps: Optional[Mapping[str, str]] = None,
) -> list[str]:
    """The argv that runs this container's command against a fake node rooted there.

    The path options come after the container's own options: click keeps the last. With
    ``config_maps`` (ConfigMap name -> projected directory) the subcommand's paths are
    followed too.
    """
    sub_paths = (
        subcommand_path_options(invocation, parsed, fake_host_root, config_maps)
        if config_maps is not None
        else []
    )
    return [
        *parsed.global_tokens,
        *group_path_options(invocation, parsed, fake_host_root),
        parsed.subcommand,
        *parsed.sub_tokens,
        *sub_paths,
    ]
