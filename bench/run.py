"""`make bench`: run every bench/bench_*.py module, print one table, write bench/results/<date>.md.

Each module's ``run(quick)`` returns rows {figure, ours, reference, ratio, target, note}, measured side by side
in this one run (the machines are shared and noisy: only ratios from one run are compared).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLUMNS = ("figure", "ours", "reference", "ratio", "target", "note")


def discover(only: list[str] | None) -> list[Path]:
    modules = sorted(HERE.glob("bench_*.py"))
    if only:
        names = {f"bench_{n}.py" if not n.startswith("bench_") else f"{n}.py" for n in only}
        unknown = names - {m.name for m in modules}
        if unknown:
            valid = ", ".join(m.stem.removeprefix("bench_") for m in modules)
            raise SystemExit(f"error: unknown bench {sorted(unknown)[0]!r}; valid: {valid}")
        modules = [m for m in modules if m.name in names]
    return modules


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def format_table(rows: list[dict]) -> str:
    def cell(row, col):
        value = row.get(col)
        if value is None:
            return ""
        return f"{value:.2f}x" if col == "ratio" and isinstance(value, (int, float)) else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r, c).replace("|", "/") for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def standalone(run, argv: list[str] | None = None) -> int:
    """Entry point of a bench module run on its own: ``python bench/bench_x.py [--quick]`` prints its rows."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness, numbers mean little")
    args = parser.parse_args(argv)
    print(format_table(run(quick=args.quick)))
    return 0


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run these benches only (e.g. objective rewards)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness, numbers mean little")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for <date>.md")
    args = parser.parse_args(argv)

    rows, started = [], time.perf_counter()
    for path in discover(args.only):
        name = path.stem.removeprefix("bench_")
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            new = load(path).run(quick=args.quick)
        except Exception as err:  # one broken bench must not hide the others' numbers
            new = [{"figure": f"{name}: failed", "note": f"{type(err).__name__}: {err}"}]
        for row in new:
            row.setdefault("figure", name)
        rows += new
        print(format_table(new), f"\n({time.perf_counter() - t0:.0f} s)\n", flush=True)

    table = format_table(rows)
    print(table)
    today = dt.date.today().isoformat()
    flags = " ".join((["--quick"] if args.quick else []) + (["--only", *args.only] if args.only else []))
    report = (
        f"# Benchmarks, {today}\n\nMachine: {machine()}\n\nCommand: `make bench"
        f"{f' ARGS={flags!r}' if flags else ''}`; total {time.perf_counter() - started:.0f} s. "
        "Ratios are ours / reference, measured interleaved in this run (lower is faster / smaller).\n\n"
        f"{table}\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{today}{'-quick' if args.quick else ''}.md"
    path.write_text(report)
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
