"""``python -m vfio_manager``."""

from vfio_manager.cli import main

main()
