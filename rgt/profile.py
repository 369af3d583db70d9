"""Platform profiles: `profiles/<platform>.md` = YAML frontmatter (validated) + 8 prose sections.

The frontmatter is checked by `schemas/profile.schema.json` and nothing else: this module adds no
type checks of its own. It resolves names to files, merges family variants over their base, and
exposes the values other modules read (`meter_stop_verb`, `overrides`, ...).

    load_profile("vastai")               the bundled vast.ai profile
    load_profile("generic-ssh:slurm")    a family profile with one variant merged in
    load_profile("path/to/mine.md")      any profile file
    list_profiles()                      every bundled profile

Loading is cheap (PyYAML + jsonschema only): `rgt lint` runs it on every profile at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from rgt.bundle import bundle_path
from rgt.errors import UsageError
from rgt.yamlsource import (
    Finding,
    SourceError,
    YamlDoc,
    parse_yaml,
    read_text,
    schema_findings,
    split_frontmatter,
)

PROFILE_SCHEMA = "profile.schema.json"
VARIANT_SEPARATOR = ":"

_DURATION = re.compile(r"^~?(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ProfileError(UsageError):
    """A profile that does not load; `findings` holds every problem, the message the first."""

    def __init__(self, findings: list[Finding]) -> None:
        first = findings[0].format()
        more = (
            f" (and {len(findings) - 1} more; run `rgt lint` for all)" if len(findings) > 1 else ""
        )
        super().__init__(first + more)
        self.findings = findings


@dataclass(frozen=True)
class Profile:
    """A validated profile (or one variant of a family profile, merged over its base)."""

    path: Path
    frontmatter: dict[str, Any]
    body: str = field(repr=False)
    body_first_line: int = field(repr=False)
    doc: YamlDoc = field(repr=False, compare=False)
    variant: str | None = None

    @property
    def platform(self) -> str:
        """The platform slug (`vastai`), the same for every variant of a family."""
        return str(self.frontmatter["platform"])

    @property
    def has_provider(self) -> bool:
        """True when rgt drives this platform through an API provider (rgt.providers' registry):
        only then do the provider commands (poll, pull, sweep, destroy...) work for it."""
        from rgt.providers import PLATFORMS

        return self.platform in PLATFORMS

    @property
    def name(self) -> str:
        """`platform` or `platform:variant`, the name `load_profile` accepts back."""
        if self.variant:
            return f"{self.platform}{VARIANT_SEPARATOR}{self.variant}"
        return self.platform

    @property
    def title(self) -> str:
        """Human name, e.g. 'vast.ai'."""
        return str(self.frontmatter["title"])

    @property
    def kind(self) -> str:
        """How the machine is obtained (ssh-rental, cloud-api, workstation, ...)."""
        return str(self.frontmatter["kind"])

    @property
    def gotcha_prefix(self) -> str:
        """Prefix of the section-7 gotcha ids (VAST)."""
        return str(self.frontmatter["gotcha_prefix"])

    @property
    def meter_stop_verb(self) -> str | None:
        """The verb that ends all billing (vast.ai: destroy), None where nothing bills."""
        value = self.frontmatter["meter_stop_verb"]
        return None if value is None else str(value)

    @property
    def meter_stop_irreversible(self) -> bool | None:
        """True when the meter-stop verb deletes the box and its data."""
        value = self.frontmatter["meter_stop_irreversible"]
        return None if value is None else bool(value)

    @property
    def meter_stop_action(self) -> str:
        """What a human does to stop the meter where rgt cannot send the verb (a box reached over
        ssh): the verb and where to do it (`meter_stop_how`), else the platform's console."""
        verb = self.meter_stop_verb or "stop the rental"
        how = self.frontmatter.get("meter_stop_how")
        where = str(how) if how else f"{self.title}'s console (see section 5 of this profile)"
        return f"{verb}: {where}"

    @property
    def stop_verb(self) -> str | None:
        """The reversible pause verb (vast.ai: stop), None where there is none."""
        value = self.frontmatter["stop_verb"]
        return None if value is None else str(value)

    @property
    def stop_still_bills(self) -> list[str]:
        """What keeps billing after `stop_verb` (vast.ai: disk, bandwidth)."""
        return list(self.frontmatter["stop_still_bills"])

    @property
    def detach_primitive(self) -> str:
        """What keeps the job running without a session (vast.ai: onstart)."""
        return str(self.frontmatter["detach_primitive"])

    @property
    def spot_available(self) -> bool:
        """Whether interruptible (spot/bid) rentals exist."""
        return bool(self.frontmatter["spot_available"])

    @property
    def spot_grace_seconds(self) -> float | None:
        """Notice before a preemption in seconds ('~5s' -> 5.0), None when not applicable."""
        return duration_seconds(str(self.frontmatter["spot_grace"]))

    @property
    def host_lost_grace_seconds(self) -> float | None:
        """How long an instance must stay Offline / stuck before rgt may call its host lost
        ('30m' -> 1800.0); None when the profile does not say (host-lost discards refused)."""
        value = self.frontmatter.get("host_lost_grace")
        return None if value is None else duration_seconds(str(value))

    @property
    def onstart_limit_bytes(self) -> int | None:
        """Size limit of the boot-hook script (vast.ai: 16384), None without a limit or hook."""
        value = self.frontmatter["onstart_limit_bytes"]
        return None if value is None else int(value)

    @property
    def status_heartbeat_seconds(self) -> int:
        """Seconds between the boot hook's heartbeats in the job status record (rgt.jobstatus):
        `overrides.status_heartbeat_seconds`, else the profile schema's default."""
        value = self.overrides.get("status_heartbeat_seconds")
        if value is None:
            from rgt.yamlsource import load_schema

            overrides = load_schema(PROFILE_SCHEMA)["$defs"]["overrides"]["properties"]
            value = overrides["status_heartbeat_seconds"]["default"]
        return int(value)

    @property
    def box_helpers(self) -> list[str]:
        """The on-box helpers the boot hook runs on this platform (gpu_health, mem_monitor,
        reap_gpu_zombies): `overrides.box_helpers`, else the profile schema's default."""
        value = self.overrides.get("box_helpers")
        if value is None:
            from rgt.yamlsource import load_schema

            overrides = load_schema(PROFILE_SCHEMA)["$defs"]["overrides"]["properties"]
            value = overrides["box_helpers"]["default"]
        return [str(name) for name in value]

    @property
    def instance_id_env(self) -> str | None:
        """Env var holding the instance id on the box (vast.ai: CONTAINER_ID)."""
        value = self.frontmatter["instance_id_env"]
        return None if value is None else str(value)

    @property
    def egress(self) -> dict[str, Any]:
        """The egress price model: {'model': 'host-priced', 'per_gb_usd': None, ...}."""
        return dict(self.frontmatter["egress"])

    @cached_property
    def overrides(self) -> dict[str, Any]:
        """Section 8 as data (data_dir, durable_dir, proxy_hook, cred_file, scratch, hf_home,
        detach, and optional python/ssh_user/env). An empty string means empty."""
        return dict(self.frontmatter["overrides"])

    @property
    def verified(self) -> str:
        """The `YYYY-MM` month the frontmatter facts were last checked."""
        return str(self.frontmatter["verified"])

    @property
    def sources(self) -> list[str]:
        """Where the frontmatter facts come from."""
        return list(self.frontmatter["sources"])

    @property
    def variants(self) -> dict[str, dict[str, Any]]:
        """The raw variant entries of a family profile ({} for a single platform)."""
        return dict(self.frontmatter.get("variants") or {})

    def with_variant(self, variant: str) -> Profile:
        """This family profile with one variant merged over the base (already validated)."""
        if variant not in self.variants:
            known = ", ".join(sorted(self.variants)) or "none"
            raise UsageError(
                f"{self.path}: profile {self.platform!r} has no variant {variant!r} "
                f"(variants: {known})"
            )
        merged = merge_variant(self.frontmatter, self.variants[variant], variant)
        return Profile(
            self.path, merged, self.body, self.body_first_line, self.doc, variant=variant
        )

    def all_variants(self) -> list[Profile]:
        """The base profile followed by each variant, merged (what templates are tested over)."""
        return [self, *(self.with_variant(name) for name in sorted(self.variants))]


def duration_seconds(text: str) -> float | None:
    """Seconds in a profile duration ('~0s', '5s', '2m', '1.5h'); None for 'n/a'."""
    if text == "n/a":
        return None
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    return float(match["number"]) * _UNIT_SECONDS[match["unit"]]


def merge_variant(base: Mapping[str, Any], entry: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Frontmatter of one variant: the base with the variant's keys on top.

    `overrides` merges key by key (a variant that moves only `data_dir` keeps the rest);
    every other key is replaced whole. `description` is the variant's, and the title names it.
    """
    merged = {key: value for key, value in base.items() if key != "variants"}
    for key, value in entry.items():
        if key == "overrides":
            merged["overrides"] = {**base.get("overrides", {}), **value}
        elif key != "description":
            merged[key] = value
    if "title" not in entry:
        merged["title"] = f"{base.get('title', base.get('platform'))} ({name})"
    return merged


def parse_profile(path: Path, *, shown: str | None = None) -> tuple[Profile | None, list[Finding]]:
    """Read and validate one profile file: (profile or None, findings). Never raises on bad input.

    Findings here are the frontmatter's (read errors, YAML, schema, variants); `rgt lint` adds
    the prose checks on top.
    """
    label = shown or str(path)
    try:
        text = read_text(path)
        front, body, body_first_line = split_frontmatter(text, path=label)
        doc = parse_yaml(front, path=label, first_line=2)
    except SourceError as exc:
        return None, exc.findings
    findings = [
        Finding(label, line, "yaml", f"duplicate key {key!r} (YAML keeps only the last)")
        for key, line in doc.duplicate_keys()
    ]
    data = doc.data
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        findings.append(
            Finding(label, 2, "frontmatter", f"frontmatter is {kind}, expected a mapping")
        )
        return None, findings
    findings += schema_findings(data, PROFILE_SCHEMA, path=label, line_of=doc.line_of)
    if not findings:
        findings += _variant_findings(data, doc, label)
        if data["platform"] != path.stem:
            findings.append(
                Finding(
                    label,
                    doc.line_of(["platform"]),
                    "platform-name",
                    f"platform {data['platform']!r} must equal the file name {path.stem!r}",
                )
            )
    if any(f.severity == "error" for f in findings):
        return None, findings
    return Profile(path, data, body, body_first_line, doc), findings


def _variant_findings(data: dict[str, Any], doc: YamlDoc, label: str) -> list[Finding]:
    """Validate every merged variant against the schema; report at the variant's own key when it
    set the offending value, else at the base key it inherited. (A variant cannot set the family
    keys platform, gotcha_prefix or variants: the schema's variant definition has no such key.)"""
    findings: list[Finding] = []
    variants = data.get("variants") or {}
    for name, entry in variants.items():
        merged = merge_variant(data, entry, name)

        def line_of(where: Any, name: str = name, entry: Any = entry) -> int:
            steps = list(where)
            # The variant's own line when it set this value, else the base line it inherited.
            own = bool(steps) and steps[0] in entry
            if own and steps[0] == "overrides" and len(steps) > 1:
                own = steps[1] in entry["overrides"]
            if own:
                return doc.line_of(["variants", name, *steps])
            return doc.line_of(steps)

        findings += schema_findings(
            merged, PROFILE_SCHEMA, path=label, line_of=line_of, prefix=["variants", name]
        )
        findings += _unresolved(merged, label, line_of, f"variants.{name}")
    if not variants:
        findings += _unresolved(data, label, doc.line_of, "")
    return findings


def _unresolved(data: Mapping[str, Any], label: str, line_of: Any, where: str) -> list[Finding]:
    """'variant-dependent' is only honest when a variant then says what it is."""
    findings = []
    for key, value in data.items():
        if value == "variant-dependent":
            scope = f"{where}.{key}" if where else key
            reason = (
                "the variant must set it" if where else "this profile has no variants to set it"
            )
            findings.append(
                Finding(
                    label, line_of([key]), "variant", f"{scope} is variant-dependent but {reason}"
                )
            )
    return findings


def profiles_dir() -> Path:
    """The bundled profiles folder."""
    return bundle_path("profiles")


def bundled_profile_paths() -> list[Path]:
    """Every bundled profile file, sorted (files starting with '_' are not profiles)."""
    return sorted(p for p in profiles_dir().glob("*.md") if not p.name.startswith("_"))


def resolve_profile_path(name_or_path: str | Path) -> tuple[Path, str | None]:
    """(file, variant) for 'vastai', 'generic-ssh:slurm', a path to a .md file, or a path with a
    variant ('my-cluster.md:slurm')."""
    text = str(name_or_path)
    base, separator, variant = text.rpartition(VARIANT_SEPARATOR)
    if separator and base.endswith(".md") and variant and "/" not in variant:
        # A family profile file with one of its variants: `my-cluster.md:slurm`.
        return resolve_profile_path(base)[0], variant
    candidate = Path(text)
    if candidate.suffix == ".md" or "/" in text:
        if candidate.is_dir():
            raise UsageError(
                f"profile {text}: is a directory; expected a profile file (.md) "
                f"or a bundled profile name ({_bundled_names()})"
            )
        if not candidate.is_file():
            raise UsageError(f"profile file not found: {text}")
        return candidate, None
    name, _, variant = text.partition(VARIANT_SEPARATOR)
    path = profiles_dir() / f"{name}.md"
    if not path.is_file():
        raise UsageError(f"unknown profile {name!r}; bundled profiles: {_bundled_names()}")
    return path, variant or None


def _bundled_names() -> str:
    """'autodl, china, ...' for error messages."""
    return ", ".join(p.stem for p in bundled_profile_paths()) or "none"


def load_profile(name_or_path: str | Path) -> Profile:
    """Load and validate a profile by bundled name ('vastai', 'generic-ssh:slurm') or path.

    Raises ProfileError (a UsageError, exit 2) naming `file:line` of the first problem.
    """
    path, variant = resolve_profile_path(name_or_path)
    profile, findings = parse_profile(path)
    if profile is None:
        raise ProfileError([f for f in findings if f.severity == "error"])
    return profile.with_variant(variant) if variant else profile


def list_profiles() -> list[Profile]:
    """Every bundled profile (base entries; use `Profile.all_variants()` for the variants)."""
    return [load_profile(path) for path in bundled_profile_paths()]
