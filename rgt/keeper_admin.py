"""The root side of keeper mode: create, audit and remove a keeper; put the key in its file.

Kept apart from rgt.keeper, which every rgt start reads: these run rarely, as root, and drive
useradd, visudo and runuser.
"""

from __future__ import annotations

import contextlib
import getpass
import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from rgt.atomic import atomic_write_text
from rgt.errors import Refused, UsageError
from rgt.keeper import (
    KEEPERS_DIR,
    KeeperRecord,
    client_configuration,
    load_record,
    record_path,
    sudoers_text,
    writable_by_others,
)

# useradd's own rule for portable names (and no dot: the sudoers file is named after it).
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")


def _require_root(action: str) -> None:
    if os.geteuid() != 0:
        raise UsageError(
            f"rgt keeper {action} needs root rights (it manages a system user and a sudoers "
            f"rule): run `sudo rgt keeper {action} ...`"
        )


def _user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _default_rgt() -> str:
    """This rgt's executable: the console script that started it, else `rgt` on PATH."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "rgt" and argv0.is_file():
        return str(argv0.resolve())
    found = shutil.which("rgt")
    if found is None:
        raise UsageError("--rgt: no `rgt` executable found on PATH; give its absolute path")
    return str(Path(found).resolve())


def setup(
    user: str,
    *,
    human: str | None,
    rgt: str | None,
    vast_url: str | None,
    home: str | None,
) -> int:
    """Create keeper `user` for `human` (see rgt.keeper); prints the MCP client configuration."""
    _require_root("setup")
    if not USER_NAME.match(user):
        raise UsageError(f"--user {user!r}: not a user name (lower-case letters, digits, _ or -)")
    human = human or os.environ.get("SUDO_USER")
    if not human or human == "root":
        raise UsageError(
            "--human: name the user the agent runs as (run setup through sudo from that user, "
            "or pass --human NAME); root cannot be the human of a keeper"
        )
    human_entry = _user(human)
    if human_entry is None:
        raise UsageError(f"--human {human!r}: no such user")
    rgt_path = rgt or _default_rgt()
    if not Path(rgt_path).is_absolute() or not os.access(rgt_path, os.X_OK):
        raise UsageError(f"--rgt {rgt_path!r}: not an absolute path of an executable")
    unsafe = writable_by_others(Path(rgt_path))
    if unsafe:
        raise Refused(
            f"--rgt {rgt_path}: {unsafe}; whoever can change it could run anything as the "
            "keeper: install rgt where only root can write (e.g. a root-owned virtualenv)"
        )
    home_dir = Path(home or f"/var/lib/{user}")
    existing = _user(user)
    if existing is None:
        created = _run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--home-dir",
                str(home_dir),
                "--create-home",
                "--shell",
                "/usr/sbin/nologin",
                user,
            ]
        )
        if created.returncode != 0:
            raise Refused(f"useradd {user}: {created.stderr.strip()}")
        existing = pwd.getpwnam(user)
        print(f"keeper user {user} created (home {home_dir})")
    elif Path(existing.pw_dir) != home_dir:
        raise UsageError(
            f"--user {user}: the user exists with home {existing.pw_dir}, not {home_dir}; pass "
            "--home or choose another name"
        )
    else:
        print(f"keeper user {user} exists (home {home_dir}); re-applying the setup")
    record = KeeperRecord(
        user=user, human=human, home=str(home_dir), rgt=rgt_path, vast_url=vast_url
    )
    _make_dirs(record, existing, human_entry.pw_gid)
    KEEPERS_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(KEEPERS_DIR.parent, 0o755)
    os.chmod(KEEPERS_DIR, 0o755)
    atomic_write_text(record_path(user), record.to_json(), mode=0o644)
    _install_sudoers(record)
    print(f"sudoers rule {record.sudoers_file} installed (checked with visudo)")
    print(f"results land in {record.results_dir} (readable, not writable, by {human}'s group)")
    print("\nMCP client configuration (no key in it; the server runs as the keeper):")
    print(client_configuration(record))
    print(
        "\nNext, as yourself in a terminal:\n"
        f"  sudo rgt keeper set-key --user {user}        # type the vast.ai API key\n"
        f"  sudo -u {user} {rgt_path} approval init      # asks for your sudo password\n"
        f"  sudo rgt keeper check --user {user}\n"
        "and remove the key from your own account (VAST_API_KEY, ~/.config/vastai/vast_api_key)."
    )
    return 0


def _make_dirs(record: KeeperRecord, keeper: pwd.struct_passwd, human_gid: int) -> None:
    """The keeper's home (traversable, not listable), its private dirs (0700) and the results
    dir (keeper-owned, the human's group, setgid so new entries keep that group, 2750)."""
    home = Path(record.home)
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, keeper.pw_uid, keeper.pw_gid)
    os.chmod(home, 0o711)
    for directory in record.private_dirs:
        directory.mkdir(exist_ok=True)
        os.chown(directory, keeper.pw_uid, keeper.pw_gid)
        os.chmod(directory, 0o700)
    record.results_dir.mkdir(exist_ok=True)
    os.chown(record.results_dir, keeper.pw_uid, human_gid)
    os.chmod(record.results_dir, 0o2750)


def _install_sudoers(record: KeeperRecord) -> None:
    """Write the sudoers drop-in to a name sudo ignores (it has a dot), validate it with `visudo
    -cf`, then rename it into place; a whole-configuration `visudo -c` failing afterwards takes
    it out again. An invalid file never becomes sudo's configuration."""
    target = record.sudoers_file
    staged = target.with_name(f".{target.name}.staged")
    atomic_write_text(staged, sudoers_text(record), mode=0o440)
    try:
        checked = _run(["visudo", "-cf", str(staged)])
        if checked.returncode != 0:
            raise Refused(f"visudo rejected the keeper's sudoers rule: {checked.stderr.strip()}")
        os.replace(staged, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
    whole = _run(["visudo", "-c"])
    if whole.returncode != 0:
        target.unlink()
        raise Refused(f"visudo -c failed with the keeper's rule, removed it: {whole.stdout}")


def _record_or_refuse(user: str) -> KeeperRecord:
    record = load_record(user)
    if record is None:
        raise UsageError(
            f"--user {user}: no keeper record ({record_path(user)} missing, or not root's "
            "alone); run `sudo rgt keeper setup` first"
        )
    return record


def set_key(user: str) -> int:
    """Read the vast.ai API key from the terminal (not echoed) into the keeper's key file
    (keeper-owned, 0600, written atomically): it never passes through an argument, a variable
    or a file the human's user (or an agent) can read."""
    _require_root("set-key")
    record = _record_or_refuse(user)
    keeper = pwd.getpwnam(user)
    from rgt.approval import open_tty

    try:
        tty = open_tty()
    except Refused as exc:
        raise Refused(f"{exc}; type the key yourself: `sudo rgt keeper set-key`") from None
    with tty:
        try:
            key = getpass.getpass("vast.ai API key (not echoed): ", stream=tty).strip()
        except EOFError:
            raise Refused("no answer on the terminal; the key is unchanged") from None
    if not key or any(c.isspace() for c in key):
        raise UsageError("the API key is one word without spaces; the key is unchanged")
    key_file = record.key_file
    atomic_write_text(key_file, key + "\n", mode=0o600)
    os.chown(key_file, keeper.pw_uid, keeper.pw_gid)
    print(f"key stored in {key_file} (owner {user}, mode 0600)")
    return 0


def remove(user: str, *, purge: bool) -> int:
    """Undo `setup`: the sudoers rule, the record and the user; the home only with `purge`."""
    _require_root("remove")
    record = load_record(user)
    sudoers = record.sudoers_file if record else KeeperRecord(user, "", "", "").sudoers_file
    with contextlib.suppress(FileNotFoundError):
        sudoers.unlink()
        print(f"removed {sudoers}")
    with contextlib.suppress(FileNotFoundError):
        record_path(user).unlink()
        print(f"removed {record_path(user)}")
    entry = _user(user)
    if entry is not None:
        removed = _run(["userdel", user])
        if removed.returncode != 0:
            raise Refused(f"userdel {user}: {removed.stderr.strip()}")
        print(f"removed user {user}")
    home = Path(record.home if record else entry.pw_dir if entry else "")
    if purge and record is not None and home.is_dir():
        shutil.rmtree(home)
        print(f"removed {home} (ledger, approval hash, key, results)")
    elif home.is_dir() and str(home) not in ("", "/", "."):
        print(
            f"kept {home} (ledger, approval hash, key, results), still owned by the removed "
            "user's uid; `rgt keeper remove --purge` deletes it"
        )
    return 0


def check(user: str) -> int:
    """Audit keeper `user`; prints each finding, exit 0 when there are none, else 1."""
    _require_root("check")
    record = _record_or_refuse(user)
    findings = _findings(record)
    for finding in findings:
        print(f"FINDING: {finding}")
    if findings:
        print(f"keeper {user}: {len(findings)} finding(s)")
        return 1
    print(
        f"keeper {user}: OK (key, ledger and approval hash are {user}'s alone; {record.human} "
        f"may run passwordless only `rgt mcp` and read-only commands as {user})"
    )
    return 0


def _findings(record: KeeperRecord) -> list[str]:
    findings: list[str] = []
    keeper = _user(record.user)
    if keeper is None:
        return [f"user {record.user} does not exist"]
    human = _user(record.human)
    if human is None:
        return [f"user {record.human} (the human) does not exist"]
    unsafe = writable_by_others(Path(record.rgt))
    if unsafe:
        findings.append(f"the rgt the sudoers rule runs: {unsafe}")
    home = Path(record.home)
    expectations: list[tuple[Path, int]] = [(home, 0o711)]
    expectations += [(directory, 0o700) for directory in record.private_dirs]
    for directory, mode in expectations:
        findings += _owned(directory, keeper.pw_uid, mode, must_exist=True)
    results = record.results_dir
    findings += _owned(results, keeper.pw_uid, 0o2750, must_exist=True)
    with contextlib.suppress(OSError):
        if results.stat().st_gid != human.pw_gid:
            findings.append(f"{results}: group is not {record.human}'s group")
    # The ledger may be group-readable (its group is the keeper's own; its directory is 0700).
    for secret, mode in (
        (record.key_file, 0o600),
        (record.config_dir / "approval.json", 0o600),
        (record.state_dir / "ledger.sqlite3", 0o640),
    ):
        findings += _owned(secret, keeper.pw_uid, mode, must_exist=False)
    if not record.key_file.is_file():
        findings.append(
            f"no vast.ai key in {record.key_file}: run `sudo rgt keeper set-key --user "
            f"{record.user}`"
        )
    findings += _human_can_read_key(record)
    findings += _sudoers_findings(record)
    return findings


def _owned(path: Path, uid: int, mode: int, *, must_exist: bool) -> list[str]:
    """`path` is owned by `uid` and grants no more than `mode` (a missing optional file is fine)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return [f"{path}: missing"] if must_exist else []
    problems = []
    if info.st_uid != uid:
        problems.append(f"{path}: owned by uid {info.st_uid}, not the keeper")
    extra = stat.S_IMODE(info.st_mode) & ~mode
    if extra:
        problems.append(
            f"{path}: mode {stat.S_IMODE(info.st_mode):o} grants more than {mode:o} "
            f"(chmod {mode:o})"
        )
    return problems


def _human_can_read_key(record: KeeperRecord) -> list[str]:
    """Try, as the human, to read every place a vast.ai key could be: the keeper's key file
    must be unreadable, and the human's own key files should not exist (the agent reads them)."""
    findings = []
    human_home = Path(pwd.getpwnam(record.human).pw_dir)
    own = [human_home / ".config" / "vastai" / "vast_api_key", human_home / ".vast_api_key"]
    for path in [record.key_file, *own]:
        probe = _run(["runuser", "-u", record.human, "--", "test", "-r", str(path)])
        if probe.returncode == 0:
            who = "the keeper's key" if path == record.key_file else "a vast.ai key file"
            findings.append(f"{path}: {who} is readable by {record.human} (and so by an agent)")
    return findings


def _sudoers_findings(record: KeeperRecord) -> list[str]:
    """The drop-in is root's, 0440, exactly what setup writes, and sudo's whole configuration
    passes `visudo -c`."""
    path = record.sudoers_file
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [f"{path}: missing (run `sudo rgt keeper setup` again)"]
    findings = _owned(path, 0, 0o440, must_exist=True)
    if text != sudoers_text(record):
        findings.append(
            f"{path}: differs from the rule setup writes (other commands may be allowed); run "
            "`sudo rgt keeper setup` again"
        )
    whole = _run(["visudo", "-c"])
    if whole.returncode != 0:
        findings.append(f"visudo -c fails: {(whole.stdout + whole.stderr).strip()}")
    listed = _run(["sudo", "-l", "-U", record.human])
    if listed.returncode == 0 and "NOPASSWD: ALL" in listed.stdout.replace("\n", " "):
        findings.append(
            f"{record.human} may run ANY command without a password (sudo -l): an agent running "
            f"as {record.human} can become {record.user}"
        )
    with contextlib.suppress(KeyError):
        members = grp.getgrnam(record.user).gr_mem
        if record.human in members:
            findings.append(f"{record.human} is in the keeper's group {record.user}")
    return findings
