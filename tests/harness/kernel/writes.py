"""The path every write to a kernel file takes: fault plan, the rule, the Write log, hooks.

A write first meets an injected failure if a test queued one (``fail_next_write``: the
errno comes back, nothing changes), then the file's rule runs (``KernelState.apply_rule``);
either way it is logged as a :class:`~tests.harness.kernel.model.Write`, and the callbacks a
test hung on it (``after_write``; ``remove_function_on_write`` is one) run,
outside the model lock.
"""

from __future__ import annotations

from tests.harness.kernel.buffers import oserror
from tests.harness.kernel.model import Write
from tests.harness.kernel.state import KernelState
from tests.harness.sysfsfile import Store


def store(s: KernelState, rel: str) -> Store:
    """The store function of the kernel file ``rel`` (canonical, relative to sys_root)."""

    def write(data: bytes) -> None:
        on_write(s, rel, data)

    return write


def on_write(s: KernelState, rel: str, data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    with s.lock:
        injected = None
        queue = s.failures.get(rel)
        if queue:
            for queued in list(queue):
                if queued[1] is None or queued[1] == text.strip():
                    injected = queued[0]
                    queue.remove(queued)
                    break
    try:
        if injected is not None:
            raise oserror(injected)
        s.apply_rule(rel, data)
    except OSError as exc:
        s.writes.append(Write(rel, text, exc.errno))
        raise
    else:
        s.writes.append(Write(rel, text, None))
    finally:
        with s.lock:
            hooks = s.after_write_hooks.get(rel, [])
            due = [h for h in hooks if h[0] is None or h[0] == text.strip()]
            hooks[:] = [h for h in hooks if h not in due]
        for _data, callback in due:
            callback()
