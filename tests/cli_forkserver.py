"""Run ``tqvt`` commands as forked children of one process that imported tqvt once.

Starting ``python -m tqvt_sync`` spends about half a second on imports (an estimate
from ``python -X importtime`` on a 2-core test machine), which the crash test would
pay several hundred times, and the PostgreSQL kill test twenty times. This server
imports the CLI and the stage modules once and forks a child per command. The
child sets the requested environment, sends stderr to a log file and calls the
same ``main`` as ``python -m tqvt_sync``. It opens its own database connections
and HTTP sessions, because nothing of the kind exists before the fork.

Protocol, one JSON object per line on stdin: ``{"argv": [...], "env": {...},
"log": path}``. For each, stdout gets ``pid N`` when the child starts and
``exit C`` when it ends, where C is the exit code, or minus the signal number
that ended it.
"""

from __future__ import annotations

import json
import os
import random
import sys
import traceback

import psycopg  # noqa: F401 (the PostgreSQL driver, for commands run on PostgreSQL)

import tqvt_sync.cli.main as cli_main

# Loaded here so that every child starts with them imported.
import tqvt_sync.cli.rescore  # noqa: F401
import tqvt_sync.cli.runtime  # noqa: F401
import tqvt_sync.cli.sync  # noqa: F401
import tqvt_sync.db.migrate  # noqa: F401
import tqvt_sync.stages.lookup  # noqa: F401
import tqvt_sync.stages.pull  # noqa: F401
import tqvt_sync.stages.push  # noqa: F401
import tqvt_sync.stages.rescore  # noqa: F401
import tqvt_sync.threatq.client  # noqa: F401
import tqvt_sync.virustotal.client  # noqa: F401


def run_child(request: dict) -> None:
    """Run one command in this (forked) process and leave with its exit code."""
    code = 70
    try:
        os.environ.clear()
        os.environ.update(request["env"])
        random.seed()
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(log, 2)
        sys.argv = ["tqvt", *request["argv"]]
        try:
            cli_main.main(request["argv"])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_child(request)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    serve()
