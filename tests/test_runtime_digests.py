"""The remembered sha256 of weights files (verydeep.runtime.digests): right, reused, never stale."""

from __future__ import annotations

import hashlib
import os

import pytest

from verydeep.evaluate.loop import fingerprint
from verydeep.inference import engines
from verydeep.runtime import digests


def _no_hashing(*args, **kwargs):
    raise AssertionError("the file was hashed again although it did not change")


def test_the_digest_is_the_files_sha256_and_is_remembered_until_the_file_changes(
    tmp_path, monkeypatch
):
    path, memo = tmp_path / "w.bin", tmp_path / "memo"
    path.write_bytes(b"weights" * 1000)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digests.file_sha256(path, memo) == expected
    with monkeypatch.context() as m:
        m.setattr(digests, "hash_file", _no_hashing)
        assert digests.file_sha256(path, memo) == expected
    # same size, new bytes, the old modification time put back: the status-change time still differs
    stat = path.stat()
    path.write_bytes(b"WEIGHTS" * 1000)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (
        digests.file_sha256(path, memo) == hashlib.sha256(path.read_bytes()).hexdigest() != expected
    )
    # a file replaced by another (new inode) is hashed again
    other = tmp_path / "other.bin"
    other.write_bytes(b"weights" * 1000)
    os.replace(other, path)
    assert digests.file_sha256(path, memo) == expected


def test_no_memo_folder_or_an_unwritable_one_only_costs_the_hashing(tmp_path, monkeypatch):
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    expected = hashlib.sha256(b"abc").hexdigest()
    assert digests.file_sha256(path, None) == expected
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the memo folder would be")
    assert digests.file_sha256(path, blocker / "memo") == expected
    # fingerprint (the scores' record of the weights) remembers in the engine cache's sha256 folder
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path / "cache"))
    assert fingerprint(path) == f"sha256:{expected}"
    assert len(list((tmp_path / "cache" / "sha256").glob("*.json"))) == 1
    monkeypatch.setattr(digests, "hash_file", _no_hashing)
    assert fingerprint(path) == f"sha256:{expected}"
    monkeypatch.setenv(engines.CACHE_ENV, "")  # no cache folder: hashed every time
    with pytest.raises(AssertionError, match="hashed again"):
        fingerprint(path)
