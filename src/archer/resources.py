"""Files the package reads at run time: evaluation tasks and suites, the model card template, the recipes.

Their one source is the checkout's top-level folders (``eval/``, ``model_cards/``, ``recipes/``), where a reader
edits them. ``src/archer/assets/`` holds only relative symbolic links to those folders, and setup.cfg declares
what they hold as package data, so the same ``importlib.resources`` lookup finds them in a checkout
(``PYTHONPATH=src``), an editable install, and a wheel (which carries copies of the linked files, made by the build).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def asset(*parts: str) -> Path:
    """The path of a packaged file or folder, e.g. ``asset("eval", "archer_tasks.py")``."""
    root = files("archer").joinpath("assets", *parts)
    if not isinstance(root, Path):  # a zipped install: lighteval and Jinja need real files
        raise RuntimeError(f"archer must be installed as plain files to read {'/'.join(parts)}, not from {root}")
    return root.resolve()  # in a checkout: the file the link points to, one path for one file


def tasks_module() -> Path:
    """The lighteval task module of Archer's benchmarks (``eval/archer_tasks.py``)."""
    return asset("eval", "archer_tasks.py")


def model_card_template() -> Path:
    """The model card template (``model_cards/archer_model_card.md``)."""
    return asset("model_cards", "archer_model_card.md")


def packaged_names(folder: Path) -> list[str]:
    """Names of the YAML files under ``folder`` (``tiny/archer`` for ``tiny/archer.yaml``), sorted."""
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))


def resolve_yaml(value: str | Path, *folder: str) -> Path:
    """``value`` as a path when that file exists, else the packaged YAML ``<folder>/<value>.yaml`` when it names one,
    else ``value`` unchanged (the caller reports the missing file).

    A name is a packaged file's path below its folder without ``.yaml`` (``paper`` for the suite
    ``eval/suites/paper.yaml``, ``tiny/smoke`` for ``recipes/tiny/smoke.yaml``): found from any working directory.
    """
    path = Path(value).expanduser()
    if path.is_file() or str(value).endswith((".yaml", ".yml")):
        return path
    named = asset(*folder) / f"{value}.yaml"
    return named if named.is_file() else path
