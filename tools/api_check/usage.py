"""Find where client code uses a package (calls, keywords, attributes, prompt dicts) and check each use.

``check_source`` walks a client file with ``ast`` and follows, through assignments, loops, comprehensions,
parameter annotations and ``self.x = ...`` in a class, the values that come from the tracked package::

    from vllm import LLM, SamplingParams
    llm = LLM(model=path, tensor_parallel_size=2)            # LLM's keywords (and EngineArgs' via **kwargs)
    params = SamplingParams(n=k, max_tokens=m)                 # SamplingParams' fields
    for request in llm.generate([{"prompt_token_ids": ids}], params):   # generate's keywords; the prompt
        texts = [c.text for c in request.outputs]              # dict's keys; RequestOutput.outputs; .text

Each keyword, attribute, imported name or prompt-dict key that the package's source (a ``PackageIndex``) clearly
lacks is a ``Problem`` naming the client file and line. Values the walk loses track of are not checked.
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass, field

from tools.api_check.pyapi import (
    ClassRef,
    ClassSym,
    FuncRef,
    FuncSym,
    Instance,
    ModuleRef,
    ModuleSym,
    PackageIndex,
    Params,
    SeqOf,
    parse_annotation,
    top_level,
)


@dataclass(frozen=True, order=True)
class Problem:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Use:
    """One checked use of the package: where, what, and the source of its keyword values and guards."""

    path: str
    line: int
    kind: str  # "call", "attribute" or "import"
    target: str  # e.g. "vllm.entrypoints.llm.LLM" or "vllm.entrypoints.llm.LLM.sleep"
    keywords: tuple[tuple[str, str], ...]  # (keyword, value source)
    guards: tuple[str, ...]  # sources of the enclosing ``if`` tests


@dataclass(eq=False)
class _Local:
    """An instance of a class defined in the client file: only its ``self.x`` assignments are known."""

    attrs: dict[str, object] = field(default_factory=dict)


@dataclass(eq=False)
class _DictLit:
    """A dict with literal string keys (``{"prompt_token_ids": ids}``, ``d["k"] = v``, ``d.update(k=v)``)."""

    keys: dict[str, int]  # key -> line where it was added


_UNSET = object()


class _Walker:
    def __init__(self, index: PackageIndex, path: str, label: str):
        self.index = index
        self.path = path
        self.label = label
        self.report = True
        self.problems: set[Problem] = set()
        self.uses: list[Use] = []
        self.guards: list[str] = []
        self.gates: dict[str, bool] = {}  # names bound to a version test, e.g. is_vllm_available(min_version=...)

    def gate(self, node: ast.expr) -> bool | None:
        """A test on the package's version (``f(min_version="0.28.0")``), decided for the checked version.

        Code written for older releases sits behind such tests; only the branch the checked version takes is
        checked. Anything else is undecided (None) and both branches are checked.
        """
        if isinstance(node, ast.Name):
            return self.gates.get(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self.gate(node.operand)
            return None if inner is None else not inner
        if isinstance(node, ast.Call) and self.index.version:
            for keyword in node.keywords:
                if keyword.arg == "min_version" and isinstance(keyword.value, ast.Constant):
                    return _version(self.index.version) >= _version(str(keyword.value.value))
        return None

    # ---- reporting

    def problem(self, node: ast.AST, message: str) -> None:
        if self.report:
            self.problems.add(Problem(self.path, getattr(node, "lineno", 0), f"{message} ({self.label})"))

    def record(self, node: ast.AST, kind: str, target: str) -> None:
        if self.report:
            self.uses.append(Use(self.path, getattr(node, "lineno", 0), kind, target, (), tuple(self.guards)))

    # ---- statements

    def block(self, body: list[ast.stmt], env: dict) -> None:
        for stmt in body:
            self.stmt(stmt, env)

    def stmt(self, node: ast.stmt, env: dict) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            self.imports(node, env)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self.function(node, env, self_obj=None)
            env[node.name] = None
        elif isinstance(node, ast.ClassDef):
            self.klass(node, env)
        elif isinstance(node, ast.Assign):
            gate = self.gate(node.value)
            if gate is not None and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                self.gates[node.targets[0].id] = gate
            value = self.expr(node.value, env)
            for target in node.targets:
                self.bind(target, value, env)
        elif isinstance(node, ast.AnnAssign):
            value = self.expr(node.value, env) if node.value is not None else None
            self.bind(node.target, self.annotation(node.annotation, env) or value, env)
        elif isinstance(node, ast.AugAssign):
            self.expr(node.value, env)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            items = self.expr(node.iter, env)
            self.bind(node.target, items.item if isinstance(items, SeqOf) else None, env)
            self.block(node.body, env)
            self.block(node.orelse, env)
        elif isinstance(node, (ast.If, ast.While)):
            self.expr(node.test, env)
            taken = self.gate(node.test) if isinstance(node, ast.If) else None
            self.guards.append(ast.unparse(node.test))
            if taken is not False:
                self.block(node.body, env)
            self.guards.pop()
            if taken is not True:
                self.block(node.orelse, env)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self.expr(item.context_expr, env)
                if item.optional_vars is not None:
                    self.bind(item.optional_vars, None, env)
            self.block(node.body, env)
        elif isinstance(node, ast.Try):
            self.block(node.body, env)
            for handler in node.handlers:
                if handler.name:
                    env[handler.name] = None
                self.block(handler.body, env)
            self.block(node.orelse, env)
            self.block(node.finalbody, env)
        elif isinstance(node, ast.Match):
            self.expr(node.subject, env)
            for case in node.cases:
                self.block(case.body, env)
        else:  # Expr, Return, Raise, Assert, Delete, ...
            if isinstance(node, ast.Expr):
                self.dict_update(node.value, env)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self.expr(child, env)

    def imports(self, node: ast.Import | ast.ImportFrom, env: dict) -> None:
        package = self.index.package
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root != package:
                    env[alias.asname or root] = None
                    continue
                if not self.index.has_module(alias.name):
                    self.problem(node, f"import {alias.name}: no such module")
                env[alias.asname or root] = ModuleRef(alias.name if alias.asname else root)
            return
        source = node.module or ""
        if node.level or source.split(".")[0] != package:
            for alias in node.names:
                env[alias.asname or alias.name] = None
            return
        if not self.index.has_module(source):
            self.problem(node, f"from {source} import ...: no such module")
            return
        for alias in node.names:
            if alias.name == "*":
                continue
            sym = self.index.resolve_dotted(f"{source}.{alias.name}")
            self.record(node, "import", f"{source}.{alias.name}")
            if sym is None:
                self.problem(node, f"from {source} import {alias.name}: {source} has no name {alias.name!r}")
            env[alias.asname or alias.name] = self.symbol_type(sym)

    def function(self, node: ast.FunctionDef | ast.AsyncFunctionDef, env: dict, self_obj: _Local | None) -> None:
        for deco in node.decorator_list:
            self.expr(deco, env)
        local = dict(env)
        args = node.args
        for default in args.defaults + [d for d in args.kw_defaults if d is not None]:
            self.expr(default, env)
        every = args.posonlyargs + args.args + args.kwonlyargs
        for arg in every + [a for a in (args.vararg, args.kwarg) if a is not None]:
            local[arg.arg] = self.annotation(arg.annotation, env)
        if self_obj is not None and every and not _is_static(node):
            local[every[0].arg] = self_obj
        self.block(node.body, local)

    def klass(self, node: ast.ClassDef, env: dict) -> None:
        for base in node.bases:
            self.expr(base, env)
        self_obj = _Local()
        methods = [s for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
        saved, self.report = self.report, False
        for method in methods:  # first pass: learn what the methods store on self
            self.function(method, env, self_obj)
        self.report = saved
        for stmt in node.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.function(stmt, env, self_obj)
            else:
                self.stmt(stmt, dict(env))
        env[node.name] = None

    def bind(self, target: ast.expr, value: object, env: dict) -> None:
        if isinstance(target, ast.Name):
            env[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self.bind(elt, None, env)
        elif isinstance(target, ast.Attribute):
            owner = self.expr(target.value, env)
            if isinstance(owner, _Local):
                if value is not None or target.attr not in owner.attrs:
                    old = owner.attrs.get(target.attr, _UNSET)
                    owner.attrs[target.attr] = value if old is _UNSET or old is None or _same(old, value) else None
            else:
                self.member(owner, target.attr, target)
        elif isinstance(target, ast.Subscript):
            owner = self.expr(target.value, env)
            key = target.slice
            if isinstance(owner, _DictLit) and isinstance(key, ast.Constant) and isinstance(key.value, str):
                owner.keys.setdefault(key.value, target.lineno)
            self.expr(key, env)
        elif isinstance(target, ast.Starred):
            self.bind(target.value, None, env)

    def dict_update(self, node: ast.expr, env: dict) -> None:
        """``d.update({...})`` / ``d.update(k=v)`` on a tracked dict adds its literal keys."""
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update"):
            return
        owner = env.get(node.func.value.id) if isinstance(node.func.value, ast.Name) else None
        if not isinstance(owner, _DictLit):
            return
        for arg in node.args:
            if isinstance(arg, ast.Dict):
                for key in arg.keys:
                    if isinstance(key, ast.Constant) and isinstance(key.value, str):
                        owner.keys.setdefault(key.value, node.lineno)
        for keyword in node.keywords:
            if keyword.arg:
                owner.keys.setdefault(keyword.arg, node.lineno)

    # ---- expressions

    def expr(self, node: ast.expr | None, env: dict) -> object:
        if node is None:
            return None
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Attribute):
            return self.member(self.expr(node.value, env), node.attr, node)
        if isinstance(node, ast.Call):
            return self.call(node, env)
        if isinstance(node, ast.Subscript):
            owner = self.expr(node.value, env)
            self.expr(node.slice, env)
            if isinstance(owner, SeqOf):
                return owner if isinstance(node.slice, ast.Slice) else owner.item
            return None
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            local = dict(env)
            for gen in node.generators:
                items = self.expr(gen.iter, local)
                self.bind(gen.target, items.item if isinstance(items, SeqOf) else None, local)
                for cond in gen.ifs:
                    self.expr(cond, local)
            if isinstance(node, ast.DictComp):
                self.expr(node.key, local)
                self.expr(node.value, local)
                return None
            return SeqOf(self.expr(node.elt, local))
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            items = [self.expr(e, env) for e in node.elts]
            return SeqOf(items[0] if items and all(i is items[0] for i in items) else None)
        if isinstance(node, ast.Dict):
            for part in node.keys + node.values:
                self.expr(part, env)
            if node.keys and all(isinstance(k, ast.Constant) and isinstance(k.value, str) for k in node.keys):
                return _DictLit({k.value: node.lineno for k in node.keys})
            return None
        if isinstance(node, ast.NamedExpr):
            value = self.expr(node.value, env)
            env[node.target.id] = value
            return value
        if isinstance(node, ast.Lambda):
            local = dict(env)
            for arg in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
                local[arg.arg] = None
            self.expr(node.body, local)
            return None
        if isinstance(node, ast.Await):
            return self.expr(node.value, env)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):  # list + list
            left, right = self.expr(node.left, env), self.expr(node.right, env)
            return left if isinstance(left, SeqOf) and _same(left, right) else None
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.expr(child, env)
            elif isinstance(child, ast.comprehension):
                self.expr(child.iter, env)
        return None

    def annotation(self, node: ast.expr | None, env: dict) -> object:
        node = parse_annotation(node)
        if node is None:
            return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            sides = [self.annotation(s, env) for s in (node.left, node.right)]
            known = [s for s in sides if s is not None]
            return known[0] if len(known) == 1 else None
        if isinstance(node, ast.Subscript):
            head = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
            inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            if head in ("list", "List", "Sequence", "Iterable", "Iterator", "tuple") and inner:
                return SeqOf(self.annotation(inner[0], env))
            if head == "Optional":
                return self.annotation(inner[0], env)
            return None
        saved, self.report = self.report, False  # a missing annotation name is reported where it is imported
        kind = self.expr(node, env)
        self.report = saved
        return Instance(kind.cls) if isinstance(kind, ClassRef) else None

    def symbol_type(self, sym: object) -> object:
        if isinstance(sym, ClassSym):
            return ClassRef(sym)
        if isinstance(sym, FuncSym):
            return FuncRef(sym, bound=False)
        if isinstance(sym, ModuleSym):
            return ModuleRef(sym.name)
        return None

    def member(self, owner: object, attr: str, node: ast.AST) -> object:
        if isinstance(owner, _Local):
            return owner.attrs.get(attr)
        dunder = attr.startswith("__") and attr.endswith("__")
        if isinstance(owner, ModuleRef):
            sym = self.index.lookup(owner.module, attr)
            if sym is None and not dunder:
                self.problem(node, f"{owner.module}.{attr}: no such name")
            return self.symbol_type(sym)
        if isinstance(owner, (ClassRef, Instance)):
            cls = owner.cls
            self.record(node, "attribute", f"{cls.qualname}.{attr}")
            members = self.index.members(cls)
            if attr not in members.names:
                if not (members.open or dunder):
                    hint = _close(attr, members.names)
                    self.problem(node, f"{cls.qualname} has no attribute {attr!r}{hint}")
                return None
            kind = self.index.member_type(cls, attr)
            if isinstance(owner, ClassRef) and isinstance(kind, FuncRef):
                decorators = {getattr(d, "id", "") for n in kind.func.nodes for d in n.decorator_list}
                return FuncRef(kind.func, bound="classmethod" in decorators)
            return kind
        return None

    def call(self, node: ast.Call, env: dict) -> object:
        self.dict_update(node, env)
        callee = self.expr(node.func, env)
        args = [self.expr(a.value if isinstance(a, ast.Starred) else a, env) for a in node.args]
        keywords = {k.arg: self.expr(k.value, env) for k in node.keywords if k.arg is not None}
        spread = [(k, self.expr(k.value, env)) for k in node.keywords if k.arg is None]
        if isinstance(callee, ClassRef):
            self.check_call(node, callee.cls.qualname, self.index.init_params(callee.cls), args, keywords, spread)
            return Instance(callee.cls)
        if isinstance(callee, FuncRef):
            params = self.index.func_params(callee.func)
            self.check_call(node, callee.func.qualname, params, args, keywords, spread)
            return self.index.return_type(callee.func)
        return None

    def check_call(
        self, node: ast.Call, target: str, params: Params, args: list, keywords: dict, spread: list
    ) -> None:
        short = target.rsplit(".", 2)[-2:] if "." in target else [target]
        label = ".".join(short) if short[0][:1].isupper() else short[-1]
        if self.report:
            self.uses.append(
                Use(
                    self.path,
                    node.lineno,
                    "call",
                    target,
                    tuple((k.arg or "**", ast.unparse(k.value)) for k in node.keywords),
                    tuple(self.guards),
                )
            )
        names = [(k.arg, k.lineno, "") for k in node.keywords if k.arg is not None]
        for keyword, value in spread:
            if isinstance(value, _DictLit):
                where = f" (a key of the dict passed as **{ast.unparse(keyword.value)})"
                names += [(k, line, where) for k, line in value.keys.items()]
        if not params.open:
            for name, line, where in names:
                if name not in params.names:
                    at = ast.Constant(0, lineno=line)
                    self.problem(
                        at, f"{label}({name}=...){where}: {target} has no keyword {name!r}{_close(name, params.names)}"
                    )
        bound = dict(zip(params.positional, args, strict=False)) | keywords
        for name, value in bound.items():
            item = value.item if isinstance(value, SeqOf) else value
            if not isinstance(item, _DictLit) or name not in params.annotations:
                continue
            module, note = params.annotations[name]
            allowed = self.index.typed_dict_fields(self.index.annotation_type(module, note))
            for key, line in item.keys.items():
                if allowed is not None and key not in allowed:
                    at = ast.Constant(0, lineno=line)
                    self.problem(
                        at,
                        f"{label}({name}=...): prompt key {key!r} is in none of the accepted TypedDicts{_close(key, allowed)}",
                    )


def _same(a: object, b: object) -> bool:
    """Two assignments of one attribute give it the same type (the class walk visits each method twice)."""
    if isinstance(a, Instance) and isinstance(b, Instance):
        return a.cls.node is b.cls.node
    if isinstance(a, SeqOf) and isinstance(b, SeqOf):
        return _same(a.item, b.item)
    return a is b


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _close(name: str, options) -> str:
    match = difflib.get_close_matches(name, [o for o in options if not o.startswith("_")], n=1, cutoff=0.75)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _is_static(node: ast.AST) -> bool:
    return any(getattr(d, "id", "") == "staticmethod" for d in getattr(node, "decorator_list", []))


def check_source(index: PackageIndex, source: str, path: str, label: str) -> tuple[list[Problem], list[Use]]:
    """Problems and checked uses of ``index``'s package in one client file (``path`` names it in messages)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        return [Problem(path, err.lineno or 0, f"cannot parse: {err.msg}")], []
    walker = _Walker(index, path, label)
    env: dict = {}
    walker.report = False  # module-level imports first, so functions defined above them see them
    for stmt in top_level(tree.body):
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            walker.imports(stmt, env)
    walker.report = True
    walker.block(tree.body, env)
    return sorted(walker.problems), walker.uses


def mentions(source: str, package: str) -> bool:
    """Cheap pre-filter: does a file import the package at all?"""
    return f"import {package}" in source or f"from {package}" in source


__all__ = ["Problem", "Use", "check_source", "mentions"]
