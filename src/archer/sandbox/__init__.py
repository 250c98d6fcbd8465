"""Running untrusted generated code: bubblewrap namespaces (runner), one budget of memory and processes (limits), and
a syscall filter (seccomp)."""
