"""A function whose IOMMU group has a sibling on a host driver is refused, nothing written."""

import guest
from conftest import Baseline
from guest import E1000, SEL_E1000, VIRTIO_NET
from sysfs_snapshot import snapshot


def test_bind_of_e1000_alone_is_refused(baseline: Baseline) -> None:
    assert guest.group(E1000) == guest.group(VIRTIO_NET)
    before = snapshot(with_lspci=False)["devices"]
    r = guest.run_cli("bind", E1000, *SEL_E1000)
    assert r.exit_code == 1, r
    assert r.writes == [], f"a refused bind must write nothing\n{r}"
    assert guest.driver(E1000) == "e1000"
    assert guest.override(E1000) is None
    assert guest.driver(VIRTIO_NET) == "virtio-pci"
    after = snapshot(with_lspci=False)["devices"]
    assert after[E1000] == before[E1000]
    assert after[VIRTIO_NET] == before[VIRTIO_NET]
    text = r.stdout + r.stderr
    assert "00:05.1" in text, f"the refusal should name the sibling on a host driver\n{r}"


def test_bind_of_e1000_dry_run_writes_nothing(baseline: Baseline) -> None:
    r = guest.run_cli("bind", E1000, "--dry-run", *SEL_E1000)
    assert r.writes == [], r
    assert guest.driver(E1000) == "e1000"
