"""What the wheel and the sdist carry, checked from the source tree without building them:
every data file the package reads at run time is matched by pyproject's package-data
globs (a new asset folder would otherwise be left out of the wheel, and `bridgegan demo`
fall back to an untrained model), and MANIFEST.in puts into the sdist what its tests
import or run (setuptools adds only tests/test*.py by itself: no conftest.py, no
benchmarks/)."""
from __future__ import annotations

import glob
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import bridgegan
from bridgegan.reference.checkpoint import SHIPPED

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(bridgegan.__file__).resolve().parent
pytestmark = pytest.mark.skipif(
    not (ROOT / "pyproject.toml").is_file() or PACKAGE != ROOT / "bridgegan",
    reason="needs the source tree (these check how it is packaged)")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_package_data_covers_every_data_file():
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["bridgegan"]
    shipped = {p for pattern in patterns
               for p in glob.glob(pattern, root_dir=PACKAGE) if (PACKAGE / p).is_file()}
    data = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert data - shipped == set(), "data files the wheel would leave out"
    assert (SHIPPED / "model.safetensors").relative_to(PACKAGE).as_posix() in shipped


def test_sdist_carries_what_the_tests_use(tmp_path):
    """Builds the sdist (setuptools' PEP 517 hook, a few seconds, no network) from a copy of
    what it is made of (it writes its release folder beside setup.py) and looks for
    conftest.py and every benchmarks/ file a test names."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"needs setuptools >= 77 (the build requirement), found "
                    f"{setuptools.__version__}")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, src / name)
    for name in ("bridgegan", "tests", "benchmarks", "docs"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".*"))
    proc = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                           "build_meta.build_sdist(sys.argv[1])", str(tmp_path)],
                          cwd=src, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (sdist,) = tmp_path.glob("bridgegan-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    texts = [p.read_text() for p in (ROOT / "tests").glob("*.py")]
    named = {m for t in texts for m in re.findall(r'"benchmarks" / "([\w.]+)"', t)} | {
        f"{m}.py" for t in texts for m in re.findall(r'benchmark_script\("(\w+)"\)', t)}
    assert named, "the pattern no longer finds the benchmarks/ files the tests name"
    wanted = {"tests/conftest.py", *(f"tests/{p.name}" for p in (ROOT / "tests").glob("*.py")),
              *(f"benchmarks/{n}" for n in named),
              *(str(p.relative_to(ROOT)) for p in SHIPPED.rglob("*") if p.is_file())}
    assert wanted - names == set()
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
