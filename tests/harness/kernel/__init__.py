"""The fake kernel's rules, one module per kernel file, and the pyfakefs tree they act on.

Each rule module cites the facts it encodes by number (K1 ... K27 in docs/kernel-facts.md),
and the tests in tests/harness_tests check each fact. Tests use the facade,
``tests.harness.FakeKernel``; nothing here is imported by product tests.

Paths are under /sys; DEV stands for bus/pci/devices/BDF, DRV for bus/pci/drivers/NAME.

| kernel file | module | facts |
|---|---|---|
| DEV/driver_override | driver_override.py | K3 |
| DRV/bind, DRV/unbind | bind_unbind.py | K4, K5 |
| bus/pci/drivers_probe, bus/pci/drivers_autoprobe | drivers_probe.py | K6 |
| DRV/new_id, DRV/remove_id | new_id.py | K7 |
| (which driver matches, which probe succeeds) | matching.py | K8-K11, K13 |
| DEV/sriov_numvfs, DEV/sriov_drivers_autoprobe | sriov.py | K17 |
| DEV/remove, DEV/rescan, DEV/reset, bus/pci/rescan | remove_rescan.py, hotplug.py | K18 |
| DEV/driver, DRV/BDF, DEV/vfio-dev/vfioK (and its cdev) | binding.py | K2, K15, K19, K20, K25 |
| kernel/iommu_groups/N, /dev/vfio/N | iommu_groups.py | K14, K15, K22 |
| DRV/ | drivers.py | K2, K21 |
| /proc/modules, /sys/module/NAME, /lib/modules/REL/modules.* | modules.py | K12, K21 |

The plumbing: model.py (the data), state.py (what the rules share, one lock), tree.py (the
pyfakefs primitives), layout.py (the machine's folders and each function's folder),
buffers.py (how stores parse what was written), writes.py (the fault plan and the Write log
around every write), routes.py (which rule a write to which file reaches).

Import order, lowest first, no cycles (tests/harness_tests/test_kernel_package.py): model,
buffers, tree -> state -> iommu_groups -> binding -> hotplug -> writes -> matching, drivers
-> the other rule modules and modules -> layout -> sriov (it makes VFs) -> routes -> the
facade (tests/harness/fakekernel.py).
"""
