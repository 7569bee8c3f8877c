"""modules.alias matching, as `modprobe -R` does it: most specific pattern wins."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import invoke
from vfio_manager.host.modalias import AliasTable, glob_match

ALIASES = """\
# Aliases extracted from modules themselves.
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias pci:v00001EFFd00001220sv*sd*bc*sc*i* rebellions
alias pci:v00001EFFd*sv*sd*bc*sc*i* rebellions_generic
alias pci:v*d*sv*sd*bc06sc04i00* shpchp
alias vfio_pci:v000015B3d0000101Esv*sd*bc*sc*i* mlx5_vfio_pci
alias vfio_pci:v000010DEd*sv*sd*bc03sc*i* nvgrace_gpu_vfio_pci
alias vfio_pci:v000010DEd00002342sv*sd*bc03sc*i* nvgrace_gpu_vfio_pci_exact
alias usb:v*p*d*dc*dsc*dp*ic09isc*ip*in* usbcore
garbage line
"""


def table() -> AliasTable:
    return AliasTable(ALIASES.encode())


def test_native_module_from_modalias() -> None:
    assert (
        table().native_module("pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00") == "e1000e"
    )


def test_most_specific_pattern_wins() -> None:
    assert (
        table().native_module("pci:v00001EFFd00001220sv00001EFFsd00000000bc12sc00i00")
        == "rebellions"
    )
    assert (
        table().native_module("pci:v00001EFFd00009999sv00001EFFsd00000000bc12sc00i00")
        == "rebellions_generic"
    )


def test_wildcard_vendor_patterns_still_match() -> None:
    assert (
        table().native_module("pci:v00001B36d0000000Esv00000000sd00000000bc06sc04i00") == "shpchp"
    )


def test_unknown_function_has_no_module() -> None:
    assert table().native_module("pci:v00001234d000011E8sv00001AF4sd00001100bc00scFFi00") is None


def test_vfio_variants_are_a_separate_namespace() -> None:
    t = table()
    mlx = "pci:v000015B3d0000101Esv000015B3sd00000000bc02sc00i00"
    assert t.vfio_variant_module(mlx) == "mlx5_vfio_pci"
    assert t.native_module(mlx) is None
    gpu = "pci:v000010DEd00002342sv000010DEsd00000000bc03sc02i00"
    assert t.vfio_variant_module(gpu) == "nvgrace_gpu_vfio_pci_exact"
    assert t.vfio_variant_module("pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00") is None


def _every_line(text: str, kind: str, modalias: str) -> str | None:
    """The answer of a full parse of depmod's format: ``alias KIND:PATTERN MODULE`` lines,
    ``alias`` at the start of the line (depmod never indents; an indented line is ignored)."""
    body = modalias.partition(":")[2]
    best: tuple[int, int, str] | None = None
    for line in text.splitlines():
        parts = line.split()
        if not line.startswith("alias") or len(parts) != 3 or parts[0] != "alias":
            continue
        if not parts[1].startswith(kind + ":"):
            continue
        pattern = parts[1].partition(":")[2]
        if fnmatch.fnmatchcase(body, pattern):
            score = (pattern.count("*"), -len(pattern.replace("*", "")), parts[2])
            best = score if best is None or score < best else best
    return best[2] if best else None


ODD_LINES = """\
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e_tabbed\t
alias\tpci:v00008086d000010D3sv00008086sd*bc*sc*i*\tintel_subsys
alias pci:v00008086d000010D3sv*sd*bc*sc*i* too many tokens
 alias pci:v00008086d000010D3sv*sd*bc02sc00i00 leading_space
xalias pci:v00008086d*sv*sd*bc*sc*i* not_an_alias
alias pci:v00008086d*sv*sd*bc*sc*i* crlf_line\r
alias pci:v*d*sv*sd*bc02sc00i* any_ethernet
alias vfio_pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e_vfio_pci
"""


@pytest.mark.parametrize(
    "modalias",
    [
        "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00",
        "pci:v00008086d000010D3sv00001AF4sd00001100bc02sc00i00",
        "pci:v00008086d0000FFFFsv00008086sd00000000bc02sc00i00",
        "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
        "pci:v00001EFFd00001220sv00001EFFsd00000000bc12sc00i00",
    ],
)
@pytest.mark.parametrize("kind", ["pci", "vfio_pci"])
def test_lazy_lookup_answers_as_a_full_parse(kind: str, modalias: str) -> None:
    text = ALIASES + ODD_LINES
    lazy = AliasTable(text.encode())
    ask = lazy.native_module if kind == "pci" else lazy.vfio_variant_module
    assert ask(modalias) == _every_line(text, kind, modalias)


@given(
    text=st.text(alphabet="ab*", max_size=12).map(lambda t: t.replace("*", "")),
    pattern=st.text(alphabet="ab*", max_size=10),
)
def test_glob_match_agrees_with_fnmatch(text: str, pattern: str) -> None:
    assert glob_match(text, pattern) == fnmatch.fnmatchcase(text, pattern)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("v00008086d000010D3sv00008086sd00000000bc02sc00i00", "v00008086d000010D3sv*sd*bc*sc*i*"),
        ("v00008086d000010D3sv00008086sd00000000bc02sc00i00", "v*d*sv*sd*bc02sc00i*"),
        ("v00008086d000010D3sv00008086sd00000000bc02sc00i00", "v*d*sv*sd*bc06sc04i00*"),
        ("v00008086d000010D3sv00008086sd00000000bc02sc00i00", "v0000808?d*"),
        ("v00008086d000010D3sv00008086sd00000000bc02sc00i00", "v0000808[0-9]d*"),
        ("abab", "a*ab"),
        ("aab", "*ab*b"),
    ],
)
def test_glob_match_on_alias_patterns(text: str, pattern: str) -> None:
    assert glob_match(text, pattern) == fnmatch.fnmatchcase(text, pattern)


@pytest.mark.parametrize("module", ["../evil", "a/b", "..", "two words"])
def test_a_line_naming_no_valid_module_is_skipped(module: str) -> None:
    """Not a module name (a path, blanks): the line is skipped, the next best one answers."""
    text = ALIASES + (
        f"alias pci:v00001EFFd00001220sv*sd*bc*sc*i* {module}\n"
        f"alias vfio_pci:v00001EFFd00001220sv*sd*bc*sc*i* {module}\n"
    )
    found = AliasTable(text.encode())
    npu = "pci:v00001EFFd00001220sv00001EFFsd00000000bc12sc00i00"
    assert found.native_module(npu) == "rebellions"
    assert found.vfio_variant_module(npu) is None


@pytest.mark.parametrize("command", ["bind-all", "unbind-all"])
def test_a_bad_module_name_in_modules_alias_is_a_warning_not_a_usage_error(
    kernel: FakeKernel, command: str
) -> None:
    npus = npu_node(kernel, count=1, driver="vfio-pci" if command == "unbind-all" else "rebellions")
    path = f"{kernel.host_root}/lib/modules/{kernel.release}/modules.alias"
    with open(path) as handle:
        original = handle.read()
    kernel.fs.remove_object(path)
    kernel.fs.create_file(
        path,
        contents=original
        + "alias pci:v00001EFFd00001220sv*sd*bc*sc*i* ../evil\n"
        + "alias vfio_pci:v00001EFFd00001220sv*sd*bc*sc*i* a/b\n",
    )
    result = invoke(kernel, command, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert [f["outcome"] for f in result.json()["functions"]] == ["changed"]
    assert kernel.driver_of(npus[0]) == ("vfio-pci" if command == "bind-all" else "rebellions")
    warned = [e for e in result.log_events() if e.get("event") == "modules.alias line skipped"]
    assert warned, result.stderr
    assert {e["module"] for e in warned} <= {"../evil", "a/b"}
