"""Keeper mode against an agent with a shell: real users, real sudo and sudoers, the emulator.

Each test creates a keeper user and an unprivileged "agent" user (unique names, removed
afterwards even on failure) and runs the attacks as the agent (`runuser -u AGENT`). The rgt the
sudoers rule allows is a root-owned wrapper in a root-owned directory that runs this checkout's
rgt with this interpreter (the keeper's environment is reset by sudo, so it cannot inherit
PYTHONPATH). Needs root and sudo: CI runs as root and tools/setup.sh installs sudo.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rgt.keeper import load_record
from tests.conftest import CANARY_API_KEY, assert_no_canary
from tests.ptyrun import PtyProcess

REPO = Path(__file__).resolve().parents[1]
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("sudo") is None or shutil.which("visudo") is None,
    reason="keeper mode creates system users and a sudoers rule: needs root and sudo "
    "(CI runs as root; tools/setup.sh installs sudo)",
)


@dataclass
class Keeper:
    """A keeper set up for an agent user, against the emulator."""

    user: str
    agent: str
    rgt: str
    home: Path

    def as_agent(self, *command: str, env: dict[str, str] | None = None) -> Any:
        """Run `command` as the agent user with a plain environment (plus `env`)."""
        agent_home = pwd.getpwnam(self.agent).pw_dir
        base = {"PATH": "/usr/bin:/bin", "HOME": agent_home, "VASTAI_NO_UPDATE_CHECK": "1"}
        return subprocess.run(
            [RUNUSER, "-u", self.agent, "--", *command],
            env={**base, **(env or {})},
            capture_output=True,
            text=True,
            cwd="/",
            timeout=120,
        )

    def rgt_as_root(self, *args: str) -> Any:
        """`rgt ARGS` as root (the human with sudo rights)."""
        return subprocess.run(
            [sys.executable, "-m", "rgt", *args], capture_output=True, text=True, timeout=120
        )


def _run(*command: str) -> None:
    subprocess.run(command, check=False, capture_output=True)


def _interpreter_for_others(agent: str) -> tuple[str, str]:
    """A Python other users can run, and the PYTHONPATH giving it this checkout and its
    dependencies: this interpreter, or (when it lives where others cannot enter, e.g. a pyenv
    under /root) the system python3 of the same version with this venv's site-packages."""
    import sysconfig

    usable = subprocess.run([RUNUSER, "-u", agent, "--", "test", "-x", sys.executable])
    if usable.returncode == 0:
        return sys.executable, str(REPO)
    system = shutil.which("python3", path="/usr/bin:/bin")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if system is None or version not in subprocess.getoutput(f"{system} --version"):
        _run("userdel", "--remove", agent)
        pytest.skip(f"no Python {version} the keeper user may run (this one is not reachable)")
    return system, f"{REPO}:{sysconfig.get_paths()['purelib']}"


@pytest.fixture
def agent_and_wrapper() -> Iterator[tuple[str, str]]:
    """An unprivileged agent user with a home, and a root-owned rgt wrapper."""
    agent = f"rgta-{secrets.token_hex(3)}"
    bindir = Path(tempfile.mkdtemp(prefix="rgt-keeper-bin-"))
    wrapper = bindir / "rgt"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", agent], check=True)
    python, path = _interpreter_for_others(agent)
    # cd /: `python -m` puts the working directory first on sys.path.
    wrapper.write_text(f'#!/bin/sh\ncd / && PYTHONPATH={path} exec {python} -m rgt "$@"\n')
    os.chmod(bindir, 0o755)
    os.chmod(wrapper, 0o755)
    try:
        yield agent, str(wrapper)
    finally:
        _run("userdel", "--remove", agent)
        shutil.rmtree(bindir, ignore_errors=True)


@pytest.fixture
def keeper(emulator: Any, agent_and_wrapper: tuple[str, str]) -> Iterator[Keeper]:
    """`rgt keeper setup` for the agent user, pointed at the emulator; `remove --purge` after."""
    agent, wrapper = agent_and_wrapper
    user = f"rgtk-{secrets.token_hex(3)}"
    home = Path(f"/var/lib/{user}")
    made = Keeper(user=user, agent=agent, rgt=wrapper, home=home)
    try:
        setup = made.rgt_as_root(
            "keeper", "setup", "--user", user, "--human", agent, "--rgt", wrapper,
            "--vast-url", emulator.url,
        )  # fmt: skip
        assert setup.returncode == 0, setup.stderr
        printed = setup.stdout[setup.stdout.index("{") : setup.stdout.index("\n}\n") + 2]
        assert json.loads(printed)["mcpServers"]["rgt"] == {
            "command": "sudo",
            "args": ["-n", "-u", user, wrapper, "mcp"],
        }
        assert_no_canary(setup.stdout, setup.stderr)
        yield made
    finally:
        made.rgt_as_root("keeper", "remove", "--user", user, "--purge")
        _run("userdel", "--remove", user)
        shutil.rmtree(home, ignore_errors=True)


def _set_key(keeper: Keeper) -> None:
    """The human types the key on a real terminal (root stands in for `sudo rgt keeper ...`)."""
    child = PtyProcess("keeper", "set-key", "--user", keeper.user)
    child.expect("vast.ai API key")
    child.send(CANARY_API_KEY)
    assert child.wait() == 0, child.text
    assert_no_canary(child.text)


PASSPHRASE = "correct horse battery staple"


def _approval_init(keeper: Keeper) -> None:
    """The human sets the approval passphrase as the keeper on a real terminal."""
    init = PtyProcess(command=["sudo", "-u", keeper.user, keeper.rgt, "approval", "init"])
    init.expect("New approval passphrase")
    init.send(PASSPHRASE)
    init.expect("Repeat it")
    init.send(PASSPHRASE)
    assert init.wait() == 0, init.text


def _new_instance(emulator: Any) -> tuple[str, Path]:
    from rgt.providers.base import OfferQuery
    from rgt.providers.vastai import VastProvider, run_label

    provider = VastProvider()
    offer = provider.search_offers(OfferQuery(limit=1))[0]
    instance = provider.create(
        offer.id, image="img", disk_gb=10, onstart="sleep 600", label=run_label("keeper")
    )
    return str(instance.id), Path(emulator.instance_disk(instance.id))


def _assert_alive(instance_id: str, disk: Path) -> None:
    from rgt.providers.vastai import VastProvider

    assert VastProvider().show(instance_id).state != "gone"
    assert disk.is_dir()


@pytest.mark.timeout(180)
def test_the_agent_cannot_reach_the_key_the_ledger_or_the_approval(
    emulator: Any, keeper: Keeper
) -> None:
    _set_key(keeper)
    record = load_record(keeper.user)
    assert record is not None
    instance_id, disk = _new_instance(emulator)
    sudo_rgt = ["sudo", "-n", "-u", keeper.user, keeper.rgt]

    # Passwordless read-only command: the caller's key, URL and state dir are ignored (a wrong
    # key or URL would fail; the instance is found with the keeper's key at the keeper's URL).
    decoy_state = Path(tempfile.gettempdir()) / f"decoy-{keeper.agent}"
    sweep = keeper.as_agent(
        *sudo_rgt, "sweep", "--json",
        env={"VAST_API_KEY": "agent-wrong-key", "VAST_URL": "http://127.0.0.1:9",
             "RGT_STATE_DIR": str(decoy_state)},
    )  # fmt: skip
    assert sweep.returncode in (0, 1), sweep.stderr
    assert instance_id in sweep.stdout
    assert not decoy_state.exists()
    assert (record.state_dir / "ledger.sqlite3").is_file()
    assert_no_canary(sweep.stdout, sweep.stderr)

    # 1. The stock vastai CLI as the agent: no key it can read, nothing destroyed.
    vastai = str(Path(sys.executable).with_name("vastai"))
    destroy = keeper.as_agent(
        vastai, "destroy", "instance", instance_id, "-y", env={"VAST_URL": emulator.url}
    )
    assert emulator.request_count("DELETE", f"/api/v0/instances/{instance_id}/") == 0, (
        destroy.stdout + destroy.stderr
    )
    _assert_alive(instance_id, disk)
    assert keeper.as_agent("cat", str(record.key_file)).returncode != 0

    # 2. The ledger: neither edited, replaced nor removed.
    ledger = record.state_dir / "ledger.sqlite3"
    before = ledger.read_bytes()
    edit = keeper.as_agent(sys.executable, "-c", f"open({str(ledger)!r}, 'r+b').write(b'x')")
    assert edit.returncode != 0 and "Permission denied" in edit.stderr
    for attack in (["rm", "-f", str(ledger)], ["mv", "/etc/hostname", str(ledger)]):
        assert keeper.as_agent(*attack).returncode != 0
    assert ledger.read_bytes() == before

    # 3. The results: readable by the agent's group, a forged verification cannot be written.
    forged = record.results_dir / "PULL_VERIFIED.json"
    write = keeper.as_agent("sh", "-c", f"echo '{{\"files\": []}}' > {forged}")
    assert write.returncode != 0 and not forged.exists()
    assert keeper.as_agent("ls", str(record.results_dir)).returncode == 0

    # 4. What needs the human: approval init, destroy, any other command, another environment.
    for attack in (
        [*sudo_rgt, "approval", "init"],
        [*sudo_rgt, "destroy", instance_id],
        [*sudo_rgt, "approve", instance_id],
        ["sudo", "-n", "-u", keeper.user, "/bin/sh", "-c", "id"],
        ["sudo", "-n", "-u", keeper.user, "VAST_API_KEY=x", keeper.rgt, "ledger"],
        ["sudo", "-n", "-u", keeper.user, "--preserve-env=VAST_API_KEY", keeper.rgt, "ledger"],
    ):
        refused = keeper.as_agent(*attack, env={"VAST_API_KEY": "agent-wrong-key"})
        assert refused.returncode != 0, (attack, refused.stdout)
        assert "password is required" in refused.stderr or "not allowed to" in refused.stderr, (
            attack,
            refused.stderr,
        )
    assert not (record.config_dir / "approval.json").exists()
    _assert_alive(instance_id, disk)

    # 5. The human's path: approval init as the keeper on a real terminal (root stands in for
    # the human with the sudo password), stored keeper-only.
    _approval_init(keeper)
    stored = (record.config_dir / "approval.json").stat()
    assert stored.st_uid == pwd.getpwnam(keeper.user).pw_uid
    assert stat.S_IMODE(stored.st_mode) == 0o600

    # The setup audits clean; `rgt keeper check` finds a weakened key file and a key the agent
    # keeps in its own home.
    check = keeper.rgt_as_root("keeper", "check", "--user", keeper.user)
    assert check.returncode == 0, check.stdout + check.stderr
    os.chmod(record.key_file, 0o644)
    agent_key = Path(pwd.getpwnam(keeper.agent).pw_dir) / ".vast_api_key"
    agent_key.write_text("some key\n")
    os.chown(agent_key, pwd.getpwnam(keeper.agent).pw_uid, -1)
    check = keeper.rgt_as_root("keeper", "check", "--user", keeper.user)
    assert check.returncode == 1
    assert f"{record.key_file}: mode 644 grants more than 600" in check.stdout
    assert f"{agent_key}: a vast.ai key file is readable by {keeper.agent}" in check.stdout
    assert_no_canary(check.stdout)


def _give_keeper_the_box_key(keeper: Keeper, emulator: Any) -> None:
    """The keeper reaches boxes over ssh with its own default identity (its ~/.ssh, which only
    it can enter): here the emulator's client key, which every emulated box accepts."""
    if "RGT_SSH_COMMAND" in emulator.client_environment():
        pytest.skip("the emulator cannot run sshd here; the keeper's ssh needs one")
    entry = pwd.getpwnam(keeper.user)
    key = keeper.home / ".ssh" / "id_ed25519"
    shutil.copyfile(emulator.client_key_path, key)
    os.chown(key, entry.pw_uid, entry.pw_gid)
    os.chmod(key, 0o600)


@pytest.mark.timeout(300)
def test_the_humans_destroy_through_the_keeper_needs_a_real_terminal(
    emulator: Any, keeper: Keeper
) -> None:
    """The human's legitimate path in keeper mode, end to end against the emulator: pull and
    verify as the keeper, then `sudo -u KEEPER rgt destroy ID` with the passphrase typed on a
    real pty destroys. The same destroy with the answers piped in, or run by the agent user
    (even one that learned the passphrase), is refused and the instance stays."""
    from rgt.providers.vastai import VastProvider
    from tests.ironlaw_emulator import REMOTE_ROOT, create_instance

    _set_key(keeper)
    _give_keeper_the_box_key(keeper, emulator)
    _approval_init(keeper)
    record = load_record(keeper.user)
    assert record is not None
    provider = VastProvider()
    instance_id = create_instance(provider, "keeper-e2e")
    disk = Path(emulator.instance_disk(instance_id))
    manifest = disk / REMOTE_ROOT.lstrip("/") / "PULL_MANIFEST.json"
    deadline = time.monotonic() + 60
    while not (manifest.is_file() and provider.show(instance_id).state == "running"):
        assert time.monotonic() < deadline, "no manifest on the box"
        time.sleep(0.2)
    as_keeper = ["sudo", "-u", keeper.user, keeper.rgt]  # the human, with sudo rights
    local = record.results_dir / "keeper-e2e"
    for step in (["pull", instance_id, REMOTE_ROOT, str(local)], ["verify", str(local)]):
        done = subprocess.run(
            [*as_keeper, *step],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, (step, done.stdout, done.stderr)
    assert (local / "PULL_VERIFIED.json").stat().st_uid == pwd.getpwnam(keeper.user).pw_uid

    # Refused: the id and the passphrase fed through a pipe (no terminal), by the human's sudo.
    piped = subprocess.run(
        [*as_keeper, "destroy", instance_id],
        input=f"{instance_id}\n{PASSPHRASE}\n",
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,  # no controlling terminal either
    )
    assert piped.returncode == 4, piped.stdout + piped.stderr
    assert "stdin is not a terminal" in piped.stderr and "Traceback" not in piped.stderr
    _assert_alive(instance_id, disk)
    # Refused: the agent user, on a real pty of its own, typing the passphrase it learned: sudo
    # wants the human's password for anything but the read-only commands.
    agent = PtyProcess(
        command=[RUNUSER, "-u", keeper.agent, "--", *as_keeper, "destroy", instance_id],
        env={"PATH": "/usr/bin:/bin", "HOME": pwd.getpwnam(keeper.agent).pw_dir},
    )
    for _ in range(3):  # sudo's tries
        agent.expect(f"password for {keeper.agent}", timeout=30)
        agent.output = b""
        agent.send(PASSPHRASE)
    assert agent.wait(timeout=60) != 0, agent.text
    assert "incorrect password" in agent.text, agent.text
    _assert_alive(instance_id, disk)
    assert emulator.request_count("DELETE", f"/api/v0/instances/{instance_id}/") == 0

    # The human at a real terminal: types the id and the passphrase; the keeper destroys.
    human = PtyProcess(command=[*as_keeper, "destroy", instance_id])
    shown = human.expect("Type the instance id to confirm", timeout=120)
    assert f"verified  {local}" in shown and "approving binds verification #1" in shown
    human.send(instance_id)
    human.expect("Approval passphrase")
    human.send(PASSPHRASE)
    assert human.wait(timeout=180) == 0, human.text
    assert "destroy confirmed" in human.text
    assert PASSPHRASE not in human.text  # getpass: not echoed
    assert provider.show(instance_id).state == "gone" and not disk.exists()
    assert emulator.request_count("DELETE", f"/api/v0/instances/{instance_id}/") == 1
    history = keeper.as_agent("sudo", "-n", "-u", keeper.user, keeper.rgt, "ledger", instance_id)
    assert history.returncode == 0 and "destroyed by rgt" in history.stdout, history.stdout


@pytest.mark.timeout(120)
@pytest.mark.anyio
async def test_the_agent_runs_rgt_mcp_as_the_keeper_without_a_key(
    emulator: Any, keeper: Keeper
) -> None:
    """The recommended MCP entry (`sudo -n -u KEEPER rgt mcp`), spawned as the agent with a
    wrong key and URL in its environment: the server answers with the keeper's key."""
    from mcp import Client, StdioServerParameters

    from tests.mcp_client import Session

    _set_key(keeper)
    params = StdioServerParameters(
        command=RUNUSER,
        args=["-u", keeper.agent, "--", "sudo", "-n", "-u", keeper.user, keeper.rgt, "mcp"],
        env={"PATH": "/usr/bin:/bin", "VAST_API_KEY": "agent-wrong", "VAST_URL": "http://x:9"},
        cwd="/",
    )
    async with Client(params, mode="auto", read_timeout_seconds=60) as client:
        session = Session(client)
        data = await session.data("search_offers", {"gpu": "RTX_4090", "disk_gb": 40})
        # The agent names the folder a copy writes to: only under the keeper's results dir.
        escape = await session.call(
            "copy",
            {"instance_id": "1", "remote_root": "/workspace/results", "local_dir": "/tmp/esc"},
        )
        assert escape.is_error
        assert "in keeper mode results are pulled only under" in escape.content[0].text  # type: ignore[union-attr]
    assert data["offers"]
    assert not Path("/tmp/esc").exists()
    assert_no_canary(json.dumps(data))


@pytest.mark.timeout(60)
def test_setup_refuses_without_root_and_remove_undoes_it(emulator: Any, keeper: Keeper) -> None:
    refused = keeper.as_agent(keeper.rgt, "keeper", "setup", "--human", keeper.agent)
    assert refused.returncode == 2
    assert "needs root rights" in refused.stderr and "Traceback" not in refused.stderr
    record = load_record(keeper.user)
    assert record is not None
    removed = keeper.rgt_as_root("keeper", "remove", "--user", keeper.user)
    assert removed.returncode == 0, removed.stderr
    assert f"kept {keeper.home}" in removed.stdout
    assert not record.sudoers_file.exists() and load_record(keeper.user) is None
    with pytest.raises(KeyError):
        pwd.getpwnam(keeper.user)
    assert (record.state_dir).is_dir()
