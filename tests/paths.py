"""Where the checkout is: the one definition the test files import (``from paths import ROOT``).

tests/ has no ``__init__.py``; pytest's default import mode puts it on ``sys.path``, as for hubserver.py.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root: src/, eval/, recipes/, tests/ ...
