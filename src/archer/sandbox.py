"""Run untrusted Python (generated solutions) under bubblewrap.

Each run gets private user, PID, network, IPC, UTS and cgroup namespaces; a read-only root file system holding
only ``/usr`` and the Python runtime; fresh size-limited tmpfs at ``/tmp`` and ``/dev/shm``; a minimal read-only
``/dev`` and its own ``/proc``; an environment with nothing but ``PATH``, ``LANG`` and ``PWD``; no capabilities;
a non-root uid; and rlimits on address space, CPU time, processes, file size and open files. The parent
enforces the wall-clock limit and the output cap, and on either kills the whole sandbox: bwrap is PID 1 of the
sandbox's PID namespace, so when it dies the kernel kills every process inside, including children that called
``setsid``.

RLIMIT_NPROC is ignored for processes whose real uid is root, even inside a user namespace. So when we run as
root, bwrap itself is started as ``nobody`` (65534): the sandboxed processes are then non-root on the host too,
and the process limit, set inside the sandbox's own user namespace, counts only that sandbox's processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
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

from archer.errors import UserError

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
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.output_limit_exceeded


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
        return _Runtime(bwrap=bwrap, python=str(python), binds=binds, options=_bwrap_options(bwrap))
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

# Runs inside the sandbox as ``python -I -c``: set the limits, then run the solution as __main__.
_LAUNCHER = """\
import resource, sys
for _k, _v in {limits}:
    resource.setrlimit(_k, (_v, _v))
sys.argv = [{path!r}]
with open({path!r}, encoding="utf-8") as _f:
    _src = _f.read()
del _f, _k, _v
exec(compile(_src, {path!r}, "exec"), {{"__name__": "__main__", "__file__": {path!r}, "__builtins__": __builtins__}})
"""


def _bwrap_argv(runtime: _Runtime, code_fd: int, limits: list[tuple[int, int]], tmpfs_bytes: int) -> list[str]:
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
    argv += [*size, "--tmpfs", "/tmp", "--file", str(code_fd), _CODE_PATH]
    # Only the two sized tmpfs stay writable: an unsized one would let the code fill the host's memory.
    argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp"]
    launcher = _LAUNCHER.format(limits=repr(limits), path=_CODE_PATH)
    return [*argv, "--", runtime.python, "-I", "-c", launcher]


def _feed_code(write_fd: int, data: bytes) -> None:
    """Hand the code to bwrap's ``--file`` through a pipe (a thread when it exceeds the pipe buffer)."""

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
        threading.Thread(target=write_all, name="sandbox-code", daemon=True).start()


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
) -> ExecResult:
    limits = [
        (int(resource_id), int(value))
        for resource_id, value in (
            (resource.RLIMIT_AS, memory_mb << 20),
            (resource.RLIMIT_CPU, int(timeout_s) + 1),
            (resource.RLIMIT_NPROC, max_processes),
            (resource.RLIMIT_FSIZE, file_size_mb << 20),
            (resource.RLIMIT_NOFILE, 64),
            (resource.RLIMIT_CORE, 0),
        )
    ]
    code_read, code_write = os.pipe()
    extra = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if _drop_to_nobody() else {}
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(
            _bwrap_argv(runtime, code_read, limits, tmpfs_mb << 20),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(code_read,),
            start_new_session=True,
            env={},
            **extra,
        )
    except BaseException:
        os.close(code_write)
        raise
    finally:
        os.close(code_read)
    _feed_code(code_write, code.encode("utf-8", errors="surrogateescape"))
    try:
        out, err, timed_out, limited = _communicate(proc, stdin, start + timeout_s, max_output_bytes)
    finally:
        if proc.poll() is None:
            _kill(proc)
    return ExecResult(
        stdout=out.decode("utf-8", errors="replace"),
        stderr=err.decode("utf-8", errors="replace"),
        returncode=None if (timed_out or limited) else proc.returncode,
        timed_out=timed_out,
        output_limit_exceeded=limited,
        wall_s=time.perf_counter() - start,
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill bwrap (and so, through the PID namespace, everything it started) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _communicate(
    proc: subprocess.Popen[bytes], stdin: bytes, deadline: float, cap: int
) -> tuple[bytes, bytes, bool, bool]:
    """Feed stdin and collect output until exit, the deadline, or ``cap`` bytes on one stream."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
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
    timed_out = limited = False
    try:
        while selector.get_map() and not limited:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(remaining):
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
                    limited = True
        if timed_out or limited:
            _kill(proc)
            _drain(selector, stdin_fd, time.perf_counter() + _KILL_DRAIN_S)
        else:
            try:
                proc.wait(max(deadline - time.perf_counter(), 0.0))
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill(proc)
    finally:
        selector.close()
        if not proc.stdin.closed:
            proc.stdin.close()
    return bytes(buffers[proc.stdout.fileno()]), bytes(buffers[proc.stderr.fileno()]), timed_out, limited


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
) -> ExecResult:
    """Run ``code`` as ``__main__`` in a fresh sandbox with ``stdin``; thread-safe.

    ``timeout_s`` is wall-clock time for the whole run (CPU time is capped too); ``memory_mb`` caps the address
    space of each process. Output beyond ``max_output_bytes`` on either stream stops the run. Raises
    SandboxUnavailable (with the install command) when bubblewrap cannot be used: code is never run without it.
    """
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError(f"timeout_s and memory_mb must be positive, got {timeout_s} and {memory_mb}")
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    return _run(_runtime(), code, data, timeout_s, memory_mb, max_processes, file_size_mb, max_output_bytes, tmpfs_mb)
