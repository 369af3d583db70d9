"""Danger facts in the frontmatter agree with the prose of sections 4 and 5, for every profile.

The bundled profiles must be clean; each mutation below flips one fact (or its prose) in a copy
of a real profile and proves the check notices — so the clean result is not a check that
cannot fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rgt.consistency import consistency_findings
from rgt.lint import LintOptions, lint_file
from rgt.profile import bundled_profile_paths, load_profile, parse_profile
from rgt.yamlsource import Finding

PROFILES = {path.stem: path for path in bundled_profile_paths()}


def _findings(path: Path) -> list[Finding]:
    profile, findings = parse_profile(path)
    assert profile is not None, [f.format() for f in findings]
    return consistency_findings(profile, str(path))


def _mutant(tmp_path: Path, name: str, *edits: tuple[str, str]) -> Path:
    """A copy of a bundled profile (same file name) with exact text replacements."""
    text = PROFILES[name].read_text(encoding="utf-8")
    for old, new in edits:
        assert text.count(old) >= 1, f"{name}: {old!r} not found"
        text = text.replace(old, new, 1)
    path = tmp_path / f"{name}.md"
    path.write_text(text, encoding="utf-8")
    return path


def _rules(findings: list[Finding]) -> set[str]:
    return {f.rule for f in findings}


def test_all_eight_platform_profiles_are_bundled() -> None:
    assert set(PROFILES) == {
        "autodl",
        "china",
        "generic-ssh",
        "lambda",
        "local",
        "paperspace",
        "runpod",
        "vastai",
    }


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_bundled_profile_facts_and_prose_agree(name: str) -> None:
    assert [f.format() for f in _findings(PROFILES[name])] == []


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_stop_that_keeps_billing_is_said_in_section_5(name: str) -> None:
    """Independent of the checker: the same facts read straight from the merged frontmatter."""
    profile = load_profile(PROFILES[name])
    section5 = profile.body.split("## 5.", 1)[1].split("\n## 6.", 1)[0]
    for each in profile.all_variants():
        verb = each.meter_stop_verb
        if verb and verb != "variant-dependent":
            assert verb.lower() in section5.lower(), (each.name, verb)
        if each.stop_still_bills:
            assert each.stop_verb and each.stop_verb in section5, each.name
            assert "bill" in section5.lower(), each.name


def test_known_danger_values() -> None:
    """The facts the issue names, per platform and variant (what stop still bills, clocks)."""
    runpod = load_profile("runpod")
    assert (runpod.meter_stop_verb, runpod.stop_verb, runpod.stop_still_bills) == (
        "terminate",
        "stop",
        ["disk"],
    )
    assert runpod.spot_grace_seconds == 5.0
    assert runpod.frontmatter["residual_billables"] == ["volume"]
    lam = load_profile("lambda")
    assert lam.stop_verb is None and lam.frontmatter["residual_billables"] == ["storage"]
    autodl = load_profile("autodl")
    assert autodl.frontmatter["clocks"]["release_after_stop"] == "15d"
    assert autodl.meter_stop_irreversible is True and autodl.stop_verb == "关机"
    gpushare = load_profile("china:gpushare")
    assert gpushare.frontmatter["clocks"]["release_after_stop"] == "10d"
    assert gpushare.frontmatter["clocks"]["scratch_wipe_after_stop"] == "24h"
    lanrui = load_profile("china:lanrui")
    assert lanrui.stop_still_bills == ["disk"] and lanrui.stop_verb == "停止"
    notebook = load_profile("paperspace:notebook")
    assert notebook.frontmatter["clocks"]["session_limit"] == "6h"
    assert notebook.detach_primitive == "none" and notebook.overrides["detach"] == ""
    machine = load_profile("paperspace")
    assert machine.stop_still_bills == ["disk", "ip", "snapshot"]
    # The base of the China family names no verb: each member must.
    china = load_profile("china")
    assert china.meter_stop_verb == "variant-dependent"
    for member in ("matpool", "gpushare", "featurize", "lanrui"):
        assert load_profile(f"china:{member}").meter_stop_verb != "variant-dependent"


# -- each rule can fail -------------------------------------------------------------------------


def test_stop_bills_in_data_but_not_in_prose(tmp_path: Path) -> None:
    path = _mutant(
        tmp_path,
        "lambda",
        (
            "stop_verb: null                   # there is no stop or suspend state",
            "stop_verb: halt",
        ),
        ("stop_still_bills: []", "stop_still_bills: [disk]"),
    )
    messages = [f.message for f in _findings(path) if f.rule == "billing-prose"]
    assert any("never says 'halt' keeps billing" in m for m in messages), messages


def test_prose_says_stop_bills_but_data_says_nothing(tmp_path: Path) -> None:
    path = _mutant(tmp_path, "runpod", ("stop_still_bills: [disk]", "stop_still_bills: []"))
    findings = _findings(path)
    assert any(
        f.rule == "billing-prose" and "stop_still_bills is empty" in f.message for f in findings
    ), [f.format() for f in findings]
    # Reported at the frontmatter key, so the user lands on the line to fix.
    line = next(f.line for f in findings if f.rule == "billing-prose")
    assert path.read_text().splitlines()[line - 1].startswith("stop_still_bills:")


def test_each_billed_item_must_be_named(tmp_path: Path) -> None:
    path = _mutant(
        tmp_path,
        "vastai",
        ("stop_still_bills: [disk, bandwidth]", "stop_still_bills: [disk, bandwidth, ip]"),
    )
    assert any("lists 'ip'" in f.message for f in _findings(path))


def test_meter_stop_verb_missing_from_section_5(tmp_path: Path) -> None:
    path = _mutant(
        tmp_path, "lambda", ("meter_stop_verb: terminate ", "meter_stop_verb: obliterate ")
    )
    assert any("'obliterate' is never named in section 5" in f.message for f in _findings(path))


def test_spot_grace_must_match_section_4(tmp_path: Path) -> None:
    path = _mutant(tmp_path, "runpod", ('spot_grace: "~5s"', 'spot_grace: "~9s"'))
    assert _rules(_findings(path)) == {"spot-prose"}


def test_no_spot_must_be_said(tmp_path: Path) -> None:
    said = (
        '- **No spot tier and no preemption** (`spot_available: false`, `spot_grace: "n/a"`): '
        "a running\n  instance is not taken away."
    )
    path = _mutant(tmp_path, "lambda", (said, "- A running instance keeps running."))
    assert "spot-prose" in _rules(_findings(path))


def test_a_clock_must_be_stated_and_a_stated_clock_must_be_in_the_data(tmp_path: Path) -> None:
    wrong_days = _mutant(
        tmp_path, "autodl", ('release_after_stop: "15d"', 'release_after_stop: "12d"')
    )
    messages = [f.message for f in _findings(wrong_days) if f.rule == "clock-prose"]
    assert any("clocks.release_after_stop is '12d'" in m for m in messages), messages
    assert any("released after 15 days" in m for m in messages), messages

    (tmp_path / "b").mkdir()
    no_clock = _mutant(
        tmp_path / "b", "autodl", ('release_after_stop: "15d"', "release_after_stop: null")
    )
    assert any("released after 15 days" in f.message for f in _findings(no_clock))


def test_variant_scoping_keeps_members_apart(tmp_path: Path) -> None:
    """Gpushare's 10-day release must not satisfy (or trip) another member."""
    path = _mutant(
        tmp_path,
        "china",
        ('      release_after_stop: "10d"', '      release_after_stop: "11d"'),
    )
    findings = _findings(path)
    assert findings and all(f.message.startswith("variants.gpushare:") for f in findings), [
        f.format() for f in findings
    ]


def test_undocumented_variant_is_reported(tmp_path: Path) -> None:
    path = _mutant(
        tmp_path,
        "paperspace",
        ("  notebook:\n", "  gradient-vm:\n"),
    )
    findings = [f for f in _findings(path) if f.rule == "variant-doc"]
    assert findings and "gradient-vm" in findings[0].message


def test_rgt_lint_runs_the_consistency_rules(tmp_path: Path) -> None:
    path = _mutant(tmp_path, "runpod", ('spot_grace: "~5s"', 'spot_grace: "~9s"'))
    findings = lint_file(path, LintOptions())
    assert [f.rule for f in findings if f.severity == "error"] == ["spot-prose"]


# -- provider-command: a profile names only the rgt actions its platform has -------------------


def test_provider_commands_are_read_from_the_code() -> None:
    from rgt.consistency import provider_commands

    commands = set(provider_commands())
    assert {"poll", "pull", "sweep", "destroy", "launch", "stop", "approve"} <= commands
    # Commands that work for every platform are not among them.
    assert not commands & {"lint", "render", "verify", "cadence", "manifest", "demo", "sim"}


def test_provider_commands_on_a_platform_without_an_api_reach_attached_boxes_only() -> None:
    """What such a sentence would promise is not there: without an API provider, `rgt sweep`
    sees only boxes attached with `rgt attach` (none here), never the platform's own list of
    pods, and `rgt poll` of a platform id is refused, naming `rgt attach`."""
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rgt", *args, "--platform", "runpod"],
            capture_output=True,
            text=True,
            timeout=60,
        )

    swept = run("sweep")
    assert swept.returncode == 0 and "no instances visible" in swept.stdout, swept.stderr
    polled = run("poll", "123")
    assert polled.returncode == 2, polled.stdout + polled.stderr
    assert "no box is attached under this id" in polled.stderr and "rgt attach" in polled.stderr


def test_a_platform_reached_over_ssh_may_name_the_ssh_providers_commands_only(
    tmp_path: Path,
) -> None:
    """RunPod boxes are attached over ssh: rgt sweeps, polls and gates them (those sentences
    are true), but rgt neither stops nor starts a Pod, so a sentence saying it does is flagged."""
    path = _mutant(
        tmp_path,
        "runpod",
        ("Check the console's Pods list for stopped Pods.", "`rgt sweep` lists attached Pods."),
        (
            "re-read the Pods list until it no longer shows the Pod (RP14).",
            "rgt polls the Pod until the job is done, and `rgt stop` pauses it (RP14).",
        ),
    )
    findings = [f for f in _findings(path) if f.rule == "provider-command"]
    assert [f.message.split(":")[0] for f in findings] == ["'rgt stop'"]
    assert "rgt reaches 'runpod' boxes over ssh" in findings[0].message
    lines = path.read_text(encoding="utf-8").splitlines()
    assert "rgt stop" in lines[findings[0].line - 1]  # the line the sentence is on


def test_a_platform_rgt_cannot_reach_names_no_provider_command(tmp_path: Path) -> None:
    # With no detach primitive `launch --on` starts, nothing of rgt reaches the platform's boxes.
    path = _mutant(
        tmp_path,
        "runpod",
        ("detach_primitive: tmux ", "detach_primitive: none "),
        ("  detach: tmux new-session -d -s rgt", '  detach: ""'),
        ("Check the console's Pods list for stopped Pods.", "`rgt sweep` lists stopped Pods."),
    )
    findings = [f for f in _findings(path) if f.rule == "provider-command"]
    assert [f.message.split(":")[0] for f in findings] == ["'rgt sweep'"]
    assert "rgt has none for 'runpod'" in findings[0].message


def test_a_platform_with_a_provider_may_name_its_commands(tmp_path: Path) -> None:
    path = _mutant(
        tmp_path,
        "vastai",
        (
            "## 5. TEARDOWN / BILLING\n",
            "## 5. TEARDOWN / BILLING\n\n`rgt sweep` lists stopped instances; rgt polls them.\n",
        ),
    )
    assert [f for f in _findings(path) if f.rule == "provider-command"] == []
