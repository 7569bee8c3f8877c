"""vfio-manager: moves Rebellions NPU functions between their native driver and vfio-pci."""

__version__ = "0.1.0"
