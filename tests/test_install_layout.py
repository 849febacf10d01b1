"""The README's editable install cannot be shadowed by the clone's own folder (issue: a script run from the clone's
parent folder imported the clone as an empty namespace package: ``module 'jaxmech' has no attribute 'load_model'``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _repo_on_path_by_pth() -> bool:
    """Whether the install put the clone on ``sys.path`` (``pip install -e . --config-settings
    editable_mode=compat``)."""
    out = subprocess.run([sys.executable, "-I", "-c", "import sys; print('\\n'.join(sys.path))"],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return str(REPO) in out


def test_script_run_from_the_clones_parent_imports_the_package(tmp_path):
    if not _repo_on_path_by_pth():
        pytest.skip("jaxmech is not installed as the README says (pip install -e . --config-settings "
                    "editable_mode=compat); this checks that install")
    (tmp_path / "jaxmech").symlink_to(REPO)  # the clone, seen from its parent folder under the package's name
    (tmp_path / "script.py").write_text("import jaxmech\nprint(jaxmech.__file__, callable(jaxmech.load_model))\n")
    out = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(REPO / "jaxmech" / "__init__.py"), "True"]
