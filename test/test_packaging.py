"""The supported torch versions, as setup.py, CI and the README state them."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_setup_with_torch(version):
    """setup.py --name, with torch.__version__ reading `version` (nothing is built)."""
    program = (
        "import runpy, sys, torch\n"
        f"torch.__version__ = {version!r}\n"
        "sys.argv = ['setup.py', '--name']\n"
        "runpy.run_path('setup.py', run_name='__main__')\n"
    )
    return subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def _tested_releases():
    return re.search(r"TESTED_TORCH = \(([^)]*)\)", (ROOT / "setup.py").read_text()).group(1)


@pytest.mark.parametrize("version", ["2.12.1", "2.15.0", "3.0.0+cpu"])
def test_setup_refuses_an_untested_torch(version):
    done = run_setup_with_torch(version)
    assert done.returncode != 0
    assert f"functorch_lite: torch {version} is outside the tested range" in done.stderr


@pytest.mark.parametrize("version", ["2.13.0", "2.13.1+cpu", "2.14.1"])
def test_setup_accepts_a_tested_torch(version):
    done = run_setup_with_torch(version)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "functorch_lite"


def test_ci_readme_and_setup_name_the_same_versions():
    ci_versions = re.search(r"for torch_version in ([\d. ]+);", (ROOT / ".ci/run").read_text())
    ci_versions = ci_versions.group(1).split()
    readme = (ROOT / "README.md").read_text()
    for version in ci_versions:
        release = ".".join(version.split(".")[:2])
        assert f'"{release}"' in _tested_releases(), (version, _tested_releases())
        assert f"{release}.x" in readme and version in readme, version


def test_the_extension_matches_the_torch_it_runs_with():
    import torch

    from functorch_lite import _C

    assert _C._built_torch_release == ".".join(torch.__version__.split(".")[:2])
