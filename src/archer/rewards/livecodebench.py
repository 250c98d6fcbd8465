"""How tests are stored, how a program is run on one, and how its output is judged (LiveCodeBench's conventions,
plus the assert scripts of verl-format training data).

A test is ``{"input": str, "output": str, "testtype": "stdin" | "functional" | "script"}``. A stdin test feeds
``input`` to the program and compares what it prints with ``output``: LiveCodeBench's rule (``stdout_matches``)
compares line by line after stripping, and lines that differ as text still match when every whitespace-separated
token parses as the same Decimal (so ``1.50`` matches ``1.5``); the authors' training rule (``whole_stdout_matches``)
wants the whole stripped output equal to the whole stripped expected output. A functional test calls ``fn_name``
(on ``Solution()`` when the code defines that class) with one argument per line of ``input``, each a JSON value,
and compares the returned value (tuples as lists) with the JSON ``output``. A script test is verl's "functional"
ground truth: ``input`` is Python (asserts, typically ``check(Solution().f)``) run after the solution in the same
program, with LeetCode's ``ListNode`` / ``TreeNode`` helpers defined; it passes when the program exits 0.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import pickle
import zlib
from decimal import Decimal, InvalidOperation
from typing import Any

from archer.errors import UserError
from archer.sandbox.runner import REPORT_FD

TEST_TYPES = ("stdin", "functional", "script")
_MAX_DECODED_BYTES = 1 << 30  # a compressed test field inflating past this is refused (a zip bomb, not tests)

# LiveCodeBench runs every solution after star-imports of common standard modules (LeetCode-style code uses
# ``List`` or ``defaultdict`` without importing them); ``from builtins import *`` undoes shadowing such as
# math.pow over pow. One line, so tracebacks point one line below the solution's own numbering.
PRELUDE = (
    "from string import *; from re import *; from datetime import *; from collections import *; "
    "from heapq import *; from bisect import *; from copy import *; from math import *; from random import *; "
    "from statistics import *; from itertools import *; from functools import *; from operator import *; "
    "from io import *; from sys import *; from json import *; from builtins import *; from typing import *; "
    "import string, re, datetime, collections, heapq, bisect, copy, math, random, statistics, itertools, "
    "functools, operator, io, sys, json, typing; sys.setrecursionlimit(50000)\n"
)

# Defined before the solution of a script test: the linked-list and binary-tree classes LeetCode problems use, and
# the helpers their assert scripts build and compare them with (list_node, tree_node, is_same_list, is_same_tree).
# Executed from one line, so that line numbers move by one line only, as with PRELUDE.
_LEETCODE_HELPERS = """
import collections as _collections


class ListNode:
    def __init__(self, val=0, next=None):
        self.val = val
        self.next = next


class TreeNode:
    def __init__(self, val=0, left=None, right=None):
        self.val = val
        self.left = left
        self.right = right


def list_node(values):
    head = None
    for value in reversed(list(values)):
        head = ListNode(value, head)
    return head


def is_same_list(first, second):
    while first is not None and second is not None:
        if first.val != second.val:
            return False
        first, second = first.next, second.next
    return first is None and second is None


def tree_node(values):
    values = list(values)
    if not values or values[0] is None:
        return None
    root = TreeNode(values[0])
    waiting, position = _collections.deque([root]), 1
    while waiting and position < len(values):
        node = waiting.popleft()
        for side in ("left", "right"):
            if position < len(values) and values[position] is not None:
                child = TreeNode(values[position])
                setattr(node, side, child)
                waiting.append(child)
            position += 1
    return root


def is_same_tree(first, second):
    if first is None or second is None:
        return first is second
    return (
        first.val == second.val and is_same_tree(first.left, second.left) and is_same_tree(first.right, second.right)
    )
"""
SCRIPT_PRELUDE = f"exec({_LEETCODE_HELPERS!r})\n"

# Appended after the solution for a functional test. The arguments are embedded in the program (not sent on
# stdin, which the solution may consume at import); the solution's own prints go to /dev/null during the call.
#
# The result travels on its own pipe (the sandbox's REPORT_FD), never on stdout, as one JSON line, after which the
# process ends at once (os._exit: no atexit hook, finalizer or thread of the solution runs after the report).
# The grader accepts a run only with exactly one line on that pipe and exit status 0.
#
# Threat model. The solution runs in this same process, before the harness: it can read and patch anything in
# it (memory, modules, descriptors, /proc/self), so no secret and no descriptor can be hidden from it here, and
# it can always decide what value the harness reports: that is no more than returning that value, and the
# expected output never enters the sandbox, so it must still compute the right answer. (A trusted reporter in a
# second process, holding a descriptor closed to the solution, would not change this: the solution would still
# choose what it hands over.) What the channel guarantees is that nothing *else* counts: no printed line however
# it imitates a result, no report written before or after the harness's (from an atexit hook, a thread, a child
# left behind, /proc/self/fd/3: each makes a second line and fails the test), and no report from a run that
# then fails.
_FUNCTIONAL_HARNESS = """
def __archer_call():
    import json as _json, os as _os, sys as _sys
    _args = [_json.loads(_line) for _line in {raw!r}.strip().split("\\n")]
    _holder = globals().get("Solution")
    _fn = getattr(_holder(), {fn_name!r}) if isinstance(_holder, type) else globals()[{fn_name!r}]
    _out = _sys.stdout
    _sys.stdout = open(_os.devnull, "w")
    try:
        _result = _fn(*_args)
    finally:
        _sys.stdout = _out
    if isinstance(_result, tuple):
        _result = list(_result)
    _line = memoryview((_json.dumps(_result) + "\\n").encode())
    for _stream in (_sys.stdout, _sys.stderr):
        _stream.flush()
    while _line:
        _line = _line[_os.write({report_fd}, _line) :]
    _os._exit(0)


__archer_call()
"""


class _StrOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data and refuses every global, so the payload cannot name a callable to run.

    LiveCodeBench pickles a JSON *string*: that needs no global at all, while arbitrary code execution through
    pickle always goes through ``find_class`` (or persistent ids). With both refused, loading is inert; the
    caller then insists the result is a str.
    """

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a test field")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id in a test field")


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, _MAX_DECODED_BYTES)
    if inflater.unconsumed_tail:
        raise UserError(f"a compressed test field inflates past {_MAX_DECODED_BYTES >> 20} MiB")
    return out


def _decompress(text: str) -> str:
    """The JSON string inside LiveCodeBench's base64 + zlib + pickle encoding."""
    try:
        payload = _StrOnlyUnpickler(io.BytesIO(_inflate(base64.b64decode(text, validate=False)))).load()
    except (binascii.Error, zlib.error, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise UserError(f"code tests are neither JSON nor LiveCodeBench's compressed form: {err}") from None
    if not isinstance(payload, str):
        raise UserError(f"a compressed test field must hold a JSON string, got {type(payload).__name__}")
    return payload


def decode_lcb_tests(value: Any) -> list[dict[str, str]]:
    """Tests from a LiveCodeBench field: a list, a JSON string (public tests) or base64+zlib+pickle (private).

    An empty field (some rows have no private tests) holds no tests.
    """
    if isinstance(value, list):
        return value
    if not isinstance(value, (str, bytes)):
        raise UserError(f"code tests must be a list or a string, got {type(value).__name__}")
    text = value.decode() if isinstance(value, bytes) else value
    if not text.strip():
        return []
    try:
        decoded: Any = json.loads(text)
    except ValueError:
        decoded = json.loads(_decompress(text))
    if isinstance(decoded, str):  # compressed fields sometimes wrap the JSON once more
        decoded = json.loads(decoded)
    if not isinstance(decoded, list):
        raise UserError(f"code tests must decode to a list of tests, got {type(decoded).__name__}")
    return decoded


def normalize_tests(value: Any, fn_name: str | None = None) -> list[dict[str, str]]:
    """Validated tests from any accepted storage form; ``testtype`` defaults to functional iff ``fn_name``."""
    if isinstance(value, dict) and "inputs" in value and "outputs" in value:  # APPS / TACO style
        value = [{"input": i, "output": o} for i, o in zip(value["inputs"], value["outputs"], strict=True)]
    tests = []
    for k, test in enumerate(decode_lcb_tests(value)):
        if not isinstance(test, dict) or "input" not in test or "output" not in test:
            raise UserError(f"code test {k} must be a dict with 'input' and 'output', got {str(test)[:80]!r}")
        testtype = test.get("testtype") or ("functional" if fn_name else "stdin")
        if testtype == "script" and not (isinstance(test["input"], str) and test["input"].strip()):
            raise UserError(f"code test {k} is a script test without a script (its 'input' is empty)")
        if testtype not in TEST_TYPES:
            raise UserError(f"code test {k} has testtype {testtype!r}; valid: {', '.join(TEST_TYPES)}")
        if testtype == "functional" and not fn_name:
            raise UserError(f"code test {k} is functional but no fn_name says which method to call")
        tests.append({"input": _as_text(test["input"]), "output": _as_text(test["output"]), "testtype": testtype})
    return tests


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def build_program(code: str, test: dict[str, str], fn_name: str | None) -> tuple[str, str]:
    """The program text and stdin for running ``code`` on one test (a functional one reports on REPORT_FD)."""
    if test["testtype"] == "stdin":
        return PRELUDE + code, test["input"]
    if test["testtype"] == "script":
        return PRELUDE + SCRIPT_PRELUDE + code + "\n" + test["input"], ""
    harness = _FUNCTIONAL_HARNESS.format(raw=test["input"], fn_name=fn_name, report_fd=REPORT_FD)
    return PRELUDE + code + "\n" + harness, ""


def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(token) for token in line.split()]
    except InvalidOperation:
        return None


def stdout_matches(output: str, expected: str) -> bool:
    """LiveCodeBench's stdin/stdout rule: same number of stripped lines, each equal as text or as Decimals."""
    got, want = _stripped_lines(output), _stripped_lines(expected)
    if len(got) != len(want):
        return False
    for line, target in zip(got, want, strict=True):
        if line == target:
            continue
        got_numbers, want_numbers = _decimals(line), _decimals(target)
        if got_numbers is None or want_numbers is None:
            return False
        try:
            if got_numbers != want_numbers:
                return False
        except InvalidOperation:  # a signalling NaN refuses to compare
            return False
    return True


def whole_stdout_matches(output: str, expected: str) -> bool:
    """The authors' training rule for stdin/stdout tests: the whole output, stripped, equals the whole expected
    output, stripped (no per-line or numeric tolerance)."""
    return output.strip() == expected.strip()


def functional_result(report: str | None) -> tuple[bool, Any]:
    """(found, value) of the harness's report: exactly one JSON line, or nothing is found."""
    if not report or not report.endswith("\n") or report.count("\n") != 1:
        return False, None
    try:
        return True, json.loads(report)
    except ValueError:
        return False, None


def functional_matches(report: str | None, expected: str) -> bool:
    """Whether the harness reported a value equal to the JSON ``expected`` (compared as Python values)."""
    found, value = functional_result(report)
    if not found:
        return False
    try:
        return bool(value == json.loads(expected))
    except ValueError:
        return False
