"""deploy/kubernetes: rendered, validated against pinned Kubernetes schemas, the DaemonSet's
contract (no init container, readiness, the node's files, rollouts), and every container's
command parsed by the real CLI and followed through the pod's volumes.

The daemon is run against a fake node as a process in tests/deploy/test_daemon_pod.py.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import click
import kubernetes_validate
import pytest

from tests.deploy import crds, kustomize
from tests.deploy.invocations import (
    Invocation,
    Parsed,
    UnknownSubcommand,
    fake_node_argv,
    invocations,
    parse,
    subcommand_of,
    subcommand_path_options,
)
from tests.deploy.manifests import (
    DEPLOY,
    INVOCATIONS,
    KUBECTL,
    KUBERNETES_VERSIONS,
    RENDERED,
    components,
    kustomizations,
    the,
)


def _subcommand(invocation: Invocation) -> str:
    return subcommand_of(invocation.argv)


def _cases(selected: Sequence[Invocation]) -> list[Any]:
    return [pytest.param(invocation, id=invocation.id) for invocation in selected]


# -- layout, rendering, schemas -------------------------------------------------------------
def test_layout_has_a_base_components_and_overlays() -> None:
    assert set(kustomizations()) == {"base", "overlays/monitoring", "overlays/release-on-exit"}
    assert set(components()) == {"components/monitoring", "components/release-on-exit"}
    kinds = {o["kind"] for o in RENDERED["base"]}
    assert {
        "Namespace", "ServiceAccount", "ConfigMap", "DaemonSet", "Service", "NetworkPolicy"
    } <= kinds  # fmt: skip


def test_the_base_needs_no_custom_resource_definition() -> None:
    """A cluster without the Prometheus Operator applies the base: only built-in kinds."""
    groups = {o["apiVersion"].rpartition("/")[0] for o in RENDERED["base"]}
    assert groups <= {"", "apps", "networking.k8s.io"}


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
        if crds.is_custom(obj):  # no schema in kubernetes-validate: the CRD subset
            assert crds.structural_problems(obj) == [], obj["kind"]
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            pytest.fail(
                f"{directory}: {obj['kind']}/{obj['metadata']['name']}: {path}: {err.message}"
            )


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("ServiceMonitor", ("spec", "endpoints", 0, "portt"), "metrics"),
        ("ServiceMonitor", ("spec", "endpoints", 0, "scheme"), "ftp"),
        ("ServiceMonitor", ("spec", "endpoints", 0, "interval"), "30 seconds"),
        ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "for"), "15 minutes"),
        ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "annotation"), {}),
    ],
)
def test_the_crd_subset_catches_a_bad_field(kind: str, path: tuple[Any, ...], value: Any) -> None:
    obj = copy.deepcopy(the(RENDERED["overlays/monitoring"], kind, "vfio-manager"))
    node: Any = obj
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    assert crds.structural_problems(obj)


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


def _daemon(directory: str) -> Invocation:
    (found,) = [
        i for i in INVOCATIONS if i.source == directory and i.container["name"] == "vfio-manager"
    ]
    return found


OPERATOR_LABEL = "rebellions.ai/npu.deploy.vfio-manager"
NFD_FEATURES_DIR = "/etc/kubernetes/node-feature-discovery/features.d"  # nfd-worker's hostPath
RBLN_VALIDATION_FILE = "/run/rbln/validations/vfio-pci-ready"  # the operator's validator's


def test_daemonset_runs_where_and_how_it_must() -> None:
    pod = _pod("base")
    # our own opt-in label, not the one the operator's cut-over flips (docs/operator.md)
    assert pod["nodeSelector"] == {"vfio-manager/deploy": "true"}
    assert OPERATOR_LABEL not in str(pod)
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["hostPID"] is True
    assert not pod.get("hostNetwork")  # the pod network: the NetworkPolicy applies
    assert pod["tolerations"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    volumes = {v["name"]: v for v in pod["volumes"]}
    (container,) = pod["containers"]
    assert container["securityContext"]["privileged"] is True
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    assert not any("hostPort" in p for p in container["ports"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    host = {path: volumes[m["name"]].get("hostPath", {}) for path, m in mounts.items()}
    assert host["/sys"]["path"] == "/sys"
    assert not mounts["/sys"].get("readOnly")
    assert host["/dev"]["path"] == "/dev"
    assert host["/host"]["path"] == "/"
    assert mounts["/host"]["readOnly"] is True
    assert host["/run/vfio-manager"] == {"path": "/run/vfio-manager", "type": "DirectoryOrCreate"}
    assert container["env"][:2] == [
        {"name": "HOST_ROOT", "value": "/host"},
        {"name": "VFIO_MANAGER_STATE_DIR", "value": "/run/vfio-manager"},
    ]


@pytest.mark.parametrize("directory", kustomizations())
def test_no_init_container_and_only_the_daemon(directory: str) -> None:
    """A device problem never crash-loops the pod: no init container can exit non-zero on a
    refusal and hide the daemon (``Init:CrashLoopBackOff``), and none re-binds at every pod
    start what the admin excluded or returned to the host; the daemon converges at start."""
    pod = _pod(directory)
    assert not pod.get("initContainers")
    assert [c["name"] for c in pod["containers"]] == ["vfio-manager"]
    assert subcommand_of(_daemon(directory).argv) == "daemon"


@pytest.mark.parametrize("directory", kustomizations())
def test_no_lifecycle_hook_anywhere(directory: str) -> None:
    """A preStop unbind fires on every rolling update: it would yank NPUs from running VMs.
    Returning NPUs is the daemon's --on-exit, which holds the lock and sees the holders."""
    for invocation in invocations(directory, RENDERED[directory]):
        assert "lifecycle" not in invocation.container, invocation.id


def _option(args: Sequence[str], name: str) -> str:
    for index, arg in enumerate(args):
        if arg == name:
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.partition("=")[2]
    raise AssertionError(f"no {name} in {list(args)}")


@pytest.mark.parametrize("directory", kustomizations())
def test_the_nodes_truth_lands_where_nfd_and_the_operator_read_it(directory: str) -> None:
    """The NFD feature file and the validation file, followed through the pod's volumes, are
    the host paths nfd-worker and the RBLN operator's validator use."""
    daemon = _daemon(directory)
    args = daemon.container["args"]
    nfd = _option(args, "--nfd-features-file")
    assert daemon.host_path(nfd) == (f"{NFD_FEATURES_DIR}/vfio-manager", False)
    assert not PurePosixPath(nfd).name.startswith(".")  # NFD ignores dot files
    validation = _option(args, "--validation-file")
    assert daemon.host_path(validation) == (RBLN_VALIDATION_FILE, False)


@pytest.mark.parametrize("directory", kustomizations())
def test_the_per_node_config_is_this_nodes_configmap_key(directory: str) -> None:
    daemon = _daemon(directory)
    config = _option(daemon.container["args"], "--node-config")
    # the whole ConfigMap as a directory (not subPath: kubelet refreshes it in place)
    assert daemon.config_maps() == {config: "vfio-manager-nodes"}
    assert daemon.env_on("node-a")["NODE_NAME"] == "node-a"
    node_name = [e for e in daemon.container["env"] if e["name"] == "NODE_NAME"]
    assert node_name == [
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    ]
    volume = [v for v in _pod(directory)["volumes"] if "configMap" in v]
    assert [v["configMap"].get("optional") for v in volume] == [None]  # shipped: must exist


NODE_CONFIG_KEYS = {
    "VFIO_MANAGER_DEVICE_ID",
    "VFIO_MANAGER_PRODUCT",
    "VFIO_MANAGER_BDF",
    "VFIO_MANAGER_NUMA_NODE",
    "VFIO_MANAGER_PER_NUMA_NODE",
    "VFIO_MANAGER_EXCLUDE",
}


def test_the_shipped_node_config_selects_every_npu() -> None:
    nodes = the(RENDERED["base"], "ConfigMap", "vfio-manager-nodes")
    assert set(nodes["data"]) == {"default"}
    for line in nodes["data"]["default"].splitlines():
        stripped = line.strip()
        assert not stripped or stripped.startswith("#"), line  # no key: the defaults


def _listen_port(args: Sequence[str]) -> int:
    return int(_option(args, "--listen").rpartition(":")[2])


@pytest.mark.parametrize("directory", kustomizations())
def test_probes_and_service_reach_the_port_the_daemon_listens_on(directory: str) -> None:
    main = _container(_pod(directory), "vfio-manager")
    assert _option(main["args"], "--listen") == "0.0.0.0:8080"  # the pod IP, pod network
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


@pytest.mark.parametrize("directory", kustomizations())
def test_every_daemonset_rolls_one_node_at_a_time(directory: str) -> None:
    """Readiness is "the agent works", so maxUnavailable counts broken agents, not devices;
    OnDelete would leave an applied change off every running pod."""
    strategy = the(RENDERED[directory], "DaemonSet", "vfio-manager")["spec"]["updateStrategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}


def test_the_release_overlay_really_changes_the_running_pods() -> None:
    """Applying it changes the pod template under RollingUpdate, so the DaemonSet controller
    replaces every running pod with one that releases idle NPUs when it stops; and it
    changes nothing else (the same selection, mounts and probes)."""
    base_ds = the(RENDERED["base"], "DaemonSet", "vfio-manager")
    overlay_ds = the(RENDERED["overlays/release-on-exit"], "DaemonSet", "vfio-manager")
    assert overlay_ds["spec"]["template"] != base_ds["spec"]["template"]
    assert overlay_ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    base = _container(_pod("base"), "vfio-manager")
    overlay = _container(_pod("overlays/release-on-exit"), "vfio-manager")
    assert overlay["args"] == [*base["args"], "--on-exit=release-idle"]
    assert {k: v for k, v in overlay.items() if k != "args"} == {
        k: v for k, v in base.items() if k != "args"
    }
    assert _pod("overlays/release-on-exit")["terminationGracePeriodSeconds"] == 120
    parsed_on_exit = [a for a in overlay["args"] if a.startswith("--on-exit")]
    assert parsed_on_exit == ["--on-exit=release-idle"]
    assert the(RENDERED["overlays/monitoring"], "DaemonSet", "vfio-manager") == base_ds


# -- every command through the CLI ----------------------------------------------------------
def test_every_rendered_container_runs_vfio_manager() -> None:
    assert INVOCATIONS
    for invocation in INVOCATIONS:
        assert invocation.argv[:1] == ["vfio-manager"], invocation.id


@pytest.mark.parametrize("invocation", _cases(INVOCATIONS))
def test_every_container_command_parses_with_the_cli(invocation: Invocation) -> None:
    parsed = parse(invocation.argv, invocation.env_on("node-a"))
    # and its paths lead through the mounts to the node (checked against an arbitrary root)
    fake_node_argv(invocation, parsed, "/node", {"vfio-manager-nodes": "/projected"})


# -- the checks catch what they are for ----------------------------------------------------
def _base_main() -> Invocation:
    """The base's daemon container with the arguments every CLI version has (the checks
    below are about the harness, not about the node options)."""
    return _with(_daemon("base"), args=["daemon", "--listen", "0.0.0.0:8080"])


def _with(invocation: Invocation, **changes: Any) -> Invocation:
    container = copy.deepcopy(invocation.container)
    container.update(changes)
    return Invocation(
        invocation.source, invocation.workload, invocation.pod, container, invocation.init
    )


def test_a_flag_the_cli_does_not_have_fails() -> None:
    bad = _with(_base_main(), args=["daemon", "--all"])
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
    for directory in kustomizations() + components():
        path = kustomize.kustomization_file(DEPLOY / directory)
        covered.add(path)
        for entry in kustomize.load_documents(path)[0].get("resources", []):
            covered.add((path.parent / entry).resolve())
    checked_elsewhere = {DEPLOY / "kubevirt", DEPLOY / "rbln-operator"}
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        assert path.resolve() in covered or path.parent in checked_elsewhere, path


def test_docs_name_every_kustomization_and_every_standalone_file() -> None:
    docs = (DEPLOY.parents[1] / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    names = [f"deploy/kubernetes/{k}/" for k in kustomizations() + components()]
    for directory in ("kubevirt", "rbln-operator"):
        names += [f"deploy/kubernetes/{directory}/{p.name}" for p in (DEPLOY / directory).iterdir()]
    missing = [n for n in names if n not in docs]
    assert not missing


def _rendered_daemon_with(**changes: Any) -> Invocation:
    return _with(_daemon("base"), **changes)


def test_a_written_node_file_on_a_configmap_or_missing_volume_fails() -> None:
    daemon = _daemon("base")
    args = ["daemon", "--nfd-features-file", "/etc/vfio-manager/nodes/x"]
    parsed = Parsed(
        global_tokens=[], group_params={}, subcommand="daemon", sub_tokens=args[1:],
        sub_params={"nfd_features_file": "/etc/vfio-manager/nodes/x"}, envvars=frozenset(),
    )  # fmt: skip
    with pytest.raises(AssertionError, match="on a ConfigMap"):
        subcommand_path_options(daemon, parsed, "/node", {"vfio-manager-nodes": "/p"})
    unmounted = [m for m in daemon.container["volumeMounts"] if m["name"] != "rbln-validations"]
    bad = _with(daemon, volumeMounts=unmounted)
    parsed = Parsed(
        global_tokens=[], group_params={}, subcommand="daemon", sub_tokens=[],
        sub_params={"validation_file": RBLN_VALIDATION_FILE}, envvars=frozenset(),
    )  # fmt: skip
    with pytest.raises(AssertionError, match="on no volume"):
        subcommand_path_options(bad, parsed, "/node", {"vfio-manager-nodes": "/p"})
