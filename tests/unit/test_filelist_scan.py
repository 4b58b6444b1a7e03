"""The size scan behind push-data's space check and progress total: every file counted once, in
parallel, without following links."""

from __future__ import annotations

import os

import pytest

from migrate.data import filelist


def _tree(root, dirs: int = 7, per_dir: int = 11):
    expected_files = expected_bytes = 0
    for d in range(dirs):
        sub = root / f"d{d}" / "deeper"
        sub.mkdir(parents=True)
        for i in range(per_dir):
            size = d * 100 + i
            (sub / f"f{i}").write_bytes(b"x" * size)
            expected_files, expected_bytes = expected_files + 1, expected_bytes + size
    return expected_files, expected_bytes


@pytest.mark.parametrize("workers", [1, 4])
def test_quick_size_counts_every_file_of_a_nested_tree_once(tmp_path, workers):
    expected = _tree(tmp_path)
    assert filelist.quick_size(str(tmp_path), workers=workers) == expected


def test_quick_size_does_not_follow_links_and_counts_them_as_entries(tmp_path):
    files, size = _tree(tmp_path / "real")
    (tmp_path / "loop").symlink_to(tmp_path)  # followed, this would never end
    link_size = os.lstat(tmp_path / "loop").st_size
    assert filelist.quick_size(str(tmp_path)) == (files + 1, size + link_size)


def test_quick_size_of_one_file_and_of_an_unreadable_directory(tmp_path):
    (tmp_path / "one").write_bytes(b"abc")
    assert filelist.quick_size(str(tmp_path / "one")) == (1, 3)
    assert filelist.quick_size(str(tmp_path / "missing")) == (0, 0)


def test_early_sizes_counts_every_source_in_the_background(tmp_path):
    expected = _tree(tmp_path / "a")
    (tmp_path / "b").write_bytes(b"12345")
    sizes = filelist.early_sizes([str(tmp_path / "a"), str(tmp_path / "b")])
    assert sizes.result(timeout=30) == {str(tmp_path / "a"): expected, str(tmp_path / "b"): (1, 5)}
