"""The kernel's view and verbs: PCI addresses, sysfs, the function model, inventory, drivers."""
