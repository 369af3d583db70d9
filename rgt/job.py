"""Job requests: what to run (image, GPU constraint, disk, command, result roster, checkpoints).

A job request is a YAML file validated by `schemas/job.schema.json` (the only type check). A
profile says where a job runs; a job never holds a platform fact, a profile never holds a job's
parameters. Secrets are env-var NAMES (`secret_env`), never values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgt.bundle import bundle_path
from rgt.errors import UsageError
from rgt.yamlsource import Finding, SourceError, parse_yaml, read_text, schema_findings

JOB_SCHEMA = "job.schema.json"
DEFAULT_CHECKPOINT_GLOB = "*.pt"
# rclone reads a remote NAME's settings from RCLONE_CONFIG_<NAME>_<OPTION> (NAME upper-cased).
RCLONE_ENV_PREFIX = "RCLONE_CONFIG_"


@dataclass(frozen=True)
class DurableTarget:
    """Where completed checkpoints go off the box while the job runs (the job's `durable:`).

    `local`: rgt copies each one into the run's local dir. `bucket`: rclone on the box pushes
    each one to `remote:path` (an S3-compatible bucket whose credentials the box gets as the
    RCLONE_CONFIG_<REMOTE>_... variables named in the job's secret_env)."""

    kind: str  # "local" | "bucket"
    remote: str = ""
    path: str = ""

    @property
    def location(self) -> str:
        """`local`, or the rclone path `REMOTE:bucket/prefix`."""
        return "local" if self.kind == "local" else f"{self.remote}:{self.path}"

    @property
    def env_prefix(self) -> str:
        """The prefix of the env vars that configure the bucket's rclone remote."""
        return f"{RCLONE_ENV_PREFIX}{self.remote.upper()}_"

    @classmethod
    def from_data(cls, value: Any) -> DurableTarget:
        """The target of a schema-valid `durable:` value."""
        if value == "local":
            return cls("local")
        bucket = value["bucket"]
        if isinstance(bucket, str):
            remote, _, path = bucket.partition(":")
        else:
            remote, path = bucket["remote"], bucket["path"]
        return cls("bucket", remote, path.rstrip("/"))

    def as_data(self) -> Any:
        """The target in the job file's shape (`local` or {bucket: {remote, path}})."""
        if self.kind == "local":
            return "local"
        return {"bucket": {"remote": self.remote, "path": self.path}}


class JobError(UsageError):
    """A job request that does not validate; `findings` holds every problem."""

    def __init__(self, findings: list[Finding]) -> None:
        more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
        super().__init__(findings[0].format() + more)
        self.findings = findings


@dataclass(frozen=True)
class JobRequest:
    """A validated job request. Box paths are as on the platform (no RGT_BOX_ROOT prefix)."""

    run_id: str
    image: str
    gpu: str
    disk_gb: int
    command: str
    results_root: str
    roster: tuple[str, ...]
    checkpoint_dir: str
    checkpoint_glob: str = DEFAULT_CHECKPOINT_GLOB
    setup: str = ""
    secret_env: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    durable: DurableTarget | None = None
    source: str = "<job>"

    @property
    def gpu_name(self) -> str:
        """The GPU model of the constraint ('RTX_4090' of 'RTX_4090:1')."""
        return self.gpu.partition(":")[0]

    @property
    def gpu_count(self) -> int:
        """How many GPUs the constraint asks for (1 when no count is given)."""
        _, _, count = self.gpu.partition(":")
        return int(count) if count else 1

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<job>", line_of: Any = None) -> JobRequest:
        """Validate a parsed job request; raises JobError naming the field and what is allowed."""
        if not isinstance(data, dict):
            kind = "empty" if data is None else type(data).__name__
            raise JobError(
                [Finding(source, 1, "job", f"job request is {kind}, expected a mapping")]
            )
        findings = schema_findings(
            data, JOB_SCHEMA, path=source, line_of=line_of or (lambda _where: 1)
        )
        if findings:
            raise JobError(findings)
        durable = DurableTarget.from_data(data["durable"]) if "durable" in data else None
        if durable is not None and durable.kind == "bucket":
            _check_bucket_credentials(durable, data, source, line_of or (lambda _where: 1))
        return cls(
            run_id=data["run_id"],
            image=data["image"],
            gpu=data["gpu"],
            disk_gb=int(data["disk_gb"]),
            command=data["command"],
            results_root=data["results_root"],
            roster=tuple(data["roster"]),
            checkpoint_dir=data["checkpoint_dir"],
            checkpoint_glob=data.get("checkpoint_glob", DEFAULT_CHECKPOINT_GLOB),
            setup=data.get("setup", ""),
            secret_env=tuple(data.get("secret_env", ())),
            env=dict(data.get("env", {})),
            files=dict(data.get("files", {})),
            durable=durable,
            source=source,
        )

    def as_dict(self) -> dict[str, Any]:
        """The job as plain data (the shape of the YAML file)."""
        return {
            "run_id": self.run_id,
            "image": self.image,
            "gpu": self.gpu,
            "disk_gb": self.disk_gb,
            "command": self.command,
            "setup": self.setup,
            "results_root": self.results_root,
            "roster": list(self.roster),
            "checkpoint_dir": self.checkpoint_dir,
            "checkpoint_glob": self.checkpoint_glob,
            "secret_env": list(self.secret_env),
            "env": dict(self.env),
            "files": dict(self.files),
            **({"durable": self.durable.as_data()} if self.durable is not None else {}),
        }


def _check_bucket_credentials(
    durable: DurableTarget, data: dict[str, Any], source: str, line_of: Any
) -> None:
    """A bucket target needs its rclone remote configured on the box: at least one
    RCLONE_CONFIG_<NAME>_... variable among the job's secret_env (names; the values stay in the
    user's environment and reach the box as the platform's env, never in the boot hook)."""
    prefix = durable.env_prefix
    named = [*data.get("secret_env", ()), *data.get("env", {})]
    if not any(name.startswith(prefix) for name in named):
        raise JobError(
            [
                Finding(
                    source,
                    line_of(["durable"]),
                    "job",
                    f"durable: bucket remote {durable.remote!r} has no {prefix}... variable in "
                    f"secret_env; name its credentials there (e.g. {prefix}ACCESS_KEY_ID, "
                    f"{prefix}SECRET_ACCESS_KEY), their values stay in your environment",
                )
            ]
        )


def example_job_path() -> Path:
    """The documented example job that `rgt render` uses when no --job is given."""
    return bundle_path("schemas", "job.example.yaml")


def load_job(path: str | Path | None = None) -> JobRequest:
    """Load and validate a job request file (the bundled example when `path` is None).

    Raises JobError (exit 2) with `file:line: schema: field: message`.
    """
    file = Path(path) if path is not None else example_job_path()
    shown = str(path) if path is not None else str(file)
    try:
        doc = parse_yaml(read_text(file), path=shown)
    except SourceError as exc:
        raise JobError(exc.findings) from None
    duplicates = [
        Finding(shown, line, "yaml", f"duplicate key {key!r} (YAML keeps only the last)")
        for key, line in doc.duplicate_keys()
    ]
    if duplicates:
        raise JobError(duplicates)
    return JobRequest.from_dict(doc.data, source=shown, line_of=doc.line_of)
