"""Profile loading: names, variants, exposed values, schema-located errors, start-up cost."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rgt.errors import UsageError
from rgt.profile import (
    ProfileError,
    duration_seconds,
    list_profiles,
    load_profile,
    merge_variant,
    parse_profile,
)
from rgt.yamlsource import load_schema

VASTAI = Path(__file__).resolve().parents[1] / "profiles" / "vastai.md"


def test_schema_is_valid_draft_2020_12() -> None:
    from jsonschema import Draft202012Validator

    for name in ("profile.schema.json", "job.schema.json"):
        Draft202012Validator.check_schema(load_schema(name))


def test_vastai_values() -> None:
    vast = load_profile("vastai")
    assert vast.name == "vastai"
    assert vast.meter_stop_verb == "destroy"
    assert vast.meter_stop_irreversible is True
    assert vast.stop_verb == "stop"
    assert vast.stop_still_bills == ["disk", "bandwidth"]
    assert vast.spot_grace_seconds == 0.0
    assert vast.onstart_limit_bytes == 16384
    assert vast.instance_id_env == "CONTAINER_ID"
    assert vast.gotcha_prefix == "VAST"
    assert vast.overrides["durable_dir"] == ""  # empty means empty: no on-box durable dir
    assert vast.overrides["detach"] == "/root/onstart.sh"
    assert vast.egress["model"] == "host-priced"
    assert vast.verified == "2026-06"


def test_every_bundled_profile_loads_with_its_variants() -> None:
    profiles = list_profiles()
    assert {p.platform for p in profiles} >= {"vastai", "local", "generic-ssh"}
    for profile in profiles:
        for each in profile.all_variants():
            assert each.overrides.keys() >= {"data_dir", "durable_dir", "detach", "scratch"}


@pytest.mark.parametrize(
    ("text", "seconds"), [("~0s", 0.0), ("~5s", 5.0), ("30s", 30.0), ("2m", 120.0), ("n/a", None)]
)
def test_duration_seconds(text: str, seconds: float | None) -> None:
    assert duration_seconds(text) == seconds


def test_unknown_profile_names_the_bundled_ones() -> None:
    with pytest.raises(UsageError, match=r"unknown profile 'nope'; bundled profiles: .*vastai"):
        load_profile("nope")


def _family(tmp_path: Path, variants: str) -> Path:
    base = VASTAI.read_text().split("\n---\n", 1)
    front = base[0] + "\nvariants:\n" + textwrap.indent(textwrap.dedent(variants), "  ")
    path = tmp_path / "vastai.md"
    path.write_text(front + "\n---\n" + base[1])
    return path


def test_variant_overrides_merge_key_by_key(tmp_path: Path) -> None:
    path = _family(
        tmp_path,
        """\
        volume:
          description: with a local volume mounted at /data
          overrides:
            durable_dir: /data
          stop_still_bills: [disk, volume, bandwidth]
        """,
    )
    family = load_profile(path)
    volume = family.with_variant("volume")
    assert volume.name == "vastai:volume"
    assert volume.overrides["durable_dir"] == "/data"
    assert volume.overrides["data_dir"] == "/workspace"  # inherited
    assert volume.stop_still_bills == ["disk", "volume", "bandwidth"]
    assert family.overrides["durable_dir"] == ""  # the base is untouched
    with pytest.raises(UsageError, match="no variant 'nope'"):
        family.with_variant("nope")


def test_merged_variant_is_validated_and_located_at_the_variant(tmp_path: Path) -> None:
    path = _family(
        tmp_path,
        """\
        ondemand:
          description: on-demand only
          spot_available: false
        """,
    )
    _, findings = parse_profile(path)
    lines = path.read_text().splitlines()
    messages = [f.format() for f in findings]
    # spot_available: false (set by the variant) makes the inherited spot_grace '~0s' wrong:
    # reported at the base spot_grace line, naming the variant.
    grace_line = next(i for i, line in enumerate(lines, 1) if line.startswith("spot_grace:"))
    assert any(
        m.startswith(f"{path}:{grace_line}: schema: variants.ondemand.spot_grace") for m in messages
    ), messages


def test_variant_dependent_needs_a_variant(tmp_path: Path) -> None:
    path = tmp_path / "vastai.md"
    path.write_text(VASTAI.read_text().replace("shared_fs: false", "shared_fs: variant-dependent"))
    with pytest.raises(
        ProfileError, match="shared_fs is variant-dependent but this profile has no"
    ):
        load_profile(path)


def test_merge_variant_keeps_family_keys() -> None:
    merged = merge_variant(
        {"platform": "x", "title": "X", "overrides": {"a": "1", "b": "2"}, "variants": {}},
        {"description": "d", "overrides": {"b": ""}},
        "v",
    )
    assert merged == {"platform": "x", "title": "X (v)", "overrides": {"a": "1", "b": ""}}


def test_profile_error_is_one_line_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "vastai.md"
    path.write_text(VASTAI.read_text().replace("spot_available: true", "spot_available: yes-ish"))
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert caught.value.message.startswith(f"{path}:")
    assert "spot_available" in caught.value.message
    assert "\n" not in caught.value.message


@pytest.mark.timeout(60)
def test_loading_profiles_imports_neither_mcp_nor_vastai() -> None:
    code = (
        "import sys, json; from rgt.profile import list_profiles; list_profiles();"
        "import rgt.cli; rgt.cli.build_parser();"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('mcp', 'vastai', 'vast', 'jinja2', 'torch'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
