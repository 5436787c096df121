"""Run a command and print its exit code and peak resident set size as one JSON line.

    python -m benchmarks.peak_rss COMMAND [ARGUMENT ...]

On Linux a child's ``ru_maxrss`` includes the memory it shared with the process
that forked it until ``exec``. A command started straight from the benchmark
runner (which contains simulators and results) therefore reported the runner's
size, the same for every stage. This small process forks the command instead.
The command's standard output is discarded and its standard error is passed
through.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    print(json.dumps({"returncode": process.returncode, "maxrss_kib": usage.ru_maxrss}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
