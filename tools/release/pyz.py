"""Packs a directory into a zipapp byte for byte the same for the same inputs.

Usage: python3 pyz.py SOURCE_DIR MAIN_PY OUTPUT
Entries sorted, every date SOURCE_DATE_EPOCH's, mode 0644, the shebang
#!/usr/bin/python3 -I (the system interpreter, isolated from the environment). Beside each
module, its bytecode for the Python that runs this (unchecked-hash, zipimport's layout); an
interpreter of another version ignores it and compiles the source.
"""

from __future__ import annotations

import os
import pathlib
import py_compile
import sys
import tempfile
import time
import zipfile

SHEBANG = b"#!/usr/bin/python3 -I\n"


def pack(source: pathlib.Path, main: pathlib.Path, output: pathlib.Path) -> None:
    epoch = max(int(os.environ.get("SOURCE_DATE_EPOCH", "315532800")), 315532800)
    date = time.gmtime(epoch)[:6]
    files = {str(p.relative_to(source)): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    files["__main__.py"] = main.read_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        for name in [n for n in files if n.endswith(".py") and n != "__main__.py"]:
            cfile = pathlib.Path(scratch, name + "c")
            py_compile.compile(
                str(source / name),
                cfile=str(cfile),
                dfile=name,
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
            files[name + "c"] = cfile.read_bytes()
    tmp = output.with_name(output.name + ".tmp")
    with tmp.open("wb") as raw:
        raw.write(SHEBANG)
        with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(files):
                info = zipfile.ZipInfo(name, date_time=date)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, files[name], compresslevel=9)
    tmp.chmod(0o755)
    tmp.replace(output)


if __name__ == "__main__":
    pack(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]))
