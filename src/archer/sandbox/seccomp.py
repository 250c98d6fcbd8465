"""The sandbox's syscall filter: a seccomp BPF program that bubblewrap loads (``--seccomp FD``) before the code runs.

It denies, with EPERM, the kernel interfaces a competitive-programming solution never needs and that widen the
kernel's attack surface: io_uring, tracing other processes or reading/writing their memory, eBPF and perf, the
key store, userfaultfd, namespaces and mounts, kexec, kernel modules, and a few privileged leftovers. Everything
else is allowed (an allow-list would break ordinary Python and numpy on some kernel or libc version).

Why libseccomp through ctypes, at run time: the filter must match the running kernel's architecture and syscall
numbers, and must kill calls made through another ABI (x86's 32-bit ``int 0x80`` and x32 numbers), which a
hand-written or shipped BPF blob gets wrong easily. libseccomp (Debian/Ubuntu ``libseccomp2``, a dependency of
apt and systemd, so present on practically every such machine) resolves names to this architecture's numbers
and adds the architecture checks itself; we use five of its stable C functions and export the compiled program
once per process. When the library is missing the sandbox refuses to run (it never runs code unfiltered).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import tempfile

# Grouped by what they open; names that do not exist on this architecture are skipped.
DENIED_SYSCALLS = (
    *("io_uring_setup", "io_uring_enter", "io_uring_register"),  # a large, often-exploited kernel surface
    *("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp"),  # other processes' memory, fds
    *("bpf", "perf_event_open", "userfaultfd"),  # eBPF, perf, page-fault handling in user space
    *("keyctl", "add_key", "request_key"),  # the kernel key store
    *("mount", "umount2", "unshare", "setns", "pivot_root", "chroot"),  # namespaces and the file system tree
    *("fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr"),  # the new mount API
    *("open_by_handle_at", "name_to_handle_at"),  # file handles: a classic container escape
    *("kexec_load", "kexec_file_load", "reboot"),  # replacing or stopping the kernel
    *("init_module", "finit_module", "delete_module"),  # kernel modules
    *("swapon", "swapoff", "acct", "quotactl", "syslog", "iopl", "ioperm", "vhangup", "uselib", "lookup_dcookie"),
)

_ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO = 0x00050000


class SeccompUnavailable(RuntimeError):
    """libseccomp cannot be loaded or refused to build the filter."""


@functools.cache
def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as err:
        raise SeccompUnavailable(f"libseccomp is not installed ({err}): apt-get install libseccomp2") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def syscall_number(name: str) -> int:
    """This architecture's number for ``name``; negative when it has no such call."""
    return int(_library().seccomp_syscall_resolve_name(name.encode()))


@functools.cache
def filter_program() -> bytes:
    """The compiled BPF program (``struct sock_filter`` array) for bubblewrap's ``--seccomp``; built once."""
    lib = _library()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        for name in DENIED_SYSCALLS:
            number = syscall_number(name)
            if number < 0:  # not a call on this architecture (or a pseudo number libseccomp would drop)
                continue
            rc = lib.seccomp_rule_add(ctx, _ACT_ERRNO | errno.EPERM, number, 0)
            if rc < 0:
                raise SeccompUnavailable(f"seccomp_rule_add({name}) failed: {os.strerror(-rc)}")
        with tempfile.TemporaryFile() as out:
            rc = lib.seccomp_export_bpf(ctx, out.fileno())
            if rc < 0:
                raise SeccompUnavailable(f"seccomp_export_bpf failed: {os.strerror(-rc)}")
            out.seek(0)
            program = out.read()
    finally:
        lib.seccomp_release(ctx)
    if not program or len(program) % 8:
        raise SeccompUnavailable(f"libseccomp exported a malformed filter ({len(program)} bytes)")
    return program
