"""`rgt render PROFILE TEMPLATE [--job job.yaml] [-o FILE]`: a shell script from a template."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rgt.job import JobRequest

ORDER = 20  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = (
    "render a template (run_one, run_queue, onstart, pull; sbatch for Slurm, k8s_job for "
    "Kubernetes) for a profile and a job"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """PROFILE TEMPLATE [--job FILE] [-o FILE]."""
    parser.add_argument(
        "profile", help="bundled profile name (vastai, generic-ssh:VARIANT) or path"
    )
    parser.add_argument(
        "template",
        help="template name: run_one, run_queue, onstart, pull; sbatch (generic-ssh:slurm), "
        "k8s_job (generic-ssh:kubernetes)",
    )
    parser.add_argument(
        "--job", metavar="FILE", help="job request YAML (default: the bundled example job)"
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write here (atomically, mode 0755), not stdout"
    )


def run(args: argparse.Namespace) -> int:
    """Render, then print or write the script; notes (e.g. compression) go to stderr."""
    import sys
    from pathlib import Path

    from rgt.errors import UsageError
    from rgt.job import load_job
    from rgt.profile import load_profile
    from rgt.render import render_template, write_script

    profile = load_profile(args.profile)
    job = load_job(args.job)
    refuse_secret_values(job)
    rendered = render_template(profile, args.template, job)
    for note in rendered.notes:
        print(f"rgt render: {note}", file=sys.stderr)
    if args.output:
        output = Path(args.output)
        if output.is_dir():
            raise UsageError(f"-o {args.output}: is a folder; give a file name such as onstart.sh")
        try:
            write_script(output, rendered.text)
        except OSError as exc:
            raise UsageError(f"-o {args.output}: cannot write: {exc.strerror}") from None
        print(
            f"rgt render: wrote {args.output} ({len(rendered.text.encode())} bytes)",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(rendered.text)
    return 0


def refuse_secret_values(job: JobRequest) -> None:
    """A rendered script never carries a secret value: UsageError when a field of `job` holds
    this machine's vast.ai API key or the value of one of its secret_env variables (the field
    and the secret named, never the value)."""
    import contextlib
    import os

    from rgt.errors import UsageError
    from rgt.providers.redact import Redactor
    from rgt.providers.vastai import KEY_NAME, api_key_from_environment, secret_name

    redactor = Redactor()
    with contextlib.suppress(UsageError):  # no key on this machine: none to leak
        redactor.add(api_key_from_environment(), name=KEY_NAME)
    for variable in job.secret_env:
        redactor.add(os.environ.get(variable), name=secret_name(variable))
    fields = [
        ("command", job.command),
        ("setup", job.setup),
        ("image", job.image),
        *((f"env {name}", value) for name, value in job.env.items()),
        *((f"files[{path}]", content) for path, content in job.files.items()),
    ]
    for field, text in fields:
        found = redactor.secret_in(text)
        if found is not None:
            raise UsageError(
                f"{job.source}: {field}: holds {found}; a rendered script never carries a "
                "secret value (name the variable in secret_env instead); nothing was written"
            )
