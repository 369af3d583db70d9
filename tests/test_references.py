"""The references (references/*.md): each entry reads symptom → causes → check → fix, ids are
unique, and every id that a profile, SKILL.md, a template, a reference or rgt's code names is
defined; `rgt lint` reports each planted defect with its file and line. The coverage test holds
the issue's list of symptoms against the catalog."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from rgt.bundle import bundle_root
from rgt.lint import LintOptions, lint_paths
from rgt.references import (
    FORM,
    PRINCIPLES_MARK,
    bundle_reference_findings,
    load_catalog,
)

GOOD_ENTRY = """### TRAIN-OOM1 — it ran out
- **Symptom:** out of memory.
- **Causes:** (1) too big.
- **Check:** measure it.
- **Fix:** make it smaller.
"""


def test_the_bundled_references_are_clean_and_complete() -> None:
    assert [f.format() for f in bundle_reference_findings()] == []
    entries, findings = load_catalog()
    assert findings == []
    # Every symptom family the issue lists has entries an agent can reach.
    families = {
        "train-numerics.md": "TRAIN-NAN",
        "train-oom.md": "TRAIN-OOM",
        "train-distributed.md": "TRAIN-DIST",
        "train-throughput.md": "TRAIN-TPUT",
        "train-checkpoint.md": "TRAIN-CKPT",
        "train-data.md": "TRAIN-DATA",
        "verify-results.md": "VERIFY",
        "monitoring.md": "MON",
        "multinode.md": "MULTI",
        "ssh-transport.md": "SSH",
        "artifact-layout.md": "LAYOUT",
        "gotchas-universal.md": "UNIV",
    }
    for name, prefix in families.items():
        ids = [e.id for e in entries.values() if e.file == f"references/{name}"]
        assert len(ids) >= 5, (name, ids)
        assert all(re.fullmatch(rf"{prefix}[1-9][0-9]*", i) for i in ids), ids
    # Kept from the upstream catalog's 44: 25 before, the rest added with a source or reason.
    assert len([i for i in entries if i.startswith("UNIV")]) == 37
    # SKILL.md routes to every family.
    skill = (bundle_root() / "skills" / "remote-gpu-trainer" / "SKILL.md").read_text()
    section = skill.split("## When the job is the problem", 1)[1].split("\n## ", 1)[0]
    for prefix in families.values():
        assert re.search(rf"\b{prefix}[0-9]+\b", section), prefix


def _bundle(tmp_path: Path) -> Path:
    """A copy of the bundle's references/, profiles/, skills/ and scripts/ to plant defects in."""
    root = tmp_path / "bundle"
    for folder in ("references", "profiles", "skills", "scripts"):
        shutil.copytree(bundle_root() / folder, root / folder)
    return root


def test_planted_form_and_id_defects_are_each_named(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    refs = root / "references"
    (refs / "bad-order.md").write_text(
        "# Bad\n\n### BAD1 — fields out of order\n- **Symptom:** x\n- **Check:** y\n"
        "- **Causes:** z\n- **Fix:** w\n\n### BAD2 — no check\n- **Symptom:** x\n"
        "- **Causes:** z\n- **Fix:** w\n"
    )
    (refs / "zz-dupe.md").write_text("# Dupe\n\n" + GOOD_ENTRY)
    (refs / "prose.md").write_text("# Only prose\n\nNo entries and no principles mark.\n")
    (refs / "fenced.md").write_text(
        "# Fenced\n" + PRINCIPLES_MARK + "\n\n```\n### NOT1 — inside a code block\n```\n"
    )
    skill = root / "skills" / "remote-gpu-trainer" / "SKILL.md"
    skill.write_text(skill.read_text() + "\nsee TRAIN-NAN99 and TRAIN-OMM1\n")
    skill_lines = len(skill.read_text().splitlines())
    (root / "scripts" / "x.sh.j2").write_text("#!/usr/bin/env bash\n# see UNIV99\n")
    found = sorted(f.format() for f in bundle_reference_findings(root))
    assert found == sorted(
        [
            "references/bad-order.md:3: reference-form: BAD1 has fields Symptom, Check, Causes, "
            "Fix; expected Symptom, Causes, Check, Fix in that order (symptom → causes → check "
            "→ fix)",
            "references/bad-order.md:9: reference-form: BAD2 has fields Symptom, Causes, Fix; "
            "expected Symptom, Causes, Check, Fix in that order (symptom → causes → check → fix)",
            "references/zz-dupe.md:3: reference-id: TRAIN-OOM1 is defined twice (first in "
            f"references/train-oom.md:{load_catalog()[0]['TRAIN-OOM1'].line})",
            "references/prose.md:1: reference-form: no entries ('### ID — symptom' with "
            "Symptom/Causes/Check/Fix); a file that explains principles instead says so with "
            f"the line {PRINCIPLES_MARK}",
            f"skills/remote-gpu-trainer/SKILL.md:{skill_lines}: reference-id: TRAIN-NAN99 is "
            "not defined in references/*.md",
            f"skills/remote-gpu-trainer/SKILL.md:{skill_lines}: reference-id: TRAIN-OMM1 is "
            "not defined in references/*.md",
            "scripts/x.sh.j2:2: reference-id: UNIV99 is not defined in references/*.md",
        ]
    )
    assert tuple(FORM) == ("Symptom", "Causes", "Check", "Fix")


def test_a_profile_naming_an_undefined_reference_fails_lint(tmp_path: Path) -> None:
    text = (bundle_root() / "profiles" / "vastai.md").read_text()
    marker = "## 7. TOP GOTCHAS\n"
    planted = text.replace(marker, marker + "\nOOM on the box: see TRAIN-OOM1 and TRAIN-OOM42.\n")
    path = tmp_path / "profiles" / "vastai.md"
    path.parent.mkdir()
    path.write_text(planted)
    line = planted.splitlines().index("OOM on the box: see TRAIN-OOM1 and TRAIN-OOM42.") + 1
    findings = [
        f.format()
        for f in lint_paths([path], LintOptions(max_age_months=240))
        if f.rule == "reference-id"
    ]
    assert findings == [
        f"{path}:{line}: reference-id: TRAIN-OOM42 is not defined in references/*.md"
    ]
    result = subprocess.run(
        [sys.executable, "-m", "rgt", "lint", str(path), "--max-age-months", "240"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout
    assert f"{path}:{line}: reference-id: TRAIN-OOM42" in result.stdout
