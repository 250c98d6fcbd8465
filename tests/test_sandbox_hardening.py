"""Sandbox hardening: one memory budget per run, no leaked processes, any text runs or fails cleanly, a syscall filter.

The memory tests run twice where the machine has a writable cgroup: once under the cgroup (the kernel enforces
the budget) and once under the measured fallback (the parent sums the run's memory and kills it over budget).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from archer.sandbox import limits as sandbox_limits
from archer.sandbox import runner as sandbox
from archer.sandbox import seccomp as sandbox_seccomp
from archer.sandbox.runner import run_python, sandbox_available

needs_bwrap = pytest.mark.skipif(not sandbox_available(), reason="bubblewrap cannot run here")
pytestmark = [pytest.mark.sandbox, needs_bwrap]

# Four processes (the program and three children) each try to hold 800 MB at once: 3.2 GB against a 1 GB budget.
FOUR_HOLDERS = """
import os, select, time
r, w = os.pipe()
for _ in range(3):
    if os.fork() == 0:
        block = b"x" * (800 << 20)
        os.write(w, b"1")
        time.sleep(3)
        os._exit(0)
block = b"x" * (800 << 20)
held, deadline = 1, time.monotonic() + 4
while held < 4 and select.select([r], [], [], max(deadline - time.monotonic(), 0))[0]:
    held += len(os.read(r, 4))
print("held", held, flush=True)
"""

# Memory in memfds is not address space (RLIMIT_AS misses it): 48 x 15 MB written, plus 400 MB of heap.
MEMFD_AND_HEAP = """
import os
fds = []
for i in range(48):
    fd = os.memfd_create(f"m{i}")
    os.write(fd, b"x" * (15 << 20))
    fds.append(fd)
heap = b"y" * (400 << 20)
print("held", 48 * 15 + 400, flush=True)
"""


@pytest.fixture(params=["cgroup", "measured"])
def memory_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "cgroup":
        if sandbox_limits.run_limits().memory == "measured":
            pytest.skip("no writable cgroup on this machine: only the measured fallback applies")
    else:
        monkeypatch.setattr(sandbox_limits, "_LIMITS", sandbox_limits.measured_only())
    return request.param


@pytest.mark.slow
def test_memory_budget_covers_all_processes_of_a_run(memory_mode: str) -> None:
    result = run_python(FOUR_HOLDERS, timeout_s=20.0, memory_mb=1024)
    assert "held 4" not in result.stdout, result
    assert result.memory_limit_exceeded and not result.ok, result
    if memory_mode == "cgroup":  # the kernel's own account of the run's peak
        assert result.peak_memory_mb is not None and result.peak_memory_mb <= 1024


@pytest.mark.slow
def test_memory_in_memfds_counts(memory_mode: str) -> None:
    result = run_python(MEMFD_AND_HEAP, timeout_s=20.0, memory_mb=1024)
    assert "held" not in result.stdout, result
    assert result.memory_limit_exceeded and not result.ok, result


def test_a_run_within_budget_reports_its_peak() -> None:
    code = "import time\nblock = b'x' * (100 << 20)\ntime.sleep(0.1)  # long enough to be measured\nprint(len(block) >> 20)"
    result = run_python(code, memory_mb=512)
    assert result.ok and result.stdout == "100\n", result
    assert not result.memory_limit_exceeded
    assert result.peak_memory_mb is not None and 100 <= result.peak_memory_mb <= 512


def test_process_limit_is_per_run() -> None:
    """Eight runs at once, each holding 7 processes under a limit of 10: every run gets its own count."""
    code = (
        "import os, time\n"
        "for _ in range(6):\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(1.5)\n"
        "        os._exit(0)\n"
        "try:\n"
        "    for _ in range(10):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(1.5)\n"
        "            os._exit(0)\n"
        "    print('unlimited')\n"
        "except OSError as err:\n"
        "    print('limited', err.errno)\n"
    )
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: run_python(code, max_processes=10, timeout_s=10.0), range(8)))
    assert [r.stdout for r in results] == [f"limited {errno.EAGAIN}\n"] * 8, results


def test_limits_in_force_are_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    line = sandbox_limits.run_limits().describe()
    assert "\n" not in line and "memory" in line and "processes" in line
    monkeypatch.setattr(sandbox_limits, "_LIMITS", None)
    monkeypatch.setenv("ARCHER_SANDBOX_CGROUP", "0")
    assert sandbox_limits.run_limits() == sandbox_limits.measured_only()
    (record,) = [r for r in caplog.records if r.name == "archer.sandbox.limits"]
    assert record.levelname == "WARNING" and "memory measured every 20 ms" in record.message
    assert "RLIMIT_NPROC" in record.message and "\n" not in record.message


# ----------------------------------------------------------------------------------------------------------------
# No leaked processes, even under a subreaper.

_SUBREAPER_SCRIPT = """
import ctypes, json, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER: orphans of our children become ours
from archer.sandbox import runner as sandbox
runs = int(sys.argv[1])
for i in range(runs):
    assert sandbox.run_python(f"print({i})").stdout == f"{i}\\n"
assert sandbox.run_python("while True: pass", timeout_s=0.5).timed_out
assert sandbox.run_python("import os\\nwhile True: os.write(1, b'x' * 65536)", max_output_bytes=1 << 16).output_limit_exceeded
assert not sandbox.run_python("import os\\nif os.fork() == 0:\\n    os.setsid()\\n    import time; time.sleep(30)").timed_out
assert not sandbox.run_python("print('\\ud800')").ok  # text that cannot be encoded
real = sandbox._communicate
def broken(*args, **kwargs):
    raise RuntimeError("planted failure")
sandbox._communicate = broken
try:
    sandbox.run_python("import time; time.sleep(30)")
except RuntimeError:
    pass
sandbox._communicate = real
time.sleep(0.3)
me, children = os.getpid(), []
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == me:
            children.append([int(entry), stat[stat.index("(") + 1 : stat.rindex(")")], fields[0]])
print(json.dumps(children))
"""


@pytest.mark.slow
def test_no_zombies_or_leftovers_under_a_subreaper() -> None:
    src = str(Path(sandbox.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src}
    done = subprocess.run(
        [sys.executable, "-c", _SUBREAPER_SCRIPT, "6"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [], "children left behind (pid, name, state)"


# ----------------------------------------------------------------------------------------------------------------
# Any text: a result, never an exception, nothing left running.


def _children() -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == os.getpid():
                found.append(stat[stat.index("(") + 1 : stat.rindex(")")])
    return found


@pytest.mark.parametrize(
    "code",
    [
        "print('\ud800')",  # a lone surrogate in the program
        "x = '\udcff'\nprint(x)",  # a surrogate escape: a byte that is not UTF-8
        "print('nul\x00byte')",
    ],
)
def test_text_that_cannot_run_is_a_failed_run(code: str) -> None:
    result = run_python(code)
    assert result.returncode not in (0, None) and not result.timed_out, result
    assert "bwrap" not in _children()


def test_input_that_is_not_utf8_still_runs() -> None:
    result = run_python("import sys\nprint(len(sys.stdin.buffer.read()))", "\ud83d")  # a lone surrogate
    assert result.ok and result.stdout == "3\n", result  # passed on as its three (invalid) UTF-8 bytes
    assert "bwrap" not in _children()


# ----------------------------------------------------------------------------------------------------------------
# The syscall filter.

_DENIED = sandbox_seccomp.DENIED_SYSCALLS
# Calls that succeed for an unprivileged process without the filter (the control that shows the filter acts).
_ALLOWED_WITHOUT_FILTER = {
    "io_uring_setup": "(1, ctypes.create_string_buffer(120))",
    "ptrace": "(0, 0, 0, 0)",  # PTRACE_TRACEME
    "keyctl": "(0, -2, 1)",  # KEYCTL_GET_KEYRING_ID of the process keyring, creating it
}
_PROBE = textwrap.dedent(
    """
    import ctypes, json
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    out = {{}}
    for name, (nr, args) in {calls}.items():
        ctypes.set_errno(0)
        rc = libc.syscall(nr, *eval(args))
        out[name] = 0 if rc >= 0 else ctypes.get_errno()
    print(json.dumps(out))
    """
)


def _probe(calls: dict[str, str]) -> dict[str, int]:
    numbered = {name: (sandbox_seccomp.syscall_number(name), args) for name, args in calls.items()}
    result = run_python(_PROBE.format(calls=repr(numbered)))
    assert result.ok, result.stderr
    return json.loads(result.stdout)


def test_denied_syscalls_fail_inside() -> None:
    calls = {name: "(0, 0, 0, 0, 0, 0)" for name in _DENIED if sandbox_seccomp.syscall_number(name) >= 0}
    calls.update(_ALLOWED_WITHOUT_FILTER)
    assert {"io_uring_setup", "ptrace", "bpf", "perf_event_open", "userfaultfd", "unshare", "setns"} <= set(calls)
    assert _probe(calls) == dict.fromkeys(calls, errno.EPERM)


def test_the_filter_is_what_denies_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_SECCOMP", False)
    got = _probe(_ALLOWED_WITHOUT_FILTER)
    if got["io_uring_setup"] != 0:  # a kernel built or configured without io_uring
        got.pop("io_uring_setup")
    assert set(got.values()) == {0}, got


def test_a_normal_solution_still_runs_under_the_filter() -> None:
    code = (
        "import threading, subprocess, sys, json, math, collections, heapq, bisect, random, re, fractions\n"
        "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
        "print(sum(range(10)), math.comb(10, 3), json.dumps(sorted({3, 1, 2})))\n"
    )
    assert run_python(code).stdout == "45 120 [1, 2, 3]\n"
    if run_python("import numpy").ok:  # the sandbox's Python has numpy (Debian: python3-numpy)
        result = run_python("import numpy as np\nprint(int(np.arange(10).sum()), np.linalg.det(np.eye(3)))")
        assert result.stdout == "45 1.0\n", result
