"""Run untrusted Python (generated solutions) under bubblewrap.

Each run gets private user, PID, network, IPC, UTS and cgroup namespaces; a read-only root file system holding
only ``/usr`` and the Python runtime; fresh size-limited tmpfs at ``/tmp`` and ``/dev/shm``; a minimal read-only
``/dev`` and its own ``/proc``; an environment with nothing but ``PATH``, ``LANG`` and ``PWD``; no capabilities;
a non-root uid; a seccomp filter denying the kernel interfaces a solution never needs (``sandbox_seccomp``); one
memory budget and one process count for all of its processes together, by a cgroup of its own where the machine
allows it (``sandbox_limits``); and rlimits on address space, CPU time, file size and open files per process.
The parent enforces the wall-clock limit, the output cap and the memory budget, and on any of them kills the
whole sandbox: bwrap is PID 1 of the sandbox's PID namespace, so when it dies the kernel kills every process
inside, including children that called ``setsid``. Every process the parent starts is reaped on every path.

bwrap is started as ``nobody`` (65534) when we run as root, so the sandboxed processes are non-root on the host
too. It waits (``--block-fd``) until its first process is in the run's cgroup, then loads the filter and runs
the program.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import select
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archer.errors import UserError
from archer.sandbox import limits as sandbox_limits
from archer.sandbox import seccomp as sandbox_seccomp

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 6.0
DEFAULT_MEMORY_MB = 1024
DEFAULT_MAX_PROCESSES = 32  # threads count too
DEFAULT_FILE_SIZE_MB = 16
DEFAULT_MAX_OUTPUT_BYTES = 16 << 20  # per stream
DEFAULT_TMPFS_MB = 64
NOBODY = 65534
_CODE_PATH = "/tmp/main.py"
_KILL_DRAIN_S = 2.0  # after a kill, how long to wait for every sandboxed process to let go of the pipes
REPORT_FD = 3  # inside the sandbox, the descriptor of the report pipe (``run_python(report=True)``)
_SECCOMP = True  # load the syscall filter (switched off only by tests and the bench, to measure it)


class SandboxUnavailable(UserError):
    """bubblewrap is missing or cannot create namespaces on this machine."""


@dataclass(frozen=True)
class ExecResult:
    """What one sandboxed run produced. ``returncode`` is None when the parent killed the run."""

    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool = False
    output_limit_exceeded: bool = False
    memory_limit_exceeded: bool = False  # the run's processes together broke its memory budget
    peak_memory_mb: float | None = None  # the most the run held at once (None where it cannot be read)
    report: str | None = None  # what the run wrote on REPORT_FD, when asked for
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        limits = self.timed_out or self.output_limit_exceeded or self.memory_limit_exceeded
        return self.returncode == 0 and not limits


# --------------------------------------------------------------------------------------------------------------
# Where things are: bwrap, the interpreter, and the host directories the sandbox mounts.


def _drop_to_nobody() -> bool:
    return os.geteuid() == 0


def _reachable(path: Path, drop: bool) -> bool:
    """Whether the sandbox user can reach and read ``path`` (every directory above it must be searchable)."""
    if not drop:
        return os.access(path, os.R_OK | os.X_OK)
    try:
        current = Path("/")
        for part in path.parts[1:]:
            if not os.stat(current).st_mode & stat.S_IXOTH:
                return False
            current = current / part
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False


@dataclass(frozen=True)
class _Runtime:
    bwrap: str
    python: str
    binds: tuple[str, ...]  # host directories mounted read-only at the same path
    options: frozenset[str] = frozenset()  # optional bwrap options this version knows
    seccomp: bytes = b""  # the compiled syscall filter (archer.sandbox.seccomp)

    def has(self, option: str) -> bool:
        return option in self.options


_OPTIONAL = ("--disable-userns", "--size")  # bubblewrap 0.8 and 0.7; Ubuntu 22.04 ships 0.6


def _bwrap_options(bwrap: str) -> frozenset[str]:
    try:
        usage = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise _install_hint(f"`{bwrap} --help` failed: {err}") from None
    options = frozenset(o for o in _OPTIONAL if o in usage.stdout + usage.stderr)
    for missing in sorted(set(_OPTIONAL) - options):
        logger.warning("sandbox: this bubblewrap lacks %s (upgrade to >= 0.8 for the full set of limits)", missing)
    return options


_RUNTIME: _Runtime | SandboxUnavailable | None = None
_RUNTIME_LOCK = threading.Lock()


def _install_hint(reason: str) -> SandboxUnavailable:
    return SandboxUnavailable(
        f"running generated code needs the bubblewrap sandbox ({reason}): install it with "
        "`apt-get install bubblewrap` (Debian/Ubuntu); generated code is never run unsandboxed"
    )


def _find_runtime() -> _Runtime:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise _install_hint("`bwrap` is not on PATH")
    drop = _drop_to_nobody()
    candidates = [Path(os.path.realpath(sys.executable)), Path(sys.base_prefix) / "bin" / "python3"]
    candidates.append(Path("/usr/bin/python3"))
    for python in candidates:
        if not python.exists() or not _reachable(python, drop):
            continue
        prefix = python.parent.parent
        binds = () if str(python).startswith("/usr/") else (str(prefix),)
        if python != candidates[0]:
            logger.info("sandbox: running %s (the sandbox user cannot read %s)", python, candidates[0])
        try:
            seccomp = sandbox_seccomp.filter_program()
        except sandbox_seccomp.SeccompUnavailable as err:
            raise SandboxUnavailable(f"the sandbox's syscall filter cannot be built: {err}") from None
        return _Runtime(bwrap, str(python), binds, _bwrap_options(bwrap), seccomp)
    raise SandboxUnavailable(
        f"no Python interpreter readable by the sandbox user: tried {', '.join(map(str, candidates))}"
    )


def _runtime() -> _Runtime:
    """The sandbox set-up, found and probed once per process; raises SandboxUnavailable if it cannot work."""
    global _RUNTIME
    with _RUNTIME_LOCK:
        if _RUNTIME is None:
            try:
                runtime = _find_runtime()
                try:
                    probe = _run(runtime, "print('ok')", b"", 30.0, 256, 8, 1, 1 << 10, 4)
                except OSError as err:  # e.g. not allowed to switch to the sandbox uid
                    raise _install_hint(f"starting bwrap failed: {err}") from None
                if probe.stdout.strip() != "ok":
                    last_line = (probe.stderr.strip().splitlines() or [repr(probe)])[-1]
                    raise _install_hint(f"a test run failed: {last_line}")
                _RUNTIME = runtime
            except SandboxUnavailable as err:
                _RUNTIME = err
        if isinstance(_RUNTIME, SandboxUnavailable):
            raise _RUNTIME
        return _RUNTIME


def ensure_sandbox() -> None:
    """Raise SandboxUnavailable (saying how to install bubblewrap) unless sandboxed runs work here."""
    _runtime()


def sandbox_available() -> bool:
    """Whether bubblewrap is installed and can create a sandbox here (checked once, by a real run)."""
    try:
        _runtime()
    except SandboxUnavailable:
        return False
    return True


# --------------------------------------------------------------------------------------------------------------
# One run.

# Runs inside the sandbox as ``python -I -c``: set the limits, put the report channel (if any) on REPORT_FD, then
# run the program as __main__. It is compiled from bytes, as Python compiles a file: text that is not UTF-8 (a
# lone surrogate in a completion, say) is the program's SyntaxError, not the grader's exception.
_LAUNCHER = """\
import os, resource, sys
for _k, _v in {limits}:
    resource.setrlimit(_k, (_v, _v))
if {report_fd} not in (-1, {fixed_fd}):
    os.dup2({report_fd}, {fixed_fd})
    os.close({report_fd})
sys.argv = [{path!r}]
with open({path!r}, "rb") as _f:
    _src = _f.read()
del _f, _k, _v
exec(compile(_src, {path!r}, "exec"), {{"__name__": "__main__", "__file__": {path!r}, "__builtins__": __builtins__}})
"""


@dataclass(frozen=True)
class _Fds:
    """The descriptors bwrap gets: the program (``--file``), the seccomp program, the info and block pipes."""

    code: int
    info: int  # bwrap writes the sandbox's first process's host pid here
    block: int  # bwrap waits for a byte here before running anything: time to put that process in its cgroup
    seccomp: int | None
    report: int | None


def _bwrap_argv(runtime: _Runtime, fds: _Fds, limits: list[tuple[int, int]], tmpfs_bytes: int) -> list[str]:
    argv = [runtime.bwrap, "--unshare-all", "--unshare-user", "--uid", str(NOBODY)]
    if runtime.has("--disable-userns"):  # no nested user namespaces (the kernel surface they open)
        argv.append("--disable-userns")
    argv += ["--gid", str(NOBODY), "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv"]
    argv += ["--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):  # merged-/usr links, or real folders on old systems
        if os.path.islink(name):
            argv += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            argv += ["--ro-bind", name, name]
    for path in runtime.binds:
        argv += ["--ro-bind", path, path]
    size = ["--size", str(tmpfs_bytes)] if runtime.has("--size") else []
    argv += ["--proc", "/proc", "--dev", "/dev", *size, "--tmpfs", "/dev/shm"]
    argv += [*size, "--tmpfs", "/tmp", "--file", str(fds.code), _CODE_PATH]
    # Only the two sized tmpfs stay writable: an unsized one would let the code fill the host's memory.
    argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp"]
    argv += ["--info-fd", str(fds.info), "--block-fd", str(fds.block)]
    if fds.seccomp is not None:
        argv += ["--seccomp", str(fds.seccomp)]
    report_fd = -1 if fds.report is None else fds.report
    launcher = _LAUNCHER.format(limits=repr(limits), path=_CODE_PATH, report_fd=report_fd, fixed_fd=REPORT_FD)
    return [*argv, "--", runtime.python, "-I", "-c", launcher]


def _feed(write_fd: int, data: bytes) -> None:
    """Write ``data`` to a pipe bwrap reads, then close it (from a thread when it exceeds the pipe buffer)."""

    def write_all() -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view) :]
        except OSError:
            pass  # bwrap failed before reading: its stderr says why
        finally:
            os.close(write_fd)

    if len(data) <= 32 << 10:
        write_all()
    else:
        threading.Thread(target=write_all, name="sandbox-feed", daemon=True).start()


def _readable(fd: int, timeout_s: float) -> bool:
    """Whether ``fd`` becomes readable within ``timeout_s`` (poll, not select: descriptors may exceed 1023)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(timeout_s, 0.0) * 1e3))


def _child_pid(info_fd: int, deadline: float) -> int | None:
    """The host pid of the sandbox's first process, from bwrap's ``--info-fd`` JSON; None if bwrap failed first."""
    data = b""
    while not data.rstrip().endswith(b"}"):
        remaining = deadline - time.perf_counter()
        if remaining <= 0 or not _readable(info_fd, remaining):
            return None
        chunk = os.read(info_fd, 4096)
        if not chunk:
            return None
        data += chunk
    return int(json.loads(data)["child-pid"])


class _Pipes:
    """Every descriptor one run opens, so that each is closed exactly once whatever happens."""

    def __init__(self) -> None:
        self._open: set[int] = set()

    def pipe(self) -> tuple[int, int]:
        read, write = os.pipe()
        self._open |= {read, write}
        return read, write

    def filled(self, data: bytes) -> int:
        """A pipe's read end holding ``data`` (small enough for the pipe buffer) and then EOF."""
        read, write = self.pipe()
        os.write(write, data)
        self.close(write)
        return read

    def take(self, fd: int) -> int:
        """Hand ``fd`` over to someone who closes it."""
        self._open.discard(fd)
        return fd

    def close(self, *fds: int | None) -> None:
        for fd in fds:
            if fd is not None and fd in self._open:
                self._open.discard(fd)
                os.close(fd)

    def close_all(self) -> None:
        self.close(*list(self._open))


def _run(
    runtime: _Runtime,
    code: str,
    stdin: bytes,
    timeout_s: float,
    memory_mb: int,
    max_processes: int,
    file_size_mb: int,
    max_output_bytes: int,
    tmpfs_mb: int,
    report: bool = False,
) -> ExecResult:
    limits = sandbox_limits.run_limits()
    rlimits = [
        (int(resource_id), int(value))
        for resource_id, value in (
            (resource.RLIMIT_AS, memory_mb << 20),
            (resource.RLIMIT_CPU, int(timeout_s) + 1),
            (resource.RLIMIT_FSIZE, file_size_mb << 20),
            (resource.RLIMIT_NOFILE, 64),
            (resource.RLIMIT_CORE, 0),
        )
    ]
    if not limits.cgroup_pids:  # the fallback: per uid of the run's user namespace
        rlimits.append((int(resource.RLIMIT_NPROC), max_processes))
    extra: dict[str, Any] = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if _drop_to_nobody() else {}
    start = time.perf_counter()
    deadline = start + timeout_s
    pipes, budget = _Pipes(), limits.open(memory_mb << 20, max_processes)
    proc: subprocess.Popen[bytes] | None = None
    child: _Child | None = None
    peak, over = None, False
    try:
        (code_read, code_write), (info_read, info_write) = pipes.pipe(), pipes.pipe()
        block_read, block_write = pipes.pipe()
        report_read, report_write = pipes.pipe() if report else (None, None)
        seccomp = pipes.filled(runtime.seccomp) if _SECCOMP else None
        fds = _Fds(code_read, info_write, block_read, seccomp, report_write)
        passed = [fd for fd in (code_read, info_write, block_read, seccomp, report_write) if fd is not None]
        proc = subprocess.Popen(
            _bwrap_argv(runtime, fds, rlimits, tmpfs_mb << 20),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=passed,
            start_new_session=True,
            env={},
            **extra,
        )
        pipes.close(*passed)
        pid = _child_pid(info_read, deadline)
        if pid is None:  # bwrap failed (its stderr says why) or is too slow: nothing may run outside the budget
            _stop(proc, budget)
        else:
            child = _Child(pid)
            budget.attach(pid)  # before a single instruction of the program runs
            with contextlib.suppress(BrokenPipeError):
                os.write(block_write, b"go")
        pipes.close(block_write, info_read)
        _feed(pipes.take(code_write), code.encode("utf-8", errors="surrogatepass"))
        out = _communicate(proc, stdin, deadline, max_output_bytes, report_read, budget)
    finally:
        if proc is not None:
            _stop(proc, budget)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        if child is not None:
            child.reap()
        pipes.close_all()
        if proc is not None:  # every process of the run is gone: read its final account
            peak, over = budget.peak_bytes(), budget.over_budget()
        budget.close()
    memory_exceeded = out.over_budget or over
    killed = out.timed_out or out.limited or memory_exceeded
    return ExecResult(
        stdout=out.streams[0].decode("utf-8", errors="replace"),
        stderr=out.streams[1].decode("utf-8", errors="replace"),
        returncode=None if killed else proc.returncode,
        timed_out=out.timed_out,
        output_limit_exceeded=out.limited,
        memory_limit_exceeded=memory_exceeded,
        peak_memory_mb=None if peak is None else peak / (1 << 20),
        report=None if report_read is None else out.streams[2].decode("utf-8", errors="replace"),
        wall_s=time.perf_counter() - start,
    )


class _Child:
    """The sandbox's first process (bwrap's PID 1 of the namespace), held by a pidfd so its pid cannot be reused.

    bwrap's outer process exits as soon as this one reports the program's exit status, without waiting for it, so
    it is orphaned at the very end of every run. Orphans go to the nearest subreaper: usually init, which reaps
    them, but in a container (the grader as PID 1) or under a subreaper that is us, and unreaped it would stay a
    zombie. So after every run we wait for it to end (it is killed when bwrap's outer process dies, and dies only
    once every process of the namespace is gone) and reap it if it is ours.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self.fd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):  # Linux < 5.3: fall back to the pid
            self.fd = None

    def reap(self, wait_s: float = 5.0) -> None:
        try:
            if self.fd is None:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, os.WNOHANG)
                return
            if not _readable(self.fd, wait_s):  # a pidfd is readable once its process has ended
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self.fd, signal.SIGKILL)
                _readable(self.fd, wait_s)
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PIDFD, self.fd, os.WEXITED | os.WNOHANG)
        finally:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


def _stop(proc: subprocess.Popen[bytes], budget: sandbox_limits.RunBudget) -> None:
    """Kill bwrap (and so, through the PID namespace, everything it started) unless it has ended; reap it."""
    if proc.poll() is None:
        budget.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass
class _Outcome:
    streams: list[bytes]  # stdout, stderr, report (empty when there is none)
    timed_out: bool = False
    limited: bool = False
    over_budget: bool = False


def _communicate(
    proc: subprocess.Popen[bytes],
    stdin: bytes,
    deadline: float,
    cap: int,
    report_fd: int | None,
    budget: sandbox_limits.RunBudget,
) -> _Outcome:
    """Feed stdin and collect output until exit, the deadline, ``cap`` bytes on one stream, or the memory budget."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    order = [proc.stdout.fileno(), proc.stderr.fileno()] + ([report_fd] if report_fd is not None else [])
    buffers = {fd: bytearray() for fd in order}
    selector = selectors.DefaultSelector()
    for fd in buffers:
        selector.register(fd, selectors.EVENT_READ)
    pending = memoryview(stdin)
    stdin_fd = proc.stdin.fileno()
    if pending:
        os.set_blocking(stdin_fd, False)
        selector.register(stdin_fd, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    outcome = _Outcome([])
    next_check = time.perf_counter() + sandbox_limits.POLL_S
    try:
        while selector.get_map() and not (outcome.limited or outcome.over_budget):
            now = time.perf_counter()
            if now >= deadline:
                outcome.timed_out = True
                break
            if now >= next_check:
                outcome.over_budget, next_check = budget.over_budget(), now + sandbox_limits.POLL_S
                continue
            for key, _ in selector.select(min(deadline, next_check) - now):
                fd = key.fd
                if fd == stdin_fd:
                    try:
                        pending = pending[os.write(fd, pending[: 1 << 16]) :]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        pending = pending[:0]  # the program stopped reading: fine
                    if not pending:
                        selector.unregister(fd)
                        proc.stdin.close()
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    selector.unregister(fd)
                    continue
                buffer = buffers[fd]
                buffer += chunk
                if len(buffer) > cap:
                    del buffer[cap:]
                    outcome.limited = True
        # Every stream is closed (or a limit struck): wait for the exit, still watching the clock and the budget.
        while not (outcome.timed_out or outcome.limited or outcome.over_budget) and proc.poll() is None:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                outcome.timed_out = True
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(min(remaining, sandbox_limits.POLL_S))
            outcome.over_budget = budget.over_budget()
        if proc.poll() is None:
            _stop(proc, budget)
            _drain(selector, stdin_fd, time.perf_counter() + _KILL_DRAIN_S)
    finally:
        selector.close()
        if not proc.stdin.closed:
            proc.stdin.close()
    outcome.streams = [bytes(buffers[fd]) for fd in order]
    return outcome


def _drain(selector: selectors.BaseSelector, stdin_fd: int, until: float) -> None:
    """Read and drop output until every holder of the pipes is gone (the namespace teardown is asynchronous)."""
    if stdin_fd in selector.get_map():
        selector.unregister(stdin_fd)
    while selector.get_map() and time.perf_counter() < until:
        for key, _ in selector.select(until - time.perf_counter()):
            if not os.read(key.fd, 1 << 16):
                selector.unregister(key.fd)


def run_python(
    code: str,
    stdin: str | bytes = "",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    *,
    max_processes: int = DEFAULT_MAX_PROCESSES,
    file_size_mb: int = DEFAULT_FILE_SIZE_MB,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    tmpfs_mb: int = DEFAULT_TMPFS_MB,
    report: bool = False,
) -> ExecResult:
    """Run ``code`` as ``__main__`` in a fresh sandbox with ``stdin``; thread-safe; any text gives a result.

    ``timeout_s`` is wall-clock time for the whole run (CPU time is capped per process too); ``memory_mb`` is one
    budget for all of the run's processes together (see ``archer.sandbox.limits``), and ``max_processes`` one
    count of their processes and threads. Output beyond ``max_output_bytes`` on either stream stops the run.
    ``report=True`` opens a pipe on descriptor ``REPORT_FD`` inside, returned as ``ExecResult.report``. Text
    that is not valid UTF-8 (lone surrogates) reaches Python as such and fails there. Raises SandboxUnavailable
    (with the install command) when bubblewrap cannot be used: code is never run without it.
    """
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError(f"timeout_s and memory_mb must be positive, got {timeout_s} and {memory_mb}")
    data = stdin.encode("utf-8", errors="surrogatepass") if isinstance(stdin, str) else stdin
    return _run(
        _runtime(), code, data, timeout_s, memory_mb, max_processes, file_size_mb, max_output_bytes, tmpfs_mb, report
    )
