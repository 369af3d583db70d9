"""rgt/manifest.py: the box-side manifest builder (run standalone, as the box runs it)."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from rgt import manifest
from rgt.manifest import ManifestRefused, build_manifest, write_manifest
from tests.conftest import spy_big_file_hashing

pytestmark = pytest.mark.timeout(60)

MODULE = Path(manifest.__file__)
SCHEMA = json.loads((Path(__file__).parent.parent / "schemas/manifest.schema.json").read_text())


def _tree(root: Path) -> dict[str, bytes]:
    files = {
        "ckpt/model.safetensors": os.urandom(9 * 1024 * 1024 + 7),  # above the big-file cut
        "ckpt/opt/state.bin": os.urandom(1000),
        "metrics/metrics.json": b'{"loss": 0.25}',
        "metrics/empty.json": b"",
    }
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return files


def _run(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # -I: isolated mode, no site-packages and no cwd on sys.path, like a bare box python3.
    return subprocess.run(
        [sys.executable, "-I", str(MODULE), str(root), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=30,
    )


Results = tuple[Path, dict[str, bytes], Path]  # results root, its files, the roster file


@pytest.fixture
def results(tmp_path: Path) -> Results:
    root = tmp_path / "results"
    files = _tree(root)
    roster = tmp_path / "roster.txt"
    roster.write_text("ckpt\n\nmetrics\n")
    return root, files, roster


def test_module_is_stdlib_only_and_self_contained() -> None:
    tree = ast.parse(MODULE.read_text(), feature_version=(3, 8))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in the box-side module"
            imported.add((node.module or "").split(".")[0])
    assert imported - set(sys.stdlib_module_names) == set()


def test_manifest_lists_every_file_with_size_and_sha256(results: Results) -> None:
    root, files, _ = results
    document = build_manifest(root, "run-1", ["metrics", "ckpt"], "77", workers=2)
    jsonschema.Draft202012Validator(SCHEMA).validate(document)
    assert document["roster"] == ["ckpt", "metrics"]
    assert document["instance_id"] == "77" and document["run_id"] == "run-1"
    assert document["files"] == [
        {"path": p, "size": len(files[p]), "sha256": hashlib.sha256(files[p]).hexdigest()}
        for p in sorted(files)
    ]
    assert document["totals"] == {"files": 4, "bytes": sum(len(d) for d in files.values())}
    # Written with sorted keys (built in order, so the encoder need not sort each entry).
    assert (
        manifest.encode_manifest(document)
        == (
            json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
        ).encode()
    )


def test_cli_standalone_writes_atomically_and_takes_instance_from_env(results: Results) -> None:
    root, files, roster = results
    done = _run(root, "--run-id", "run-1", "--roster", str(roster), env={"CONTAINER_ID": "4242"})
    assert done.returncode == 0, done.stderr
    data = (root / "PULL_MANIFEST.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() in done.stdout
    document = json.loads(data)
    jsonschema.Draft202012Validator(SCHEMA).validate(document)
    assert document["instance_id"] == "4242"
    assert len(document["files"]) == len(files)
    assert [p.name for p in root.iterdir() if p.name.endswith(".tmp")] == []
    # Rebuilding over an existing manifest works (the manifest is not a result), and the
    # explicit --instance-id wins over the environment.
    again = _run(root, "--run-id", "run-1", "--roster", str(roster), "--instance-id", "9")
    assert again.returncode == 0, again.stderr
    assert json.loads((root / "PULL_MANIFEST.json").read_bytes())["instance_id"] == "9"


def test_cli_via_stdin_like_the_onstart(results: Results) -> None:
    root, _, roster = results
    done = subprocess.run(
        [sys.executable, "-I", "-", str(root), "--run-id", "r", "--roster", str(roster)],
        input=MODULE.read_text(),
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "CONTAINER_ID"},
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((root / "PULL_MANIFEST.json").read_text())["instance_id"] is None


def test_output_elsewhere(results: Results, tmp_path: Path) -> None:
    root, _, roster = results
    out = tmp_path / "elsewhere.json"
    done = _run(root, "--run-id", "r", "--roster", str(roster), "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert out.is_file() and not (root / "PULL_MANIFEST.json").exists()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("symlink", "ckpt/link: is a symlink"),
        ("symlinked-roster-dir", "'metrics': roster entry is a symlink"),
        ("in-flight", "ckpt/.model.safetensors.abc.tmp: in-flight file"),
        ("unexpected-top", "'logs': unexpected top-level directory"),
        ("stray-top-file", "'notes.txt': unexpected top-level file"),
        ("missing-roster-dir", "'metrics': roster directory missing"),
        ("control-char", "unsafe name: contains a control character"),
        ("backslash", "unsafe name: contains a slash or backslash"),
        ("fifo", "ckpt/pipe: is not a regular file"),
    ],
)
def test_refusals_name_the_problem_and_write_nothing(
    results: Results, damage: str, expected: str
) -> None:
    root, _, roster = results
    if damage == "symlink":
        os.symlink("/etc/passwd", root / "ckpt" / "link")
    elif damage == "symlinked-roster-dir":
        os.rename(root / "metrics", root.parent / "real-metrics")
        os.symlink(root.parent / "real-metrics", root / "metrics")
    elif damage == "in-flight":
        (root / "ckpt" / ".model.safetensors.abc.tmp").write_bytes(b"half")
    elif damage == "unexpected-top":
        (root / "logs").mkdir()
    elif damage == "stray-top-file":
        (root / "notes.txt").write_text("x")
    elif damage == "missing-roster-dir":
        for path in (root / "metrics").iterdir():
            path.unlink()
        (root / "metrics").rmdir()
    elif damage == "control-char":
        (root / "ckpt" / "bad\nname").write_bytes(b"x")
    elif damage == "backslash":
        (root / "ckpt" / "bad\\name").write_bytes(b"x")
    elif damage == "fifo":
        os.mkfifo(root / "ckpt" / "pipe")
    done = _run(root, "--run-id", "r", "--roster", str(roster))
    assert done.returncode == 1, done.stderr
    assert expected in done.stderr
    assert all(line.startswith("manifest.py: refused: ") for line in done.stderr.splitlines())
    assert not (root / "PULL_MANIFEST.json").exists()
    with pytest.raises(ManifestRefused) as caught:
        build_manifest(root, "r", ["ckpt", "metrics"])
    assert any(expected in problem for problem in caught.value.problems)


@pytest.mark.parametrize(
    ("roster", "expected"),
    [
        (["ckpt", "ckpt", "metrics"], "listed twice"),
        (["ckpt", "metrics", ".."], "'..' is empty, '.' or '..'"),
        (["ckpt", "metrics/x"], "contains a slash"),
        (["ckpt", "metrics", "PULL_MANIFEST.json"], "the manifest itself"),
    ],
)
def test_bad_roster_entries(results: Results, roster: list[str], expected: str) -> None:
    root = results[0]
    with pytest.raises(ManifestRefused, match="roster entry") as caught:
        build_manifest(root, "r", roster)
    assert any(expected in problem for problem in caught.value.problems)


def test_usage_errors_exit_2(results: Results, tmp_path: Path) -> None:
    root, _, roster = results
    assert _run(root, "--roster", str(roster)).returncode == 2  # no --run-id
    missing = _run(tmp_path / "nope", "--run-id", "r", "--roster", str(roster))
    assert missing.returncode == 2 and "not a directory" in missing.stderr
    empty = tmp_path / "empty-roster"
    empty.write_text("\n")
    blank = _run(root, "--run-id", "r", "--roster", str(empty))
    assert blank.returncode == 2 and "no directory names" in blank.stderr
    nofile = _run(root, "--run-id", "r", "--roster", str(tmp_path / "absent"))
    assert nofile.returncode == 2 and "cannot read it" in nofile.stderr


def test_many_small_files_hash_like_hashlib(tmp_path: Path) -> None:
    root = tmp_path / "r"
    expected = {}
    for folder in range(3):
        for index in range(700):
            data = json.dumps({"f": folder, "i": index}).encode() * (index % 5)
            relative = f"m{folder}/{index:04d}.json"
            (root / f"m{folder}").mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(data)
            expected[relative] = hashlib.sha256(data).hexdigest()
    seen: list[tuple[int, int]] = []
    path = write_manifest(root, "r", ["m0", "m1", "m2"], "1", workers=4)
    document = json.loads(Path(path).read_text())
    assert {f["path"]: f["sha256"] for f in document["files"]} == expected
    items, problems = manifest.list_tree(str(root), ["m0", "m1", "m2"])
    total = sum((root / relative).stat().st_size for relative in expected)
    for processes in (False, True):  # threads, and forked processes
        seen.clear()
        hashed = manifest.hash_files(
            items, workers=3, processes=processes, progress=lambda d, t: seen.append((d, t))
        )
        assert not problems and {k: v[1] for k, v in hashed.items()} == expected
        assert {k: v[0] for k, v in hashed.items()} == {
            k: (root / k).stat().st_size for k in expected
        }
        assert seen[-1][0] == seen[-1][1] == total


def test_rgt_manifest_command(results: Results) -> None:
    root, files, roster = results
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rgt",
            "manifest",
            str(root),
            "--run-id",
            "r",
            "--roster",
            str(roster),
            "--instance-id",
            "5",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["files"] == len(files) and summary["instance_id"] == "5"
    os.symlink("/etc/hosts", root / "metrics" / "hosts")
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "rgt",
            "manifest",
            str(root),
            "--run-id",
            "r",
            "--roster",
            str(roster),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "rgt manifest: refused: metrics/hosts: is a symlink; results must be real files, not links"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--run-id", ""], "--run-id '': must be 1-200 printable characters"),
        (["--run-id", "a\tb"], "--run-id 'a\\tb': contains a control character"),
        (["--run-id", "r", "--instance-id", ""], "--instance-id '': must be 1-200 printable"),
    ],
)
def test_a_bad_run_or_instance_id_is_one_usage_line(
    results: Results, args: list[str], expected: str
) -> None:
    """`--run-id ""` once printed two "refused" lines and exited 1 (a refusal of the tree)."""
    root, _, roster = results
    for command, prog in (
        ([sys.executable, "-I", str(MODULE)], "manifest.py"),
        ([sys.executable, "-m", "rgt", "manifest"], "rgt manifest"),
    ):
        done = subprocess.run(
            [*command, str(root), *args, "--roster", str(roster)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.splitlines()
        assert line.startswith(f"{prog}: error: {expected}")
        assert not (root / manifest.MANIFEST_NAME).exists()


def test_forked_and_threaded_hashing_agree_on_a_mix_of_big_and_small(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "d").mkdir(parents=True)
    expected = {}
    for index in range(40):
        sizes = {3: manifest.BIG_FILE + 1, 30: manifest.BIG_FILE, 7: 2 * manifest.SMALL_BUFFER + 5}
        sizes.update({8: manifest.SMALL_BUFFER, 9: manifest.SMALL_BUFFER - 1, 10: 0})
        data = os.urandom(sizes.get(index, index * 100))
        (root / "d" / f"{index:02d}.bin").write_bytes(data)
        expected[f"d/{index:02d}.bin"] = (len(data), hashlib.sha256(data).hexdigest())
    items, _ = manifest.list_tree(str(root), ["d"])
    for processes in (False, True):
        for want_stat in (False, True):
            hashed = manifest.hash_files(items, workers=3, processes=processes, want_stat=want_stat)
            assert {k: (v[0], v[1]) for k, v in hashed.items()} == expected
            assert all(v[3] is None for v in hashed.values())
            if want_stat:
                assert all(v[2][0] == v[0] for v in hashed.values())
    serial = manifest.hash_files(items, workers=1)
    assert {k: (v[0], v[1]) for k, v in serial.items()} == expected


def test_a_hashing_child_that_dies_is_redone_in_the_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "r"
    (root / "d").mkdir(parents=True)
    expected = {}
    for index in range(30):
        data = os.urandom(index * 10)
        (root / "d" / f"{index:02d}").write_bytes(data)
        expected[f"d/{index:02d}"] = hashlib.sha256(data).hexdigest()
    parent = os.getpid()
    real = manifest.hash_batch

    def dying(share: object, *args: object) -> object:
        if os.getpid() != parent:
            os._exit(9)  # as if the OOM killer took the child
        return real(share, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(manifest, "hash_batch", dying)
    items, _ = manifest.list_tree(str(root), ["d"])
    hashed = manifest.hash_files(items, workers=3, processes=True)
    assert {k: v[1] for k, v in hashed.items()} == expected


def test_any_worker_count_writes_the_same_bytes_as_json_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest, "PROCESS_MIN_FILES", 1)  # fork even for these few files
    # Names whose order differs between "name" and "name/" ("a-b" < "a" + "/..." paths).
    roster = ["a", "a-b", "a.c", "é", "z", "b", "c", "d"]
    expected = {}
    for name in roster:
        for relative in ("x", "sub/y", "a-b", "é", "sub/z.json"):
            data = f"{name}:{relative}".encode()
            (tmp_path / name / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / relative).write_bytes(data)
            expected[f"{name}/{relative}"] = (len(data), hashlib.sha256(data).hexdigest())
    texts = []
    for workers in (1, 2, 3):
        data, summary = manifest.build_manifest_bytes(tmp_path, "r", roster, "i", workers)
        document = json.loads(data)
        assert manifest.encode_manifest(document) == data  # byte for byte what json writes
        paths = [f["path"] for f in document["files"]]
        assert paths == sorted(expected)
        assert {f["path"]: (f["size"], f["sha256"]) for f in document["files"]} == expected
        assert (
            summary["totals"]
            == document["totals"]
            == {
                "files": len(expected),
                "bytes": sum(size for size, _ in expected.values()),
            }
        )
        document.pop("created_at")
        texts.append(document)
    assert texts[0] == texts[1] == texts[2]
    # Problems are named in the listing's order whatever the worker count.
    (tmp_path / "c" / "sub" / "half.tmp").write_bytes(b"x")
    (tmp_path / "z" / "link").symlink_to(tmp_path / "a" / "x")
    for workers in (1, 2):
        with pytest.raises(ManifestRefused) as refused:
            build_manifest(tmp_path, "r", roster, "i", workers)
        assert refused.value.problems == [
            "c/sub/half.tmp: in-flight file (*.tmp of an atomic write still being written, or "
            "left by a crash); wait for the writer to finish or remove it",
            "z/link: is a symlink; results must be real files, not links",
        ]


@pytest.mark.usefixtures("alone_in_process")
def test_workers_list_their_own_directories_and_leave_big_files_to_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Four roster directories, two workers: each worker lists and hashes two directories;
    # the one big file (all in one directory, as checkpoints are) comes back to this process.
    roster = ["ckpt", "logs", "metrics", "samples"]
    for name in roster:
        for index in range(30):
            (tmp_path / name / "sub").mkdir(parents=True, exist_ok=True)
            (tmp_path / name / "sub" / f"{index}.json").write_text(f'{{"{name}": {index}}}')
    big = os.urandom(manifest.BIG_FILE + 1)
    (tmp_path / "ckpt" / "model.bin").write_bytes(big)
    serial, _ = manifest.build_manifest_bytes(tmp_path, "r", roster, "i", 1)
    shares: list[Any] = []
    threaded: list[list[str]] = []
    real_fork_map, real_hash_files = manifest.fork_map, manifest.hash_files

    def fork_map(parts: Any, *args: Any) -> Any:
        shares.append(list(parts))
        return real_fork_map(parts, *args)

    def hash_files(items: Any, **kwargs: Any) -> Any:
        threaded.append([item[0] for item in items])
        return real_hash_files(items, **kwargs)

    monkeypatch.setattr(manifest, "fork_map", fork_map)
    monkeypatch.setattr(manifest, "hash_files", hash_files)
    forked, _ = manifest.build_manifest_bytes(tmp_path, "r", roster, "i", 2)
    assert shares == [[["ckpt", "logs"], ["metrics", "samples"]]]
    assert threaded == [["ckpt/model.bin"]]
    document = json.loads(forked)
    assert {"path": "ckpt/model.bin", "sha256": hashlib.sha256(big).hexdigest(),
            "size": len(big)} in document["files"]  # fmt: skip
    assert document["totals"] == {"bytes": len(big) + sum(
        len(f'{{"{name}": {index}}}') for name in roster for index in range(30)
    ), "files": 121}  # fmt: skip
    document.pop("created_at")
    reference = json.loads(serial)
    reference.pop("created_at")
    assert document == reference


def test_forked_hashing_leaves_big_files_to_the_parents_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Work is split by file count: the first share holds ckpt/ (sorted first) with both big
    # files. Hashed in that share alone they would take one core; the workers leave them to
    # the parent, which hashes them with threads.
    monkeypatch.setattr(manifest, "PROCESS_MIN_FILES", 10)
    for index in range(2):
        (tmp_path / "ckpt").mkdir(exist_ok=True)
        (tmp_path / "ckpt" / f"{index}.bin").write_bytes(os.urandom(manifest.BIG_FILE + index))
    for index in range(40):
        (tmp_path / "metrics").mkdir(exist_ok=True)
        (tmp_path / "metrics" / f"{index:02d}.json").write_text(f'{{"i": {index}}}')
    parent = os.getpid()
    big_hashed_by = spy_big_file_hashing(monkeypatch)
    serial, _ = manifest.build_manifest_bytes(tmp_path, "r", ["ckpt", "metrics"], "i", 1)
    big_hashed_by.clear()
    forked, _ = manifest.build_manifest_bytes(tmp_path, "r", ["ckpt", "metrics"], "i", 2)
    assert json.loads(forked)["files"] == json.loads(serial)["files"]
    assert len(big_hashed_by) == 2
    assert all(pid == parent and name.startswith("rgt-hash") for pid, name in big_hashed_by)
    big_hashed_by.clear()
    items, _ = manifest.list_tree(str(tmp_path), ["ckpt", "metrics"])
    hashed = manifest.hash_files(items, workers=2, processes=True, want_stat=True)
    assert {k: v[1] for k, v in hashed.items()} == {
        f["path"]: f["sha256"] for f in json.loads(serial)["files"]
    }
    assert len(big_hashed_by) == 2
    assert all(pid == parent and name.startswith("rgt-hash") for pid, name in big_hashed_by)


@pytest.mark.parametrize("refused", ["fork", "memfd", "memfd+tempfile"])
def test_forked_hashing_survives_a_refused_fork_or_result_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: str
) -> None:
    # A box may refuse a process (EAGAIN under a pids limit) or a memory file (a seccomp
    # filter): the share is hashed here instead, or the threads do it all; same answer.
    import errno
    import tempfile

    root = tmp_path / "r"
    expected = {}
    for index in range(40):
        data = os.urandom(index * 7)
        (root / "d").mkdir(parents=True, exist_ok=True)
        (root / "d" / f"{index:02d}").write_bytes(data)
        expected[f"d/{index:02d}"] = hashlib.sha256(data).hexdigest()
    forks: list[int] = []

    def no(*_args: Any, **_kwargs: Any) -> Any:
        forks.append(1)
        raise OSError(errno.EAGAIN, "refused by the test")

    if refused == "fork":
        monkeypatch.setattr(os, "fork", no)
    else:
        monkeypatch.setattr(os, "memfd_create", no, raising=False)
        if refused == "memfd+tempfile":
            monkeypatch.setattr(tempfile, "mkstemp", no)
    items, _ = manifest.list_tree(str(root), ["d"])
    hashed = manifest.hash_files(items, workers=3, processes=True)
    assert {k: v[1] for k, v in hashed.items()} == expected
    assert forks  # the refusal did happen
