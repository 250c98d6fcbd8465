"""A package's public API read from its source with ``ast``, without importing it.

``PackageIndex`` holds one package's modules (from a wheel, which is a zip, or from an installed folder) and
answers what the API check needs: what a dotted name resolves to (following re-exports, ``TYPE_CHECKING``
imports and aliases), which keyword arguments a class or function accepts (dataclass / TypedDict / msgspec /
pydantic fields, ``__init__`` parameters, ``**kwargs`` forwarded to another callable), which attributes an
instance has, and the types that annotations name (so ``llm.generate(...)[0].outputs[0].text`` can be followed).

Everything here answers conservatively: when the source does not say (an attribute set dynamically, a base
class from another package, ``**kwargs`` swallowed), the answer is "open" and the caller must not report a
problem. Only a name that the source clearly lacks is reported.

Why not ``griffe``, which also loads an API without importing it: it gives members and signatures, but the
questions here are the ones above it (does this keyword reach a dataclass, msgspec or pydantic field through
``**kwargs`` forwarding; is the answer "open" because a base lives in another package), so the resolution layer
would stay and only the ``ast`` walk would go, for a new dependency of the check.
"""

from __future__ import annotations

import ast
import builtins
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

# Bases from outside a package that add nothing a caller could rely on beyond what builtins / dunders give.
CLOSED_EXTERNAL_BASES = {
    "abc.ABC",
    "enum.Enum",
    "enum.IntEnum",
    "enum.StrEnum",
    "msgspec.Struct",
    "typing.Generic",
    "typing.NamedTuple",
    "typing.Protocol",
    "typing.TypedDict",
    "typing_extensions.Protocol",
    "typing_extensions.TypedDict",
}
# Bases whose subclasses take their annotated fields as keyword arguments.
FIELD_BASES = {
    "msgspec.Struct",
    "pydantic.BaseModel",
    "typing.NamedTuple",
    "typing.TypedDict",
    "typing_extensions.TypedDict",
}
SEQUENCE_TYPES = {"list", "List", "Sequence", "MutableSequence", "Iterable", "Iterator", "Generator", "set", "tuple"}
ENUM_MEMBERS = {"name", "value"}


# --------------------------------------------------------------------------------------------------------------
# What a name resolves to


@dataclass(frozen=True, eq=False)
class ModuleSym:
    name: str


@dataclass(frozen=True, eq=False)
class ClassSym:
    module: str
    node: ast.ClassDef

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.node.name}"


@dataclass(frozen=True, eq=False)
class FuncSym:
    module: str
    nodes: tuple[ast.FunctionDef | ast.AsyncFunctionDef, ...]  # several when overloaded
    owner: ClassSym | None = None

    @property
    def name(self) -> str:
        return self.nodes[-1].name

    @property
    def qualname(self) -> str:
        return f"{self.owner.qualname if self.owner else self.module}.{self.name}"


@dataclass(frozen=True, eq=False)
class VarSym:
    """A module-level variable (a type alias, a constant): its annotation and value, unevaluated."""

    module: str
    annotation: ast.expr | None
    value: ast.expr | None


@dataclass(frozen=True)
class External:
    """A name from another package (``typing.TypedDict``, ``msgspec.Struct``, ``builtins.str``)."""

    qualname: str


Symbol = ModuleSym | ClassSym | FuncSym | VarSym | External


# --------------------------------------------------------------------------------------------------------------
# Types the checker follows through expressions


@dataclass(frozen=True, eq=False)
class Instance:
    cls: ClassSym


@dataclass(frozen=True, eq=False)
class ClassRef:
    cls: ClassSym


@dataclass(frozen=True, eq=False)
class ModuleRef:
    module: str


@dataclass(frozen=True, eq=False)
class FuncRef:
    func: FuncSym
    bound: bool  # called on an instance or a class (first parameter already given)


@dataclass(frozen=True, eq=False)
class SeqOf:
    item: object


@dataclass(frozen=True, eq=False)
class UnionOf:
    """An annotation naming several types; only used to find the TypedDicts a parameter accepts."""

    options: tuple
    partial: bool = False  # some option is unknown


Type = Instance | ClassRef | ModuleRef | FuncRef | SeqOf | UnionOf | None  # None: unknown


@dataclass
class Params:
    """Keyword names a callable accepts; ``open`` when it takes any (``**kwargs`` not traced further)."""

    names: set[str] = field(default_factory=set)
    positional: list[str] = field(default_factory=list)  # in order, for binding positional arguments
    annotations: dict[str, tuple[str, ast.expr]] = field(default_factory=dict)  # name -> (module, annotation)
    open: bool = False


@dataclass
class Members:
    names: dict[str, tuple[ClassSym, ast.AST]] = field(default_factory=dict)  # name -> (defining class, node)
    open: bool = False


def _decorator_name(node: ast.expr) -> str:
    node = node.func if isinstance(node, ast.Call) else node
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def parse_annotation(node: ast.expr | None) -> ast.expr | None:
    """String annotations (forward references) parsed into expressions."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            return ast.parse(node.value, mode="eval").body
        except SyntaxError:
            return None
    return node


class PackageIndex:
    """One top-level package's Python source, parsed on demand."""

    def __init__(self, package: str, sources: dict[str, tuple[str, str]], origin: str, version: str = ""):
        self.package = package
        self.version = version
        self.origin = origin  # where the source came from, for messages
        self._sources = sources  # module name -> (path for messages, source text)
        self._modules: dict[str, ast.Module] = {}
        self._params: dict[int, Params] = {}
        self._members: dict[int, Members] = {}

    # ---- loading

    @classmethod
    def from_wheel(cls, wheel: Path, package: str) -> PackageIndex:
        sources = {}
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.startswith(f"{package}/") and name.endswith(".py"):
                    sources[_module_name(name)] = (name, archive.read(name).decode("utf-8", "replace"))
        if not sources:
            raise ValueError(f"{wheel}: no Python source of package {package!r}")
        return cls(package, sources, wheel.name, version=wheel.name.split("-")[1])

    @classmethod
    def from_folder(cls, site: Path, package: str, version: str = "") -> PackageIndex:
        """``site`` is the folder holding the package folder (site-packages, or a source tree's ``src``)."""
        sources = {}
        for path in sorted((site / package).rglob("*.py")):
            rel = path.relative_to(site).as_posix()
            sources[_module_name(rel)] = (rel, path.read_text(encoding="utf-8", errors="replace"))
        if not sources:
            raise ValueError(f"{site / package}: no Python source")
        return cls(package, sources, str(site / package), version)

    def has_module(self, name: str) -> bool:
        return name in self._sources

    def path(self, module: str) -> str:
        return self._sources[module][0]

    def module(self, name: str) -> ast.Module | None:
        if name not in self._sources:
            return None
        if name not in self._modules:
            try:
                self._modules[name] = ast.parse(self._sources[name][1])
            except SyntaxError:
                self._modules[name] = ast.Module(body=[], type_ignores=[])
        return self._modules[name]

    def module_names(self, under: str = "") -> list[str]:
        return [name for name in self._sources if name == under or name.startswith(f"{under}.") or not under]

    # ---- names

    def resolve_dotted(self, dotted: str) -> Symbol | None:
        """``vllm.inputs.TokensPrompt`` -> its symbol; None when the package lacks it."""
        parts = dotted.split(".")
        if parts[0] != self.package:
            return External(dotted)
        for cut in range(len(parts), 0, -1):
            module = ".".join(parts[:cut])
            if self.has_module(module):
                sym: Symbol | None = ModuleSym(module)
                for attr in parts[cut:]:
                    sym = self.attribute(sym, attr)
                    if sym is None or isinstance(sym, External):
                        return sym
                return sym
        return None

    def attribute(self, sym: Symbol | None, attr: str) -> Symbol | None:
        if isinstance(sym, ModuleSym):
            return self.lookup(sym.name, attr)
        if isinstance(sym, ClassSym):
            members = self.members(sym)
            if attr in members.names:
                owner, node = members.names[attr]
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    return self._method(owner, attr)
                if isinstance(node, ast.ClassDef):
                    return ClassSym(owner.module, node)
                return VarSym(owner.module, getattr(node, "annotation", None), getattr(node, "value", None))
            return External(f"{sym.qualname}.{attr}") if members.open else None
        if isinstance(sym, External):
            return External(f"{sym.qualname}.{attr}")
        return External(attr) if sym is not None else None

    def lookup(self, module: str, name: str, _seen: frozenset = frozenset()) -> Symbol | None:
        """What ``name`` means at the top level of ``module`` (or a submodule of that name)."""
        key = (module, name)
        if key in _seen:
            return None
        _seen = _seen | {key}
        tree = self.module(module)
        if tree is None:
            return None
        found: list[Symbol] = []
        star_imports: list[str] = []
        for stmt in top_level(tree.body):
            if isinstance(stmt, ast.ClassDef) and stmt.name == name:
                found.append(ClassSym(module, stmt))
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == name:
                nodes = [s for s in top_level(tree.body) if isinstance(s, type(stmt)) and s.name == name]
                found.append(FuncSym(module, tuple(nodes)))
            elif isinstance(stmt, ast.ImportFrom):
                source = _absolute(module, stmt, self.path(module).endswith("__init__.py"))
                for alias in stmt.names:
                    if alias.name == "*":
                        star_imports.append(source)
                    elif (alias.asname or alias.name) == name:
                        found.append(self._imported(source, alias.name, _seen))
            elif isinstance(stmt, ast.Import):
                for alias in stmt.names:
                    if alias.asname == name:
                        found.append(self._imported_module(alias.name))
                    elif alias.asname is None and alias.name.split(".")[0] == name:
                        found.append(self._imported_module(name))
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    found.append(self._variable(module, stmt, _seen))
        if self.has_module(f"{module}.{name}"):
            found.append(ModuleSym(f"{module}.{name}"))
        # Prefer a definition or a real import over a fallback assignment (``if TYPE_CHECKING: import ... else:``)
        for sym in found:
            if sym is not None and not isinstance(sym, VarSym):
                return sym
        if found:
            return found[0]
        for source in star_imports:
            if self.package == source.split(".")[0] and (sym := self.lookup(source, name, _seen)) is not None:
                return sym
        if not star_imports and hasattr(builtins, name):
            return External(f"builtins.{name}")
        if _defines(tree, "__getattr__"):
            return self._lazy(module, tree, name, _seen)
        return External(f"{module}.{name}") if star_imports else None

    def _lazy(self, module: str, tree: ast.Module, name: str, seen: frozenset) -> Symbol | None:
        """A module-level ``__getattr__`` serving names from a dict ``{"LLM": ".entrypoints.llm:LLM", ...}``."""
        getattr_fn = next(
            s for s in top_level(tree.body) if isinstance(s, ast.FunctionDef) and s.name == "__getattr__"
        )
        used = {n.id for n in ast.walk(getattr_fn) if isinstance(n, ast.Name)}
        for stmt in top_level(tree.body):
            if not (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Dict)):
                continue
            table = stmt.value
            if not any(isinstance(t, ast.Name) and t.id in used for t in stmt.targets):
                continue
            if not all(isinstance(k, ast.Constant) and isinstance(k.value, str) for k in table.keys):
                continue
            for key, value in zip(table.keys, table.values, strict=True):
                if key.value == name and isinstance(value, ast.Constant) and isinstance(value.value, str):
                    target, _, attr = value.value.partition(":")
                    if target.startswith("."):
                        target = module + target
                    return self.lookup(target, attr or name, seen) if self.has_module(target) else None
            return None  # the table is the whole lazy API: the name is not in it
        return External(f"{module}.{name}")  # a lazy module we cannot read: cannot say the name is missing

    def _imported(self, source: str, name: str, seen: frozenset) -> Symbol | None:
        if source.split(".")[0] != self.package:
            return External(f"{source}.{name}")
        if not self.has_module(source):
            return None
        return self.lookup(source, name, seen)

    def _imported_module(self, name: str) -> Symbol | None:
        if name.split(".")[0] != self.package:
            return External(name)
        return ModuleSym(name) if self.has_module(name) else None

    def _variable(self, module: str, stmt: ast.Assign | ast.AnnAssign, seen: frozenset) -> Symbol | None:
        value = stmt.value
        if isinstance(value, (ast.Name, ast.Attribute)):  # an alias: LLMEngine = V1LLMEngine
            target = self.expr_symbol(module, value, seen)
            if isinstance(target, (ClassSym, FuncSym, ModuleSym)):
                return target
        return VarSym(module, getattr(stmt, "annotation", None), value)

    def expr_symbol(self, module: str, node: ast.expr, seen: frozenset = frozenset()) -> Symbol | None:
        """A Name / Attribute expression at the top level of ``module`` -> its symbol."""
        if isinstance(node, ast.Name):
            return self.lookup(module, node.id, seen)
        if isinstance(node, ast.Attribute):
            return self.attribute(self.expr_symbol(module, node.value, seen), node.attr)
        if isinstance(node, ast.Subscript):  # Generic[T], TypedDict bases with parameters
            return self.expr_symbol(module, node.value, seen)
        if isinstance(node, ast.Call):  # e.g. a base built by a factory: unknown
            return External("<call>")
        return None

    # ---- classes

    def bases(self, cls: ClassSym) -> list[Symbol | None]:
        return [self.expr_symbol(cls.module, base) for base in cls.node.bases]

    def is_field_based(self, cls: ClassSym, _depth: int = 0) -> bool:
        """Dataclass-like: its annotated class attributes are its keyword arguments."""
        for deco in cls.node.decorator_list:
            if _decorator_name(deco) == "dataclass":
                return True
            target = self.expr_symbol(cls.module, deco.func if isinstance(deco, ast.Call) else deco)
            if isinstance(target, FuncSym) and any(
                _decorator_name(d) == "dataclass_transform" for n in target.nodes for d in n.decorator_list
            ):
                return True
        if _depth > 20:
            return False
        for base in self.bases(cls):
            if isinstance(base, External) and base.qualname in FIELD_BASES:
                return True
            if isinstance(base, ClassSym) and self.is_field_based(base, _depth + 1):
                return True
        return False

    def _mro(self, cls: ClassSym) -> list[ClassSym | External | None]:
        order: list = []
        seen: set[int] = set()

        def visit(c: ClassSym, depth: int) -> None:
            if id(c.node) in seen or depth > 30:
                return
            seen.add(id(c.node))
            order.append(c)
            for base in self.bases(c):
                if isinstance(base, ClassSym):
                    visit(base, depth + 1)
                else:
                    order.append(base)

        visit(cls, 0)
        return order

    def members(self, cls: ClassSym) -> Members:
        key = id(cls.node)
        if key in self._members:
            return self._members[key]
        out = Members()
        self._members[key] = out  # guards against cycles
        for entry in reversed(self._mro(cls)):  # own definitions last, so they win
            if isinstance(entry, ClassSym):
                for name, node in _class_body_names(entry.node).items():
                    out.names[name] = (entry, node)
                if _defines_in_class(entry.node, ("__getattr__", "__getattribute__")):
                    out.open = True
            elif isinstance(entry, External):
                if entry.qualname.startswith("builtins."):
                    base = getattr(builtins, entry.qualname.split(".", 1)[1], None)
                    if isinstance(base, type):
                        for name in dir(base):
                            out.names.setdefault(name, (cls, ast.Pass()))
                elif entry.qualname.startswith("enum."):
                    for name in ENUM_MEMBERS:
                        out.names.setdefault(name, (cls, ast.Pass()))
                elif entry.qualname not in CLOSED_EXTERNAL_BASES:
                    out.open = True
            else:
                out.open = True
        return out

    def _method(self, owner: ClassSym, name: str) -> FuncSym:
        nodes = tuple(
            s for s in owner.node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name == name
        )
        return FuncSym(owner.module, nodes, owner)

    def init_params(self, cls: ClassSym, _depth: int = 0) -> Params:
        key = id(cls.node)
        if key in self._params:
            return self._params[key]
        self._params[key] = Params(open=True)  # cycle guard
        own_init = [
            s for s in cls.node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name == "__init__"
        ]
        if own_init:
            params = self.func_params(FuncSym(cls.module, tuple(own_init), cls), _depth + 1)
        elif _defines_in_class(cls.node, ("__new__",)):
            params = Params(open=True)
        elif self.is_field_based(cls):
            params = self._field_params(cls)
        else:
            params = Params()  # object() takes no keyword
            for base in self.bases(cls):
                if isinstance(base, ClassSym):
                    params = self.init_params(base, _depth + 1)
                    break
                if isinstance(base, External) and base.qualname not in CLOSED_EXTERNAL_BASES | {"builtins.object"}:
                    params = Params(open=True)
                    break
        self._params[key] = params
        return params

    def _field_params(self, cls: ClassSym) -> Params:
        params = Params()
        for entry in reversed(self._mro(cls)):
            if isinstance(entry, ClassSym):
                if not (entry is cls or self.is_field_based(entry)):
                    continue
                for stmt in entry.node.body:
                    if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                        continue
                    name, note = stmt.target.id, ast.unparse(stmt.annotation)
                    if "ClassVar" in note or note.endswith("KW_ONLY") or _init_false(stmt.value):
                        continue
                    params.names.add(name)
                    params.annotations[name] = (entry.module, stmt.annotation)
                    if name not in params.positional:
                        params.positional.append(name)
        return params

    def func_params(self, func: FuncSym, _depth: int = 0) -> Params:
        params = Params()
        for node in func.nodes:
            args = node.args
            positional = [a.arg for a in args.posonlyargs + args.args]
            if func.owner is not None and not _is_staticmethod(node) and positional:
                positional = positional[1:]  # self / cls
            for arg in args.args + args.kwonlyargs:
                if arg.arg in positional or arg in args.kwonlyargs:
                    params.names.add(arg.arg)
                    if arg.annotation is not None:
                        params.annotations[arg.arg] = (func.module, arg.annotation)
            params.positional = params.positional or positional
            if args.kwarg is not None:
                forwarded = self._forwarded(func, node, args.kwarg.arg, _depth)
                params.open = params.open or forwarded.open
                params.names |= forwarded.names
                for name, note in forwarded.annotations.items():
                    params.annotations.setdefault(name, note)
        return params

    def _forwarded(self, func: FuncSym, node: ast.AST, kwarg: str, depth: int) -> Params:
        """``def f(..., **kwargs): g(**kwargs)``: f accepts what g accepts; open if that cannot be followed."""
        calls = [
            c
            for c in ast.walk(node)
            if isinstance(c, ast.Call)
            and any(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == kwarg for k in c.keywords)
        ]
        if not calls or depth > 8:
            return Params(open=True)
        out = Params()
        for call in calls:
            target = self._callee(func, call.func)
            if isinstance(target, ClassSym):
                got = self.init_params(target, depth + 1)
            elif isinstance(target, FuncSym):
                got = self.func_params(target, depth + 1)
            else:
                return Params(open=True)
            out.names |= got.names
            out.annotations.update(got.annotations)
            out.open = out.open or got.open
        return out

    def _callee(self, func: FuncSym, node: ast.expr) -> Symbol | None:
        owner = func.owner
        if isinstance(node, ast.Name) and node.id == "cls" and owner is not None:
            return owner
        if isinstance(node, ast.Attribute) and owner is not None:
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                return self.attribute(owner, node.attr)
            if isinstance(node.value, ast.Call) and _decorator_name(node.value.func) == "super":
                for base in self.bases(owner):
                    if isinstance(base, ClassSym):
                        return base if node.attr == "__init__" else self.attribute(base, node.attr)
                return None
        return self.expr_symbol(func.module, node)

    # ---- types

    def annotation_type(self, module: str, node: ast.expr | None, _depth: int = 0) -> Type:
        """The type an annotation names in ``module``: classes, sequences of them, unions (None dropped)."""
        node = parse_annotation(node)
        if node is None or _depth > 10:
            return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return _union([self.annotation_type(module, side, _depth + 1) for side in (node.left, node.right)])
        if isinstance(node, ast.Constant) and node.value is None:
            return UnionOf(())
        if isinstance(node, ast.Subscript):
            head = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
            inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            if head in ("Optional", "Union"):
                return _union([self.annotation_type(module, n, _depth + 1) for n in inner])
            if head in SEQUENCE_TYPES:
                return SeqOf(self.annotation_type(module, inner[0], _depth + 1))
            if head in ("NotRequired", "Required", "Annotated", "Final"):
                return self.annotation_type(module, inner[0], _depth + 1)
            return None
        sym = self.expr_symbol(module, node)
        if isinstance(sym, ClassSym):
            return Instance(sym)
        if isinstance(sym, VarSym) and sym.value is not None and not isinstance(sym.value, ast.Constant):
            return self.annotation_type(sym.module, sym.value, _depth + 1)  # a type alias
        return None

    def return_type(self, func: FuncSym) -> Type:
        return self.annotation_type(func.module, func.nodes[-1].returns)

    def member_type(self, cls: ClassSym, name: str) -> Type:
        """The type of ``instance.name``: from an annotation, a property, or what ``__init__`` assigns to it."""
        members = self.members(cls)
        if name not in members.names:
            return None
        owner, node = members.names[name]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if any(_decorator_name(d) in ("property", "cached_property") for d in node.decorator_list):
                return self.annotation_type(owner.module, node.returns)
            return FuncRef(self._method(owner, name), bound=not _is_staticmethod(node))
        if isinstance(node, ast.ClassDef):
            return ClassRef(ClassSym(owner.module, node))
        if isinstance(node, ast.AnnAssign):
            return self.annotation_type(owner.module, node.annotation)
        if isinstance(node, _SelfAssign):
            return self._self_assign_type(owner, node)
        return None

    def _self_assign_type(self, owner: ClassSym, assign: _SelfAssign) -> Type:
        if assign.annotation is not None:
            return self.annotation_type(owner.module, assign.annotation)
        value = assign.value
        if isinstance(value, ast.Name):  # self.x = x, x a parameter of the method
            for arg in assign.method.args.args + assign.method.args.kwonlyargs:
                if arg.arg == value.id:
                    return self.annotation_type(owner.module, arg.annotation)
            return None
        if isinstance(value, ast.Call):
            target = self._callee(FuncSym(owner.module, (assign.method,), owner), value.func)
            if isinstance(target, ClassSym):
                return Instance(target)
            if isinstance(target, FuncSym):  # e.g. LLMEngine.from_engine_args(...) -> "LLMEngine"
                return self.return_type(target)
        return None

    def typed_dict_fields(self, type_: Type, _depth: int = 0) -> set[str] | None:
        """Keys a dict may carry where ``type_`` is expected: the union of the TypedDicts it names (None: any)."""
        if _depth > 10:
            return None
        if isinstance(type_, UnionOf):
            keys: set[str] = set()
            found = False
            for option in type_.options:
                got = self.typed_dict_fields(option, _depth + 1)
                if got is not None:
                    keys |= got
                    found = True
            return keys if found else None
        if isinstance(type_, SeqOf):
            return self.typed_dict_fields(type_.item, _depth + 1)
        if isinstance(type_, Instance) and self._is_typed_dict(type_.cls):
            return self._field_params(type_.cls).names
        return None

    def _is_typed_dict(self, cls: ClassSym) -> bool:
        return any(isinstance(e, External) and e.qualname.endswith(".TypedDict") for e in self._mro(cls))


@dataclass(frozen=True, eq=False)
class _SelfAssign:
    """``self.name = value`` (or ``self.name: T = value``) inside a method of the class."""

    method: ast.FunctionDef
    value: ast.expr | None
    annotation: ast.expr | None


def _union(options: list[Type]) -> Type:
    """``A | B | None``: ``A`` alone when that is all it can be besides None; a union otherwise.

    A union with an option we cannot read (a class of another package, ``str``) is ``partial``: no attribute of it
    can be checked, but the TypedDicts among its options still say which dict keys a parameter accepts.
    """
    flat: list = []
    partial = False
    for option in options:
        if option is None:
            partial = True
        elif isinstance(option, UnionOf):
            flat.extend(option.options)
            partial = partial or option.partial
        else:
            flat.append(option)
    if len(flat) == 1 and not partial:
        return flat[0]
    return UnionOf(tuple(flat), partial)


def _module_name(path: str) -> str:
    name = path[: -len(".py")].replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _absolute(module: str, stmt: ast.ImportFrom, is_package: bool) -> str:
    if not stmt.level:
        return stmt.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (stmt.level - 1)]
    return ".".join(base + ([stmt.module] if stmt.module else []))


def top_level(body: list[ast.stmt]):
    """Statements bound at a module's top level, inside ``if`` / ``try`` blocks too."""
    for stmt in body:
        if isinstance(stmt, ast.If):
            yield from top_level(stmt.body)
            yield from top_level(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            for block in (stmt.body, *(h.body for h in stmt.handlers), stmt.orelse, stmt.finalbody):
                yield from top_level(block)
        else:
            yield stmt


def _defines(tree: ast.Module, name: str) -> bool:
    return any(isinstance(s, ast.FunctionDef) and s.name == name for s in top_level(tree.body))


def _defines_in_class(node: ast.ClassDef, names: tuple[str, ...]) -> bool:
    return any(isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name in names for s in node.body)


def _is_staticmethod(node: ast.AST) -> bool:
    return any(_decorator_name(d) == "staticmethod" for d in getattr(node, "decorator_list", []))


def _init_false(value: ast.expr | None) -> bool:
    return isinstance(value, ast.Call) and any(
        k.arg == "init" and isinstance(k.value, ast.Constant) and k.value.value is False for k in value.keywords
    )


def _class_body_names(node: ast.ClassDef) -> dict[str, ast.AST]:
    """Attributes a class defines: class-level names, methods, nested classes, and ``self.x = ...`` (or
    ``setattr(self, "x", ...)``) in methods."""
    names: dict[str, ast.AST] = {}
    for stmt in top_level(node.body):
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(stmt):
                target = value = annotation = None
                if isinstance(sub, ast.Assign):
                    value = sub.value
                    for t in sub.targets:
                        for elt in t.elts if isinstance(t, ast.Tuple) else [t]:
                            if _is_self_attr(elt):
                                names.setdefault(elt.attr, _SelfAssign(stmt, value, None))
                    continue
                if (
                    isinstance(sub, ast.Call)
                    and _decorator_name(sub.func) == "__setattr__"
                    or (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "setattr")
                ):  # object.__setattr__(self, "x", v) in frozen dataclasses, setattr(self, "x", v)
                    args = sub.args
                    on_self = len(args) >= 2 and isinstance(args[0], ast.Name) and args[0].id == "self"
                    if on_self and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str):
                        names.setdefault(args[1].value, _SelfAssign(stmt, None, None))
                    continue
                if isinstance(sub, (ast.AnnAssign, ast.AugAssign)):
                    target, value = sub.target, sub.value
                    annotation = getattr(sub, "annotation", None)
                if target is not None and _is_self_attr(target):
                    names.setdefault(target.attr, _SelfAssign(stmt, value, annotation))
    for stmt in top_level(node.body):  # class-level definitions win over self.x assignments
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[stmt.name] = stmt
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            names[stmt.target.id] = stmt
        elif isinstance(stmt, ast.Assign):
            for t in stmt.targets:
                for elt in t.elts if isinstance(t, ast.Tuple) else [t]:
                    if isinstance(elt, ast.Name):
                        names[elt.id] = stmt
    return names


def _is_self_attr(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"


__all__ = [
    "ClassRef",
    "ClassSym",
    "External",
    "FuncRef",
    "FuncSym",
    "Instance",
    "ModuleRef",
    "ModuleSym",
    "PackageIndex",
    "Params",
    "SeqOf",
    "UnionOf",
    "VarSym",
]
