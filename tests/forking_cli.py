"""Start tqvt commands by forking a process that has imported tqvt already.

A test that kills workers many times would otherwise spend most of its time in
Python start-up and imports. Run this file as a script with the environment tqvt
should see. It reads one command per line on stdin (arguments split like a shell
does), forks a child that runs ``tqvt`` with them, and prints the child's pid. The
children's output goes to /dev/null, and they are reaped automatically because
SIGCHLD is ignored. This process starts no thread and opens no connection, so a
forked child starts clean.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys

import alembic.command  # noqa: F401 (loaded once here instead of in every child)
import psycopg  # noqa: F401
import requests  # noqa: F401

import tqvt_sync.stages.lookup  # noqa: F401
import tqvt_sync.stages.push  # noqa: F401
from tqvt_sync.cli.main import main as tqvt_main


def run_child(argv: list[str]) -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    code = 1
    try:
        tqvt_main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os._exit(code)


def serve() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            run_child(shlex.split(line))
        print(pid, flush=True)


if __name__ == "__main__":
    serve()
