"""Boxes rgt did not rent through an API, reached over ssh (`rgt attach`), behind the Provider
interface: a RunPod/Lambda/AutoDL/Paperspace pod, a lab server, a Slurm login node.

rgt knows such a box only by the endpoint a human gave it, under a local id (`ssh-1`, ...;
the ledger's `attached` table). What that means for each Provider method:

* `show` asks the box itself: it answers over ssh → running; it does not → offline. Never
  "gone" on silence alone: a box that stops answering may be rebooting and still bill. Gone
  only once a human confirmed the platform's meter stop (this process, or a confirmed destroy
  in the ledger) AND the box stopped answering.
* `read_remote_file`, `run_remote_command`, `copy_from` and `logs` go over ssh (rgt.providers
  rsync and sshexec), with one known_hosts file per attached box: the key seen at attach is
  pinned, a changed key later is refused.
* `create`, `stop`, `start` are not rgt's to send here: they raise a clear error naming the
  platform's verbs. `destroy` is the human's: the gate (`rgt.gate`) runs in full first, then
  this provider asks the human (a callback the CLI gives it: a TTY prompt; MCP: the phrase they
  typed in the approval form) to do the profile's meter-stop action and confirm it; with no
  human at hand it refuses. Except a scheduler's cancel that deletes nothing (Slurm's scancel,
  kubectl delete job: rgt.providers.scheduler), which rgt sends itself over the same ssh.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rgt.errors import ProviderError, Refused, UsageError
from rgt.providers.base import (
    CopyResult,
    Instance,
    Offer,
    OfferQuery,
    ProgressCallback,
    run_from_label,
)
from rgt.providers.rsync import (
    CopySettings,
    SshEndpoint,
    SshSettings,
    identity_from_environment,
    low_priority_copy,
    read_remote_file,
    rsync_pull,
    ssh_command,
)
from rgt.providers.scheduler import (
    ACTIVE,
    ENDED,
    SCHEDULERS,
    cancel_script,
    scheduler_for,
    state_script,
)

if TYPE_CHECKING:
    from rgt.ledger import AttachedBox, Ledger
    from rgt.profile import Profile

ATTACHED_ID_PREFIX = "ssh-"
_ATTACHED_ID = re.compile(r"^ssh-[1-9][0-9]{0,8}$")
# user@host[:port]; a bracketed IPv6 host takes a port only after its bracket.
_TARGET = re.compile(
    r"^(?P<user>[A-Za-z_][A-Za-z0-9_.-]{0,31})@"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]{0,252})"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)
DEFAULT_SSH_PORT = 22
# One look: does the box answer? (ssh's own connect timeout bounds a silent host sooner.)
PROBE_TIMEOUT_SECONDS = 30.0
SHELL_TIMEOUT_SECONDS = 120.0

# The rgt commands with no counterpart for a box reached over ssh: rgt neither searches offers
# for, rents, stops nor starts such a box (the provider methods below refuse: the platform's
# console or CLI does that). Every other provider command (attach, launch --on, poll, logs, pull,
# sweep, destroy, discard, ...) works for it. The lint rule provider-command reads this.
COMMANDS_WITHOUT_SSH = ("search", "start", "stop")
# The detach primitives `rgt launch --on` starts a job under (rgt.attached): the hook itself
# (tmux, else nohup on a box without it) or a scheduler's job. A platform whose profile names
# another (a notebook, say) has no box rgt can run a job on over ssh.
HOOK_PRIMITIVES = ("tmux", "nohup")
SSH_DETACH_PRIMITIVES = (*HOOK_PRIMITIVES, *SCHEDULERS)

# Asked after the gate allowed ending the box: (instance id, the action to do) -> done?
ConfirmMeterStop = Callable[[str, str], bool]


def reachable_by_ssh(profile: Profile) -> bool:
    """True when rgt runs this platform's jobs on boxes attached over ssh (no API provider, and
    a detach primitive `launch --on` starts)."""
    from rgt.providers import PLATFORMS

    return profile.platform not in PLATFORMS and profile.detach_primitive in SSH_DETACH_PRIMITIVES


def is_attached_id(value: str) -> bool:
    """True for a local id of an attached box (`ssh-1`); vast.ai ids are bare numbers."""
    return bool(_ATTACHED_ID.match(str(value).strip()))


def parse_target(text: str) -> tuple[str, str, int]:
    """(user, host, port) from `user@host[:port]`; UsageError naming the form otherwise."""
    match = _TARGET.match(text.strip())
    port = int(match["port"]) if match and match["port"] else DEFAULT_SSH_PORT
    if match is None or not 0 < port < 65536:
        raise UsageError(
            f"box {text!r}: give it as user@host or user@host:port (e.g. root@203.0.113.7:22044; "
            "an IPv6 host in brackets: root@[2001:db8::7]:22)"
        )
    return match["user"], match["host"].strip("[]"), port


def known_hosts_file(instance_id: str) -> Path:
    """The known_hosts file of one attached box (its host key, pinned at attach)."""
    from rgt.paths import state_dir

    return state_dir() / "known_hosts.d" / f"attached-{instance_id}"


def ssh_settings(identity_file: str | None, known_hosts: Path) -> SshSettings:
    """The box's own identity file when it was attached with one, else $RGT_SSH_KEY, else
    ssh's default identities."""
    identity = Path(identity_file) if identity_file else identity_from_environment()
    return SshSettings(known_hosts=known_hosts, identity_file=identity)


def probe(endpoint: SshEndpoint, settings: SshSettings) -> str | None:
    """None when the box answers over ssh (runs `true`), else why not, in one line."""
    argv = [*ssh_command(endpoint, settings), endpoint.host, "true"]
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"no answer within {PROBE_TIMEOUT_SECONDS:.0f} s"
    except OSError as exc:
        raise ProviderError(f"cannot run ssh: {exc.strerror or exc}") from None
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in done.stderr.decode(errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), f"ssh exit {done.returncode}")[:300]


def _job_line(output: str) -> tuple[str, str] | None:
    """(handle, state) from the last line a scheduler script printed (`none`: no job)."""
    lines = output.strip().splitlines()
    words = lines[-1].split() if lines else []
    if len(words) == 2 and words[1] in (ACTIVE, ENDED):
        return words[0], words[1]
    if words == ["none"]:
        return None
    raise ProviderError(f"the scheduler's answer is not understood: {output.strip()[-200:]!r}")


def run_shell(
    endpoint: SshEndpoint,
    settings: SshSettings,
    script: str,
    *,
    stdin: bytes = b"",
    timeout: float = SHELL_TIMEOUT_SECONDS,
) -> str:
    """Run `script` with `sh -c` on the box (stdin fed from `stdin`); its standard output.
    ProviderError naming its last error line when it fails or ssh cannot connect."""
    argv = [*ssh_command(endpoint, settings), endpoint.host, "sh -c " + shlex.quote(script)]
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ProviderError(
            f"{endpoint.host}:{endpoint.port}: no answer within {timeout:.0f} s"
        ) from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.decode(errors="replace").splitlines()]
        last = next((line for line in reversed(lines) if line), f"exit status {done.returncode}")
        raise ProviderError(f"{endpoint.host}:{endpoint.port}: {last[:300]}")
    return done.stdout.decode(errors="replace")


class SshProvider:
    """Attached boxes of one platform (a profile), reached over ssh."""

    # The gate reads this: the meter stop is the human's action, confirmed through `destroy`.
    meter_stop_is_human = True
    # Nothing re-runs a boot hook here after a reboot or a kill: `rgt launch --on` does (poll
    # says so instead of "stop and start the instance").
    restarts_boot_hook = False

    def __init__(
        self,
        profile: Profile,
        *,
        ledger_path: Path | None = None,
        confirm_meter_stop: ConfirmMeterStop | None = None,
        copy: CopySettings | None = None,
    ) -> None:
        self.profile = profile
        self.platform = profile.platform
        self.ledger_path = ledger_path
        self.confirm_meter_stop = confirm_meter_stop
        self.copy_settings = copy or CopySettings()
        # Boxes whose meter stop a human confirmed (or rgt sent) in this process: then gone once
        # silent, or once their scheduler's job ended.
        self._confirmed: set[str] = set()
        self.scheduler = scheduler_for(profile.detach_primitive)

    @property
    def sends_meter_stop(self) -> bool:
        """True when rgt itself sends the meter stop, after the gate and the human's approval:
        a scheduler's cancel (`scancel`, `kubectl delete job`) run over the same ssh on the box
        rgt reaches, where the profile says it deletes nothing (meter_stop_irreversible false:
        the job's files stay on the shared filesystem or the claim). Everywhere else the
        platform's meter stop is a human's action in its console, which they confirm."""
        return self.scheduler is not None and self.profile.meter_stop_irreversible is False

    def __repr__(self) -> str:
        return f"SshProvider(platform={self.platform!r})"

    # -- the ledger's view -------------------------------------------------------------------
    def _ledger(self) -> Ledger:
        from rgt.ledger import Ledger

        return Ledger.open(self.ledger_path)

    def box(self, instance_id: str) -> AttachedBox:
        """The attached box `instance_id` of this platform; UsageError when there is none."""
        with self._ledger() as ledger:
            box = ledger.attached_box(str(instance_id))
        if box is None:
            raise UsageError(
                f"instance {instance_id}: no box is attached under this id (see `rgt ledger`); "
                "attach one with `rgt attach PROFILE user@host[:port]`"
            )
        if box.provider != self.platform:
            raise UsageError(
                f"instance {instance_id} is a {box.provider} box (attached with profile "
                f"{box.profile}), not {self.platform}"
            )
        return box

    def endpoint(self, box: AttachedBox) -> SshEndpoint:
        """Where the box's sshd listens, as attached."""
        return SshEndpoint(box.host, box.port, box.user)

    def settings(self, box: AttachedBox) -> SshSettings:
        """Identity and the box's pinned host key."""
        return ssh_settings(box.identity_file, known_hosts_file(box.instance_id))

    def _human_ended(self, instance_id: str) -> bool:
        with self._ledger() as ledger:
            return any(d.status == "confirmed" for d in ledger.destroys(instance_id))

    # -- Provider ---------------------------------------------------------------------------
    def show(self, instance_id: str) -> Instance:
        """running when the box answers over ssh, offline when not; gone only after a human
        confirmed the meter stop and the box stopped answering."""
        box = self.box(instance_id)
        with self._ledger() as ledger:
            record = ledger.instance(self.platform, box.instance_id)
        label = record.label if record is not None else None
        common: dict[str, Any] = {
            "id": box.instance_id,
            "label": label,
            "ssh_host": box.host,
            "ssh_port": box.port,
        }
        if self._human_ended(box.instance_id):
            return Instance(state="gone", status_msg="its meter stop was confirmed", **common)
        silence = probe(self.endpoint(box), self.settings(box))
        if silence is None and self.scheduler is not None and box.instance_id in self._confirmed:
            # The login node answers after the meter stop too: gone once the job has ended.
            job = self.scheduler_job(box.instance_id)
            if job is None or job[1] == ENDED:
                what = f"{self.scheduler.noun} {job[0]} ended" if job else "no job was submitted"
                return Instance(state="gone", status_msg=f"meter stopped: {what}", **common)
            return Instance(
                state="running",
                status_msg=f"{self.scheduler.noun} {job[0]} is still active after the meter stop",
                **common,
            )
        if silence is None:
            return Instance(state="running", status_msg="answers over ssh", **common)
        if box.instance_id in self._confirmed:
            return Instance(
                state="gone",
                status_msg=f"meter stop confirmed by a human; no answer over ssh ({silence})",
                **common,
            )
        return Instance(state="offline", status_msg=f"no answer over ssh: {silence}", **common)

    def list_instances(self) -> list[Instance]:
        """Every box attached with this platform's profile, as `show` sees it now."""
        with self._ledger() as ledger:
            boxes = ledger.attached_boxes(self.platform)
        return [self.show(box.instance_id) for box in boxes]

    def read_remote_file(self, instance_id: str, remote_path: str) -> bytes:
        """One small file off the box (`cat` over ssh)."""
        box = self.box(instance_id)
        return read_remote_file(self.endpoint(box), remote_path, self.settings(box))

    def run_remote_command(
        self, instance_id: str, argv: Sequence[str], *, max_bytes: int, timeout: float = 120.0
    ) -> bytes:
        """Run `argv` on the box over ssh; output bounded by `max_bytes`."""
        from rgt.providers.sshexec import run_remote_command

        box = self.box(instance_id)
        return run_remote_command(
            self.endpoint(box), argv, self.settings(box), max_bytes=max_bytes, timeout=timeout
        )

    def copy_from(
        self,
        instance_id: str,
        remote_path: str,
        local_dir: Path,
        *,
        progress: ProgressCallback | None = None,
        files: Sequence[str] | None = None,
        low_priority: bool = False,
    ) -> CopyResult:
        """Copy `remote_path` into `local_dir` with rsync over ssh, resumably, bounded."""
        box = self.box(instance_id)
        report = rsync_pull(
            self.endpoint(box),
            remote_path,
            Path(local_dir),
            self.settings(box),
            copy=low_priority_copy(self.copy_settings) if low_priority else self.copy_settings,
            progress=progress,
            files=files,
        )
        return report.copy_result()

    def copy_to(self, instance_id: str, local_file: Path, remote_dir: str) -> CopyResult:
        """Upload one file into `remote_dir` on the box with rsync over ssh, resumably."""
        from rgt.providers.rsync import rsync_push

        box = self.box(instance_id)
        report = rsync_push(
            self.endpoint(box),
            Path(local_file),
            remote_dir,
            self.settings(box),
            copy=self.copy_settings,
        )
        return report.copy_result()

    def logs(self, instance_id: str, *, tail: int = 200) -> str:
        """The last `tail` lines of the run's boot-hook log (onstart.log, which also holds the
        job's output) on the box."""
        from rgt.jobstatus import status_remote_dir

        box = self.box(instance_id)
        with self._ledger() as ledger:
            record = ledger.instance(self.platform, box.instance_id)
        run_id = run_from_label(record.label if record is not None else None)
        if run_id is None:
            raise ProviderError(
                f"instance {instance_id}: no run was launched on it yet (`rgt launch --on "
                f"{instance_id} --job JOB.yaml`), so there is no log to show"
            )
        path = f"{status_remote_dir(self.profile, run_id)}/onstart.log"
        data = self.run_remote_command(
            instance_id, ["tail", "-n", str(max(1, int(tail))), path], max_bytes=4 << 20
        )
        return data.decode(errors="replace")

    def scheduler_job(self, instance_id: str) -> tuple[str, str] | None:
        """(job handle, active/ended) of the run's scheduler job on the box, None when no job
        was submitted; ProviderError when the scheduler does not answer."""
        from rgt.jobstatus import status_remote_dir

        if self.scheduler is None:
            return None
        box = self.box(instance_id)
        run_id = self._run_id(box.instance_id)
        if run_id is None:
            return None
        script = state_script(self.scheduler, status_remote_dir(self.profile, run_id))
        return _job_line(run_shell(self.endpoint(box), self.settings(box), script))

    def _run_id(self, instance_id: str) -> str | None:
        with self._ledger() as ledger:
            record = ledger.instance(self.platform, instance_id)
        return run_from_label(record.label if record is not None else None)

    def search_offers(self, query: OfferQuery) -> list[Offer]:
        """No marketplace: rgt does not rent these boxes."""
        raise UsageError(self._not_rgts("search offers"))

    def create(self, offer_id: str, **_: object) -> Instance:
        """No rental through rgt: attach the box instead."""
        raise UsageError(self._not_rgts("rent"))

    def stop(self, instance_id: str) -> None:
        """Not rgt's to send on this platform."""
        raise UsageError(self._not_rgts(self.profile.stop_verb or "stop", instance_id))

    def start(self, instance_id: str) -> None:
        """Not rgt's to send on this platform."""
        raise UsageError(self._not_rgts("start", instance_id))

    def destroy(self, instance_id: str) -> None:
        """The meter stop is the human's: ask them (the callback) to do the profile's action and
        confirm it. Only `rgt.gate` calls this, after the gate allowed it; `show` then says gone
        once the box stops answering."""
        box = self.box(instance_id)
        action = self.profile.meter_stop_action
        if self.sends_meter_stop:
            self._cancel_job(box)
            return
        if self.confirm_meter_stop is None:
            raise Refused(
                f"instance {box.instance_id}: the meter stop of {self.profile.title} is a "
                f"human's action ({action}); run `rgt destroy {box.instance_id}` on a terminal: "
                "it runs the gate, then asks you to confirm you did it"
            )
        if not self.confirm_meter_stop(box.instance_id, action):
            raise Refused(
                f"instance {box.instance_id}: the meter stop was not confirmed; nothing is "
                f"recorded as ended, and the box may still bill. Do it ({action}), then run "
                f"`rgt destroy {box.instance_id}` again"
            )
        self._confirmed.add(box.instance_id)

    def _cancel_job(self, box: AttachedBox) -> None:
        """Send the scheduler's meter stop for the run's job over ssh (a job that ended by itself
        needs none); `show` says gone once the job has ended."""
        from rgt.jobstatus import status_remote_dir

        assert self.scheduler is not None
        run_id = self._run_id(box.instance_id)
        if run_id is not None:
            script = cancel_script(self.scheduler, status_remote_dir(self.profile, run_id))
            run_shell(self.endpoint(box), self.settings(box), script)
        self._confirmed.add(box.instance_id)

    # -- helpers -----------------------------------------------------------------------------
    def _not_rgts(self, verb: str, instance_id: str | None = None) -> str:
        what = f"instance {instance_id} is a box" if instance_id else "this platform's boxes are"
        return (
            f"{what} rgt reaches over ssh ({self.profile.name}); rgt does not {verb} it through "
            f"an API. Do that in {self.profile.title}'s own console or CLI. Its meter stops only "
            f"by {self.profile.meter_stop_action}, which a human does after `rgt destroy` "
            "(the gate) allowed it"
        )
