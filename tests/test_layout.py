"""The package layout: no module shadows a standard-library module (running a file inside the package puts its
folder first on ``sys.path``, and ``tokenize.py`` once broke ``linecache`` that way)."""

import sys
from pathlib import Path

import jaxmech


def test_no_module_is_named_after_a_standard_library_module():
    root = Path(jaxmech.__file__).parent
    clashes = [str(p.relative_to(root)) for p in root.rglob("*.py")
               if p.stem in sys.stdlib_module_names and p.stem != "__init__"]
    assert clashes == []
