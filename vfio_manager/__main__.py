"""``python -m vfio_manager``."""

from vfio_manager.cli.main import main

main()
