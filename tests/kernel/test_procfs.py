"""/proc paths: a name that could climb out of its folder is refused, never joined."""

from __future__ import annotations

import pytest

from vfio_manager.kernel.procfs import Procfs


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../1", "fd\0"])
def test_a_name_that_could_leave_its_folder_is_refused(name: str) -> None:
    proc = Procfs("/node/proc")
    with pytest.raises(ValueError, match="is not a /proc entry name"):
        proc.path("self", name)
    with pytest.raises(ValueError, match="is not a /proc entry name"):
        proc.pid_path(42, name)


def test_plain_names_and_pids_make_paths_under_the_root() -> None:
    proc = Procfs("/node/proc/")
    assert proc.path("self", "mountinfo") == "/node/proc/self/mountinfo"
    assert proc.pid_path(42, "fd") == "/node/proc/42/fd"
    assert proc.pid_dir(42) == "/node/proc/42"
    with pytest.raises(ValueError, match="is not a process ID"):
        proc.pid_dir(0)
