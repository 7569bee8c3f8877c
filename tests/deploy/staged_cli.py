"""The ``kubevirt-config`` click command, staged here until it is wired into vfio_manager/cli.py.

cli.py is being restructured on another branch, so this branch does not edit it. The
function below is the text to paste into cli.py (with ``@click.command`` turned into
``@cli.command`` and these imports dropped); the tests register it on the real ``cli``
group meanwhile, so what gets pasted is what was tested. Once cli.py has the command,
:func:`kubevirt_config_command` returns that one and this file can go.
"""

from __future__ import annotations

import click

from vfio_manager.cli import (
    EXIT_CODES_HELP,
    Settings,
    _handles_errors,
    _selection_options,
    _selector,
    cli,
)
from vfio_manager.errors import VfioManagerError


# -- kubevirt-config -------------------------------------------------------------------------
@click.command("kubevirt-config", epilog=EXIT_CODES_HELP)
@_selection_options
@click.option(
    "--naming",
    type=click.Choice(["atom", "pf"]),
    default="atom",
    show_default=True,
    help="Resource names of the sandbox device plugin: atom = rebellions.ai/ATOM_CA22_PT "
    "(one per card), pf = rebellions.ai/RBLN-CA25_PF and _VF (per product and function).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--all-products",
    is_flag=True,
    help="Every catalogued product's PF and VF IDs instead of the functions on this host "
    "(the selection options then do not apply).",
)
@click.pass_obj
@_handles_errors
def kubevirt_config(
    settings: Settings,
    vendor: str,
    pci_class: str,
    device_ids: tuple[str, ...],
    naming: str,
    output_format: str,
    all_products: bool,
) -> None:
    """Print KubeVirt's permittedHostDevices.pciHostDevices entries for the NPUs.

    One entry per device ID present (or, with --all-products, catalogued), with the resource
    name the sandbox device plugin advertises and externalResourceProvider: true. The output
    goes under spec.configuration of the KubeVirt CR. Read-only.
    """
    from vfio_manager import kubevirt

    if all_products:
        entries = kubevirt.for_catalogue(naming)
    else:
        from vfio_manager.inventory import read_topology
        from vfio_manager.sysfs import Sysfs
        from vfio_manager.targets import selected_functions

        selector = _selector(vendor, pci_class, device_ids)
        topology = read_topology(Sysfs(settings.sysfs_root, settings.dev_root))
        entries = kubevirt.for_functions(selected_functions(topology, selector), naming)
        if not entries:
            raise VfioManagerError(
                f"no Rebellions function matches {selector.describe()} on this host",
                remedy="run it on a node with NPUs, or pass --all-products for every "
                "catalogued product",
            )
    for entry in entries:
        if not entry.catalogued:
            click.echo(f"vfio-manager: warning: {kubevirt.uncatalogued_note(entry)}", err=True)
    click.echo(kubevirt.render(entries, output_format, naming=naming), nl=False)


def kubevirt_config_command() -> click.Command:
    """The command wired into cli.py when it is there, else the staged one above."""
    return cli.commands.get("kubevirt-config", kubevirt_config)
