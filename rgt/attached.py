"""Boxes rgt did not rent: `rgt attach` records one, `rgt launch --on ID` starts a job on it.

Attach pins the box's host key (first contact over ssh) and records the endpoint under a local
id (`ssh-1`). Launch renders the same boot hook as a vast.ai rental (scripts/onstart.sh.j2:
the job's files, secret-name check, resume from the newest checkpoint, the job status record,
the manifest at the end), copies it into the run's state directory on the box, and starts it
detached: under tmux where the box has it (the profile's detach primitive), else with nohup in
its own session. Launching the same run again re-runs the hook, which resumes from the newest
checkpoint (a running hook holds its lock, so a second copy leaves it alone).
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from rgt.errors import ProviderError, UsageError
from rgt.job import JobRequest
from rgt.ledger import Ledger
from rgt.profile import Profile
from rgt.providers.base import run_from_label, run_label
from rgt.providers.rsync import SshEndpoint
from rgt.providers.ssh import (
    SshProvider,
    known_hosts_file,
    parse_target,
    probe,
    run_shell,
    ssh_settings,
)

# The detach primitives `launch --on` starts itself; tmux falls back to nohup on a box without it.
DETACHED_PRIMITIVES = ("tmux", "nohup")
HOOK_NAME = "onstart.sh"
# manifest.py's default --instance-id-env: the variable the boot hook's manifest builder reads
# when the profile names none.
DEFAULT_INSTANCE_ID_ENV = "CONTAINER_ID"


@dataclass(frozen=True)
class AttachResult:
    """What `rgt attach` recorded."""

    instance_id: str
    created: bool  # False: this endpoint was already attached under this id
    profile: str
    endpoint: str
    name: str | None

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


@dataclass(frozen=True)
class BoxLaunch:
    """What `rgt launch --on` started."""

    instance_id: str
    run_id: str
    label: str
    profile: str
    how: str  # "tmux session NAME" or "nohup"
    hook_path: str
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def attach(
    ledger: Ledger,
    profile_ref: str,
    target: str,
    *,
    name: str | None = None,
    identity_file: str | None = None,
) -> AttachResult:
    """Record the box at `target` (user@host[:port]) under a local id, after it answered over
    ssh (which pins its host key). UsageError for a profile rgt rents through an API or whose
    meter stop differs per variant; ProviderError (nothing recorded) when the box does not
    answer."""
    from pathlib import Path

    from rgt.lifecycle import PER_VARIANT
    from rgt.profile import load_profile
    from rgt.providers import PLATFORMS

    profile = load_profile(profile_ref)
    if profile.platform in PLATFORMS:
        raise UsageError(
            f"profile {profile.name}: rgt rents {profile.title} boxes through its API; use `rgt "
            "launch OFFER --job JOB.yaml` (attach is for boxes rgt did not rent)"
        )
    if profile.meter_stop_verb == PER_VARIANT:
        names = ", ".join(v.name for v in profile.all_variants() if v.name != profile.name)
        raise UsageError(
            f"profile {profile.name}: its meter stop differs per member; attach with one of {names}"
        )
    user, host, port = parse_target(target)
    if name is not None and not name.strip():
        raise UsageError("--label: give a non-empty name")
    identity = None
    if identity_file is not None:
        path = Path(identity_file).expanduser()
        if not path.is_file():
            raise UsageError(f"--identity {identity_file}: no such file (the private key)")
        identity = str(path.resolve())
    # The profile as attached: a bundled name stays a name; a profile file, its absolute path.
    reference = profile.name if not Path(profile_ref).suffix else str(Path(profile_ref).resolve())
    endpoint = SshEndpoint(host, port, user)
    pending = known_hosts_file(f"pending-{host}-{port}")
    pending.unlink(missing_ok=True)
    silence = probe(endpoint, ssh_settings(identity, pending))
    if silence is not None:
        pending.unlink(missing_ok=True)
        raise ProviderError(
            f"{user}@{host}:{port} does not answer over ssh ({silence}); nothing attached"
        )
    instance_id, created = ledger.attach_box(
        profile.platform,
        reference,
        user=user,
        host=host,
        port=port,
        identity_file=identity,
        name=name,
    )
    known = known_hosts_file(instance_id)
    if created or not known.exists():
        pending.replace(known)  # the key seen now is the one pinned for this box
    else:
        pending.unlink(missing_ok=True)
    return AttachResult(instance_id, created, reference, f"{user}@{host}:{port}", name)


def launch_on_box(
    instance_id: str,
    *,
    provider: SshProvider,
    ledger: Ledger,
    profile: Profile,
    job: JobRequest,
) -> BoxLaunch:
    """Ship the run's boot hook to the attached box and start it detached; record the run in
    the ledger (its label, results root and roster: what the gate binds a pull to)."""
    from rgt.durable import remember_target
    from rgt.jobstatus import status_remote_dir
    from rgt.render import render_template

    box = provider.box(instance_id)
    if profile.detach_primitive not in DETACHED_PRIMITIVES:
        raise UsageError(
            f"profile {profile.name}: detach primitive {profile.detach_primitive!r}; `rgt launch "
            f"--on` starts jobs under {' or '.join(DETACHED_PRIMITIVES)} only: render the "
            f"launcher (`rgt render {profile.name} ...`) and submit it yourself"
        )
    record = ledger.instance(provider.platform, box.instance_id)
    bound = run_from_label(record.label if record is not None else None)
    if bound is not None and bound != job.run_id:
        raise UsageError(
            f"instance {box.instance_id} is bound to run {bound!r}, not {job.run_id!r}: one box id "
            "holds one run (the gate binds its results to it); attach the box again with another "
            "--label to get a new id for this run"
        )
    if provider.show(box.instance_id).state != "running":
        raise ProviderError(
            f"instance {box.instance_id} does not answer over ssh; nothing was started"
        )
    rendered = render_template(profile, "onstart", job)
    remember_target(job)  # `rgt sync ID` knows where its checkpoints go
    state_dir = status_remote_dir(profile, job.run_id)
    hook = f"{state_dir}/{HOOK_NAME}"
    endpoint, settings = provider.endpoint(box), provider.settings(box)
    # Record the run first: a hook that starts and is then lost from view is still found.
    ledger.record_instance(
        provider.platform,
        box.instance_id,
        label=run_label(job.run_id),
        profile=box.profile,
        results_root=job.results_root,
        roster=list(job.roster),
    )
    # Copied whole, then renamed: a half-copied hook never runs.
    run_shell(
        endpoint,
        settings,
        f"set -eu; mkdir -p {shlex.quote(state_dir)}; cat >{shlex.quote(hook)}.tmp; "
        f"chmod 755 {shlex.quote(hook)}.tmp; mv -f {shlex.quote(hook)}.tmp {shlex.quote(hook)}",
        stdin=rendered.text.encode(),
    )
    how = run_shell(endpoint, settings, start_script(profile, job.run_id, hook, box.instance_id))
    how = how.strip().splitlines()[-1] if how.strip() else "started"
    warnings = list(rendered.notes)
    if how == "nohup" and profile.detach_primitive == "tmux":
        warnings.append(
            "tmux is not installed on the box: the hook runs under nohup in its own session "
            "(it survives the ssh session, not a reboot)"
        )
    return BoxLaunch(
        instance_id=box.instance_id,
        run_id=job.run_id,
        label=run_label(job.run_id),
        profile=box.profile,
        how=how,
        hook_path=hook,
        warnings=warnings,
    )


def tmux_session(run_id: str) -> str:
    """The tmux session a run's hook runs in (tmux turns `.` and `:` in names into `_`)."""
    return "rgt-" + run_id.replace(".", "_").replace(":", "_")


def start_script(profile: Profile, run_id: str, hook: str, instance_id: str) -> str:
    """The `sh` script that starts `hook` detached on the box and prints how (its last line:
    `tmux session NAME`, `already running in tmux session NAME` or `nohup`).

    The hook's manifest names the box by the id rgt knows it by (the gate checks that it names
    this instance): the profile's instance-id variable is set to the local id for the hook."""
    id_env = profile.instance_id_env or DEFAULT_INSTANCE_ID_ENV
    command = f"{id_env}={shlex.quote(instance_id)} exec bash {shlex.quote(hook)}"
    session = tmux_session(run_id)
    q = shlex.quote
    return "\n".join(
        [
            "set -eu",
            "if command -v tmux >/dev/null 2>&1; then",
            f"  if tmux has-session -t ={q(session)} 2>/dev/null; then",
            f"    echo {q('already running in tmux session ' + session)}",
            "  else",
            f"    tmux new-session -d -s {q(session)} {q(command)}",
            f"    echo {q('tmux session ' + session)}",
            "  fi",
            "else",
            "  if command -v setsid >/dev/null 2>&1; then detach=setsid; else detach=; fi",
            f"  {id_env}={q(instance_id)} nohup $detach bash {q(hook)} \\",
            "    >/dev/null 2>&1 </dev/null &",
            "  echo nohup",
            "fi",
        ]
    )
