"""Free-port races: a server started on a port another process took after it was chosen (the
suite runs 4 workers, each probing for free ports) still comes up, on another port
(rgt.loopback). The clash is forced, not waited for: the port chooser offers first a port a
socket of this test listens on, as another worker's server would."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rgt import loopback


@dataclass
class Clash:
    """The port the chooser offers first, held by a listening socket of the test."""

    port: int
    offered: list[int] = field(default_factory=list)


@pytest.fixture
def clash(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clash]:
    holder = socket.socket()
    holder.bind((loopback.HOST, 0))
    holder.listen()
    taken = Clash(int(holder.getsockname()[1]))
    choose = loopback.free_port

    def taken_first() -> int:
        port = choose() if taken.offered else taken.port
        taken.offered.append(port)
        return port

    monkeypatch.setattr(loopback, "free_port", taken_first)
    try:
        yield taken
    finally:
        holder.close()


def _came_up_elsewhere(clash: Clash, port: int, pid: int) -> None:
    assert clash.offered[0] == clash.port  # the clash happened
    assert port != clash.port
    assert loopback.listens(pid, port)  # the server's own socket, not the test's


def test_the_emulators_sshd_comes_up_past_a_taken_port(clash: Clash, tmp_path: Path) -> None:
    from rgt.sim.ssh import SshServer, sshd_unavailable_reason

    if sshd_unavailable_reason() is not None:
        pytest.skip(f"no sshd here: {sshd_unavailable_reason()}")
    server = SshServer(tmp_path / "disk", tmp_path / "keys")
    try:
        port = server.start()
        assert server.transport == "sshd" and server._proc is not None
        _came_up_elsewhere(clash, port, server._proc.pid)
    finally:
        server.stop()


def test_the_s3_server_comes_up_past_a_taken_port(clash: Clash, tmp_path: Path) -> None:
    from tests.s3_server import REMOTE, rclone_binary, start_s3_server, stop_s3_server

    server = start_s3_server(tmp_path / "s3")
    try:
        port = int(server.endpoint.rsplit(":", 1)[1])
        _came_up_elsewhere(clash, port, server.process.pid)
        # It serves S3 there: a real client lists the bucket.
        listed = subprocess.run(
            [str(rclone_binary()), "lsd", f"{REMOTE}:", "--config", "/dev/null"],
            env={**os.environ, **server.env()},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert listed.returncode == 0 and "ckpts" in listed.stdout, listed.stderr
    finally:
        stop_s3_server(server)


def test_a_stand_in_box_comes_up_past_a_taken_port(clash: Clash, tmp_path: Path) -> None:
    from tests.ssh_box import StandInBox

    box = StandInBox(tmp_path / "box").start()
    try:
        assert box.port is not None and box._proc is not None
        _came_up_elsewhere(clash, box.port, box._proc.pid)
    finally:
        box.close()


@pytest.mark.timeout(120)
def test_a_slurm_cluster_comes_up_past_a_taken_port(clash: Clash, tmp_path: Path) -> None:
    from tests.slurm_cluster import SlurmCluster

    cluster = SlurmCluster(tmp_path / "slurm")
    cluster.start()  # skips where slurm-wlm/munge cannot run
    try:
        ports = [
            int(line.split("=", 1)[1])
            for line in cluster.conf.read_text().splitlines()
            if line.startswith(("SlurmctldPort=", "SlurmdPort="))
        ]
        assert clash.offered[0] == clash.port and clash.port not in ports
    finally:
        cluster.close()


def test_rgt_mcp_http_comes_up_past_a_taken_port(clash: Clash) -> None:
    from tests.test_mcp_http import _start_on_a_free_port, _stop

    port, server = _start_on_a_free_port()
    try:
        _came_up_elsewhere(clash, port, server.pid)
    finally:
        _stop(server)
