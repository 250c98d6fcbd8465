"""One memory budget and one process count per sandboxed run, over all of its processes.

Where the machine allows it, each run gets its own cgroup, created under this process's own cgroup (the subtree
delegated to us; nothing outside it is touched):

- cgroup v2: ``memory.max`` (every page the run's processes charge: heap, stacks, page tables, tmpfs and memfd
  files, socket buffers), ``memory.swap.max = 0`` (swap does not stretch the budget), ``memory.oom.group = 1``
  (an out-of-memory kill takes the whole run), ``pids.max`` (processes and threads);
- cgroup v1 (hybrid hosts whose memory and pids controllers are still v1): ``memory.limit_in_bytes`` and
  ``memory.memsw.limit_in_bytes`` (memory + swap), ``pids.max``.

The kernel then enforces the budget; the parent watches the run's out-of-memory counter and ends the whole run at
the first kill. Where no cgroup can be written, the fallback is measured: every 20 ms the parent adds up the
proportional set size of every process of the run plus the size of every memfd they hold open, and kills the run
over budget; processes are then capped by RLIMIT_NPROC. A polled measure can be outrun for a few tens of
milliseconds, which is why the limits in force are logged once, in one line, when the first run starts.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

POLL_S = 0.02  # how often a run's memory (measured) or out-of-memory counter (cgroup) is read
_PREFIX = "archer-"  # run cgroups are named archer-<our pid>-<n>
_COUNTER = itertools.count()


# --------------------------------------------------------------------------------------------------------------
# Finding where runs' cgroups can go.


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read_int(path: Path, key: str | None = None) -> int | None:
    """An integer file, or the value of ``key`` in a ``key value`` file; None when absent."""
    try:
        text = path.read_text()
    except OSError:
        return None
    if key is None:
        return int(text) if text.strip().isdigit() else None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, fs type, super options) of each cgroup file system this process sees."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            tail = fields[fields.index("-") + 1 :]
            if tail[0] in ("cgroup", "cgroup2"):
                found.append((fields[3], fields[4], tail[0], set(tail[2].split(","))))
    return found


def _own_cgroups() -> dict[str, str]:
    """Controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    own = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                own[name] = path
    return own


def _under(mount_root: str, mount_point: str, path: str) -> Path:
    if mount_root != "/" and path.startswith(mount_root):
        path = path[len(mount_root) :]
    return Path(mount_point + path)


def _ours(pid: int) -> bool:
    """Whether ``pid`` is this process or one of its descendants."""
    me = os.getpid()
    while pid > 1:
        if pid == me:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return pid == me


def _usable(base: Path, limit_file: str) -> bool:
    """Whether a child cgroup can be made under ``base`` and given a limit (tried, then removed)."""
    probe = base / f"{_PREFIX}{os.getpid()}-probe"
    try:
        probe.mkdir(exist_ok=True)
        try:
            _write(probe / limit_file, str(1 << 20))  # valid as bytes and as a process count
        finally:
            probe.rmdir()
    except OSError:
        return False
    return True


def _sweep(base: Path, min_age_s: float = 600.0) -> None:
    """Remove run cgroups left by graders that died before cleaning up: empty, of a pid not alive here, and old
    (a cgroup tree may be shared with another PID namespace, where that pid is alive and its run just starting)."""
    with contextlib.suppress(OSError):
        for child in base.iterdir():
            pid = child.name[len(_PREFIX) :].split("-")[0]
            if child.name.startswith(_PREFIX) and pid.isdigit() and not Path(f"/proc/{pid}").exists():
                with contextlib.suppress(OSError):
                    if time.time() - child.stat().st_mtime > min_age_s:
                        child.rmdir()


def _v2_base() -> Path | None:
    """Our own v2 cgroup, with memory and pids enabled for children (enabling them if it may), or None."""
    path = _own_cgroups().get("")
    mounts = [m for m in _mounts() if m[2] == "cgroup2"]
    if path is None or not mounts:
        return None
    base = _under(mounts[0][0], mounts[0][1], path)
    try:
        available = set((base / "cgroup.controllers").read_text().split())
        enabled = set((base / "cgroup.subtree_control").read_text().split())
    except OSError:
        return None
    if not {"memory", "pids"} <= available:
        return None
    if not {"memory", "pids"} <= enabled:
        try:
            _enable_v2(base)
        except OSError as err:
            logger.debug("sandbox: cannot enable memory and pids under %s: %s", base, err)
            return None
    return base if _usable(base, "memory.max") else None


def _enable_v2(base: Path) -> None:
    """Turn on memory and pids for ``base``'s children.

    cgroup v2 lets a cgroup hand controllers to children only while it holds no process itself; when every
    process in ``base`` is this one or its descendant, they move to ``base/archer-host`` first (what a delegated
    service is expected to do). Processes of anyone else are never moved: then this raises and the fallback applies.
    """
    try:
        _write(base / "cgroup.subtree_control", "+memory +pids")
        return
    except OSError as err:
        if err.errno != errno.EBUSY:
            raise
    pids = [int(p) for p in (base / "cgroup.procs").read_text().split()]
    if not all(_ours(pid) for pid in pids):
        raise OSError(errno.EBUSY, "processes other than ours live in this cgroup")
    host = base / f"{_PREFIX}host"
    host.mkdir(exist_ok=True)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            _write(host / "cgroup.procs", str(pid))
    logger.info("sandbox: moved this process into %s so that runs get their own cgroups", host)
    _write(base / "cgroup.subtree_control", "+memory +pids")


def _v1_base(controller: str, limit_file: str) -> Path | None:
    path = _own_cgroups().get(controller)
    for root, point, fstype, options in _mounts():
        if fstype == "cgroup" and controller in options and path is not None:
            base = _under(root, point, path)
            return base if _usable(base, limit_file) else None
    return None


# --------------------------------------------------------------------------------------------------------------
# The limits in force, and one run's budget.


@dataclass(frozen=True)
class RunLimits:
    """How this machine bounds a run: where run cgroups go (None: not available) and so what is enforced."""

    v2: Path | None = None
    v1_memory: Path | None = None
    v1_pids: Path | None = None

    @property
    def memory(self) -> str:
        return "cgroup v2" if self.v2 else "cgroup v1" if self.v1_memory else "measured"

    @property
    def processes(self) -> str:
        return "cgroup v2" if self.v2 else "cgroup v1" if self.v1_pids else "rlimit"

    @property
    def cgroup_pids(self) -> bool:
        return self.processes != "rlimit"

    def describe(self) -> str:
        memory = {
            "cgroup v2": f"memory by a cgroup v2 per run (memory.max, no swap) under {self.v2}",
            "cgroup v1": f"memory by a cgroup v1 per run ({self._v1_swap()}) under {self.v1_memory}",
            "measured": f"memory measured every {POLL_S * 1e3:.0f} ms (proportional set size of all the run's "
            "processes + their memfds; no writable cgroup), plus RLIMIT_AS per process",
        }[self.memory]
        processes = {
            "cgroup v2": "processes by the run's pids.max",
            "cgroup v1": "processes by a cgroup v1 pids.max per run",
            "rlimit": "processes by RLIMIT_NPROC (per uid in the run's user namespace)",
        }[self.processes]
        return f"sandbox limits per run: {memory}; {processes}"

    def _v1_swap(self) -> str:
        swap = self.v1_memory is not None and (self.v1_memory / "memory.memsw.limit_in_bytes").exists()
        return "memory + swap" if swap else "memory; swap not limited: no swap accounting"

    def open(self, memory_bytes: int, max_processes: int) -> RunBudget:
        return RunBudget(self, memory_bytes, max_processes)


def measured_only() -> RunLimits:
    """The limits without any cgroup (the fallback; also what ``ARCHER_SANDBOX_CGROUP=0`` asks for)."""
    return RunLimits()


_LIMITS: RunLimits | None = None
_LIMITS_LOCK = threading.Lock()


def run_limits() -> RunLimits:
    """The limits this machine allows, found once per process (and logged in one line)."""
    global _LIMITS
    with _LIMITS_LOCK:
        if _LIMITS is None:
            if os.environ.get("ARCHER_SANDBOX_CGROUP", "1") in ("0", "false", "no", "off"):
                limits = measured_only()
            else:
                v2 = _v2_base()
                v1_memory = None if v2 else _v1_base("memory", "memory.limit_in_bytes")
                limits = RunLimits(v2, v1_memory, None if v2 else _v1_base("pids", "pids.max"))
            for base in {limits.v2, limits.v1_memory, limits.v1_pids} - {None}:
                _sweep(base)  # type: ignore[arg-type]
            full = limits.memory != "measured" and limits.cgroup_pids
            logger.log(logging.INFO if full else logging.WARNING, "%s", limits.describe())
            _LIMITS = limits
        return _LIMITS


class RunBudget:
    """One run's memory and process budget: its cgroups, or the measured fallback. Use ``attach`` before the
    run's first process executes anything, ``over_budget`` while it runs, ``close`` on every path afterwards."""

    def __init__(self, limits: RunLimits, memory_bytes: int, max_processes: int) -> None:
        self.limits, self.memory_bytes = limits, memory_bytes
        self._root: int | None = None
        self._peak = 0
        self._dirs: list[Path] = []
        name = f"{_PREFIX}{os.getpid()}-{next(_COUNTER)}"
        try:
            if limits.v2:
                run = self._make(limits.v2 / name)
                with contextlib.suppress(FileNotFoundError):
                    _write(run / "memory.swap.max", "0")
                _write(run / "memory.max", str(memory_bytes))
                _write(run / "memory.oom.group", "1")
                _write(run / "pids.max", str(max_processes))
            if limits.v1_memory:
                run = self._make(limits.v1_memory / name)
                _write(run / "memory.limit_in_bytes", str(memory_bytes))
                with contextlib.suppress(FileNotFoundError):  # swap accounting off: memory alone
                    _write(run / "memory.memsw.limit_in_bytes", str(memory_bytes))
            if limits.v1_pids:
                _write(self._make(limits.v1_pids / name) / "pids.max", str(max_processes))
        except BaseException:
            self.close()
            raise

    def _make(self, path: Path) -> Path:
        path.mkdir()
        self._dirs.append(path)
        return path

    def attach(self, pid: int) -> None:
        """Put ``pid`` (the run's first process, not yet running code) under this budget."""
        self._root = pid
        for path in self._dirs:
            _write(path / "cgroup.procs", str(pid))

    def over_budget(self) -> bool:
        """Whether the run has broken its memory budget (a kernel OOM kill, or a measured excess)."""
        if self.limits.memory == "measured":
            if self._root is not None:
                self._peak = max(self._peak, _measure(self._root))
            return self._peak > self.memory_bytes
        return bool(self._oom_kills())

    def _oom_kills(self) -> int:
        if self.limits.v2:
            return _read_int(self._dirs[0] / "memory.events", "oom_kill") or 0
        return _read_int(self._dirs[0] / "memory.oom_control", "oom_kill") or 0

    def peak_bytes(self) -> int | None:
        """The most memory the run held at once: the kernel's count, or the largest measured sum."""
        if self.limits.memory == "measured":
            return self._peak or None
        if self.limits.v2:
            return _read_int(self._dirs[0] / "memory.peak")
        return _read_int(self._dirs[0] / "memory.max_usage_in_bytes")

    def kill(self) -> None:
        """Kill every process of the run at once where the kernel offers it (cgroup v2's ``cgroup.kill``)."""
        if self.limits.v2 and self._dirs:
            with contextlib.suppress(OSError):
                _write(self._dirs[0] / "cgroup.kill", "1")

    def close(self) -> None:
        """Remove the run's cgroups (their processes are gone; an exiting task may hold one for a moment)."""
        for path in reversed(self._dirs):
            for delay in (0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5):
                time.sleep(delay)
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    continue
            else:
                logger.warning("sandbox: could not remove %s (removed at the next start)", path)
        self._dirs.clear()


# --------------------------------------------------------------------------------------------------------------
# The measured fallback.


_HAS_CHILDREN_LISTS = Path(f"/proc/self/task/{os.getpid()}/children").exists()  # CONFIG_PROC_CHILDREN


def _children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return found


def _children_by_scan() -> dict[int, list[int]]:
    """Parent pid -> child pids, from every process's stat (kernels without ``children`` lists)."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                tree.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry))
    return tree


def _tree(root: int) -> list[int]:
    """``root`` and its descendants."""
    scanned = None if _HAS_CHILDREN_LISTS else _children_by_scan()
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += _children(pid) if scanned is None else scanned.get(pid, [])
    return found


def _measure(root: int) -> int:
    """Bytes held by the process tree at ``root``: proportional set sizes plus the memfds it holds open."""
    total, memfds = 0, set()
    for pid in _tree(root):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) << 10
                    break
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:"):
                        st = os.stat(f"/proc/{pid}/fd/{fd}")
                        if st.st_ino not in memfds:
                            memfds.add(st.st_ino)
                            total += st.st_blocks * 512
    return total
