"""Render every kustomization and validate each object: the first half of tools/kubernetes/check.

Prints one line per object and version, then a summary; exit 1 when anything failed. The
Prometheus Operator's kinds get the CRD subset here and the CRD models in
``python -m tests.deploy.crds``. The deeper checks (each container's command through the
CLI, the fake node, KubeVirt objects) are the tests in tests/deploy, which the check runs next.
"""

from __future__ import annotations

import sys
from pathlib import Path

import kubernetes_validate

from tests.deploy import crds, kustomize
from tests.deploy.manifests import (
    DEPLOY,
    KUBECTL,
    KUBERNETES_VERSIONS,
    KUBEVIRT_DIR,
    kustomizations,
)


def main() -> int:
    passed = failed = 0
    renderer = (
        f"kubectl kustomize ({KUBECTL}) and the minimal renderer"
        if KUBECTL
        else ("the minimal renderer (kubectl not installed)")
    )
    print(
        f"rendering with {renderer}; validating against Kubernetes "
        f"{', '.join(KUBERNETES_VERSIONS)} (kubernetes-validate "
        f"{kubernetes_validate.__version__}, strict)"
    )
    for directory in kustomizations():
        objects = kustomize.render(DEPLOY / directory)
        if KUBECTL:
            theirs = kustomize.by_identity(kustomize.render_with_kubectl(DEPLOY / directory))
            if kustomize.by_identity(objects) != theirs:
                print(f"FAIL {directory}: the minimal renderer and kubectl kustomize differ")
                failed += 1
        for obj in objects:
            name = f"{directory}: {obj['kind']}/{obj['metadata']['name']}"
            if crds.is_custom(obj):
                problems = crds.structural_problems(obj)
                for problem in problems:
                    print(f"FAIL {name}: {problem}")
                if not problems:
                    print(
                        f"ok   {name}: the CRD subset (the CRD models: python -m tests.deploy.crds)"
                    )
                failed += bool(problems)
                passed += not problems
                continue
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as err:
                    path = ".".join(str(p) for p in err.path)
                    print(f"FAIL {name} on {version}: {path}: {err.message}")
                    failed += 1
                else:
                    print(f"ok   {name} on {version}")
                    passed += 1
    skipped: tuple[tuple[Path, str], ...] = (
        (KUBEVIRT_DIR, "kubevirt.io kinds: tests/deploy/test_kubevirt_manifests.py"),
        (DEPLOY / "rbln-operator", "operator values/CR: tests/deploy/test_rbln_operator.py"),
    )
    for skipped_dir, why in skipped:
        for manifest in sorted(skipped_dir.glob("*.yaml")):
            print(f"skip {manifest.relative_to(DEPLOY)}: no schema in kubernetes-validate; {why}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
