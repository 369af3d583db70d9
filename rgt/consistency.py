"""Do a profile's danger facts and its prose agree? (`rgt lint` rules beyond the schema.)

The frontmatter is what software reads; sections 4 and 5 are what people read. A profile whose
data says "stop keeps billing the disk" while its prose says nothing about it (or the reverse)
misleads one of the two. These rules check the pairs that cost money or data when they drift:

    billing-prose   meter_stop_verb named in section 5; irreversibility stated; stop_still_bills
                    non-empty <=> section 5 says the stop verb keeps billing (and names each item);
                    residual_billables named in section 5
    spot-prose      section 4 states spot_grace (the literal, or the same number of seconds)
    clock-prose     every non-null clock (auto-release, scratch wipe, session limit) is stated in
                    section 4 or 5; a "released after N days" in the prose has a matching clock
    variant-doc     a family profile's prose names each of its variants
    provider-command  a profile never names an rgt action its platform lacks: with no API
                    provider (rgt.providers' registry), a platform whose boxes rgt reaches
                    over ssh (`rgt attach`) has the SSH provider's commands but no `rgt
                    search`/`start`/`stop` (rgt.providers.ssh.COMMANDS_WITHOUT_SSH); any other
                    has no provider command at all (`rgt sweep`, "rgt polls", "rgt's gate"...).
                    Which commands need a provider is read from the code: the command modules
                    that open one (rgt.commands._platform).

For a family profile each variant is checked against the bullets of the section that name it
(`**LanRui — ...`) plus the family-wide bullets that name no variant; the base profile of a
family against the family-wide bullets only. Values that are "variant-dependent"
are skipped at the base (each variant states them).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from rgt.profile import Profile
from rgt.yamlsource import Finding

SPOT_SECTION = 4
BILLING_SECTION = 5
VARIANT_DEPENDENT = "variant-dependent"

# Wording that says something keeps billing. Deliberately plain English: profiles are written
# to be read, and a check that needs contorted prose would be worse than none.
KEEPS_BILLING = re.compile(
    r"keeps?\s+(?:on\s+)?billing|still\s+bill(?:s|ed|ing)?|keeps?\s+charging|"
    r"continues?\s+(?:to\s+)?(?:bill|charg)|billing\s+continues|bills?\s+(?:hourly|until|while|"
    r"for\s+as\s+long|at\s+twice)|not\s+(?:a\s+)?(?:meter-stop|free)",
    re.IGNORECASE,
)
IRREVERSIBLE = re.compile(
    r"irreversib|cannot\s+be\s+undone|permanently|for\s+good|forever|deletes?\b|erases?\b|wiped?",
    re.IGNORECASE,
)
NO_SPOT = re.compile(r"no\s+spot|no\s+preemption|not\s+(?:be\s+)?preempted|n/a", re.IGNORECASE)
RELEASED_AFTER = (
    re.compile(
        r"releas(?:ed|es)\s+(?:automatically\s+)?after\s+(?:about\s+)?~?(?P<n>\d+)\s+days",
        re.IGNORECASE,
    ),
    re.compile(
        r"(?:for|after)\s+(?:about\s+)?~?(?P<n>\d+)\s+days\s+(?:is|are)\s+released", re.IGNORECASE
    ),
)

# How each billed item is called in prose.
ITEM_WORDS: dict[str, tuple[str, ...]] = {
    "compute": ("compute", "GPU"),
    "disk": ("disk", "数据盘"),
    "volume": ("volume",),
    "bandwidth": ("bandwidth",),
    "ip": ("IP",),
    "snapshot": ("snapshot",),
    "storage": ("storage", "filesystem", "network disk", "网盘", "netdisk", "drive"),
}
CLOCK_KEYS = ("release_after_stop", "scratch_wipe_after_stop", "session_limit")
_UNIT_WORDS = {"m": ("minute", "min"), "h": ("hour", "h"), "d": ("day", "d")}
_CLOCK = re.compile(r"^~?(?P<n>\d+(?:\.\d+)?)(?P<unit>[mhd])$")
_DURATION = re.compile(r"^~?(?P<n>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)$")
_HEADING = re.compile(r"^##\s+(?:(?P<number>\d+)\.\s+)?")
_BULLET = re.compile(r"^\s*(?:[-*]|\d+\.)\s+")
# A fence line (indented too: profiles fence code inside list items).
_FENCE = re.compile(r"^[ \t]*(?P<marker>`{3,}|~{3,})(?P<info>.*)$")
# A command module that needs the platform's provider calls this (rgt/commands/_platform.py).
OPENS_PROVIDER = "open_platform("
# "rgt's gate", "rgt terminates only through the Teardown Iron Law": the gate is a provider's.
_GATE_CLAIM = re.compile(
    r"\brgt(?:'s)?\s+gate\b|\brgt\s+(?:\w+\s+){1,3}through\s+(?:the\s+)?(?:Teardown\s+)?"
    r"(?:Iron\s+Law|gate)\b",
    re.IGNORECASE,
)


def consistency_findings(profile: Profile, shown: str) -> list[Finding]:
    """Every disagreement between the danger facts and sections 4/5 (base and each variant)."""
    findings: list[Finding] = []
    variants = sorted(profile.variants)
    for each in profile.all_variants():
        checker = _Checker(profile, each, variants, shown)
        findings += checker.run()
    findings += provider_command_findings(profile, shown)
    for name in variants:
        if not _names(profile.body, name, profile):
            findings.append(
                Finding(
                    shown,
                    profile.doc.line_of(["variants", name]),
                    "variant-doc",
                    f"variant {name!r} is never mentioned in the profile's prose; "
                    "describe it (sections 1-8) or drop it",
                )
            )
    return findings


class _Checker:
    """The rules for one merged variant (or the base) of one profile file."""

    def __init__(self, base: Profile, each: Profile, variants: Sequence[str], shown: str) -> None:
        self.base = base
        self.each = each
        self.data: dict[str, Any] = each.frontmatter
        self.variant = each.variant
        self.variants = variants
        self.shown = shown
        self.findings: list[Finding] = []

    def run(self) -> list[Finding]:
        spot = self._scope(SPOT_SECTION)
        billing = self._scope(BILLING_SECTION)
        self._billing_rules(billing)
        self._spot_rules(spot)
        self._clock_rules(spot + billing)
        return self.findings

    # -- scoping ---------------------------------------------------------------------------

    def _scope(self, number: int) -> list[str]:
        """The blocks (bullets/paragraphs) of a section that speak for this variant or the base."""
        blocks = _blocks(_section_text(self.base, number))
        if not self.variants:
            return blocks
        shared = [b for b in blocks if not any(_names(b, v, self.base) for v in self.variants)]
        if self.variant is None:
            return shared
        # The variant's own blocks plus the family-wide ones (which name no variant).
        return [b for b in blocks if b in shared or _names(b, self.variant, self.base)]

    # -- rules -----------------------------------------------------------------------------

    def _billing_rules(self, blocks: list[str]) -> None:
        text = "\n".join(blocks)
        verb = self.data.get("meter_stop_verb")
        if isinstance(verb, str) and verb != VARIANT_DEPENDENT:
            if verb.lower() not in text.lower():
                self._report(
                    "meter_stop_verb",
                    "billing-prose",
                    f"meter_stop_verb {verb!r} is never named in section 5 (TEARDOWN / BILLING)",
                )
            elif self.data.get("meter_stop_irreversible") is True and not IRREVERSIBLE.search(text):
                self._report(
                    "meter_stop_irreversible",
                    "billing-prose",
                    f"meter_stop_irreversible is true but section 5 never says {verb!r} is "
                    "irreversible (or that it deletes/erases data)",
                )
        stop = self.data.get("stop_verb")
        bills = list(self.data.get("stop_still_bills") or [])
        if isinstance(stop, str) and stop != VARIANT_DEPENDENT:
            says = [b for b in blocks if stop in b and KEEPS_BILLING.search(b)]
            if bills and not says:
                self._report(
                    "stop_still_bills",
                    "billing-prose",
                    f"stop_still_bills is {bills} but section 5 never says {stop!r} keeps billing",
                )
            if not bills:
                for sentence in _sentences(blocks):
                    position = sentence.find(stop)
                    if position >= 0 and KEEPS_BILLING.search(sentence[position:]):
                        self._report(
                            "stop_still_bills",
                            "billing-prose",
                            f"section 5 says {stop!r} keeps billing "
                            f"({sentence.strip()[:80]!r}) but stop_still_bills is empty",
                        )
                        break
            if bills and says:
                self._items_named("stop_still_bills", bills, text)
        residual = list(self.data.get("residual_billables") or [])
        if residual:
            self._items_named("residual_billables", residual, text)

    def _items_named(self, key: str, items: Iterable[str], text: str) -> None:
        for item in items:
            words = ITEM_WORDS.get(item, (item,))
            if not any(re.search(rf"\b{re.escape(w)}", text, re.IGNORECASE) for w in words):
                self._report(
                    key,
                    "billing-prose",
                    f"{key} lists {item!r} but section 5 never mentions it "
                    f"(expected one of: {', '.join(words)})",
                )

    def _spot_rules(self, blocks: list[str]) -> None:
        text = "\n".join(blocks)
        grace = str(self.data.get("spot_grace", ""))
        if not self.data.get("spot_available"):
            if not NO_SPOT.search(text):
                self._report(
                    "spot_available",
                    "spot-prose",
                    "spot_available is false but section 4 never says there is no spot market "
                    "or preemption",
                )
            return
        if not _mentions_duration(text, grace):
            self._report(
                "spot_grace",
                "spot-prose",
                f"spot_grace is {grace!r} but section 4 never states that notice "
                f"(write {grace!r} or the same number of seconds)",
            )

    def _clock_rules(self, blocks: list[str]) -> None:
        text = "\n".join(blocks)
        clocks = self.data.get("clocks") or {}
        for key in CLOCK_KEYS:
            value = clocks.get(key)
            if value is None:
                continue
            if not _mentions_clock(text, str(value)):
                self._report(
                    "clocks",
                    "clock-prose",
                    f"clocks.{key} is {value!r} but sections 4/5 never state it "
                    f"(write {value!r} or the same amount in words)",
                )
        stated = clocks.get("release_after_stop")
        for match in (m for pattern in RELEASED_AFTER for m in pattern.finditer(text)):
            days = match["n"]
            if stated is None or not _clock_equals(str(stated), float(days), "d"):
                self._report(
                    "clocks",
                    "clock-prose",
                    f"sections 4/5 say stopped instances are released after {days} days but "
                    f"clocks.release_after_stop is {stated!r}",
                )
                break

    # -- reporting -------------------------------------------------------------------------

    def _report(self, key: str, rule: str, message: str) -> None:
        scope = f"variants.{self.variant}: " if self.variant else ""
        self.findings.append(Finding(self.shown, self._line(key), rule, scope + message))

    def _line(self, key: str) -> int:
        if self.variant and key in self.base.variants.get(self.variant, {}):
            return self.base.doc.line_of(["variants", self.variant, key])
        try:
            return self.base.doc.line_of([key])
        except (KeyError, IndexError, TypeError):
            return 1


def _names(block: str, variant: str, profile: Profile) -> bool:
    """Does this block speak about `variant` (by its key, or its full title)?"""
    entry = profile.variants.get(variant, {})
    words = {variant, str(entry.get("title", variant))}
    return any(re.search(rf"(?<![\w-]){re.escape(w)}", block, re.IGNORECASE) for w in words)


def outside_fences(lines: Iterable[str]) -> Iterator[tuple[int, str, bool]]:
    """(index, line, outside) for each line: `outside` is False inside a fenced code block and
    on its fence lines. Fences are CommonMark's: three or more backticks or tildes, closed by
    the same character at least as many times (a ``` line inside a ~~~ block is code)."""
    fence = ""
    for index, line in enumerate(lines):
        match = _FENCE.match(line)
        if fence:
            closes = match and match["marker"][0] == fence[0] and not match["info"].strip()
            if closes and match and len(match["marker"]) >= len(fence):
                fence = ""
            yield index, line, False
        elif match:
            fence = match["marker"]
            yield index, line, False
        else:
            yield index, line, True


def _section_text(profile: Profile, number: int) -> str:
    """Text of one numbered `## N.` section (outside code fences), '' when absent."""
    lines: list[str] = []
    inside = False
    for _, line, outside in outside_fences(profile.body.splitlines()):
        match = _HEADING.match(line) if outside else None
        if match:
            inside = match["number"] is not None and int(match["number"]) == number
            continue
        if inside:
            lines.append(line)
    return "\n".join(lines)


def _blocks(text: str) -> list[str]:
    """Bullets and paragraphs: a bullet runs until the next bullet or a blank line."""
    blocks: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if not line.strip() or _BULLET.match(line):
            if current:
                blocks.append(" ".join(current))
            current = [line.strip()] if line.strip() else []
            continue
        current.append(line.strip())
    if current:
        blocks.append(" ".join(current))
    return blocks


def _sentences(blocks: Iterable[str]) -> list[str]:
    return [s for block in blocks for s in re.split(r"(?<=[.!?;:])\s+", block) if s]


def _mentions_duration(text: str, grace: str) -> bool:
    if grace in text:
        return True
    match = _DURATION.match(grace)
    if not match:
        return False
    number = match["n"].rstrip("0").rstrip(".") if "." in match["n"] else match["n"]
    words = {"ms": ("ms", "millisecond"), "s": ("s", "sec", "second"), "m": ("m", "min", "minute")}
    words["h"] = ("h", "hour")
    unit = "|".join(words[match["unit"]])
    spelled = {"0": "zero", "5": "five", "30": "thirty", "2": "two"}.get(number, number)
    return bool(re.search(rf"\b(?:{number}|{spelled})[\s-]?(?:{unit})s?\b", text, re.IGNORECASE))


def _mentions_clock(text: str, value: str) -> bool:
    if value in text:
        return True
    match = _CLOCK.match(value)
    if not match:
        return False
    number = match["n"]
    unit = "|".join(_UNIT_WORDS[match["unit"]])
    return bool(re.search(rf"\b{re.escape(number)}[\s-]?(?:{unit})s?\b", text, re.IGNORECASE))


def _clock_equals(value: str, number: float, unit: str) -> bool:
    match = _CLOCK.match(value)
    return (
        bool(match) and match is not None and match["unit"] == unit and float(match["n"]) == number
    )


@functools.lru_cache(maxsize=1)
def provider_commands() -> tuple[str, ...]:
    """The rgt commands that need the platform's provider: the command modules that open one.

    Read from the code (a new provider command joins by itself), without importing the modules:
    `rgt lint` must not pay for the commands' imports."""
    import rgt.commands as package

    names: set[str] = set()
    for folder in package.__path__:
        for entry in os.listdir(folder):
            if not entry.endswith(".py") or entry.startswith("_"):
                continue
            with open(os.path.join(folder, entry), encoding="utf-8") as handle:
                if OPENS_PROVIDER in handle.read():
                    names.add(entry.removesuffix(".py").replace("_", "-"))
    return tuple(sorted(names))


def provider_command_findings(profile: Profile, shown: str) -> list[Finding]:
    """Sentences of a profile that name an rgt action its platform lacks: `rgt CMD` / rgt's
    `CMD`, "rgt CMDs" as a verb, or a claim that rgt gates the teardown. One finding per line.

    An API provider's platform has every provider command. A platform reached over ssh (boxes
    attached with `rgt attach`) has the SSH provider's: all but those in
    rgt.providers.ssh.COMMANDS_WITHOUT_SSH (search, start, stop), and the gate. Any other
    platform has none."""
    if profile.has_provider:
        return []
    from rgt.providers import PLATFORMS
    from rgt.providers.ssh import COMMANDS_WITHOUT_SSH, reachable_by_ssh

    over_ssh = reachable_by_ssh(profile)
    lacking = [name for name in provider_commands() if not over_ssh or name in COMMANDS_WITHOUT_SSH]
    commands = "|".join(re.escape(name) for name in lacking)
    if not commands:  # pragma: no cover - rgt always has provider commands
        return []
    named = re.compile(rf"\brgt(?:'s)?\s+`?(?P<command>{commands})\b(?![-.]\w)", re.IGNORECASE)
    verb = re.compile(rf"\brgt\s+(?P<command>{commands})e?s\b", re.IGNORECASE)
    findings: list[Finding] = []
    body = profile.body
    starts = [0] + [m.end() for m in re.finditer(r"\n", body)]
    reported: set[int] = set()
    for pattern in (named, verb) if over_ssh else (named, verb, _GATE_CLAIM):
        for match in pattern.finditer(body):
            offset = sum(1 for start in starts if start <= match.start()) - 1
            line = profile.body_first_line + offset
            if line in reported:
                continue
            reported.add(line)
            what = match.groupdict().get("command")
            said = " ".join(match[0].replace("`", "").split())
            action = "the gate is a provider's"
            if what:
                action = f"`rgt {what.lower()}` needs a provider"
            if over_ssh:
                message = (
                    f"{said!r}: rgt reaches {profile.platform!r} boxes over ssh (`rgt attach`), "
                    f"and `rgt {str(what).lower()}` is not among what it does for them (no "
                    f"{', '.join(COMMANDS_WITHOUT_SSH)}); say what the person does instead in "
                    "the platform's console or CLI"
                )
            else:
                message = (
                    f"{said!r}: {action}, and rgt has none for {profile.platform!r} "
                    f"(providers: {', '.join(PLATFORMS)}); say what the person does instead "
                    "(the platform's console or CLI, the rendered pull.sh, rgt verify)"
                )
            findings.append(Finding(shown, line, "provider-command", message))
    return sorted(findings, key=lambda finding: finding.line)
