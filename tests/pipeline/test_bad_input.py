"""Bad input never produces a traceback, or a write outside the selected functions' files.

Three kinds of bad input, each fuzzed with hypothesis on a fresh fake node per example (its
own pyfakefs Patcher: function-scoped fixtures do not reset between hypothesis examples):

(a) BDF arguments of ``bind``/``unbind``: a malformed one exits 2, a well-formed one that is
    absent or outside the selection exits 1, and either way nothing is written;
(b) values of ``--vendor``, ``--class``, ``--device-id``, ``--timeout``, ``--lock-timeout``
    that are not what the option takes: exit 2, nothing written;
(c) garbage in the attributes the tool reads (vendor, device, class, driver_override,
    numa_node, sriov_numvfs, modalias of one function; /proc/cmdline; a modules.alias line):
    ``status``, ``status --json``, ``check``, ``bind-all`` and ``unbind-all`` exit 0, 1 or 3,
    and every write names a selected function only (its own directory, or its BDF as the data
    of a driver's bind/unbind or of drivers_probe).

The CLI runs through click's CliRunner with ``catch_exceptions=True``: a traceback shows as
``result.exception`` being something other than ``SystemExit``.
"""

from __future__ import annotations

import math
import re
import threading
import traceback
from collections.abc import Callable
from typing import Any, Optional

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from pyfakefs.fake_file import FakeFile
from pyfakefs.fake_filesystem_unittest import Patcher

from tests.harness import FakeKernel
from tests.harness.sysfsfile import KernelFile
from tests.harness.topologies import (
    HOST_DISK,
    HOST_NIC,
    NPU_CLASS,
    REBELLIONS_VENDOR,
    npu_node,
)
from tests.support import named_bdf, root_args
from vfio_manager.cli.main import cli

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NPUS = ("0000:01:00.0", "0000:02:00.0")  # npu_node(count=2), on rebellions
SRIOV_NPU = "0000:03:00.0"  # an SR-IOV capable NPU added for (c), on rebellions


# -- running the CLI ----------------------------------------------------------------------------
def _invoke(kernel: FakeKernel, *args: str) -> Result:
    """tests.support.invoke, but catching exceptions so a traceback can be asserted on."""
    return CliRunner().invoke(cli, [*root_args(kernel), *args], catch_exceptions=True)


def _no_traceback(result: Result) -> None:
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        shown = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        pytest.fail(f"traceback instead of an error message:\n{shown}")


def _fresh(body: Callable[[FakeKernel, Any], None]) -> None:
    """Run ``body(kernel, patcher)`` on a new fake node: NPUS on rebellions, the host's NIC."""
    with Patcher() as patcher:
        assert patcher.fs is not None
        kernel = FakeKernel(patcher.fs, release="6.1.0-test", iommu=True)
        try:
            assert npu_node(kernel, count=2) == list(NPUS)
            body(kernel, patcher)
        finally:
            kernel.close()  # releases blocked unbinds
            _join_writers()


def _join_writers() -> None:
    """Wait for the tool's writer threads (a write abandoned at its deadline) to end.

    They must end before the Patcher does: a writer finishing later would close its fake
    descriptor number with the real ``os.close``.
    """
    for thread in threading.enumerate():
        if thread.name.startswith("vfio-manager:"):
            thread.join(10)
            assert not thread.is_alive(), f"{thread.name} still blocked"


def _assert_writes_name_only(kernel: FakeKernel, allowed: set[str], context: str) -> None:
    for write in kernel.writes:
        named = named_bdf(write.path, write.data)
        assert named in allowed, f"{write} names {named!r}, not one of {sorted(allowed)}; {context}"


# digits of other scripts: str.isdigit() and int() accept them, a PCI address does not
FULLWIDTH_ZERO, ARABIC_INDIC_ZERO, DEVANAGARI_ZERO, MATH_BOLD_ZERO = 0xFF10, 0x0660, 0x0966, 0x1D7CE


def _digits(text: str, zero: int) -> str:
    """``text`` with its ASCII digits written in the script whose zero is ``zero``."""
    return "".join(chr(zero + int(c)) if c in "0123456789" else c for c in text)


# -- (a) BDF arguments --------------------------------------------------------------------------
# What a PCI address is, written independently of the product: [domain:]bus:device.function,
# hex, ASCII only, device at most 0x1f, function 0-7; surrounding whitespace and case ignored.
_ADDRESS = re.compile(r"(?:([0-9a-f]{4,5}):)?([0-9a-f]{2}):([01][0-9a-f])\.([0-7])", re.ASCII)


def _address(text: str) -> Optional[tuple[int, int, int, int]]:
    match = _ADDRESS.fullmatch(text.strip().lower())
    if match is None:
        return None
    domain, bus, device, function = match.groups()
    return int(domain or "0", 16), int(bus, 16), int(device, 16), int(function)


_NPU_ADDRESSES = {_address(b): b for b in NPUS}

NEAR_MISS_BDFS = [
    "",
    " ",
    "0000:03:00.8",  # function 8
    "0000:01:20.0",  # device 0x20
    "0000:01:00",
    "0000:1:00.0",
    "000:01:00.0",
    "000000:01:00.0",
    "0000:01:00.0.0",
    "0000:01:00.0/",
    "0000:01:00.0/driver_override",
    "../x",
    "../../../../etc/passwd",
    "0000:03:00.0/../..",
    "0000:01:00.0/../../0000:00:19.0",
    "./0000:01:00.0",
    "0000:01:00.0\x00",
    "\x00",
    "0000:01:00.0\x000000:00:19.0",
    "0000:01:00.-1",
    "0x0000:01:00.0",
    "0000:01:00.0 0000:02:00.0",
    "0000:01:00.0,0000:02:00.0",
    "*",
    "0000:01:00.*",
    "0000:01:0?.0",
    _digits("0000:01:00.0", FULLWIDTH_ZERO),
    _digits("0000:01:00.0", ARABIC_INDIC_ZERO),
    "0000:" + _digits("01", ARABIC_INDIC_ZERO) + ":00.0",
    "0000:01:00." + _digits("0", MATH_BOLD_ZERO),
    _digits("01:00.0", DEVANAGARI_ZERO),
    "0000:01:00.0" + "0" * 10_000,
    "a" * 100_000,
    "0000:0g:00.0",
    "-0000:01:00.0",
    "--help",
    "-h",
    "0000:01:00.0\n0000:00:19.0",
    "\uff47",  # fullwidth g
    # well-formed: absent or not selected (exit 1) or an NPU (runs)
    "0000:99:00.0",
    "ffff:ff:1f.7",
    "00000:01:00.0",
    "01:00.0",
    "0000:01:00.0\n",
    " 0000:02:00.0 ",
    "0000:01:00.7",
    HOST_NIC,
    HOST_DISK,
    "0000:00:00.0",
]


@st.composite
def _mutated_bdf(draw: st.DrawFn) -> str:
    """A real NPU address with one character replaced, inserted or deleted."""
    base = draw(st.sampled_from([*NPUS, "01:00.0", HOST_NIC]))
    position = draw(st.integers(0, len(base)))
    what = draw(st.sampled_from(["replace", "insert", "delete"]))
    char = draw(st.characters(codec="utf-8"))
    if what == "insert":
        return base[:position] + char + base[position:]
    if what == "delete" or position == len(base):
        return base[:position] + base[position + 1 :]
    return base[:position] + char + base[position + 1 :]


@st.composite
def _well_formed_bdf(draw: st.DrawFn) -> str:
    """Any well-formed address, in any accepted spelling (mostly absent from the node)."""
    domain = draw(st.sampled_from([0, 0, 1, 0xFFFF, 0x10000]))
    bus, device, function = (
        draw(st.integers(0, 255)),
        draw(st.integers(0, 31)),
        draw(st.integers(0, 7)),
    )
    text = f"{bus:02x}:{device:02x}.{function}"
    if domain or draw(st.booleans()):
        text = f"{domain:04x}:{text}"
    return text.upper() if draw(st.booleans()) else text


MALFORMED_BDFS = st.one_of(
    st.sampled_from(NEAR_MISS_BDFS),
    st.text(max_size=40),
    st.text(alphabet="0123456789abcdefABCDEF:.x/ -\n\x00", max_size=20),
    _mutated_bdf(),
    st.from_regex(r"\A[0-9a-fA-F]{1,6}:[0-9a-fA-F]{1,3}:[0-9a-fA-F]{1,3}\.[0-9]\Z"),
)
WELL_FORMED_BDFS = st.one_of(
    st.sampled_from([*NPUS, "01:00.0", "0000:02:00.0\n", " 0000:01:00.0 ", HOST_NIC, HOST_DISK]),
    _well_formed_bdf(),
)
# mostly one argument; a list is malformed as soon as one member is
BDF_ARGS = st.one_of(
    st.lists(MALFORMED_BDFS, min_size=1, max_size=2),
    st.lists(WELL_FORMED_BDFS, min_size=1, max_size=3),
    st.lists(st.one_of(MALFORMED_BDFS, WELL_FORMED_BDFS), min_size=1, max_size=3),
)


@FUZZ
@given(
    command=st.sampled_from(["bind", "unbind"]),
    args=BDF_ARGS,
)
def test_fuzzed_bdf_arguments_exit_2_or_1_without_a_write(command: str, args: list[str]) -> None:
    def body(kernel: FakeKernel, _patcher: Any) -> None:
        result = _invoke(kernel, "--timeout", "1", command, "--json", "--", *args)
        _no_traceback(result)
        context = f"{command} {args!r}: exit {result.exit_code}\n{result.output}"
        addresses = [_address(a) for a in args]
        if any(a is None for a in addresses):
            event("malformed")
            assert result.exit_code == 2, context
            assert kernel.writes == [], context
        elif all(a in _NPU_ADDRESSES for a in addresses):
            # every argument names a selected NPU: the command runs, and touches only them
            event("names NPUs only")
            assert result.exit_code == 0, context
            _assert_writes_name_only(kernel, {_NPU_ADDRESSES[a] for a in addresses}, context)
        else:
            event("well-formed, absent or unselected")
            assert result.exit_code == 1, context
            assert kernel.writes == [], context
        assert kernel.driver_of(HOST_NIC) == "e1000e"

    _fresh(body)


# -- (b) option values --------------------------------------------------------------------------
_BITS = {"--vendor": 16, "--device-id": 16}
_MIN = {"--timeout": 0.1, "--lock-timeout": 0.0}
_MAX_SECONDS = 86400.0  # a day: longer is a typo, and inf/nan would disable the deadline


def _valid_hex(value: str, option: str) -> bool:
    """Hexadecimal, optional 0x, ASCII digits only, within the option's width (a class:
    exactly 4 or 6 digits)."""
    digits = value.strip().lower()
    digits = digits[2:] if digits.startswith("0x") else digits
    if not digits or not re.fullmatch(r"[0-9a-f]+", digits, re.ASCII):
        return False
    if option == "--class":  # 4 digits (any programming interface) or 6, nothing else
        return len(digits) in (4, 6)
    return int(digits, 16) < 1 << _BITS[option]


def _seconds(value: str) -> Optional[float]:
    try:
        return float(value)  # what click's FloatRange parses
    except ValueError:
        return None


def _valid(option: str, value: str) -> bool:
    if option in _MIN:
        seconds = _seconds(value)
        return (
            seconds is not None
            and math.isfinite(seconds)
            and _MIN[option] <= seconds <= _MAX_SECONDS
        )
    return _valid_hex(value, option)


NEAR_MISS_VALUES = [
    "",
    " ",
    "0x",
    "0X",
    "x1eff",
    "0xg",
    "1eff\x00",
    "0x1eff\x00",
    "0x1eff0",
    "0x10000",
    "1000000",
    "0x1000000",
    "-1",
    "-0x1eff",
    "+1eff",
    "0x-1",
    "0x0x1eff",
    "0x 1eff",
    "1_eff",
    "0x1_2_0_0_0_0",
    "1eff 1eff",
    "1eff,1220",
    _digits("1eff", ARABIC_INDIC_ZERO),
    _digits("1eff", FULLWIDTH_ZERO),
    _digits("0x1220", DEVANAGARI_ZERO),
    "1eff\n1220",
    "0x1eff" * 1000,
    "ffffffffffffffffffffffffffffffff",
    "0.05",
    "0.0999",
    "-0.1",
    "-inf",
    "inf",
    "+inf",
    "Infinity",
    "nan",
    "-nan",
    "NaN",
    "1e308",
    "1e309",
    "86400.001",
    "1e10",
    "1e-9",
    "0x1p3",
    "1,5",
    "one",
    "30s",
    "\x00",
    "5" * 5000,
]


@FUZZ
@given(
    option=st.sampled_from(["--vendor", "--class", "--device-id", "--timeout", "--lock-timeout"]),
    value=st.one_of(st.sampled_from(NEAR_MISS_VALUES), st.text(max_size=30)),
    command=st.sampled_from(["bind-all", "unbind-all", "status", "check"]),
)
def test_fuzzed_option_values_exit_2_without_a_write(option: str, value: str, command: str) -> None:
    assume(not _valid(option, value))

    def body(kernel: FakeKernel, _patcher: Any) -> None:
        # global options before the command, selection options after it
        argv = [f"{option}={value}", command] if option in _MIN else [command, f"{option}={value}"]
        result = _invoke(kernel, *argv)
        _no_traceback(result)
        context = f"{argv!r}: exit {result.exit_code}\n{result.output}"
        assert result.exit_code == 2, context
        assert kernel.writes == [], context
        event(f"{option}")

    _fresh(body)


# Regressions: click.FloatRange let inf and nan through. inf crashed with
# OverflowError on the first write that did not return at once (a thread wait of inf), nan
# made every write's deadline 0 and the /dev/vfio wait endless.
@pytest.mark.parametrize("option", ["--timeout", "--lock-timeout"])
@pytest.mark.parametrize("value", ["inf", "nan", "1e308", "Infinity", "-nan", "1e10"])
def test_non_finite_or_huge_seconds_are_usage_errors(option: str, value: str) -> None:
    def body(kernel: FakeKernel, _patcher: Any) -> None:
        result = _invoke(kernel, f"{option}={value}", "bind-all")
        _no_traceback(result)
        assert result.exit_code == 2, result.output
        assert kernel.writes == []

    _fresh(body)


def test_the_longest_timeout_waits_for_a_slow_unbind() -> None:
    def body(kernel: FakeKernel, _patcher: Any) -> None:
        gate = kernel.block_unbind(NPUS[0])
        timer = threading.Timer(0.3, gate.set)  # the unbind returns after 0.3 s
        timer.start()
        try:
            result = _invoke(kernel, f"--timeout={_MAX_SECONDS:g}", "bind-all")
        finally:
            timer.cancel()  # _fresh releases the gate and waits for the writer
        _no_traceback(result)
        assert result.exit_code == 0, result.output
        assert [kernel.driver_of(b) for b in NPUS] == ["vfio-pci", "vfio-pci"]

    _fresh(body)


# -- (c) garbage attribute contents -------------------------------------------------------------
GARBLED_ATTRS = (
    "vendor",
    "device",
    "class",
    "driver_override",
    "numa_node",
    "sriov_numvfs",
    "modalias",
)
NEAR_MISS_CONTENTS = [
    b"",
    b"\n",
    b"\x00",
    b"\x00\x00\x00\x00",
    b"\xff\xfe\xfd\xfc",
    b"0x",
    b"0x1eff\x00",
    b"0x1EFF\n",
    b"0x1eff\n0x8086\n",
    b"0x8086\n",
    b"0x120000\n",
    b"0x060400\n",
    b"-1\n",
    b"-0x1\n",
    b"4294967296\n",
    b"99999999999999999999999999\n",
    _digits("120000\n", ARABIC_INDIC_ZERO).encode(),
    _digits("0x1eff\n", FULLWIDTH_ZERO).encode(),
    b"0x1_eff\n",
    b"(null)\n",
    b"vfio-pci\n",
    b"vfio-pci\x00rebellions\n",
    b"rebellions\n",
    b"e1000e\n",
    b"../../../../x\n",
    b"/\n",
    b"3\n",
    b"65536\n",
    b"pci:v00001EFFd*\n",
    b"pci:[\n",
    b"pci:v00008086d000010D3sv*sd*bc*sc*i*\n",
    b"*\n",
    b"x" * 5000,
    b"0x1eff" + b" " * 5000,
    b"\n" * 4097,
]
CONTENTS = st.one_of(
    st.sampled_from(NEAR_MISS_CONTENTS),
    st.binary(max_size=64),
    st.text(max_size=40).map(str.encode),
)
GARBAGE_ALIAS_LINES = [
    b"alias",
    b"alias pci:",
    b"alias pci:v00001EFFd*sv*sd*bc*sc*i*",
    b"alias pci:v00001EFFd00001220sv00001EFFsd00001220bc12sc00i00 e1000e",
    b"alias pci:v00001EFFd*sv*sd*bc*sc*i* ../../x",
    b"alias vfio_pci:v00001EFFd*sv*sd*bc*sc*i* nvme",
    b"alias pci:[ rebellions",
    b"alias pci:v*d*sv*sd*bc*sc*i* pcieport extra",
    b"\xff\xfe alias pci:v00001EFF* \x00",
    b"alias\tpci:v00001EFFd00001220sv*sd*bc*sc*i*\tvfio_pci",
]


def _const(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _garble(patcher: Any, path: str, show: Callable[[], bytes]) -> None:
    """Make a kernel file show ``show()`` from now on (its store, if any, is kept)."""
    obj: FakeFile = patcher.fs.resolve(path)
    assert isinstance(obj, KernelFile), path
    obj._show = show  # the harness has no public "show this garbage" call


def _still_selected(attr: str, content: bytes) -> Optional[bool]:
    """Whether the garbled function stays selected: True/False when the content is a clean
    number, None (either way is fine) when it is garbage the tool may skip or read leniently."""
    if attr not in ("vendor", "class"):
        return True
    text = content.decode("ascii", "replace").strip().lower()
    digits = text[2:] if text.startswith("0x") else text
    if not digits or not re.fullmatch(r"[0-9a-f]+", digits, re.ASCII):
        return None
    return int(digits, 16) == (REBELLIONS_VENDOR if attr == "vendor" else NPU_CLASS)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    garbage=st.dictionaries(st.sampled_from(GARBLED_ATTRS), CONTENTS, min_size=1, max_size=3),
    cmdline=st.one_of(st.none(), CONTENTS),
    alias=st.one_of(st.none(), st.sampled_from(GARBAGE_ALIAS_LINES), st.binary(max_size=60)),
)
def test_garbage_attributes_never_crash_nor_write_outside_the_selection(
    garbage: dict[str, bytes], cmdline: Optional[bytes], alias: Optional[bytes]
) -> None:
    def body(kernel: FakeKernel, patcher: Any) -> None:
        kernel.add_function(
            "0000:00:05.0", vendor=0x8086, device=0x7C70, pci_class=0x060400,
            driver="pcieport", iommu_group=40, numa_node=0,
        )  # fmt: skip
        kernel.add_function(
            SRIOV_NPU, vendor=REBELLIONS_VENDOR, device=0x1220, pci_class=NPU_CLASS,
            subsystem_vendor=REBELLIONS_VENDOR, subsystem_device=0x1220, revision=0x01,
            iommu_group=41, parent="0000:00:05.0", numa_node=1, sriov_totalvfs=4,
            driver="rebellions",
        )  # fmt: skip
        device_dir = kernel.sys_path(f"bus/pci/devices/{SRIOV_NPU}")
        for attr, content in garbage.items():
            _garble(patcher, f"{device_dir}/{attr}", _const(content))
        if cmdline is not None:
            _garble(patcher, f"{kernel.proc_root}/cmdline", _const(cmdline))
        if alias is not None:
            path = f"{kernel.host_root}/lib/modules/{kernel.release}/modules.alias"
            original = patcher.fs.resolve(path).peek()
            lines = original.split(b"\n")
            lines.insert(1, alias)  # among the real lines, before rebellions' own
            _garble(patcher, path, _const(b"\n".join(lines)))

        allowed = set(NPUS)
        selected = all(_still_selected(a, c) is not False for a, c in garbage.items())
        if selected:
            allowed.add(SRIOV_NPU)
        for argv in (
            ["status"],
            ["status", "--json"],
            ["check"],
            ["--timeout", "1", "bind-all"],
            ["--timeout", "1", "unbind-all"],
        ):
            result = _invoke(kernel, *argv)
            _no_traceback(result)
            context = f"{argv}: exit {result.exit_code}\n{result.output}"
            assert result.exit_code in (0, 1, 3), context
            _assert_writes_name_only(kernel, allowed, context)
            event(f"{argv[-1]} exit {result.exit_code}")
        assert kernel.driver_of(HOST_NIC) == "e1000e"
        assert kernel.driver_of(HOST_DISK) == "nvme"

    _fresh(body)
