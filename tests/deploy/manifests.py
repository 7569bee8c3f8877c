"""deploy/kubernetes, rendered once per test session, and the pinned validation targets."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tests.deploy import kustomize
from tests.deploy.invocations import Invocation, invocations

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
KUBEVIRT_DIR = DEPLOY / "kubevirt"
# The oldest Kubernetes the manifests promise to work on, and a current one. Bump both on
# purpose (kubernetes-validate ships the schemas; see pyproject.toml's test extra).
KUBERNETES_VERSIONS = ("1.30.0", "1.35.0")
KUBECTL = shutil.which("kubectl")


def _directories(kind: str) -> list[str]:
    found = {
        str(p.parent.relative_to(DEPLOY))
        for name in kustomize.KUSTOMIZATION_NAMES
        for p in DEPLOY.rglob(name)
        if kustomize.kind_of(p.parent) == kind
    }
    return sorted(found)


def kustomizations() -> list[str]:
    """Every kustomization under deploy/kubernetes that renders on its own, relative to it."""
    return _directories("Kustomization")


def components() -> list[str]:
    """Every kustomize component (rendered through the kustomizations that use it)."""
    return _directories("Component")


def render_all() -> dict[str, list[dict[str, Any]]]:
    return {k: kustomize.render(DEPLOY / k) for k in kustomizations()}


RENDERED = render_all()
INVOCATIONS: list[Invocation] = [i for k, objs in RENDERED.items() for i in invocations(k, objs)]


def the(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found
