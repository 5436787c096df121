"""The test side of tests/cli_forkserver.py: start commands and read their exit codes."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

RUN_TIMEOUT = 60.0


class ForkedRun:
    """One command run by the fork server, with the part of Popen's interface used here."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            line = self.server.read_line(timeout=0)
            if line is not None:
                self.returncode = int(line.removeprefix("exit "))
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            line = self.server.read_line(timeout=RUN_TIMEOUT)
            assert line is not None, f"run {self.pid} did not end"
            self.returncode = int(line.removeprefix("exit "))
        return self.returncode

    def send_signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """A client of tests/cli_forkserver.py, which forks a child per ``tqvt`` command."""

    def __init__(self, log_path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("cli_forkserver.py"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=open(log_path, "a", encoding="utf-8"),
        )
        self._buffer = b""

    def start(self, args: tuple[str, ...], env: dict[str, str], log_path: Path) -> ForkedRun:
        request = {"argv": list(args), "env": env, "log": str(log_path)}
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()
        line = self.read_line(timeout=RUN_TIMEOUT)
        assert line is not None and line.startswith("pid "), line
        return ForkedRun(self, int(line.removeprefix("pid ")))

    def read_line(self, timeout: float) -> str | None:
        """Return the next line of the server's output, or None when none came in time."""
        assert self.process.stdout is not None
        descriptor = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            if not select.select([descriptor], [], [], timeout)[0]:
                return None
            chunk = os.read(descriptor, 4096)
            assert chunk, "the fork server ended"
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=10)
