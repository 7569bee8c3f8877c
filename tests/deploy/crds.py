"""The Prometheus Operator's objects (monitoring.coreos.com): checked two ways.

kubernetes-validate knows Kubernetes' own kinds only. So:

- :func:`structural_problems` (always, in tests/deploy): a subset of the CRDs' schemas,
  written from the Prometheus Operator's API reference for the fields deploy/kubernetes
  uses, every object closed (an unknown or misspelt field fails), with the enums and the
  duration pattern of the real schema;
- ``python -m tests.deploy.crds`` (tools/kubernetes/check, in a virtualenv of its own):
  every object against the models PyPI's cloudcoil-models-prometheus-operator generates
  from the operator's CRDs (the version pinned in tools/kubernetes/check), strictly: an
  object must validate and come back unchanged, so a field the CRD does not have fails.

Needs only PyYAML and this directory's renderer, so it runs in that small virtualenv.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tests.deploy import kustomize

GROUP = "monitoring.coreos.com"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# the Prometheus Operator's Duration pattern (e.g. 30s, 1h30m)
DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
RELABEL_ACTIONS = [
    "replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
    "lowercase", "uppercase", "keepequal", "dropequal",
]  # fmt: skip


def _closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_STRING = {"type": "string"}
_STRINGS = {"type": "array", "items": _STRING}
_STRING_MAP = {"type": "object", "additionalProperties": _STRING}
_METADATA = _closed(
    {"name": _STRING, "namespace": _STRING, "labels": _STRING_MAP, "annotations": _STRING_MAP},
    ("name", "namespace"),
)
_LABEL_SELECTOR = _closed(
    {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": _closed(
                {"key": _STRING, "operator": _STRING, "values": _STRINGS}, ("key", "operator")
            ),
        },
    }
)
_RELABELING = _closed(
    {
        "sourceLabels": _STRINGS,
        "separator": _STRING,
        "targetLabel": _STRING,
        "regex": _STRING,
        "modulus": {"type": "integer"},
        "replacement": _STRING,
        "action": {
            "type": "string",
            "enum": RELABEL_ACTIONS + [a.capitalize() for a in RELABEL_ACTIONS],
        },
    }
)
_DURATION = {"type": "string", "pattern": DURATION}
SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _closed(
        {
            "apiVersion": {"const": f"{GROUP}/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _METADATA,
            "spec": _closed(
                {
                    "jobLabel": _STRING,
                    "selector": _LABEL_SELECTOR,
                    "namespaceSelector": _closed(
                        {"any": {"type": "boolean"}, "matchNames": _STRINGS}
                    ),
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": _closed(
                            {
                                "port": _STRING,
                                "path": _STRING,
                                "scheme": {"type": "string", "enum": ["http", "https"]},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                                "relabelings": {"type": "array", "items": _RELABELING},
                                "metricRelabelings": {"type": "array", "items": _RELABELING},
                            }
                        ),
                    },
                },
                ("selector",),
            ),
        },
        ("apiVersion", "kind", "metadata", "spec"),
    ),
    "PrometheusRule": _closed(
        {
            "apiVersion": {"const": f"{GROUP}/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": _closed(
                {
                    "groups": {
                        "type": "array",
                        "items": _closed(
                            {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "rules": {
                                    "type": "array",
                                    "items": _closed(
                                        {
                                            "alert": _STRING,
                                            "record": _STRING,
                                            "expr": {"type": ["string", "integer"]},
                                            "for": _DURATION,
                                            "keep_firing_for": _DURATION,
                                            "labels": _STRING_MAP,
                                            "annotations": _STRING_MAP,
                                        },
                                        ("expr",),
                                    ),
                                },
                            },
                            ("name",),
                        ),
                    }
                }
            ),
        },
        ("apiVersion", "kind", "metadata", "spec"),
    ),
}


def is_custom(obj: dict[str, Any]) -> bool:
    """An object of the Prometheus Operator's CRDs (no schema in kubernetes-validate)."""
    return str(obj.get("apiVersion", "")).startswith(GROUP + "/")


def structural_problems(obj: dict[str, Any]) -> list[str]:
    """What the subset schema finds wrong with ``obj`` (empty when it passes)."""
    import jsonschema  # type: ignore[import-untyped, unused-ignore]  # kubernetes-validate's

    schema = SCHEMAS.get(str(obj.get("kind")))
    if schema is None:
        return [f"no schema for kind {obj.get('kind')}"]
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(obj)
    ]


def model_problems(obj: dict[str, Any]) -> list[str]:
    """``obj`` against the models generated from the CRDs: it must validate and round-trip."""
    # in tools/kubernetes/check's own virtualenv only
    import pydantic  # type: ignore[import-not-found, unused-ignore]
    from cloudcoil.models.prometheus_operator import (  # type: ignore[import-not-found, unused-ignore]
        v1,
    )

    try:
        model = getattr(v1, obj["kind"]).model_validate(obj)
    except pydantic.ValidationError as error:
        return [str(error)]
    back = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return [] if back == obj else [f"fields the CRD does not know were dropped: {back} != {obj}"]


def main() -> int:
    passed = failed = 0
    directories = sorted(
        p.parent
        for name in kustomize.KUSTOMIZATION_NAMES
        for p in DEPLOY.rglob(name)
        if kustomize.kind_of(p.parent) == "Kustomization"
    )
    for directory in directories:
        for obj in filter(is_custom, kustomize.render(directory)):
            name = f"{directory.relative_to(DEPLOY)}: {obj['kind']}/{obj['metadata']['name']}"
            problems = model_problems(obj) + structural_problems(obj)
            for problem in problems:
                print(f"FAIL {name}: {problem}")
            failed += bool(problems)
            passed += not problems
            if not problems:
                print(f"ok   {name} (CRD models and the structural subset)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
