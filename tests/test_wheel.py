"""The built wheel, installed (not editable) into a fresh virtualenv outside the checkout, finds
its bundled profiles, schemas and templates: `rgt lint` and `rgt render` work from it.

The wheel is built from this checkout with the real build backend (hatchling, no build
isolation: no network needed). The new virtualenv gets rgt only from the wheel; its runtime
dependencies (jinja2, pyyaml, jsonschema, ...) are borrowed from the test virtualenv through a
.pth line, which adds that directory to sys.path without running its .pth files -- so the
checkout's editable install of rgt stays invisible.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import assert_no_canary

CHECKOUT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(120)
def test_wheel_installed_outside_the_checkout_lints_and_renders(tmp_path: Path) -> None:
    pytest.importorskip("hatchling", reason="the wheel build needs hatchling (test extras)")
    wheels = tmp_path / "wheels"
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(CHECKOUT),
        ],
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("remote_gpu_trainer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for bundled in (
        "rgt/_bundle/profiles/vastai.md",
        "rgt/_bundle/profiles/local.md",
        "rgt/_bundle/profiles/generic-ssh.md",
        "rgt/_bundle/schemas/profile.schema.json",
        "rgt/_bundle/schemas/job.schema.json",
        "rgt/_bundle/schemas/job.example.yaml",
        "rgt/_bundle/scripts/onstart.sh.j2",
        "rgt/_bundle/scripts/pull.sh.j2",
        "rgt/manifest.py",
    ):
        assert bundled in names, bundled

    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=tmp_path,
        ).stdout.strip()
    )
    installed = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        cwd=tmp_path,
    )
    assert installed.returncode == 0, installed.stderr
    (site / "_rgt_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "elsewhere"  # not the checkout: nothing can come from the source tree
    work.mkdir()
    where = _run(
        [
            str(python),
            "-c",
            "import rgt, rgt.bundle; print(rgt.__file__); print(rgt.bundle.bundle_root())",
        ],
        cwd=work,
    )
    module_file, bundle_root = where.stdout.split()
    assert Path(module_file).is_relative_to(site), module_file
    assert Path(bundle_root) == site / "rgt" / "_bundle"

    rgt = str(venv / "bin" / "rgt")
    lint = _run([rgt, "lint"], cwd=work)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "profile(s) clean" in lint.stdout
    listed = _run([rgt, "lint", "--format", "json"], cwd=work)
    files = [Path(f) for f in json.loads(listed.stdout)["files"]]
    assert files and all(f.is_relative_to(site) for f in files)

    rendered = _run([rgt, "render", "vastai", "onstart", "-o", str(work / "onstart.sh")], cwd=work)
    assert rendered.returncode == 0, rendered.stderr
    script = (work / "onstart.sh").read_text()
    assert script.startswith("#!/usr/bin/env bash\n")
    assert len(script.encode()) <= 16384
    assert_no_canary(script, rendered.stderr)
    for template in ("run_one", "run_queue", "pull"):
        result = _run([rgt, "render", "generic-ssh", template], cwd=work)
        assert result.returncode == 0, result.stderr
        assert "set -euo pipefail" in result.stdout
