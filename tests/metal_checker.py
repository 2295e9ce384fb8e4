"""scripts/metal_check/metal_check.py (a script, not a package) loaded as a module for the tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

CHECKER = Path(__file__).resolve().parents[1] / "scripts" / "metal_check" / "metal_check.py"


def load() -> ModuleType:
    if "metal_check" in sys.modules:
        return sys.modules["metal_check"]
    spec = importlib.util.spec_from_file_location("metal_check", CHECKER)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["metal_check"] = mod
    spec.loader.exec_module(mod)
    return mod
