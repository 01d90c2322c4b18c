"""A TCP forwarder, stdlib only: in-process for the tests (Forwarder), or on a test host as a program
(`python3 forward.py LISTEN_ADDRESS LISTEN_PORT TARGET_ADDRESS TARGET_PORT`, what `run_on` starts)."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path
from typing import Any


class Forwarder:
    """A TCP port that forwards every new connection to (target_address, target) (switchable: set `target`): one
    address behind which a server can be swapped, as a reinstalled machine or a hijacked IP would, or a server made
    reachable where it is not listening."""

    def __init__(
        self, target: int, target_address: str = "127.0.0.1", address: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.target = target
        self.target_address = target_address
        self.sock = socket.create_server((address, port))
        self.port: int = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((self.target_address, self.target), timeout=10)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def run_on(host: Any, unit: str, listen: tuple[str, int], target: tuple[str, int]) -> None:
    """Start this forwarder on a test host (`host.exec`) as the transient systemd unit `unit`."""
    path = f"/usr/local/lib/{unit}.py"
    host.exec(f"cat > {path}", input=Path(__file__).read_bytes())
    host.exec(
        f"systemctl stop {unit} 2>/dev/null; systemctl reset-failed {unit} 2>/dev/null; "
        f"systemd-run --unit {unit} /usr/bin/python3 {path} {listen[0]} {listen[1]} {target[0]} {target[1]}"
    )


if __name__ == "__main__":
    address, port, target_address, target = sys.argv[1:5]
    Forwarder(int(target), target_address, address, int(port))
    threading.Event().wait()
