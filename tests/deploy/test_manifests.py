"""deploy/kubernetes: rendered, validated against pinned Kubernetes schemas, and every
container's command run through the real CLI (parsed, and bind-all run on a fake node).

The daemon's container is parsed like the others, so a flag of `vfio-manager daemon` that the
manifests use and the CLI does not have fails.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
from click.testing import CliRunner

from tests.deploy import kustomize
from tests.deploy.invocations import (
    Invocation,
    UnknownSubcommand,
    fake_node_argv,
    invocations,
    parse,
    subcommand_of,
)
from tests.deploy.manifests import (
    DEPLOY,
    INVOCATIONS,
    KUBECTL,
    KUBERNETES_VERSIONS,
    RENDERED,
    kustomizations,
    the,
)
from tests.harness import FakeKernel
from tests.harness.topologies import HOST_DISK, HOST_NIC, npu_node
from vfio_manager.cli.main import cli
from vfio_manager.host import modules
from vfio_manager.host.modules import RunResult


def _subcommand(invocation: Invocation) -> str:
    return subcommand_of(invocation.argv)


def _cases(selected: Sequence[Invocation]) -> list[Any]:
    return [pytest.param(invocation, id=invocation.id) for invocation in selected]


# -- layout, rendering, schemas -------------------------------------------------------------
def test_layout_has_a_base_and_the_opt_in_overlay() -> None:
    assert {"base", "overlays/release-on-exit"} <= set(kustomizations())
    kinds = {o["kind"] for o in RENDERED["base"]}
    assert {"Namespace", "ServiceAccount", "DaemonSet", "Service"} <= kinds


@pytest.mark.skipif(KUBECTL is None, reason="kubectl (with its kustomize) is not installed")
@pytest.mark.parametrize("directory", kustomizations())
def test_minimal_renderer_agrees_with_kubectl_kustomize(directory: str) -> None:
    ours = kustomize.by_identity(RENDERED[directory])
    theirs = kustomize.by_identity(kustomize.render_with_kubectl(DEPLOY / directory))
    assert ours == theirs


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("directory", kustomizations())
def test_every_object_validates_against_the_pinned_schemas(directory: str, version: str) -> None:
    assert RENDERED[directory]
    for obj in RENDERED[directory]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            pytest.fail(
                f"{directory}: {obj['kind']}/{obj['metadata']['name']}: {path}: {err.message}"
            )


def test_schema_validation_catches_a_misspelt_field() -> None:
    daemonset = copy.deepcopy(the(RENDERED["base"], "DaemonSet", "vfio-manager"))
    daemonset["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSIONS[0], strict=True)


# -- what the DaemonSet must do -------------------------------------------------------------
def _pod(directory: str) -> dict[str, Any]:
    spec: dict[str, Any] = the(RENDERED[directory], "DaemonSet", "vfio-manager")["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


def _container(pod: dict[str, Any], name: str, key: str = "containers") -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in pod[key] if c["name"] == name]
    (container,) = found
    return container


def test_daemonset_runs_where_and_how_the_operator_contract_says() -> None:
    pod = _pod("base")
    assert pod["nodeSelector"] == {"rebellions.ai/npu.deploy.vfio-manager": "true"}
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["hostPID"] is True
    assert pod["tolerations"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["initContainers"] + pod["containers"]:
        assert container["securityContext"]["privileged"] is True
        assert container["resources"]["requests"]
        assert container["resources"]["limits"]["memory"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        host = {path: volumes[m["name"]].get("hostPath", {}) for path, m in mounts.items()}
        assert host["/sys"]["path"] == "/sys"
        assert not mounts["/sys"].get("readOnly")
        assert host["/dev"]["path"] == "/dev"
        assert host["/host"]["path"] == "/"
        assert mounts["/host"]["readOnly"] is True
        assert host["/run/vfio-manager"] == {
            "path": "/run/vfio-manager",
            "type": "DirectoryOrCreate",
        }
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env["HOST_ROOT"] == "/host"


@pytest.mark.parametrize("directory", kustomizations())
def test_no_prestop_hook_anywhere(directory: str) -> None:
    """A preStop unbind fires on every rolling update: it would yank NPUs from running VMs."""
    for invocation in invocations(directory, RENDERED[directory]):
        assert "preStop" not in invocation.container.get("lifecycle", {}), invocation.id


def test_init_container_binds_and_main_container_runs_the_daemon() -> None:
    pod = _pod("base")
    (init,) = pod["initContainers"]
    assert [*init["command"], *init.get("args", [])] == ["vfio-manager", "bind-all"]
    main = _container(pod, "vfio-manager")
    assert [*main["command"], *main["args"]][:2] == ["vfio-manager", "daemon"]
    assert "--on-exit" not in " ".join(main["args"])  # the daemon's default: keep


def _listen_port(args: Sequence[str]) -> int:
    for index, arg in enumerate(args):
        if arg == "--listen":
            return int(args[index + 1].rpartition(":")[2])
        if arg.startswith("--listen="):
            return int(arg.rpartition(":")[2])
    raise AssertionError(f"no --listen in {list(args)}")


@pytest.mark.parametrize("directory", kustomizations())
def test_probes_and_service_reach_the_port_the_daemon_listens_on(directory: str) -> None:
    main = _container(_pod(directory), "vfio-manager")
    port = _listen_port(main["args"])
    named = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert named["metrics"] == port

    def resolve(value: Any) -> int:
        return named[value] if isinstance(value, str) else int(value)

    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert resolve(main["readinessProbe"]["httpGet"]["port"]) == port
    assert resolve(main["livenessProbe"]["httpGet"]["port"]) == port
    service = the(RENDERED[directory], "Service", "vfio-manager-metrics")
    (service_port,) = service["spec"]["ports"]
    assert service_port["name"] == "metrics"
    assert resolve(service_port["targetPort"]) == port
    labels = _pod_labels(directory)
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())


def _pod_labels(directory: str) -> dict[str, str]:
    daemonset = the(RENDERED[directory], "DaemonSet", "vfio-manager")
    labels: dict[str, str] = daemonset["spec"]["template"]["metadata"]["labels"]
    return labels


def test_release_overlay_only_adds_on_exit_release_idle() -> None:
    base = _container(_pod("base"), "vfio-manager")
    overlay = _container(_pod("overlays/release-on-exit"), "vfio-manager")
    assert overlay["args"] == [*base["args"], "--on-exit=release-idle"]
    assert _pod("overlays/release-on-exit")["terminationGracePeriodSeconds"] > 30
    overlay_ds = the(RENDERED["overlays/release-on-exit"], "DaemonSet", "vfio-manager")
    assert overlay_ds["spec"]["updateStrategy"] == {"type": "OnDelete"}


# -- every command through the CLI ----------------------------------------------------------
def test_every_rendered_container_runs_vfio_manager() -> None:
    assert INVOCATIONS
    for invocation in INVOCATIONS:
        assert invocation.argv[:1] == ["vfio-manager"], invocation.id


@pytest.mark.parametrize("invocation", _cases(INVOCATIONS))
def test_every_container_command_parses_with_the_cli(invocation: Invocation) -> None:
    parsed = parse(invocation.argv, invocation.env)
    # and its paths lead through the mounts to the node (checked against an arbitrary root)
    fake_node_argv(invocation, parsed, "/node")


@pytest.fixture
def modprobe_on(monkeypatch: pytest.MonkeyPatch) -> Any:
    def attach(kernel: FakeKernel) -> None:
        def run(argv: Sequence[str]) -> RunResult:
            return RunResult(*kernel.run_modprobe(argv))

        monkeypatch.setattr(modules, "subprocess_runner", run)

    return attach


def _run_on(kernel: FakeKernel, invocation: Invocation) -> Any:
    parsed = parse(invocation.argv, invocation.env)
    argv = fake_node_argv(invocation, parsed, kernel.host_root)
    return CliRunner().invoke(cli, argv, env=invocation.env, catch_exceptions=False)


BIND_ALL = [i for i in INVOCATIONS if _subcommand(i) == "bind-all"]


@pytest.mark.parametrize("invocation", _cases(BIND_ALL))
def test_init_container_binds_every_npu_of_a_fake_node(
    kernel: FakeKernel, modprobe_on: Any, invocation: Invocation
) -> None:
    bdfs = npu_node(kernel, count=3, vfio_loaded=False)
    modprobe_on(kernel)
    result = _run_on(kernel, invocation)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert all(kernel.driver_of(b) == "vfio-pci" for b in bdfs)
    assert kernel.driver_of(HOST_NIC) == "e1000e"
    assert kernel.driver_of(HOST_DISK) == "nvme"
    # vfio-pci was loaded by the host's modprobe, through HOST_ROOT and the /host mount
    assert kernel.modprobe_calls == [("chroot", kernel.host_root, "/sbin/modprobe", "vfio_pci")]
    # an init container restarts with its pod: the second run writes nothing
    kernel.clear_writes()
    again = _run_on(kernel, invocation)
    assert again.exit_code == 0
    assert kernel.writes == []


@pytest.mark.parametrize("invocation", _cases(BIND_ALL))
def test_init_container_on_a_recorded_machine_without_npus_writes_nothing(
    snapshot_kernel: Any, modprobe_on: Any, invocation: Invocation
) -> None:
    kernel = snapshot_kernel("q35-vfio-loaded")
    modprobe_on(kernel)
    result = _run_on(kernel, invocation)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert kernel.writes == []


# -- the checks catch what they are for ----------------------------------------------------
def _base_main() -> Invocation:
    (main,) = [i for i in INVOCATIONS if i.source == "base" and i.container["name"] == "bind-all"]
    return main


def _with(invocation: Invocation, **changes: Any) -> Invocation:
    container = copy.deepcopy(invocation.container)
    container.update(changes)
    return Invocation(
        invocation.source, invocation.workload, invocation.pod, container, invocation.init
    )


def test_a_flag_the_cli_does_not_have_fails() -> None:
    bad = _with(_base_main(), args=["bind-all", "--all"])
    with pytest.raises(click.NoSuchOption):
        parse(bad.argv, bad.env)


def test_a_subcommand_the_cli_does_not_have_fails() -> None:
    bad = _with(_base_main(), args=["bind", "--all"])
    with pytest.raises(click.UsageError):
        parse(bad.argv, bad.env)
    with pytest.raises(UnknownSubcommand):
        parse(["vfio-manager", "check_bind"], {})


def test_an_environment_variable_the_cli_does_not_read_fails() -> None:
    invocation = _base_main()
    env = [*invocation.container["env"], {"name": "VFIO_MANAGER_SYSFS_ROT", "value": "/sys"}]
    bad = _with(invocation, env=env)
    with pytest.raises(click.UsageError, match="VFIO_MANAGER_SYSFS_ROT"):
        parse(bad.argv, bad.env)


def test_the_environment_is_read_and_a_bad_option_value_fails() -> None:
    parsed = parse(["vfio-manager", "status"], {"HOST_ROOT": "/host"})
    assert parsed.group_params["host_root"] == "/host"
    assert "VFIO_MANAGER_STATE_DIR" in parsed.envvars
    with pytest.raises(click.BadParameter):
        parse(["vfio-manager", "--timeout", "inf", "bind-all"], {})


def test_a_path_without_a_host_volume_fails() -> None:
    invocation = _base_main()
    unmounted = [m for m in invocation.container["volumeMounts"] if m["mountPath"] != "/host"]
    bad = _with(invocation, volumeMounts=unmounted)
    with pytest.raises(AssertionError, match="host_root=/host is not on a hostPath volume"):
        fake_node_argv(bad, parse(bad.argv, bad.env), "/node")


def test_a_state_dir_on_a_read_only_mount_fails() -> None:
    invocation = _base_main()
    env = [
        {"name": "HOST_ROOT", "value": "/host"},
        {"name": "VFIO_MANAGER_STATE_DIR", "value": "/host/run/vfio-manager"},
    ]
    bad = _with(invocation, env=env)
    with pytest.raises(AssertionError, match="read-only"):
        fake_node_argv(bad, parse(bad.argv, bad.env), "/node")


def test_every_yaml_file_under_deploy_is_checked_somewhere() -> None:
    """A manifest no kustomization lists and no test reads would ship unchecked."""
    covered: set[Path] = set()
    for directory in kustomizations():
        path = kustomize.kustomization_file(DEPLOY / directory)
        covered.add(path)
        for entry in kustomize.load_documents(path)[0].get("resources", []):
            covered.add((path.parent / entry).resolve())
    checked_elsewhere = {DEPLOY / "kubevirt", DEPLOY / "rbln-operator"}
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        assert path.resolve() in covered or path.parent in checked_elsewhere, path


def test_docs_name_every_kustomization_and_every_standalone_file() -> None:
    docs = (DEPLOY.parents[1] / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    names = [f"deploy/kubernetes/{k}/" for k in kustomizations()]
    for directory in ("kubevirt", "rbln-operator"):
        names += [f"deploy/kubernetes/{directory}/{p.name}" for p in (DEPLOY / directory).iterdir()]
    missing = [n for n in names if n not in docs]
    assert not missing
