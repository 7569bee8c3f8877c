"""vfio-manager in one file (the bare-metal artifact; docs/bare-metal.md).

Run as ``vfio-manager`` it is the CLI, as ``vfio-manage`` (or ``vfio-manage.sh``) the drop-in.
``python3 vfio-manager-VERSION.pyz install [--root DIR]`` installs it: this file under
/usr/local/lib/vfio-manager/ (by content, so a running daemon keeps reading its own), the
links /usr/local/bin/vfio-manager and vfio-manage, the systemd units, the modules-load.d file
and /etc/default/vfio-manager when there is none; then systemd reloads its units and loads
the vfio modules (systemd-modules-load), as a boot would.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile

ARCHIVE = os.path.dirname(os.path.abspath(__file__))
LIB = "usr/local/lib/vfio-manager"
BIN = "usr/local/bin"
# in the archive -> on the host; True: an existing file is the admin's and is kept
FILES = {
    "systemd/vfio-manager.service": ("etc/systemd/system/vfio-manager.service", False),
    "systemd/vfio-manager-bind.service": ("etc/systemd/system/vfio-manager-bind.service", False),
    "systemd/modules-load.d/vfio-manager.conf": ("etc/modules-load.d/vfio-manager.conf", False),
    "systemd/vfio-manager.env": ("etc/default/vfio-manager", True),
}


def _replace_link(target: str, link: str) -> None:
    tmp = f"{link}.tmp{os.getpid()}"
    os.symlink(target, tmp)
    os.replace(tmp, link)


def install(args: list[str]) -> int:
    if args and (len(args) != 2 or args[0] != "--root"):
        print("usage: python3 vfio-manager.pyz install [--root DIR]", file=sys.stderr)
        return 2
    root = args[1] if args else "/"
    with open(ARCHIVE, "rb") as f:
        data = f.read()
    version = zipfile.ZipFile(ARCHIVE).read("vfio_manager/__init__.py").decode()
    version = version.split('__version__ = "', 1)[1].split('"', 1)[0]
    name = f"vfio-manager-{version}-{hashlib.sha256(data).hexdigest()[:12]}.pyz"
    lib, bindir = os.path.join(root, LIB), os.path.join(root, BIN)
    os.makedirs(lib, exist_ok=True)
    os.makedirs(bindir, exist_ok=True)
    tmp = os.path.join(lib, f".{name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o755)  # noqa: S103 - a program: root writes it, everyone may run it
    os.replace(tmp, os.path.join(lib, name))
    previous = os.path.basename(os.path.realpath(os.path.join(bindir, "vfio-manager")))
    for command in ("vfio-manager", "vfio-manage"):
        _replace_link(
            os.path.join("..", "lib", "vfio-manager", name), os.path.join(bindir, command)
        )
    print(f"installed {os.path.join(root, LIB, name)}; linked {BIN}/vfio-manager and vfio-manage")
    for old in os.listdir(lib):  # the one before stays, for a running daemon and a rollback
        if old.endswith(".pyz") and old not in (name, previous):
            os.remove(os.path.join(lib, old))
    with zipfile.ZipFile(ARCHIVE) as archive:
        for member, (dest, keep) in FILES.items():
            path = os.path.join(root, dest)
            if keep and os.path.exists(path):
                print(f"kept {path} (the admin's)")
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with archive.open(member) as src, open(f"{path}.tmp", "wb") as out:
                shutil.copyfileobj(src, out)
            os.chmod(f"{path}.tmp", 0o644)
            os.replace(f"{path}.tmp", path)
            print(f"installed {path}")
    if root == "/" and os.path.isdir("/run/systemd/system"):
        for verb in (["daemon-reload"], ["restart", "systemd-modules-load.service"]):
            subprocess.run(["systemctl", *verb], check=True)  # noqa: S607
            print("systemctl", *verb)
    return 0


def main() -> None:
    if sys.version_info < (3, 11):  # what requirements/runtime.lock is resolved for
        found = f"{sys.executable} is {sys.version.split()[0]}"
        sys.exit(f"vfio-manager: this file needs Python 3.11 or later; {found}")
    name = os.path.basename(sys.argv[0])
    if name.endswith(".pyz") and sys.argv[1:2] == ["install"]:
        sys.exit(install(sys.argv[2:]))
    if name.startswith("vfio-manage") and not name.startswith("vfio-manager"):
        from vfio_manager.cli.compat import main as run
    else:
        from vfio_manager.cli.main import main as run
    run()


main()
