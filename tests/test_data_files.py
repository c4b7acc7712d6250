"""Walking a data folder (trainers.data.files): a comparison on a server folder such as ../../.. stopped at
"Permission denied: '../../../proc/1/cwd'"; what cannot be read is skipped, and folder links are not
followed, so a link to a parent cannot make the walk endless."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from trainers.data.files import folder_files

UNREADABLE_LINK = Path("/proc/1/cwd")  # stat() answers EACCES even to root without ptrace rights


def _tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(bytes(range(256)) * 4)
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 4)
    (root / "up").symlink_to("..")  # a loop through the parent
    (root / "sub" / "self").symlink_to(".")  # and through itself
    (root / "dangling").symlink_to(root / "nowhere")
    (root / "to-a").symlink_to(root / "a.bin")  # a file link is a file
    (root / "cwd").symlink_to(UNREADABLE_LINK)
    return root


def test_the_walk_skips_what_it_cannot_read_and_never_follows_folder_links(tmp_path):
    root = _tree(tmp_path / "data")
    found = sorted(p.relative_to(root).as_posix() for p in folder_files(root))
    assert found == ["a.bin", "sub/b.bin", "to-a"]


def test_a_folder_that_cannot_be_listed_is_skipped_with_one_warning(tmp_path, monkeypatch):
    root = _tree(tmp_path / "data")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("sub"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable folder\(s\) or file\(s\).*sub: Permission"):
        found = sorted(p.relative_to(root).as_posix() for p in folder_files(root))
    assert found == ["a.bin", "to-a"]


@pytest.mark.skipif(os.access(UNREADABLE_LINK, os.R_OK), reason="this machine lets /proc/1/cwd be read")
def test_compare_and_the_fragment_data_read_a_folder_holding_an_unreadable_link(tmp_path):
    """The reported failure: the leaderboard's data check and the dataset each walked the folder with
    Path.rglob, whose is_file() raised PermissionError on /proc/1/cwd."""
    from trainers.data.fragments import FragmentDataset
    from trainers.evaluation.compare import _load_data_spec

    root = _tree(tmp_path / "data")
    with pytest.raises(PermissionError):
        [p.is_file() for p in root.rglob("*")]  # the walk the code did: it still fails the same way
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing unreadable is counted: the link is a dangling entry here
        spec = _load_data_spec(f"fragments:folder={root}", None)
    assert spec.folder_path == root
    ds = FragmentDataset(folder=root, max_fragments_per_file=2, seed=0, split="all")
    assert {p.name for p, _ in (ds.fragment_info(i) for i in range(len(ds)))} <= {"a.bin", "b.bin", "to-a"}
    assert len(ds) >= 2
