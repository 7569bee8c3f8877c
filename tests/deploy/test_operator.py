"""docs/operator.md and deploy/kubernetes/rbln-operator: the cut-over from the RBLN operator.

The operator's objects are reconstructed from its source in tests/deploy/operator (G1 and
G2 DaemonSets, the sandbox device plugin, the RBLNClusterPolicy, a VM node). Each `kubectl`
command of the doc that changes or reads them runs for real, as written (the line must be
in the doc verbatim) with ``--local -f <object>`` instead of the cluster; what the result
must do is checked (the template unchanged, OnDelete surviving a model of the operator's
reconcile, the node off the operator's DaemonSet and still on ours and the plugin's). The
neutraliser's effect in a real container is tools/kubernetes/prestop-check (podman).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.daemon.ondisk import materialize
from tests.deploy import kustomize
from tests.deploy.manifests import (
    DEPLOY,
    KUBECTL,
    KUBERNETES_VERSIONS,
    KUBEVIRT_DIR,
    RENDERED,
    REPO,
    the,
)
from tests.harness.topologies import npu_node
from vfio_manager.cli import kubevirt

OPERATOR_DIR = DEPLOY / "rbln-operator"
# the operator's product cards and the device IDs each covers (its DeviceMapping)
OPERATOR_CARDS = {
    "RBLN-CA12": (0x1120, 0x1121),
    "RBLN-CA22": (0x1220, 0x1221),
    "RBLN-CA25": (0x1250, 0x1251),
    "RBLN-CR03": (0x2030, 0x2031),
}
FIXTURES = Path(__file__).parent / "operator"
DOC = (REPO / "docs" / "operator.md").read_text(encoding="utf-8")
(VALUES,) = kustomize.load_documents(OPERATOR_DIR / "values-resource-list.yaml")
MARKER = "# vfio-manager cut-over: no-op"
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


def _fixture(name: str) -> dict[str, Any]:
    (obj,) = kustomize.load_documents(FIXTURES / name)
    return obj


G1 = _fixture("g1-vfio-manager-daemonset.yaml")
G2 = _fixture("g2-vfio-manager-daemonset.yaml")
PLUGIN = _fixture("sandbox-device-plugin-daemonset.yaml")
NODE = _fixture("node.yaml")
POLICY = _fixture("clusterpolicy.yaml")


def test_every_file_here_is_checked() -> None:
    files = {p.name for p in OPERATOR_DIR.iterdir()}
    assert files == {
        "values-resource-list.yaml",
        "ondelete-patch.yaml",
        "disable-vfio-manager-patch.yaml",
        "neutralise-prestop.sh",
    }


def test_values_touch_only_the_plugins_resource_names() -> None:
    assert set(VALUES) == {"sandboxDevicePlugin"}
    assert set(VALUES["sandboxDevicePlugin"]) == {"resourceList"}


def test_resource_list_names_match_kubevirt_config_and_the_kubevirt_patch() -> None:
    (patch,) = kustomize.load_documents(KUBEVIRT_DIR / "kubevirt-cr-patch.yaml")
    permitted = {
        e["resourceName"]
        for e in patch["spec"]["configuration"]["permittedHostDevices"]["pciHostDevices"]
    }
    cards_seen = set()
    for resource in VALUES["sandboxDevicePlugin"]["resourceList"]:
        assert set(resource) == {"productCardNames", "resourceName", "resourcePrefix"}
        name = f"{resource['resourcePrefix']}/{resource['resourceName']}"
        assert name in permitted
        for card in resource["productCardNames"]:
            assert card in OPERATOR_CARDS, f"the operator does not know {card}"
            cards_seen.add(card)
            for device in OPERATOR_CARDS[card]:
                assert kubevirt.resource_name(device, "atom") == name
    assert cards_seen == set(OPERATOR_CARDS)


def _doc_line(command: str) -> str:
    """``command`` must be a line of docs/operator.md, as a reader copies it."""
    lines = {line.strip() for line in DOC.splitlines()}
    assert command in lines, f"docs/operator.md no longer has: {command}"
    return command


def _kubectl_local(command: str, obj: dict[str, Any], tmp_path: Path, output: str) -> str:
    """Run a doc's ``kubectl`` line with ``--local -f <obj>`` in place of the object it names
    on the cluster (``-n NS``, the kind and name dropped), printing ``output``."""
    words = shlex.split(command)
    assert words[0] == "kubectl"
    verb_at = 3 if words[1] == "-n" else 1
    verb = words[verb_at]
    rest = words[verb_at + 1 :]
    rest = rest[2:]  # the kind and the name (or "node" and its name)
    path = tmp_path / "object.json"
    path.write_text(json.dumps(obj), encoding="utf-8")
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "no-cluster")}
    result = subprocess.run(
        [str(KUBECTL), verb, "--local", "-f", str(path), *rest, "-o", output],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


NS_DS = {"NS": "rbln-system", "DS": "rbln-vfio-manager", "NODE": "worker-1"}


def _expand(command: str) -> str:
    for name, value in NS_DS.items():
        command = command.replace(f'"${name}"', value)
    return command


ONDELETE = (
    'kubectl -n "$NS" patch ds "$DS" --type merge --patch-file '
    "deploy/kubernetes/rbln-operator/ondelete-patch.yaml"
)
LABEL = 'kubectl label node "$NODE" rebellions.ai/npu.deploy.vfio-manager=false --overwrite'
DISABLE_SUFFIX = (
    "--type merge --patch-file deploy/kubernetes/rbln-operator/disable-vfio-manager-patch.yaml"
)


@needs_kubectl
@pytest.mark.parametrize("daemonset", [G1, G2], ids=["G1", "G2"])
def test_step_1_sets_ondelete_without_touching_the_pod_template(
    daemonset: dict[str, Any], tmp_path: Path
) -> None:
    command = _expand(_doc_line(ONDELETE))
    patched = json.loads(_kubectl_local(command, daemonset, tmp_path, "json"))
    assert patched["spec"]["updateStrategy"] == {"type": "OnDelete"}
    # the same template: the DaemonSet controller restarts no pod
    assert patched["spec"]["template"] == daemonset["spec"]["template"]
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(patched, version, strict=True)
    # the doc's check of the result
    check = 'kubectl -n "$NS" get ds "$DS" -o jsonpath=\'{.spec.updateStrategy.type}{"\\n"}\''
    assert check in DOC


def _operator_reconcile(live: dict[str, Any], rendered: dict[str, Any]) -> dict[str, Any]:
    """A model of the operator's CreateOrPatch of its DaemonSet (operator-facts.md 2.3): the
    selector's labels, the pod template's labels and the whole pod spec are replaced; every
    other field of the live object (updateStrategy among them) is kept."""
    result = copy.deepcopy(live)
    result["spec"]["selector"]["matchLabels"] = rendered["spec"]["selector"]["matchLabels"]
    template = result["spec"]["template"]
    template["metadata"]["labels"] = rendered["spec"]["template"]["metadata"]["labels"]
    template["spec"] = copy.deepcopy(rendered["spec"]["template"]["spec"])
    return result


@needs_kubectl
def test_ondelete_survives_the_operators_reconcile_and_its_upgrade(tmp_path: Path) -> None:
    patched = json.loads(_kubectl_local(_expand(ONDELETE), G1, tmp_path, "json"))
    # an operator upgrade renders another template: the live pods stay (OnDelete)
    upgraded = _operator_reconcile(patched, G2)
    assert upgraded["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert upgraded["spec"]["template"] == G2["spec"]["template"]


def _selects(daemonset: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = daemonset["spec"]["template"]["spec"].get("nodeSelector", {})
    return all(labels.get(k) == v for k, v in selector.items())


def _operator_labels_node(labels: dict[str, str]) -> dict[str, str]:
    """A model of the operator's node labelling for a vm-passthrough node (its
    updateRBLNComponentLabels): the workload's deploy labels are added when missing, a key
    present with any value is left alone."""
    result = dict(labels)
    for key in (
        "rebellions.ai/npu.deploy.vfio-manager",
        "rebellions.ai/npu.deploy.sandbox-device-plugin",
    ):
        result.setdefault(key, "true")
    return result


@needs_kubectl
def test_step_3_label_takes_the_node_off_the_operators_daemonset_only(tmp_path: Path) -> None:
    ours = the(RENDERED["base"], "DaemonSet", "vfio-manager")
    labels = NODE["metadata"]["labels"]
    assert _selects(G1, labels)
    assert _selects(ours, labels)
    assert _selects(PLUGIN, labels)
    assert any(LABEL in line for line in DOC.splitlines())  # in step 3's guarded line
    command = _expand(LABEL)
    relabelled = json.loads(_kubectl_local(command, NODE, tmp_path, "json"))["metadata"]["labels"]
    assert not _selects(G1, relabelled)  # the DaemonSet controller deletes the pod
    assert not _selects(G2, relabelled)  # and a later release's schedules nowhere there
    assert _selects(ours, relabelled)  # our agent stays
    assert _selects(PLUGIN, relabelled)  # the sandbox device plugin stays
    assert _operator_labels_node(relabelled) == relabelled  # the operator keeps "false"


def test_step_3_runs_the_neutraliser_before_the_label_and_only_if_it_worked() -> None:
    exec_line = _doc_line(
        'kubectl -n "$NS" exec -i "$POD" -- sh -s < '
        "deploy/kubernetes/rbln-operator/neutralise-prestop.sh"
    )
    guarded = _doc_line(
        f'kubectl -n "$NS" exec "$POD" -- cat /bin/vfio-manage.sh | grep -qx \'{MARKER}\' && '
        + LABEL
    )
    lines = [line.strip() for line in DOC.splitlines()]
    assert lines.index(exec_line) < lines.index(guarded)
    # the pod the doc picks is the operator's pod on that node
    assert G1["spec"]["template"]["metadata"]["labels"] == {"app": NS_DS["DS"]}
    _doc_line(
        'POD=$(kubectl -n "$NS" get pod -l app="$DS" --field-selector spec.nodeName="$NODE" '
        "-o jsonpath='{.items[0].metadata.name}')"
    )


def test_the_neutraliser_writes_the_marker_the_doc_greps_for(tmp_path: Path) -> None:
    script = (OPERATOR_DIR / "neutralise-prestop.sh").read_text(encoding="utf-8")
    for shell in ("sh", "bash"):
        subprocess.run([shell, "-n", str(OPERATOR_DIR / "neutralise-prestop.sh")], check=True)
    (printf,) = re.findall(r"^printf '([^']*)'", script, re.MULTILINE)
    noop = subprocess.run(
        ["sh", "-c", f"printf '{printf}'"], capture_output=True, text=True, check=True
    )
    assert noop.stdout.splitlines() == ["#!/bin/sh", MARKER, "exit 0"]


def test_prestop_check_runs_the_operators_hooks_verbatim() -> None:
    """tools/kubernetes/prestop-check runs exactly the preStop commands of G1 and G2."""
    check = (REPO / "tools" / "kubernetes" / "prestop-check").read_text(encoding="utf-8")
    (array,) = re.findall(r"^PRESTOPS=\((.*)\)$", check, re.MULTILINE)
    commands = shlex.split(array)
    for daemonset in (G1, G2):
        (container,) = daemonset["spec"]["template"]["spec"]["containers"]
        hook = container["lifecycle"]["preStop"]["exec"]["command"]
        assert hook[:2] == ["/bin/sh", "-c"]
        assert hook[2] in commands
        assert " ".join([*container["command"][2:], *container["args"]]) in check


@needs_kubectl
@pytest.mark.parametrize(
    ("daemonset", "expected"),
    [
        (G1, ['["/bin/sh","-c","/bin/vfio-manage.sh unbind --all"]', "30", ""]),
        (G2, ['["/bin/sh","-c","/bin/vfio-manage.sh cleanup --all"]', "180", "k8s-driver-manager"]),
    ],
    ids=["G1", "G2"],
)
def test_step_0_tells_the_generations_apart(
    daemonset: dict[str, Any], expected: list[str], tmp_path: Path
) -> None:
    jsonpath = (
        '{.spec.template.spec.containers[0].lifecycle.preStop.exec.command}{"\\n"}'
        '{.spec.template.spec.terminationGracePeriodSeconds}{"\\n"}'
        '{.spec.template.spec.initContainers[*].name}{"\\n"}'
    )
    _doc_line(f'kubectl -n "$NS" get ds "$DS" -o jsonpath=\'{jsonpath}\'')
    noop = "kubectl patch ds x --type merge -p {}"
    out = _kubectl_local(noop, daemonset, tmp_path, f"jsonpath={jsonpath}")
    assert out.split("\n")[:3] == expected
    gate = '{.spec.template.spec.initContainers[*].name}{"\\n"}'
    _doc_line(f"kubectl -n \"$NS\" get ds rbln-sandbox-device-plugin -o jsonpath='{gate}'")
    out = _kubectl_local(noop, PLUGIN, tmp_path, f"jsonpath={gate}")
    assert out.split() == ["driver-ready", "vfio-bind-checker"]


@needs_kubectl
def test_step_4_disables_only_the_vfio_manager_component(tmp_path: Path) -> None:
    (line,) = [
        line.strip() for line in DOC.splitlines()
        if line.strip().startswith("kubectl patch rblnclusterpolicy")
    ]  # fmt: skip
    assert line.endswith(DISABLE_SUFFIX)
    command = "kubectl patch rblnclusterpolicy x " + DISABLE_SUFFIX
    patched = json.loads(_kubectl_local(command, POLICY, tmp_path, "json"))
    expected = copy.deepcopy(POLICY)
    expected["spec"]["vfioManager"]["enabled"] = False
    assert patched == expected


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("obj", [G1, G2, PLUGIN, NODE], ids=["G1", "G2", "plugin", "node"])
def test_the_reconstructed_objects_are_valid(obj: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


def test_the_plugins_g1_gate_needs_the_configmap_the_operator_deletes_when_disabled() -> None:
    """Why G1 keeps the component enabled: the checker's volume is not optional."""
    volumes = {v["name"]: v for v in PLUGIN["spec"]["template"]["spec"]["volumes"]}
    config = volumes["rbln-vfio-manager"]["configMap"]
    assert config["name"] == "rbln-vfio-manager-config"
    assert not config.get("optional")


def _checker_loop() -> str:
    (checker,) = [
        c for c in PLUGIN["spec"]["template"]["spec"]["initContainers"]
        if c["name"] == "vfio-bind-checker"
    ]  # fmt: skip
    loop: str = checker["command"][2]
    assert "/bin/vfio-manage.sh check_bind --all" in loop
    return loop


@pytest.mark.parametrize("bound", [True, False], ids=["converged", "one-on-the-host"])
def test_the_plugins_checker_loop_passes_on_our_end_state_only(tmp_path: Path, bound: bool) -> None:
    """The G1 gate's loop, run by /bin/sh against a node on disk: it finishes once every NPU
    is on vfio-pci (our daemon's end state) and keeps waiting while one is not. The
    script it calls is our vfio-manage drop-in (the operator's own script has the same
    contract: every vendor 0x1eff class 0x120000 function's driver link is vfio-pci)."""
    roots, bdfs = materialize(
        tmp_path / "machine", lambda kernel: npu_node(kernel, count=2, driver="vfio-pci")
    )
    if not bound:  # a still picture: move the second NPU's driver link to the native driver
        link = roots.host / "sys" / "bus" / "pci" / "devices" / bdfs[1] / "driver"
        target = os.readlink(link).replace("vfio-pci", "rebellions")
        link.unlink()
        link.symlink_to(target)
    drop_in = Path(sys.executable).parent / "vfio-manage"
    loop = _checker_loop().replace("/bin/vfio-manage.sh", str(drop_in))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "VFIO_MANAGER_SYSFS_ROOT": str(roots.host / "sys"),
        "VFIO_MANAGER_DEV_ROOT": str(roots.host / "dev"),
        "HOST_ROOT": str(roots.host),
        "VFIO_MANAGER_PROC_ROOT": str(roots.host / "proc"),
        "VFIO_MANAGER_STATE_DIR": str(tmp_path / "state"),
    }
    process = subprocess.Popen(["/bin/sh", "-c", loop], env=env, stdout=subprocess.PIPE, text=True)
    try:
        returncode = process.wait(timeout=30 if bound else 8)
    except subprocess.TimeoutExpired:
        returncode = None
    finally:
        process.kill()
        output = process.communicate()[0]
    if bound:
        assert returncode == 0, output
        assert "All 2 Rebellions NPU devices are bound to VFIO-PCI." in output
    else:
        assert returncode is None, output  # still waiting
        assert f"Device {bdfs[1]} is not bound to vfio-pci" in output
