"""Version folders and policies (no TensorFlow)."""

from __future__ import annotations

import os
from pathlib import Path

from serving.config.version_policy import AllPolicy, LatestPolicy, SpecificPolicy
from serving.storage.local import fingerprint, list_versions


def test_only_numbered_folders_are_versions(tmp_path: Path) -> None:
    for name in ["1", "00000123", "7", "tmp.1", ".incoming", "v2", "-3", "1.5"]:
        (tmp_path / name).mkdir()
    (tmp_path / "9").write_text("a file, not a version")
    os.symlink(tmp_path / "9", tmp_path / "10")
    found = list_versions(str(tmp_path))
    assert sorted(found) == [1, 7, 123]
    assert found[123].path == str(tmp_path / "00000123")


def test_duplicate_numbers_pick_a_stable_folder(tmp_path: Path) -> None:
    (tmp_path / "001").mkdir()
    (tmp_path / "1").mkdir()
    assert list_versions(str(tmp_path))[1].path == str(tmp_path / "1")


def test_policies() -> None:
    versions = [1, 2, 5, 9]
    assert LatestPolicy().select(versions) == {9}
    assert LatestPolicy(num_versions=2).select(versions) == {5, 9}
    assert LatestPolicy(num_versions=10).select(versions) == {1, 2, 5, 9}
    assert AllPolicy().select(versions) == {1, 2, 5, 9}
    assert SpecificPolicy(versions=frozenset({2, 3})).select(versions) == {2}
    assert LatestPolicy().select([]) == set()


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"x")
    before = fingerprint(str(tmp_path))
    (tmp_path / "variables").mkdir()
    (tmp_path / "variables" / "variables.index").write_bytes(b"y")
    assert fingerprint(str(tmp_path)) != before
