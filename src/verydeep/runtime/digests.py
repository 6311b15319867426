"""The sha256 of a file, remembered while the file stays the same.

Why: ``evaluate`` records each weights file's sha256 in its scores (resume checks) and names the
OpenVINO cache entry by it; hashing VGG-16's 537 MB file costs 0.5-1 s of every run on a 2-core
Xeon, about as long as scoring 30 images. The digest is the file's content hash whatever this
module does; it only skips reading the file again when nothing about it changed: the memo is keyed
on the resolved path, device, inode, size, and the modification and status-change times in
nanoseconds (a rewrite, a replace or a ``touch`` each gives a new key). The memo lives as one small
JSON file per key in a ``sha256`` folder of the engine cache
(:func:`verydeep.inference.engines.cache_folder`); with no cache folder, or one that cannot be
written, the file is simply hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from verydeep.errors import WriteError
from verydeep.runtime.io import atomic_write, read_json


def _stat_key(path: Path) -> str:
    st = path.stat()
    return json.dumps(
        [str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    )


def hash_file(path: str | os.PathLike) -> str:
    """The sha256 (hex) of the bytes of ``path``, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


#: What a remembered digest must look like (a memo is a file anyone could edit: never trusted as is).
SHA256 = re.compile(r"[0-9a-f]{64}")


def file_sha256(path: str | os.PathLike, memo_dir: str | os.PathLike | None) -> str:
    """The sha256 (hex) of ``path``'s bytes, from ``memo_dir`` when the file has not changed since it
    was hashed (see the module doc); None ``memo_dir``: always hashed."""
    path = Path(path)
    if memo_dir is None:
        return hash_file(path)
    key = _stat_key(path)
    entry = Path(memo_dir) / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    try:
        remembered = read_json(entry.read_text(encoding="utf-8"))
        value = remembered.get("sha256")
        if remembered.get("key") == key and isinstance(value, str) and SHA256.fullmatch(value):
            return value
    except (OSError, ValueError, AttributeError):
        pass  # not remembered yet, or unreadable: hash it
    value = hash_file(path)
    if _stat_key(path) == key:  # unchanged while it was read: safe to remember
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"key": key, "sha256": value}).encode()
            atomic_write(entry, lambda handle: handle.write(text), what="digest memo", sync=False)
        except (OSError, WriteError):
            pass  # a read-only cache only costs the hashing next time
    return value
