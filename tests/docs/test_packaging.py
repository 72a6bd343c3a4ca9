"""featcircuits works as an installed package: every file the library opens at run time (the
IOI data, the model zoo and its dictionaries, the pretrained-SAE table, the viewer's CSS and
JS) ships inside the wheel and is found through ``importlib.resources``, not the checkout."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "featcircuits"
#: the one module allowed to find a file relative to the checkout: the developer tool that
#: regenerates docs/cli.md (`python -m featcircuits.cli.docs`), which only runs in a checkout
CHECKOUT_ONLY = {"featcircuits/cli/docs.py"}


def _data_files() -> list[str]:
    """Every non-Python file under featcircuits/ (the package data), as wheel names."""
    return sorted(p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc")
                  and "__pycache__" not in p.parts)


def test_the_library_finds_files_through_the_package_not_the_checkout():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        if name not in CHECKOUT_ONLY and re.search(r"__file__|parents\[\d\]", text):
            offenders.append(name)
    assert offenders == [], ("find bundled files with featcircuits.files.package_path "
                             f"(importlib.resources), not relative to the source: {offenders}")
    assert (PACKAGE / "data" / "ioi" / "prompts.jsonl").is_file()
    assert not (ROOT / "data").exists(), "package data lives under featcircuits/, not data/"


@pytest.mark.slow
def test_the_wheel_holds_every_data_file_and_runs_from_another_folder(tmp_path):
    """Build the wheel (offline, no build isolation) from a copy of the sources, check it
    holds every package-data file, then import it from an unpacked copy in another folder:
    the IOI data, the zoo and the viewer resolve inside the unpacked wheel and load."""
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / "featcircuits",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, cwd=tmp_path, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("featcircuits-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in _data_files() if name not in names]
    assert missing == [], f"package data left out of the wheel (pyproject package-data): {missing}"

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import featcircuits as fc\n"
        "from featcircuits.render import html\n"
        "from featcircuits.tasks.ioi import default_data_dir, load_ioi_data\n"
        "print(fc.__file__)\n"
        "print(default_data_dir())\n"
        "print(fc.zoo_path('tiny'))\n"
        "print(len(fc.read_prompts(fc.tasks.default_prompts_path())))\n"
        "print(len(load_ioi_data().templates))\n"
        "print(len(html._viewer_file('viewer.js')))\n"
    )
    code = f"import sys; sys.path.insert(0, {str(site)!r})\n{probe}"
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=elsewhere, check=False,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for line in lines[:3]:
        assert line.startswith(str(site)), (line, str(site))
    rows = (PACKAGE / "data" / "ioi" / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    assert int(lines[3]) == len(rows) and int(lines[4]) > 0 and int(lines[5]) > 1000
