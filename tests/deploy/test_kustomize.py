"""The minimal kustomize renderer: the subset it implements, and what it refuses."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import kustomize
from tests.deploy.manifests import DEPLOY, KUBECTL

BASE = DEPLOY / "base"


def _overlay(tmp_path: Path, text: str) -> Path:
    """A kustomization in tmp_path over the real base (kustomize wants a relative path)."""
    tmp_path.mkdir(exist_ok=True)
    base = os.path.relpath(BASE, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {base}\n{text}",
        encoding="utf-8",
    )
    return tmp_path


def _images(objects: list[dict[str, Any]]) -> set[str]:
    (daemonset,) = [o for o in objects if o["kind"] == "DaemonSet"]
    pod = daemonset["spec"]["template"]["spec"]
    return {c["image"] for c in pod.get("initContainers", []) + pod["containers"]}


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        (
            "  - name: vfio-manager\n    newName: ghcr.io/acme/vfio-manager\n    newTag: '0.2.0'\n",
            "ghcr.io/acme/vfio-manager:0.2.0",
        ),
        (
            "  - name: vfio-manager\n    newName: registry.local:5000/vfio-manager\n",
            "registry.local:5000/vfio-manager:latest",
        ),
        (
            "  - name: vfio-manager\n    digest: sha256:" + "a" * 64 + "\n",
            "vfio-manager@sha256:" + "a" * 64,
        ),
        ("  - name: other\n    newTag: '9'\n", "vfio-manager:latest"),
    ],
)
def test_images_are_rewritten_like_kustomize(tmp_path: Path, images: str, expected: str) -> None:
    directory = _overlay(tmp_path, "images:\n" + images)
    assert _images(kustomize.render(directory)) == {expected}
    if KUBECTL is not None:
        assert _images(kustomize.render_with_kubectl(directory)) == {expected}


def test_split_image_keeps_a_registry_port_in_the_name() -> None:
    assert kustomize.split_image("reg:5000/a/b:1@sha256:x") == ("reg:5000/a/b", ":1", "@sha256:x")
    assert kustomize.split_image("reg:5000/a/b") == ("reg:5000/a/b", "", "")


def test_json_patch_operations() -> None:
    doc: dict[str, Any] = {"a": {"b~c/d": [1, 2]}, "e": 1}
    kustomize.apply_operation(doc, {"op": "add", "path": "/a/b~0c~1d/-", "value": 3})
    kustomize.apply_operation(doc, {"op": "add", "path": "/a/b~0c~1d/0", "value": 0})
    kustomize.apply_operation(doc, {"op": "remove", "path": "/e"})
    kustomize.apply_operation(doc, {"op": "replace", "path": "/a/b~0c~1d/1", "value": 9})
    kustomize.apply_operation(doc, {"op": "test", "path": "/a/b~0c~1d/3", "value": 3})
    assert doc == {"a": {"b~c/d": [0, 9, 2, 3]}}
    with pytest.raises(kustomize.PatchError):
        kustomize.apply_operation(doc, {"op": "test", "path": "/a/b~0c~1d/0", "value": 1})
    with pytest.raises(kustomize.PatchError):
        kustomize.apply_operation(doc, {"op": "replace", "path": "/missing", "value": 1})
    with pytest.raises(kustomize.PatchError):
        kustomize.apply_operation(doc, {"op": "add", "path": "/a/b~0c~1d/9", "value": 1})
    with pytest.raises(kustomize.UnsupportedKustomization):
        kustomize.apply_operation(doc, {"op": "move", "from": "/a", "path": "/z"})


@pytest.mark.parametrize(
    "text",
    [
        "namespace: elsewhere\n",  # a field the renderer does not implement
        "resources:\n  - /etc/absolute.yaml\n",  # kustomize refuses absolute roots too
        "patches:\n  - path: strategic.yaml\n",  # a strategic-merge patch, no target
        "patches:\n  - target:\n      labelSelector: a=b\n    patch: '[]'\n",
        "images:\n  - name: vfio-manager\n    newImage: x\n",
    ],
)
def test_what_it_does_not_implement_is_refused(tmp_path: Path, text: str) -> None:
    (tmp_path / "strategic.yaml").write_text(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: vfio-manager\n", encoding="utf-8"
    )
    with pytest.raises(kustomize.UnsupportedKustomization):
        kustomize.render(_overlay(tmp_path, text))


def test_a_patch_whose_target_matches_nothing_fails(tmp_path: Path) -> None:
    text = (
        "patches:\n  - target:\n      kind: DaemonSet\n      name: typo\n"
        '    patch: \'[{"op": "remove", "path": "/spec"}]\'\n'
    )
    with pytest.raises(kustomize.PatchError, match="matches no object"):
        kustomize.render(_overlay(tmp_path, text))


def _component(directory: Path, text: str) -> Path:
    directory.mkdir()
    (directory / "kustomization.yaml").write_text(
        f"apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n{text}", encoding="utf-8"
    )
    return directory


def test_a_component_adds_its_resources_and_patches_every_object(tmp_path: Path) -> None:
    _component(
        tmp_path / "comp",
        "resources:\n  - extra.yaml\n"
        "patches:\n  - target:\n      kind: ConfigMap\n"
        '    patch: \'[{"op": "add", "path": "/data/patched", "value": "yes"}]\'\n',
    )
    (tmp_path / "comp" / "extra.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\n  namespace: vfio-manager\n"
        "data:\n  a: b\n",
        encoding="utf-8",
    )
    overlay = _overlay(tmp_path / "overlay", "components:\n  - ../comp\n")
    for objects in (
        kustomize.render(overlay),
        *([kustomize.render_with_kubectl(overlay)] if KUBECTL is not None else []),
    ):
        maps = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
        assert maps["extra"] == {"a": "b", "patched": "yes"}  # its own resource
        assert maps["vfio-manager-nodes"]["patched"] == "yes"  # the base's


def test_a_component_is_not_rendered_as_a_kustomization(tmp_path: Path) -> None:
    component = _component(tmp_path / "comp", "")
    with pytest.raises(kustomize.UnsupportedKustomization, match="Component"):
        kustomize.render(component)
    overlay = tmp_path / "overlay"
    text = f"components:\n  - {os.path.relpath(DEPLOY / 'overlays' / 'monitoring', overlay)}\n"
    with pytest.raises(kustomize.UnsupportedKustomization, match="Kustomization where"):
        kustomize.render(_overlay(overlay, text))
