"""modules.alias matching, as `modprobe -R` does it: most specific pattern wins."""

from __future__ import annotations

from vfio_manager.host.modalias import AliasTable

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
    return AliasTable(ALIASES.splitlines())


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
