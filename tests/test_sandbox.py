"""The bubblewrap sandbox: normal runs, and an attack suite that checks containment and that nothing survives.

Every attack renames its process (``/proc/self/comm``, inherited by forked children) to a fresh token, so after
the run we can scan the host's ``/proc`` for any process of that attack still alive.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from archer.sandbox import runner as sandbox
from archer.sandbox.runner import SandboxUnavailable, run_python, sandbox_available

needs_bwrap = pytest.mark.skipif(not sandbox_available(), reason="bubblewrap cannot run here")
pytestmark = pytest.mark.sandbox


def _tagged(code: str) -> tuple[str, str]:
    token = "atk" + uuid.uuid4().hex[:12]
    return token, f"open('/proc/self/comm', 'w').write({token!r})\n{code}"


def _survivors(token: str, wait_s: float = 3.0) -> list[int]:
    """PIDs on the host whose name is ``token``, after giving the kernel ``wait_s`` to finish a teardown."""
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if Path(f"/proc/{entry}/comm").read_text().strip() == token:
                        found.append(int(entry))
                except OSError:
                    pass  # exited while we looked
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _attack(code: str, **kwargs: object) -> sandbox.ExecResult:
    token, tagged = _tagged(code)
    start = time.monotonic()
    result = run_python(tagged, **kwargs)  # type: ignore[arg-type]
    assert time.monotonic() - start < 10
    assert _survivors(token) == [], f"processes of the attack survived: {result}"
    return result


# ----------------------------------------------------------------------------------------------------------------
# Ordinary runs.


@needs_bwrap
def test_stdin_stdout_exit_code_and_unicode() -> None:
    result = run_python("import sys\nname = input()\nprint(f'héllo {name}')\nsys.exit(3)", stdin="wörld\n")
    assert (result.stdout, result.returncode, result.timed_out) == ("héllo wörld\n", 3, False)
    assert not result.ok
    assert run_python("print(sum(map(int, input().split())))", stdin="1 2 3").stdout == "6\n"
    assert "ZeroDivisionError" in run_python("1/0").stderr


@needs_bwrap
def test_large_stdin_and_output() -> None:
    data = "x" * (3 << 20)
    result = run_python("import sys\ns = sys.stdin.read()\nprint(len(s))\nprint(s)", stdin=data)
    assert result.ok
    assert result.stdout.splitlines() == [str(len(data)), data]


@needs_bwrap
def test_large_program() -> None:
    code = "# padding\n" * 40_000 + "print(__name__, __file__)\n"  # 400 kB: more than a pipe buffer holds
    assert run_python(code).stdout == "__main__ /tmp/main.py\n"


@needs_bwrap
def test_identity_environment_and_fresh_tmp() -> None:
    code = (
        "import os\n"
        "print(os.getuid(), os.getgid(), os.getpid())\n"
        "print(sorted(os.environ))\n"
        "print(sorted(os.listdir('/')))\n"
        "print(os.path.exists('/tmp/left-by-last-run'))\n"
        "open('/tmp/left-by-last-run', 'w').write('x')\n"
    )
    first = run_python(code)
    second = run_python(code)
    uid_line, env_line, root_line, leftover = first.stdout.splitlines()
    assert uid_line.split()[:2] == ["65534", "65534"]
    assert int(uid_line.split()[2]) < 10  # a private PID namespace
    assert set(eval(env_line)) <= {"PATH", "LANG", "PWD"}
    assert "work" not in root_line and "home" not in root_line and "etc" not in root_line
    assert leftover == "False" and second.stdout.splitlines()[3] == "False"


@needs_bwrap
def test_concurrent_runs_from_threads() -> None:
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda i: run_python(f"print({i} * {i})").stdout, range(8)))
    assert outputs == [f"{i * i}\n" for i in range(8)]


def test_missing_bubblewrap_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sandbox, "_RUNTIME", None)
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        run_python("print('must not run')")
    assert not sandbox_available()
    assert "\n" not in str(SandboxUnavailable("x"))


# ----------------------------------------------------------------------------------------------------------------
# Attacks.


@needs_bwrap
def test_infinite_loop_is_killed_at_the_time_limit() -> None:
    result = _attack("while True:\n    pass", timeout_s=1.0)
    assert result.timed_out and result.returncode is None
    assert 1.0 <= result.wall_s < 3.0


@needs_bwrap
def test_process_limit_applies() -> None:
    code = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 200:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(5)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as err:\n"
        "    print('stopped', n, err.errno)\n"
    )
    result = _attack(code, max_processes=12)
    words = result.stdout.split()
    assert words[0] == "stopped" and int(words[1]) < 12 and words[2] == "11"  # EAGAIN


@needs_bwrap
def test_fork_bomb_is_contained() -> None:
    code = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)\n"
    result = _attack(code, timeout_s=2.0)
    assert result.timed_out
    assert os.fork is not None  # the host is still here to assert anything at all


@needs_bwrap
def test_memory_hog_hits_the_address_space_limit() -> None:
    result = _attack("blocks = []\nwhile True:\n    blocks.append(bytearray(64 << 20))", memory_mb=256)
    assert result.returncode not in (0, None)
    assert "MemoryError" in result.stderr


@needs_bwrap
def test_setsid_daemon_does_not_outlive_the_run() -> None:
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.closerange(0, 64)  # let go of the pipes, so only the namespace teardown can end it\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
        "print('parent done')\n"
    )
    result = _attack(code, timeout_s=20.0)
    assert result.stdout == "parent done\n" and result.returncode == 0
    assert result.wall_s < 5


@needs_bwrap
def test_writes_outside_the_sandbox_do_not_reach_the_host(tmp_path: Path) -> None:
    name = "archer-" + uuid.uuid4().hex
    targets = [str(tmp_path / "pwned"), f"/usr/{name}", f"/{name}", f"/work/{name}", f"/proc/sys/kernel/{name}"]
    targets.append(f"/dev/{name}")
    code = (
        "results = []\n"
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        open(path, 'w').write('pwned')\n"
        "        results.append('wrote')\n"
        "    except OSError:\n"
        "        results.append('denied')\n"
        f"open('/tmp/{name}', 'w').write('inside')\n"
        "print(results)\n"
    )
    result = _attack(code)
    assert result.stdout == repr(["denied"] * len(targets)) + "\n"
    assert not any(os.path.exists(path) for path in targets)
    assert not os.path.exists(f"/tmp/{name}")


@needs_bwrap
@pytest.mark.parametrize("folder", ["/tmp", "/dev/shm"])
def test_writable_folders_are_size_limited(folder: str) -> None:
    if not sandbox._runtime().has("--size"):
        pytest.skip("this bubblewrap cannot size a tmpfs (needs >= 0.7)")
    code = (
        "import os\n"
        "written = 0\n"
        "try:\n"
        "    for i in range(64):\n"
        f"        with open(f'{folder}/f{{i}}', 'wb') as f:\n"
        "            f.write(b'x' * (1 << 20))\n"
        "        written += 1\n"
        "except OSError as err:\n"
        "    print(written, err.errno)\n"
    )
    written, errno = _attack(code, tmpfs_mb=8).stdout.split()
    assert int(written) <= 8 and errno == "28"  # ENOSPC


@needs_bwrap
def test_host_files_and_environment_secrets_stay_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    monkeypatch.setenv("ARCHER_TEST_SECRET", secret)
    (tmp_path / "secret.txt").write_text(secret)
    paths = [str(tmp_path / "secret.txt"), "/etc/passwd", "/etc/shadow", "/root", "/work", "/proc/1/environ"]
    code = (
        "import os\n"
        "print(dict(os.environ))\n"
        f"for path in {paths!r}:\n"
        "    try:\n"
        "        print(path, os.listdir(path) if os.path.isdir(path) else open(path, 'rb').read())\n"
        "    except OSError as err:\n"
        "        print(path, 'error', err.errno)\n"
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit():\n"
        "        try:\n"
        "            print(pid, open(f'/proc/{pid}/environ', 'rb').read(), open(f'/proc/{pid}/cmdline', 'rb').read())\n"
        "        except OSError:\n"
        "            pass\n"
    )
    result = _attack(code)
    assert result.ok, result.stderr
    assert secret not in result.stdout + result.stderr
    assert "/etc/passwd error" in result.stdout and "/root error" in result.stdout


@needs_bwrap
def test_no_network_to_host_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        code = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')\n"
            "    print('connected')\n"
            "except OSError as err:\n"
            "    print('blocked', type(err).__name__)\n"
        )
        result = _attack(code)
        assert result.stdout.startswith("blocked"), result
        listener.settimeout(0.3)
        with pytest.raises(TimeoutError):
            listener.accept()


@needs_bwrap
def test_killing_the_parent_is_contained() -> None:
    host_pid = os.getpid()
    code = (
        "import os, signal\n"
        f"for pid in (os.getppid(), 1, {host_pid}, -1):\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError as err:\n"
        "        print(pid, 'error', err.errno)\n"
        "print('still here')\n"
    )
    result = _attack(code)
    assert os.getpid() == host_pid  # this process survived to check
    assert result.returncode is not None and not result.timed_out
    assert run_python("print('next run fine')").stdout == "next run fine\n"


@needs_bwrap
@pytest.mark.parametrize("stream", [1, 2])
def test_gigabytes_of_output_are_cut_off(stream: int) -> None:
    code = f"import os\nchunk = b'x' * (1 << 20)\nfor _ in range(4096):\n    os.write({stream}, chunk)\n"
    result = _attack(code, max_output_bytes=4 << 20, timeout_s=30.0)
    assert result.output_limit_exceeded and result.returncode is None
    assert len(result.stdout if stream == 1 else result.stderr) == 4 << 20
    assert result.wall_s < 5
