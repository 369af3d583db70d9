"""Keeper mode: a dedicated OS user holds the vast.ai key, the ledger and the approval hash.

The agent runs as the human's user; a same-user process can read or replace anything the human's
rgt keeps. So in keeper mode rgt's secrets and records belong to another user (the keeper), and
the human's user reaches rgt only through a sudoers rule that runs, passwordless, exactly
`rgt mcp` and the read-only commands as the keeper. Everything else run as the keeper (`approval
init`, `approve`, `destroy`, ...) needs the human's own sudo password.

How rgt knows it is the keeper: `rgt keeper setup` writes a root-owned record
`/etc/rgt/keepers/<user>.json`. When the effective user has such a record (root-owned, not
writable by anyone else), `enter_keeper_environment` pins rgt's directories to the keeper's home
before any command runs, whatever the environment says (sudo's env_reset already scrubs the
caller's variables; this holds even when it does not). No variable can switch keeper mode on or
off: only root can write the record.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

KEEPERS_DIR = Path("/etc/rgt/keepers")
SUDOERS_DIR = Path("/etc/sudoers.d")
DEFAULT_USER = "rgt-keeper"
SECURE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The commands the human's user (and so an agent running as it) may run as the keeper without a
# password: the MCP server and the commands that only read. Sub-command words and their
# arguments; "*" is sudoers' wildcard (any arguments).
PASSWORDLESS = ("mcp", "poll *", "sweep", "sweep --json", "cost", "cost *", "ledger", "ledger *")
# Variables a keeper process never takes from its caller: the key comes from the keeper's key
# file, the URL from the keeper record, the directories from the keeper's home.
SCRUBBED = ("VAST_API_KEY", "VAST_URL", "RGT_STATE_DIR", "RGT_CONFIG_DIR", "RGT_SSH_KEY")


@dataclass(frozen=True)
class KeeperRecord:
    """What `rgt keeper setup` decided, kept root-owned in KEEPERS_DIR/<user>.json."""

    user: str
    human: str
    home: str
    rgt: str
    vast_url: str | None = None

    @property
    def state_dir(self) -> Path:
        """The ledger's directory (RGT_STATE_DIR of a keeper process)."""
        return Path(self.home) / ".local" / "state" / "rgt"

    @property
    def config_dir(self) -> Path:
        """The approval hash's directory (RGT_CONFIG_DIR of a keeper process)."""
        return Path(self.home) / ".config" / "rgt"

    @property
    def key_file(self) -> Path:
        """The vast.ai key file the vastai SDK and rgt read (XDG_CONFIG_HOME/vastai)."""
        return Path(self.home) / ".config" / "vastai" / "vast_api_key"

    @property
    def results_dir(self) -> Path:
        """Where pulled results land: the keeper's, readable (not writable) by the human's group."""
        return Path(self.home) / "results"

    @property
    def private_dirs(self) -> list[Path]:
        """The keeper's directories no one else may enter (mode 0700)."""
        home = Path(self.home)
        return [
            home / ".config",
            self.config_dir,
            self.key_file.parent,
            home / ".local",
            home / ".local" / "state",
            self.state_dir,
            home / ".cache",
            home / ".ssh",
        ]

    @property
    def sudoers_file(self) -> Path:
        """The keeper's sudoers drop-in (no dot in the name: sudo skips such files)."""
        return SUDOERS_DIR / f"rgt-keeper-{self.user}".replace(".", "_")

    def to_json(self) -> str:
        """The record file's text."""
        return json.dumps(asdict(self), indent=2) + "\n"


def record_path(user: str) -> Path:
    """The root-owned record of keeper `user`."""
    return KEEPERS_DIR / f"{user}.json"


def load_record(user: str) -> KeeperRecord | None:
    """The keeper record of `user`, or None when there is none or it is not root's alone (a
    record anyone else could have written must not decide where rgt keeps its state)."""
    path = record_path(user)
    try:
        info = path.stat()
        data = json.loads(path.read_text(encoding="utf-8"))
        record = KeeperRecord(**data)
    except (OSError, ValueError, TypeError):
        return None
    if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or record.user != user:
        return None
    return record


def current_keeper() -> KeeperRecord | None:
    """The keeper record of the effective user, if rgt runs as a keeper."""
    if not KEEPERS_DIR.is_dir():  # one stat: the common case costs nothing more
        return None
    import pwd

    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return None
    return load_record(name)


def keeper_environment(record: KeeperRecord) -> dict[str, str]:
    """The variables a keeper process runs with (HOME and XDG dirs under the keeper's home)."""
    home = Path(record.home)
    environment = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "RGT_STATE_DIR": str(record.state_dir),
        "RGT_CONFIG_DIR": str(record.config_dir),
    }
    if record.vast_url:
        environment["VAST_URL"] = record.vast_url
    return environment


def enter_keeper_environment() -> KeeperRecord | None:
    """When rgt runs as a keeper, pin its environment to the keeper's (see the module doc) and
    make new files group-readable, never group-writable (umask 027: the human's group reads the
    results). Returns the record, or None when rgt is not a keeper."""
    record = current_keeper()
    if record is None:
        return None
    for name in SCRUBBED:
        os.environ.pop(name, None)
    os.environ.update(keeper_environment(record))
    os.umask(0o027)
    return record


def sudoers_text(record: KeeperRecord) -> str:
    """The sudoers drop-in for `record`: the human may run exactly PASSWORDLESS as the keeper
    without a password, and rgt's other commands as the keeper only with their own password;
    always with a reset environment, a fixed PATH and `/` as the working directory."""
    alias = "RGT_KEEPER_" + "".join(c if c.isalnum() else "_" for c in record.user).upper()
    rgt = record.rgt
    passwordless = ", ".join(f"{rgt} {command}" for command in PASSWORDLESS)
    return (
        f"# Written by `rgt keeper setup`; `rgt keeper remove --user {record.user}` deletes it.\n"
        f"# {record.human} (and any agent running as {record.human}) may run as {record.user}\n"
        f"# without a password only the MCP server and read-only commands; every other rgt\n"
        f"# command as {record.user} asks for {record.human}'s own password.\n"
        f"Cmnd_Alias {alias}_READ = {passwordless}\n"
        f"Cmnd_Alias {alias}_ALL = {rgt}\n"
        f'Defaults!{alias}_ALL env_reset, !env_keep, !setenv, secure_path="{SECURE_PATH}", '
        "runcwd=/\n"
        f"{record.human} ALL=({record.user}) PASSWD: {alias}_ALL\n"
        f"{record.human} ALL=({record.user}) NOPASSWD: {alias}_READ\n"
    )


def client_configuration(record: KeeperRecord) -> str:
    """The MCP client entry that runs the server as the keeper (no key in it)."""
    entry = {
        "mcpServers": {
            "rgt": {"command": "sudo", "args": ["-n", "-u", record.user, record.rgt, "mcp"]}
        }
    }
    return json.dumps(entry, indent=2)


def writable_by_others(path: Path) -> str | None:
    """Why `path` or a directory above it could be changed by a user other than root (None when
    it cannot): what the sudoers rule runs as the keeper must be root's alone. A sticky
    root-owned directory (/tmp) is fine: no one else can rename or remove root's entries."""
    current = path
    while True:
        try:
            info = current.lstat() if current == path else current.stat()
        except OSError as exc:
            return f"{current}: {exc.strerror}"
        if info.st_uid != 0:
            return f"{current} is owned by uid {info.st_uid}, not root"
        writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        sticky = stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
        if writable and not (sticky and current != path):
            return f"{current} is writable by group or others (mode {info.st_mode & 0o7777:o})"
        if current.parent == current:
            return None
        current = current.parent


def confine_to_results(local_dir: Path) -> None:
    """Running as a keeper, a pull may only write under the keeper's results directory: the
    folder is the agent's argument, and anywhere else the keeper can write (its ledger, its
    approval hash, its key) must not receive files from a box. Raises UsageError otherwise."""
    record = current_keeper()
    if record is None:
        return
    results = record.results_dir.resolve()
    if local_dir != results and results not in Path(local_dir).resolve().parents:
        from rgt.errors import UsageError

        raise UsageError(
            f"LOCAL_DIR {local_dir}: in keeper mode results are pulled only under {results} "
            f"(give e.g. {results}/<run_id>)"
        )
