"""rgt.boxtree on real `find` and `sha256sum` output from a directory of this machine."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from rgt import boxtree
from rgt.manifest import write_manifest


def _listing(root: Path) -> list[boxtree.TreeEntry]:
    done = subprocess.run(boxtree.find_command(str(root)), capture_output=True, check=True)
    return boxtree.parse_listing(done.stdout)


def _tree(tmp_path: Path) -> tuple[Path, dict]:
    import json

    root = tmp_path / "results"
    (root / "ckpt").mkdir(parents=True)
    (root / "ckpt" / "a b.bin").write_bytes(b"x" * 10)
    (root / "ckpt" / "m.json").write_text("{}")
    (root / "ckpt" / "sub dir").mkdir()
    (root / "ckpt" / "sub dir" / "w.bin").write_bytes(b"y" * 3)
    write_manifest(root, "run-1", ["ckpt"], "77")
    return root, json.loads((root / boxtree.MANIFEST_NAME).read_bytes())


def test_an_untouched_tree_matches_its_manifest(tmp_path: Path) -> None:
    root, manifest = _tree(tmp_path)
    comparison = boxtree.compare(_listing(root), manifest)
    assert comparison.unchanged, comparison


def test_names_a_line_based_listing_would_misread_are_new_files(tmp_path: Path) -> None:
    # The builder refuses such names, so a job that writes one later must show up as it is.
    root, manifest = _tree(tmp_path)
    (root / "ckpt" / "a\tb.bin").write_bytes(b"12")
    (root / "ckpt" / "line\nbreak.json").write_text("{}")
    changes = boxtree.compare(_listing(root), manifest).changes
    assert sorted(changes) == [
        "new file ckpt/a\tb.bin (2 bytes)",
        "new file ckpt/line\nbreak.json (2 bytes)",
    ]


def test_every_kind_of_change_is_named(tmp_path: Path) -> None:
    root, manifest = _tree(tmp_path)
    (root / "ckpt" / "a b.bin").write_bytes(b"x" * 11)
    (root / "ckpt" / "sub dir" / "w.bin").unlink()
    (root / "extra").mkdir()
    (root / "ckpt" / "new.txt").write_text("late")
    changes = boxtree.compare(_listing(root), manifest).changes
    assert "ckpt/a b.bin is 11 bytes, the manifest says 10" in changes
    assert "ckpt/sub dir/w.bin is gone from the box" in changes
    assert "new directory extra/ beside the roster" in changes
    assert "new file ckpt/new.txt (4 bytes)" in changes


def test_a_missing_manifest_marks_every_file_a_suspect(tmp_path: Path) -> None:
    root, manifest = _tree(tmp_path)
    (root / boxtree.MANIFEST_NAME).unlink()
    comparison = boxtree.compare(_listing(root), manifest)
    assert any("PULL_MANIFEST.json itself is missing" in c for c in comparison.changes)
    assert len(comparison.suspects) == 3


def test_suspects_are_judged_by_their_digest(tmp_path: Path) -> None:
    root, manifest = _tree(tmp_path)
    suspects = ["ckpt/a b.bin", "ckpt/sub dir/w.bin"]
    (root / "ckpt" / "sub dir" / "w.bin").write_bytes(b"z" * 3)  # same size, new bytes
    done = subprocess.run(boxtree.hash_command(str(root), suspects), capture_output=True)
    digests = boxtree.parse_digests(done.stdout, len(suspects))
    assert digests[1] == hashlib.sha256(b"zzz").hexdigest()
    changed = boxtree.changed_digests(manifest, suspects, digests)
    assert len(changed) == 1 and changed[0].startswith("ckpt/sub dir/w.bin was rewritten")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"f\t1\t1.0\tckpt/a", "cut off"),
        (b"f\t1\tckpt/a\0", "not type/size/mtime/path"),
        (b"f\tbig\t1.0\tckpt/a\0", "invalid literal"),
    ],
)
def test_a_damaged_listing_is_an_error_not_an_empty_tree(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        boxtree.parse_listing(data)


def test_a_digest_count_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="1 digest"):
        boxtree.parse_digests(b"0" * 64 + b"  x\n", 2)
