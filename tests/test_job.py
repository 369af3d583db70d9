"""Job requests: the example loads; each bad job in the corpus gets one clear located error."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rgt.job import JobError, JobRequest, load_job
from rgt.yamlsource import MAX_DOCUMENT_BYTES
from tests.hostile_inputs import REFUSALS, hostile_file, run_rgt_bounded

BAD_JOBS = Path(__file__).parent / "data" / "bad_jobs"
# Files that cannot carry an `# expect:` header say what they expect here.
HEADERLESS = {"empty.yaml": (1, "empty, expected a mapping"), "binary.yaml": (1, "binary file")}


def _expectation(path: Path) -> tuple[int, str]:
    if path.name in HEADERLESS:
        return HEADERLESS[path.name]
    match = re.match(r"# expect: (\d+): (.+)", path.read_text().splitlines()[0])
    assert match, f"{path.name} needs an '# expect: LINE: text' header"
    return int(match[1]), match[2]


def test_example_job_loads_with_its_fields() -> None:
    job = load_job()
    assert job.run_id == "example-run"
    assert (job.gpu_name, job.gpu_count) == ("RTX_4090", 1)
    assert job.roster == ("cell-a",)
    assert job.checkpoint_glob == "step-*.ckpt"
    assert JobRequest.from_dict(job.as_dict()) == JobRequest.from_dict(job.as_dict())


@pytest.mark.parametrize("path", sorted(BAD_JOBS.iterdir()), ids=lambda p: p.name)
def test_bad_job_is_named_with_its_line(path: Path) -> None:
    line, text = _expectation(path)
    with pytest.raises(JobError) as caught:
        load_job(path)
    message = caught.value.message
    assert message.startswith(f"{path}:{line}: "), message
    assert text in message
    assert "\n" not in message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("path", sorted(BAD_JOBS.iterdir()), ids=lambda p: p.name)
def test_bad_job_through_the_cli_is_one_line_exit_2(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rgt.cli import main

    line, text = _expectation(path)
    code = main(["render", "vastai", "run_one", "--job", str(path)])
    out = capsys.readouterr()
    assert code == 2
    assert out.out == ""
    assert out.err.startswith(f"rgt render: error: {path}:{line}: "), out.err
    assert text in out.err
    assert out.err.count("\n") == 1


def test_from_dict_rejects_a_secret_value_in_env_by_name() -> None:
    data = load_job().as_dict()
    data["env"] = {"HF_TOKEN": "hf_abc"}
    with pytest.raises(JobError, match=r"env\.HF_TOKEN"):
        JobRequest.from_dict(data, source="inline")


def test_missing_job_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="cannot read"):
        load_job(tmp_path / "nope.yaml")


@pytest.mark.timeout(60)
def test_bad_job_via_cli_is_one_line_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rgt",
            "render",
            "vastai",
            "run_one",
            "--job",
            str(BAD_JOBS / "gpu_with_space.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert "gpu_with_space.yaml:4: schema: gpu:" in result.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_a_job_path_that_is_not_a_small_regular_file_is_refused_unread(
    tmp_path: Path, kind: str
) -> None:
    # Issue #18 item 6: `--job /dev/zero` ended in MemoryError (exit 70) after eating GBs, and
    # a FIFO hung. Each is refused by what it is (fstat) or its size, before reading.
    path = hostile_file(kind, tmp_path, size=MAX_DOCUMENT_BYTES + 1)
    result = run_rgt_bounded("render", "vastai", "run_one", "--job", str(path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"rgt render: error: {path}:1: read: "), result.stderr
    assert REFUSALS[kind] in result.stderr
    if kind == "oversized":
        assert "1 MiB (1,048,576 bytes) at most" in result.stderr


def test_anchors_and_aliases_within_the_bound_still_load(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "run_id: r1\nimage: img\ngpu: RTX_4090:1\ndisk_gb: 40\ncommand: python3 train.py\n"
        "results_root: &root /workspace/results\nroster: [cell-a]\n"
        "checkpoint_dir: /workspace/checkpoints\nenv: {RESULTS: *root}\n"
    )
    assert load_job(job).env == {"RESULTS": "/workspace/results"}
