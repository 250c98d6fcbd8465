"""Math-verification worker process: ``python -m archer.rewards._math_worker MEMORY_MB``.

Protocol (one JSON document per line): after start-up it writes ``"ready"``; then for each request
``[answer | null, gold, limit_s]`` on stdin it writes one result (``1.0``, ``0.0`` or ``null``) on stdout.
math-verify arms ``signal.alarm`` for its own time limits, which works here because every check runs on this
process's main thread; the parent still kills the process if a check overruns (a C-level loop ignores alarms).
"""

from __future__ import annotations

import json
import os
import resource
import sys


def main() -> None:
    memory_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if memory_mb > 0:
        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # math-verify prints parse errors: keep them off the protocol channel.
    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from archer.rewards.math import check_pair

    check_pair("1/2", "0.5", 5)  # warm math-verify's lazy imports and regex caches before taking work
    channel.write(b'"ready"\n')
    for line in sys.stdin.buffer:
        answer, gold, limit_s = json.loads(line)
        try:
            result = check_pair(answer, gold, limit_s)
        except Exception:  # noqa: BLE001 - a crash in sympy is a wrong answer, not a dead worker
            result = 0.0
        channel.write(json.dumps(result).encode() + b"\n")


if __name__ == "__main__":
    main()
