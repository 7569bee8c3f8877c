"""One verb per kernel file: the only functions that change binding state. Each re-reads
what it depends on and does nothing when nothing is to do (a stale plan never writes twice)."""

from __future__ import annotations

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.sysfs import Sysfs, valid_name
from vfio_manager.log import get_logger

log = get_logger("vfio_manager.kernel.verbs")


class Kernel:
    """Binding verbs over a :class:`Sysfs`."""

    def __init__(self, sysfs: Sysfs) -> None:
        self.sysfs = sysfs
        self.driver_of = sysfs.driver_of
        self.override_of = sysfs.override_of
        self.exists = sysfs.function_exists

    def set_override(self, address: PciAddress, driver: str) -> None:
        """Only ``driver`` may bind the function from now on. Does not unbind or load anything."""
        if self.sysfs.override_of(address) != valid_name(driver, "driver"):
            self.sysfs.write_device_attr(address, "driver_override", driver + "\n")
            log.debug("sysfs write", bdf=str(address), step="set-override", value=driver)

    def clear_override(self, address: PciAddress) -> None:
        """Write a bare newline: a 0-byte write never reaches the kernel (kernel-facts K1)."""
        if self.sysfs.override_of(address) is not None:
            self.sysfs.write_device_attr(address, "driver_override", "\n")
            log.debug("sysfs write", bdf=str(address), step="clear-override")

    def unbind(self, address: PciAddress, driver: str) -> None:
        """Detach ``driver``; runs the driver's remove() synchronously and may block."""
        if self.sysfs.driver_of(address) == valid_name(driver, "driver"):
            self.sysfs.write_driver_file(driver, "unbind", str(address))
            log.debug("sysfs write", bdf=str(address), step="unbind", driver=driver)

    def probe(self, address: PciAddress) -> None:
        """Ask the PCI core to attach the best driver; it reports success even when none binds."""
        if self.sysfs.driver_of(address) is None:
            self.sysfs.write_bus_file("drivers_probe", str(address))
            log.debug("sysfs write", bdf=str(address), step="probe")

    def bind(self, address: PciAddress, driver: str) -> None:
        """Probe ``driver`` on the function now; unlike drivers_probe, errors come back."""
        self.sysfs.write_driver_file(driver, "bind", str(address))
        log.debug("sysfs write", bdf=str(address), step="bind", driver=driver)

    def set_sriov_autoprobe(self, address: PciAddress, on: bool) -> None:
        """Whether the PF's new VFs are probed (K24: 0 before they exist keeps them driverless)."""
        value = "1" if on else "0"
        if self.sysfs.read_device_attr(address, "sriov_drivers_autoprobe") != value:
            self.sysfs.write_device_attr(address, "sriov_drivers_autoprobe", value + "\n")
            log.debug("sysfs write", bdf=str(address), step="sriov-autoprobe", value=value)

    def set_sriov_numvfs(self, address: PciAddress, count: int) -> None:
        """Create ``count`` VFs (0: remove them all); from one non-zero count to another the
        kernel wants 0 first (EBUSY, K17)."""
        if self.sysfs.read_device_attr(address, "sriov_numvfs") != str(count):
            self.sysfs.write_device_attr(address, "sriov_numvfs", f"{count}\n")
            log.debug("sysfs write", bdf=str(address), step="sriov-numvfs", value=count)
