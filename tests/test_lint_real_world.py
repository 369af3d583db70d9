"""`rgt lint` on the forms found in profiles written by others (the upstream skill's own profiles):
each fixture in tests/data/real_world/ is a small profile, in our own words, using one such form
that rgt lint used to reject or crash on. They must lint clean; the stricter cases (a 300-character
link name, a schema failure next to prose defects) are in the bad-profile corpus with their
expected findings (long-link.md, schema-and-prose.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rgt.lint import LintOptions, _secret_findings, lint_paths

REAL_WORLD = Path(__file__).parent / "data" / "real_world"
FIXTURES = sorted(REAL_WORLD.glob("*.md"))
OPTIONS = LintOptions(max_age_months=240)


def test_the_fixtures_cover_each_form() -> None:
    assert {p.stem for p in FIXTURES} == {
        "byte-order-mark",
        "env-var-reference",
        "noted-titles",
        "tilde-fences",
    }
    assert (REAL_WORLD / "byte-order-mark.md").read_bytes().startswith(b"\xef\xbb\xbf---\n")


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_a_legitimate_form_lints_clean(path: Path) -> None:
    assert [f.format() for f in lint_paths([path], OPTIONS)] == []


def test_the_cli_accepts_them_all_in_one_run() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rgt", "lint", "--max-age-months", "240", str(REAL_WORLD)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 profile(s) clean" in result.stdout


def test_an_env_var_reference_is_not_a_secret_but_a_value_still_is() -> None:
    for line in (
        "auth: `curl -u $LAMBDA_API_KEY: cloud.lambdalabs.example/api/v1/instance-types`",
        'curl -u "${LAMBDA_API_KEY}:" cloud.lambdalabs.example/api/v1/instances',
    ):
        assert _secret_findings(line, "p.md") == []
    (finding,) = _secret_findings("LAMBDA_API_KEY: secret_0123456789abcdef", "p.md")
    assert finding.rule == "secret" and "0123456789" not in finding.message


def test_a_wrong_title_says_what_form_is_expected(tmp_path: Path) -> None:
    text = (REAL_WORLD / "noted-titles.md").read_text(encoding="utf-8")
    path = tmp_path / "noted-titles.md"
    path.write_text(text.replace("## 2. STORAGE MODEL", "## 2. STORAGE"), encoding="utf-8")
    (finding,) = lint_paths([path], OPTIONS)
    assert finding.rule == "sections"
    assert "expected 'STORAGE MODEL' (a note in parentheses may follow" in finding.message


def test_gotchas_in_bold_paragraphs_are_still_checked(tmp_path: Path) -> None:
    text = (REAL_WORLD / "noted-titles.md").read_text(encoding="utf-8")
    path = tmp_path / "noted-titles.md"
    path.write_text(text.replace("**BAD2** — the meter", "**BAD1** — the meter"), encoding="utf-8")
    (finding,) = lint_paths([path], OPTIONS)
    assert (finding.rule, finding.message.split(" (")[0]) == (
        "gotcha-id",
        "gotcha id BAD1 is used twice",
    )


def test_a_byte_order_mark_leaves_line_numbers_alone(tmp_path: Path) -> None:
    text = (REAL_WORLD / "byte-order-mark.md").read_text(encoding="utf-8")
    path = tmp_path / "byte-order-mark.md"
    path.write_text(text.replace("kind: ssh\n", "kind: shh\n"), encoding="utf-8")
    (finding,) = lint_paths([path], OPTIONS)
    kind_line = text.splitlines().index("kind: ssh") + 1
    assert (finding.rule, finding.line) == ("schema", kind_line)
