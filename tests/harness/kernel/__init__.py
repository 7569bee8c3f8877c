"""The fake kernel's rules, one module per kernel file, and the pyfakefs tree they act on.

Each rule module cites the facts it encodes by number (K1 ... K23 in docs/kernel-facts.md),
and the tests in tests/harness_tests check each fact. Tests use the facade,
``tests.harness.FakeKernel``; nothing here is imported by product tests.

| kernel file (under /sys) | module | facts |
|---|---|---|
| bus/pci/devices/BDF/driver_override | driver_override.py | K3 |
| bus/pci/drivers/NAME/bind, .../unbind | bind_unbind.py | K4, K5 |
| bus/pci/drivers_probe, bus/pci/drivers_autoprobe | drivers_probe.py | K6 |
| bus/pci/drivers/NAME/new_id, .../remove_id | new_id.py | K7 |
| which driver matches, which probe succeeds | matching.py | K8-K11, K13 |
| devices/BDF/sriov_numvfs, .../sriov_drivers_autoprobe | sriov.py | K17 |
| devices/BDF/remove, .../rescan, .../reset, bus/pci/rescan | remove_rescan.py, hotplug.py | K18 |
| devices/BDF/driver, drivers/NAME/BDF, vfio-dev/vfioK | binding.py | K2, K15, K19, K20 |
| kernel/iommu_groups/N, /dev/vfio/N | iommu_groups.py | K14, K15, K22 |
| bus/pci/drivers/NAME/ | drivers.py | K2, K21 |
| /proc/modules, /sys/module/NAME, /lib/modules/REL/modules.* | modules.py | K12, K21 |

The plumbing: model.py (the data), state.py (what the rules share, one lock), tree.py (the
pyfakefs primitives), layout.py (the machine's folders and each function's folder),
buffers.py (how stores parse what was written), writes.py (the fault plan and the Write log
around every write), routes.py (which rule a write to which file reaches).

Import order, lowest first, no cycles: model, buffers, tree -> state -> iommu_groups ->
binding -> hotplug -> writes -> matching, drivers -> the rule modules, modules -> layout ->
sriov -> routes -> the facade (tests/harness/fakekernel.py).
"""
