"""Port mappings of an emulated box: `-p HOST:CONTAINER` requests, served on 127.0.0.1.

vast.ai maps each port a create asks for (`-p 8080:8080` arrives as the env key
`"-p 8080:8080"`, research notes §2.2) to a public port from the machine's direct-port range,
reports it in the instance's `ports` (`{"8080/tcp": [{"HostIp", "HostPort"}]}`) and
`direct_port_start`/`direct_port_end`, and tells the container in `VAST_TCP_PORT_8080`. The
public port is the host's choice, not the HOST part of the request.

An emulated box shares this machine's network, so a service in it listens on 127.0.0.1 at its
container port itself; a `Forwarder` listens on the public port and relays each connection to
it, so clients use the reported port as on vast.ai. UDP requests are listed, not relayed.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading

_REQUEST = re.compile(r"^-p\s+(?:(?:[\d.]+:)?(\d+):)?(\d+)(?:/(tcp|udp))?$")
_RANGE_TRIES = 50


class PortError(ValueError):
    """A port request the API refuses."""


def requested_ports(env: dict[str, str]) -> list[tuple[int, str]]:
    """(container port, protocol) for each `-p [HOST:]CONTAINER[/proto]` key of the create's
    env, in order, without repeats. Raises PortError for a `-p` key it cannot read."""
    found: list[tuple[int, str]] = []
    for key in env:
        if not key.startswith("-p"):
            continue
        match = _REQUEST.match(key.strip())
        if match is None:
            raise PortError(f"env key {key!r}: expected -p HOST:CONTAINER[/tcp|/udp]")
        port = int(match.group(2))
        if not 0 < port < 65536:
            raise PortError(f"env key {key!r}: port {port} is outside 1-65535")
        item = (port, match.group(3) or "tcp")
        if item not in found:
            found.append(item)
    return found


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def bind_range(count: int) -> list[socket.socket]:
    """`count` listening sockets on consecutive free loopback ports (a direct-port range)."""
    for _ in range(_RANGE_TRIES):
        with contextlib.closing(_bind(0)) as probe:
            start = probe.getsockname()[1]
        if start + count > 65535:
            continue
        bound: list[socket.socket] = []
        try:
            for offset in range(count):
                bound.append(_bind(start + offset))
        except OSError:
            for sock in bound:
                sock.close()
            continue
        return bound
    raise OSError(f"no {count} consecutive free ports on 127.0.0.1")


class Forwarder:
    """Relays connections on a bound public port to 127.0.0.1:`target` until closed."""

    def __init__(self, listener: socket.socket, target: int) -> None:
        self.listener = listener
        self.port = int(listener.getsockname()[1])
        self.target = target
        self._closed = threading.Event()
        listener.listen(16)
        self._thread = threading.Thread(
            target=self._accept, name=f"rgt-sim-port-{self.port}", daemon=True
        )
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
        except OSError:
            client.close()  # nothing listens in the box: the client sees the connection close
            return
        upstream.settimeout(None)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        other = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        other.start()
        pump(client, upstream)
        other.join()
        client.close()
        upstream.close()

    def close(self) -> None:
        """Stop listening (open relays end with their connections)."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
