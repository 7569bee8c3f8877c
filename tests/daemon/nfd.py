"""Node Feature Discovery's reading of its local feature files, as its documentation
(customization guide, "Local feature source" and "Node labels") and source state it (NFD
v0.17.4 ``source/local/local.go``, ``pkg/apis/nfd/validate/validate.go``; unchanged in
v0.19), so the daemon's file is held to what NFD would label the node with.

- every regular file of the directory, except names starting with ``.`` and files over 64 kB;
- one ``<key>[=<value>]`` per line, split at the first ``=``, value ``true`` when absent; the
  line is trimmed, the key and the value are not; ``#`` starts a comment;
- ``# +expiry-time=<RFC3339>`` applies to the lines after it until the next directive, and
  lines past their expiry are skipped; ``# +no-label`` hides the next line;
- the nfd-master keeps a label only when its name is a qualified name (a DNS-subdomain prefix
  of at most 253 characters, a name of at most 63 of ``[A-Za-z0-9-_.]`` with alphanumerics at
  both ends), its value a valid label value, and its namespace allowed:
  ``kubernetes.io`` and ``*.kubernetes.io`` are denied except ``feature.node.kubernetes.io``,
  ``profile.node.kubernetes.io`` and their sub-namespaces.
"""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

MAX_FEATURE_FILE_SIZE = 65536
_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Rejected(AssertionError):
    """A line NFD (or its master) would drop."""


def _namespace_allowed(namespace: str) -> bool:
    own = ("feature.node.kubernetes.io", "profile.node.kubernetes.io")
    if namespace in own or namespace.endswith(tuple(f".{ns}" for ns in own)):
        return True
    return not (namespace == "kubernetes.io" or namespace.endswith(".kubernetes.io"))


def check_label(key: str, value: str) -> None:
    """Raise :class:`Rejected` unless the nfd-master would keep ``key=value``."""
    namespace, sep, name = key.rpartition("/")
    if not sep:
        raise Rejected(f"{key!r}: no namespace (it would be auto-prefixed)")
    if len(namespace) > 253 or not _SUBDOMAIN.match(namespace):
        raise Rejected(f"{key!r}: the prefix is not a DNS subdomain")
    if not _NAME.match(name):
        raise Rejected(f"{key!r}: the name is not a qualified name")
    if not _namespace_allowed(namespace):
        raise Rejected(f"{key!r}: namespace {namespace} is denied")
    if not _VALUE.match(value):
        raise Rejected(f"{key}={value!r}: not a valid label value")


def parse(text: str, now: datetime.datetime) -> dict[str, str]:
    """The labels one feature file gives at ``now``, every one checked by :func:`check_label`."""
    labels: dict[str, str] = {}
    expiry: datetime.datetime | None = None
    skip_next = False
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            directive = line[1:].strip()
            if directive.startswith("+expiry-time="):
                expiry = datetime.datetime.fromisoformat(
                    directive.split("=", 1)[1].replace("Z", "+00:00")
                )
            elif directive == "+no-label":
                skip_next = True
            continue
        if skip_next:
            skip_next = False
            continue
        if expiry is not None and now > expiry:
            continue
        key, sep, value = line.partition("=")
        value = value if sep else "true"
        check_label(key, value)
        labels[key] = value
    return labels


def labels(directory: Path, now: datetime.datetime) -> dict[str, str]:
    """What NFD's local source labels the node with from ``directory`` at ``now``."""
    found: dict[str, str] = {}
    for name in sorted(os.listdir(directory)):
        path = directory / name
        if name.startswith(".") or not path.is_file():
            continue
        if path.stat().st_size > MAX_FEATURE_FILE_SIZE:
            continue
        found.update(parse(path.read_text(), now))
    return found
