"""Render the shell-script templates (`scripts/*.sh.j2`) for one profile and one job request.

Safety is structural, not a convention:

* Jinja2 runs with `StrictUndefined`: a misspelt value is an error, not an empty string.
* Every `{{ ... }}` must end in one of the quoting filters below. The environment's `finalize`
  hook sees every interpolated value and refuses anything that is not a `Shell` fragment, so a
  template that forgets to quote does not render at all.

      q        a shell word: 'it''s' quoted with shlex.quote
      box      an absolute box path, prefixed with "${RGT_BOX_ROOT:-}" (the emulator seam);
               a $HOME/... path becomes "$HOME"'/...'
      name     an env-var name (validated ^[A-Z_][A-Z0-9_]*$), usable bare in ${NAME:-}
      int      an integer
      b64      text as a single-quoted base64 word (file contents shipped to the box)
      heredoc  text ending in a newline as a quoted here-document: `<<'RGT_EOF_…'`, the text,
               the delimiter line (no expansion; unlike base64 it compresses well, which the
               size-limited boot hook needs)

      yaml     a value as one YAML double-quoted scalar (JSON string syntax), for manifests

* Values come only from the profile and the job request (plus rgt's own version, whether
  rgt has a provider for the platform, and the manifest builder's source for the launchers
  that share scripts/_job.sh.j2: onstart, run_one, run_queue).

Most templates render for every profile. Two belong to one detach primitive: `sbatch` (a Slurm
batch script, `generic-ssh:slurm`) and `k8s_job` (a Kubernetes Job manifest, `scripts/*.yaml.j2`,
`generic-ssh:kubernetes`, checked against `schemas/k8s_job.schema.json`). Both wrap the rendered
boot hook in a supervisor that forwards the scheduler's stop signal to the job. Files starting
with `_` are partials, not templates.

The vast.ai boot hook has a size limit (profile `onstart_limit_bytes`); a longer script is
emitted as a small self-extracting wrapper around its gzip+base64 form, with a note to stderr.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgt import __version__
from rgt.atomic import atomic_write_bytes
from rgt.bundle import bundle_path
from rgt.errors import UsageError
from rgt.job import JobRequest
from rgt.profile import Profile

TEMPLATES = ("run_one", "run_queue", "onstart", "pull")
# Templates tied to one detach primitive; every other template renders for every profile.
PRIMITIVE_TEMPLATES: dict[str, str] = {"sbatch": "sbatch", "k8s_job": "k8s-job"}
TEMPLATE_SUFFIXES = (".sh.j2", ".yaml.j2")
# The launchers that include scripts/_job.sh.j2 (the job, its status record and its manifest);
# sbatch and k8s_job run the rendered boot hook, so they carry it too.
JOB_TEMPLATES = ("onstart", "run_one", "run_queue")
K8S_SCHEMA = "k8s_job.schema.json"
BOX_ROOT = '"${RGT_BOX_ROOT:-}"'
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class Shell(str):
    """Text that is safe to paste into a shell script as-is (made only by the filters)."""


@dataclass(frozen=True)
class Rendered:
    """A rendered script. `inner` is the uncompressed script when `text` is its compressed form."""

    template: str
    text: str
    inner: str
    compressed: bool = False
    notes: list[str] = field(default_factory=list)


def quote(value: Any) -> Shell:
    """One shell word for any scalar value."""
    if isinstance(value, bool) or value is None:
        raise UsageError(f"cannot put {value!r} into a script; the template needs a string")
    return Shell(shlex.quote(str(value)))


def box_path(value: Any) -> Shell:
    """An absolute box path as a shell word that honours $RGT_BOX_ROOT (see CONTRACTS)."""
    text = str(value)
    if text == "$HOME" or text.startswith("$HOME/"):
        rest = text[len("$HOME") :]
        return Shell('"$HOME"' + (shlex.quote(rest) if rest else ""))
    if not text.startswith("/"):
        raise UsageError(f"box path {text!r} must be absolute (start with /) or start with $HOME/")
    return Shell(BOX_ROOT + shlex.quote(text))


def env_name(value: Any) -> Shell:
    """An environment variable name, safe unquoted."""
    text = str(value)
    if not _ENV_NAME.match(text):
        raise UsageError(
            f"{text!r} is not an env-var name (A-Z, 0-9, _; not starting with a digit)"
        )
    return Shell(text)


def integer(value: Any) -> Shell:
    """A whole number."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"expected an integer in the script, got {value!r}")
    return Shell(str(value))


def b64(value: Any) -> Shell:
    """Text as one base64 word: file contents travel without any quoting questions."""
    return Shell("'" + base64.b64encode(str(value).encode()).decode() + "'")


def heredoc(value: Any) -> Shell:
    """Text as a quoted here-document operator plus body: `<<'D'` NL text D (D never a line of
    the text). The text must end with a newline (use |b64 otherwise: a heredoc adds one)."""
    text = str(value)
    if not text.endswith("\n"):
        raise UsageError("template bug: |heredoc needs text ending in a newline (use |b64)")
    delimiter = "RGT_EOF_" + hashlib.sha256(text.encode()).hexdigest()[:16]
    if delimiter in text.splitlines():  # pragma: no cover - needs a sha256 preimage
        raise UsageError(f"cannot quote text that contains the line {delimiter}")
    return Shell(f"<<'{delimiter}'\n{text}{delimiter}")


def yaml_scalar(value: Any) -> Shell:
    """A string or number as one YAML scalar (JSON syntax is valid YAML); never a structure."""
    if isinstance(value, bool) or value is None or not isinstance(value, (str, int)):
        raise UsageError(f"cannot put {value!r} into a manifest; the template needs a scalar")
    return Shell(json.dumps(value, ensure_ascii=False))


def _finalize(value: Any) -> Any:
    if isinstance(value, Shell):
        return value
    raise UsageError(
        f"template bug: {value!r} is interpolated without a quoting filter "
        "(end every {{ ... }} with |q, |box, |name, |int, |b64 or |heredoc)"
    )


def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(bundle_path("scripts"))),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )
    env.filters.update(
        q=quote,
        box=box_path,
        name=env_name,
        int=integer,
        b64=b64,
        heredoc=heredoc,
        yaml=yaml_scalar,
    )
    return env


def template_files() -> dict[str, str]:
    """Every bundled template: short name -> file name (scripts/*.sh.j2, scripts/*.yaml.j2)."""
    files: dict[str, str] = {}
    for path in bundle_path("scripts").iterdir():
        for suffix in TEMPLATE_SUFFIXES:
            if path.name.endswith(suffix) and not path.name.startswith("_"):
                files[path.name[: -len(suffix)]] = path.name
    return files


def template_names(profile: Profile | None = None) -> list[str]:
    """The templates that render for `profile`, by short name.

    Without a profile: those every profile renders. With one: those plus the template of its
    detach primitive (`sbatch` for Slurm, `k8s_job` for Kubernetes).
    """
    primitive = profile.detach_primitive if profile is not None else None
    return sorted(
        name
        for name in template_files()
        if name not in PRIMITIVE_TEMPLATES or PRIMITIVE_TEMPLATES[name] == primitive
    )


def manifest_source() -> str:
    """rgt/manifest.py (stdlib-only) as the boot hook ships it to the box: the same code through
    an ast round trip, without docstrings and comments. vast.ai gives the whole boot hook 16 KB
    (compressed), and the builder's documentation is most of its size."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("rgt.manifest")
    if spec is None or spec.origin is None:
        raise UsageError(
            "the onstart template needs rgt/manifest.py (the box-side manifest builder)"
        )
    source = Path(spec.origin).read_text(encoding="utf-8")
    try:
        tree = ast.parse(source, filename=spec.origin)
    except SyntaxError as exc:
        raise UsageError(f"{spec.origin}:{exc.lineno}: cannot parse the manifest builder") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            docstring = (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            )
            if docstring:
                node.body = node.body[1:] or [ast.Pass()]
    return (
        f"# rgt {__version__}: rgt/manifest.py without docstrings and comments, shipped in the "
        "boot hook.\n" + ast.unparse(tree) + "\n"
    )


def _check_layout(profile: Profile, job: JobRequest) -> None:
    """Cross checks between profile and job that no schema can see."""
    data_dir = str(profile.overrides["data_dir"]).rstrip("/")
    root = job.results_root.rstrip("/")
    if data_dir == root or data_dir.startswith(root + "/"):
        raise UsageError(
            f"{job.source}: results_root {job.results_root!r} contains the profile's data_dir "
            f"{profile.overrides['data_dir']!r}, where rgt keeps its state; use a sub-folder such "
            f"as {data_dir}/results"
        )


def build_context(
    profile: Profile, job: JobRequest, template: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The only values a template can read (`extra`: a relaunch's seed, see render_template)."""
    overrides = profile.overrides
    context: dict[str, Any] = {
        "rgt_version": __version__,
        "template": template,
        "profile": {
            "name": profile.name,
            "title": profile.title,
            "meter_stop_verb": profile.meter_stop_verb or "",
            "instance_id_env": profile.instance_id_env or "",
            "detach_primitive": profile.detach_primitive,
            "overrides": {
                "data_dir": overrides["data_dir"],
                "durable_dir": overrides["durable_dir"],
                "proxy_hook": overrides["proxy_hook"],
                "cred_file": overrides["cred_file"],
                "scratch": list(overrides["scratch"]),
                "hf_home": overrides["hf_home"],
                "detach": overrides["detach"],
                "python": overrides.get("python", "python3"),
                "status_heartbeat_seconds": profile.status_heartbeat_seconds,
                "ssh_user": overrides.get("ssh_user", ""),  # none: ssh config decides
                "env": dict(overrides.get("env", {})),
            },
        },
        "job": job.as_dict(),
        "env": {**dict(overrides.get("env", {})), **dict(job.env)},
        "has_provider": profile.has_provider,
    }
    if template in JOB_TEMPLATES:
        context["manifest_source"] = manifest_source()
        context.update(_durable_context(job))
    if template in PRIMITIVE_TEMPLATES:
        context.update(_scheduler_context(profile, job, extra))
    context.update(extra or {})
    return context


def _durable_context(job: JobRequest) -> dict[str, Any]:
    """What scripts/_durable.sh.j2 reads: the job's durable target (None: no watcher is
    rendered at all) and no seed (a relaunch passes `rgt.durable.seed_context` as `extra`)."""
    if job.durable is None:
        return {"durable": None, "durable_seed": []}
    from rgt.durable import SEED_WAIT_SECONDS, WATCH_SECONDS

    return {
        "durable": {
            "kind": job.durable.kind,
            "location": job.durable.location,
            "scan_seconds": WATCH_SECONDS,
            "seed_wait_seconds": SEED_WAIT_SECONDS,
        },
        "durable_seed": [],
    }


def _scheduler_context(
    profile: Profile, job: JobRequest, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What the sbatch and k8s_job templates add: the boot hook they supervise, the stop-signal
    grace (the profile's spot_grace), the GPU count and a DNS-safe job name."""
    grace = profile.spot_grace_seconds
    name = re.sub(r"[^a-z0-9-]+", "-", f"rgt-{job.run_id}".lower()).strip("-")[:63].rstrip("-")
    overrides = profile.overrides
    return {
        "onstart_script": render_template(profile, "onstart", job, extra=extra).inner,
        "grace_seconds": max(1, round(grace)) if grace is not None else 30,
        "gpu_count": job.gpu_count,
        "k8s": {
            "job_name": name,
            "mount_path": overrides["durable_dir"] or overrides["data_dir"],
        },
    }


def render_template(
    profile: Profile, template: str, job: JobRequest, *, extra: dict[str, Any] | None = None
) -> Rendered:
    """Render one template; the boot hook is compressed when it exceeds the profile's limit.

    `extra` adds to the context (a relaunch's `rgt.durable.seed_context`)."""
    files = template_files()
    if template not in template_names(profile):
        if template in files and template in PRIMITIVE_TEMPLATES:
            primitive = PRIMITIVE_TEMPLATES[template]
            raise UsageError(
                f"template {template!r} is for profiles whose detach_primitive is "
                f"{primitive!r} ({_profiles_with(primitive)}); "
                f"{profile.name} uses {profile.detach_primitive!r}"
            )
        known = ", ".join(template_names(profile))
        raise UsageError(f"unknown template {template!r}; templates: {known}")
    _check_layout(profile, job)
    import jinja2

    env = _environment()
    try:
        text = env.get_template(files[template]).render(
            build_context(profile, job, template, extra)
        )
    except jinja2.UndefinedError as exc:
        raise UsageError(f"template {files[template]}: {exc.message}") from None
    if files[template].endswith(".yaml.j2"):
        check_manifest(text, source=files[template])
        return Rendered(template, text, text)
    notes: list[str] = []
    limit = profile.onstart_limit_bytes if template == "onstart" else None
    size = len(text.encode())
    if limit is None or size <= limit:
        return Rendered(template, text, text, notes=notes)
    wrapper = self_extracting(text, profile, job)
    packed = len(wrapper.encode())
    if packed > limit:
        raise UsageError(
            f"{template} is {size} bytes and still {packed} bytes compressed; "
            f"{profile.title} accepts {limit}: move large `files` of the job into the image or a "
            "download"
        )
    notes.append(
        f"{template} is {size} bytes, over {profile.title}'s {limit}-byte limit: emitted a "
        f"gzip+base64 self-extracting form ({packed} bytes)"
    )
    return Rendered(template, wrapper, text, compressed=True, notes=notes)


def _profiles_with(primitive: str) -> str:
    """Names of the bundled profiles/variants using a detach primitive, for error messages."""
    from rgt.profile import list_profiles

    names = [
        each.name
        for profile in list_profiles()
        for each in profile.all_variants()
        if each.detach_primitive == primitive
    ]
    return "e.g. " + ", ".join(names) if names else "none bundled"


def check_manifest(text: str, *, source: str = "manifest") -> dict[str, Any]:
    """Parse a rendered Kubernetes manifest and check it against schemas/k8s_job.schema.json.

    The schema holds what rgt relies on (a batch/v1 Job that never restarts in place, a GPU
    limit, a grace period, secrets only by reference); a violation is a template bug.
    """
    import yaml

    from rgt.yamlsource import schema_findings

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: the rendered manifest is not YAML: {exc}") from None
    findings = schema_findings(data, K8S_SCHEMA, path=source, line_of=lambda _where: 1)
    if findings:
        raise UsageError(f"{source}: rendered manifest breaks {K8S_SCHEMA}: {findings[0].message}")
    return dict(data)


def self_extracting(script: str, profile: Profile, job: JobRequest) -> str:
    """A tiny bash script that unpacks `script` into the state dir and runs it."""
    payload = base64.b64encode(gzip.compress(script.encode(), mtime=0)).decode()
    data_dir = box_path(profile.overrides["data_dir"])
    run_dir = f"{data_dir}/.rgt/{shlex.quote(job.run_id)}"
    return (
        "#!/usr/bin/env bash\n"
        f"# rgt {__version__}: the {profile.title} boot hook for run {job.run_id}, gzip+base64\n"
        "# packed to fit the platform's size limit. It unpacks and runs the full script.\n"
        "set -euo pipefail\n"
        f"rgt_dir={run_dir}\n"
        'mkdir -p "$rgt_dir"\n'
        f"printf '%s' '{payload}' | base64 -d | gunzip >\"$rgt_dir/onstart.full.sh\"\n"
        'exec bash "$rgt_dir/onstart.full.sh" "$@"\n'
    )


def write_script(path: Path, text: str) -> None:
    """Write a rendered script atomically, executable.

    Raises UsageError when a file stands where a parent folder must be (mkdir would only say
    "File exists", which names neither the file nor the problem).
    """
    for ancestor in path.parents:
        if ancestor.exists():  # the nearest existing ancestor decides
            if not ancestor.is_dir():
                raise UsageError(f"{path}: cannot write: parent {ancestor} is not a directory")
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode(), mode=0o755)
