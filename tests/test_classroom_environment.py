"""environment.yml, the classroom's environment, installs PyTorch's CPU build on a Linux hub, the torch CI tests.

What it installs, its size and build time: benchmarks/classroom_environment.py (README, "Teaching with sdtune").
"""

import re
from pathlib import Path

import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYTORCH_CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
LINUX_HUB = default_environment() | {"sys_platform": "linux", "platform_machine": "x86_64", "python_version": "3.11"}


def pip_section() -> list[str]:
    dependencies = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    return next(d["pip"] for d in dependencies if isinstance(d, dict) and "pip" in d)


def cpu_torch_problems(entries: list[str]) -> list[str]:
    """What keeps a pip section from installing PyTorch's CPU build on x86-64 Linux (empty: nothing)."""
    problems = [] if PYTORCH_CPU_INDEX in entries else [f"no '{PYTORCH_CPU_INDEX}' line"]
    torches = [r for r in map(Requirement, (e for e in entries if re.match(r"torch\b", e)))
               if r.marker is None or r.marker.evaluate(LINUX_HUB)]
    if len(torches) != 1:
        return problems + [f"{len(torches)} torch requirements apply on x86-64 Linux, not 1"]
    pins = [s for s in torches[0].specifier if s.operator == "==" and s.version.endswith("+cpu")]
    return problems + ([] if pins else [f"torch is not pinned to a +cpu build on x86-64 Linux: {torches[0]}"])


def test_environment_yml_resolves_to_cpu_torch_on_a_linux_hub() -> None:
    assert cpu_torch_problems(pip_section()) == []


def test_the_check_fails_on_the_old_environment_yml() -> None:
    # The pip section before PyTorch's CPU index: on Linux, PyPI's torch is the CUDA build.
    assert len(cpu_torch_problems(["torch>=2.4,<2.15", "-e .[course,test]"])) == 2


def test_environment_yml_has_ci_s_torch_within_the_package_s_range() -> None:
    pinned = next(Requirement(e) for e in pip_section() if e.startswith("torch==") and "+cpu" in e)
    version = Version(str(pinned.specifier).removeprefix("=="))
    ci = re.search(r"pip install --quiet torch==(\S+)", (ROOT / ".ci" / "run").read_text()).group(1)
    assert version.public == ci, f"environment.yml pins torch {version}, CI installs {ci}"
    package_range = Requirement(re.search(r'"(torch[<>=!~][^"]*)"', (ROOT / "pyproject.toml").read_text()).group(1))
    assert package_range.specifier.contains(version.public), f"torch {version} is outside sdtune's {package_range}"
