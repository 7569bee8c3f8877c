"""A minimal kustomize: the subset deploy/kubernetes uses, so CI renders without a binary.

A real kustomize comes with kubectl, and neither PyPI nor Debian ships one that knows
``patches:`` (Debian 12's kubernetes-client is kubectl 1.20, whose kustomize is 2.0). So the
manifests keep to a subset small enough to implement exactly, and this renders it:

- ``resources``: YAML files (several documents each) and directories holding a
  kustomization, rendered first, in order;
- ``components``: directories holding a ``kind: Component`` kustomization (the same fields),
  applied after the resources, in order: its resources join the objects and its patches
  apply to all of them (base, other components and its own);
- ``patches``: RFC 6902 JSON patches (``add``, ``remove``, ``replace``, ``test``) with a
  ``target`` of group, version, kind, name, namespace; inline (``patch``) or a file (``path``);
- ``images``: ``name`` with ``newName``, ``newTag`` and/or ``digest``, applied to the
  ``image`` of every container, init container and ephemeral container.

Anything else in a kustomization (another field, a strategic-merge patch, a target by label)
is refused with :class:`UnsupportedKustomization` rather than ignored, so a manifest cannot
grow a feature this renderer would silently drop. When kubectl is installed, the tests
render with ``kubectl kustomize`` as well and require the same objects.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_FIELDS = {"apiVersion", "kind", "resources", "components", "patches", "images"}
_TARGET_FIELDS = {"group", "version", "kind", "name", "namespace"}
_IMAGE_FIELDS = {"name", "newName", "newTag", "digest"}
_CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")

Obj = dict[str, Any]


class UnsupportedKustomization(ValueError):
    """The kustomization uses something outside the subset this renderer implements."""


class PatchError(ValueError):
    """A JSON patch operation does not apply (missing path, failed ``test``)."""


def kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_NAMES:
        path = directory / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"no kustomization in {directory}")


def load_documents(path: Path) -> list[Obj]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def render(directory: Path) -> list[Obj]:
    """The objects ``kustomize build directory`` would print, in resource order."""
    return _build(directory, "Kustomization", [])


def _build(directory: Path, kind: str, objects: list[Obj]) -> list[Obj]:
    """Add ``directory``'s resources and components to ``objects``; apply its patches to all."""
    spec = load_documents(kustomization_file(directory))[0]
    unknown = set(spec) - _FIELDS
    if unknown:
        raise UnsupportedKustomization(f"{directory}: fields {sorted(unknown)} not supported")
    if spec.get("kind", "Kustomization") != kind:
        raise UnsupportedKustomization(f"{directory}: kind {spec.get('kind')} where {kind} is")
    for entry in spec.get("resources", []):
        if Path(entry).is_absolute():
            raise UnsupportedKustomization(f"{directory}: absolute resource {entry}")
        path = (directory / entry).resolve()
        objects.extend(render(path) if path.is_dir() else load_documents(path))
    for entry in spec.get("components", []):
        _build((directory / entry).resolve(), "Component", objects)
    for patch in spec.get("patches", []):
        _apply_patch(directory, patch, objects)
    for image in spec.get("images", []):
        _apply_image(image, objects)
    return objects


def kind_of(directory: Path) -> str:
    """``Kustomization`` or ``Component``: only the first renders on its own."""
    return str(load_documents(kustomization_file(directory))[0].get("kind", "Kustomization"))


def _apply_patch(directory: Path, patch: Obj, objects: list[Obj]) -> None:
    unknown = set(patch) - {"path", "patch", "target"}
    if unknown or ("path" in patch) == ("patch" in patch):
        raise UnsupportedKustomization(f"patch {patch}: give exactly one of path/patch")
    text = (
        (directory / patch["path"]).read_text(encoding="utf-8")
        if "path" in patch
        else patch["patch"]
    )
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise UnsupportedKustomization("only RFC 6902 JSON patches (a list of operations)")
    target = patch.get("target")
    if not isinstance(target, dict) or set(target) - _TARGET_FIELDS:
        raise UnsupportedKustomization(f"patch target {target}: only {sorted(_TARGET_FIELDS)}")
    matched = [o for o in objects if _matches(o, target)]
    if not matched:
        raise PatchError(f"patch target {target} matches no object")
    for obj in matched:
        for operation in operations:
            apply_operation(obj, operation)


def _matches(obj: Obj, target: Obj) -> bool:
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    meta = obj.get("metadata", {})
    actual = {
        "group": group,
        "version": version,
        "kind": obj.get("kind"),
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
    }
    return all(actual[key] == value for key, value in target.items())


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} must start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list[Any], step: str, *, for_add: bool) -> int:
    if for_add and step == "-":
        return len(container)
    if not step.isdigit():
        raise PatchError(f"{step!r} is not an array index")
    index = int(step)
    if index > len(container) or (index == len(container) and not for_add):
        raise PatchError(f"index {index} out of range")
    return index


def _parent(doc: Obj, steps: list[str], path: str) -> Any:
    node: Any = doc
    for step in steps:
        node = node[_index(node, step, for_add=False)] if isinstance(node, list) else node.get(step)
        if node is None:
            raise PatchError(f"{path}: {step!r} does not exist")
    return node


def apply_operation(doc: Obj, operation: Obj) -> None:
    """One RFC 6902 operation on ``doc``, in place."""
    op, path = operation.get("op"), operation["path"]
    if op not in {"add", "remove", "replace", "test"}:
        raise UnsupportedKustomization(f"JSON patch op {op!r} not supported")
    *parents, last = _pointer(path)
    node = _parent(doc, parents, path)
    value = copy.deepcopy(operation.get("value"))
    key: Any
    if isinstance(node, list):
        key = _index(node, last, for_add=op == "add")
        if op == "add":
            node.insert(key, value)
            return
    elif isinstance(node, dict):
        key = last
        if op != "add" and key not in node:
            raise PatchError(f"{path} does not exist")
    else:
        raise PatchError(f"{path}: parent is not an object or array")
    if op in {"add", "replace"}:
        node[key] = value
    elif op == "remove":
        del node[key]
    elif node[key] != value:
        raise PatchError(f"test failed at {path}")


def split_image(image: str) -> tuple[str, str, str]:
    """``(name, ":tag" or "", "@digest" or "")``; a registry port is part of the name."""
    name, at, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon:]
    return name, tag, at + digest


def _apply_image(image: Obj, objects: list[Obj]) -> None:
    if set(image) - _IMAGE_FIELDS or "name" not in image:
        raise UnsupportedKustomization(f"image {image}: only {sorted(_IMAGE_FIELDS)}")

    def rewrite(container: Obj) -> None:
        name, tag, digest = split_image(str(container.get("image", "")))
        if name != image["name"]:
            return
        name = image.get("newName", name)
        if "digest" in image:
            tag, digest = "", "@" + image["digest"]
        elif "newTag" in image:
            tag, digest = ":" + str(image["newTag"]), ""
        container["image"] = name + tag + digest

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _CONTAINER_LISTS and isinstance(value, list):
                    for container in value:
                        if isinstance(container, dict):
                            rewrite(container)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for obj in objects:
        walk(obj)


def render_with_kubectl(directory: Path, kubectl: str = "kubectl") -> list[Obj]:
    """The same through a real ``kubectl kustomize`` (raises when it fails)."""
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=True
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def identity(obj: Obj) -> tuple[str, str, str, str]:
    meta = obj.get("metadata", {})
    return (
        obj.get("apiVersion", ""),
        obj.get("kind", ""),
        meta.get("namespace", ""),
        meta.get("name", ""),
    )


def by_identity(objects: list[Obj]) -> dict[tuple[str, str, str, str], Obj]:
    """Objects keyed by (apiVersion, kind, namespace, name): kustomize reorders, we don't."""
    keyed = {identity(o): o for o in objects}
    if len(keyed) != len(objects):
        raise ValueError("two objects with the same apiVersion, kind, namespace and name")
    return keyed
