"""The classroom's environment: what environment.yml's pip section installs, how big it is, how long it takes.

    python benchmarks/classroom_environment.py --torch-wheels /opt/wheels [--before COMMIT]

`conda env create -f environment.yml` (and micromamba, in repo2docker on Binder) first installs the conda packages
(python 3.11, pip and git from conda-forge), then writes the `pip:` entries, one a line, into a requirements file
and runs `pip install -U -r FILE --exists-action=b` in the yml's folder (conda/env/installers/pip.py). This
benchmark does the second part in a fresh venv of this machine's Python, with pip's cache off, and then checks
what it got: the torch build (CUDA or CPU), that sdtune imports and loads the tiny model, and the venv's size.

What it does not do: the conda part (conda-forge, which this machine cannot reach: a Python installation more
than the venv), and PyTorch's CPU index: where that index is unreachable, `--torch-wheels DIR` replaces the yml's
`--extra-index-url https://download.pytorch.org/whl/cpu` line with `--find-links DIR`, a folder that holds the
same wheel file (`torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl`). Every other package comes from the
package index pip is configured with here, so the time is this machine's, not a hub's.

`--before COMMIT` measures that commit's environment.yml too, the same way (its pip section installed as written).
Results: benchmarks/results/classroom_environment_cpu.json, with the command, commit and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from sdtune.evaluation.provenance import write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "classroom_environment_cpu.json"
PYTORCH_CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
# Run inside the new environment: what torch build it got, and that the course's library works.
CHECK = """
import json, torch, sdtune, jupyterlab, ipywidgets
pipe = sdtune.load_pipeline("tiny")
print(json.dumps({"torch": torch.__version__, "torch_cuda": torch.version.cuda, "sdtune": sdtune.__file__,
                  "jupyterlab": jupyterlab.__version__, "ipywidgets": ipywidgets.__version__}))
"""


def pip_section(yml_text: str, source: str) -> list[str]:
    """The `pip:` entries of an environment.yml, as conda passes them to pip."""
    for dependency in yaml.safe_load(yml_text)["dependencies"]:
        if isinstance(dependency, dict) and "pip" in dependency:
            return [str(line) for line in dependency["pip"]]
    raise ValueError(f"{source} has no 'pip:' section under 'dependencies'.")


def folder_megabytes(folder: Path) -> tuple[float, dict[str, float]]:
    """Bytes on disk (MB, 10^6) of a folder, and of each top-level package in its site-packages."""
    total, packages = 0, {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            size = path.stat().st_blocks * 512
            total += size
            parts = path.relative_to(folder).parts
            if "site-packages" in parts and len(parts) > parts.index("site-packages") + 2:
                name = parts[parts.index("site-packages") + 1]
                packages[name] = packages.get(name, 0) + size
    biggest = dict(sorted(((k, round(v / 1e6, 1)) for k, v in packages.items()), key=lambda kv: -kv[1])[:8])
    return round(total / 1e6, 1), biggest


def measure(label: str, entries: list[str], torch_wheels: Path | None) -> dict:
    if torch_wheels is not None:
        entries = [f"--find-links {torch_wheels}" if e == PYTORCH_CPU_INDEX else e for e in entries]
    with tempfile.TemporaryDirectory(prefix="classroom-env-") as tmp:
        venv, requirements = Path(tmp) / "env", Path(tmp) / "condaenv.requirements.txt"
        requirements.write_text("\n".join(entries))
        env = {**os.environ, "PIP_NO_CACHE_DIR": "1"}
        start = time.time()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = venv / "bin" / "python"
        pip = subprocess.run([python, "-m", "pip", "install", "-U", "-r", requirements, "--exists-action=b"],
                             cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        seconds = time.time() - start
        if pip.returncode != 0:
            raise RuntimeError(f"{label}: pip failed:\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}")
        check = subprocess.run([python, "-c", CHECK], cwd=tmp, env=env, capture_output=True, text=True, check=True)
        found = json.loads(check.stdout.strip().splitlines()[-1])
        installed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                                   check=True).stdout.split()
        megabytes, biggest = folder_megabytes(venv)
    result = {
        "label": label, "pip_entries": entries, "build_seconds": round(seconds, 1), "venv_megabytes": megabytes,
        "biggest_packages_megabytes": biggest, "packages": len(installed),
        "nvidia_packages": sorted(p for p in installed if p.lower().startswith("nvidia")), **found,
        "torch_build": "CPU" if found["torch_cuda"] is None else f"CUDA {found['torch_cuda']}",
    }
    print(f"{label}: torch {found['torch']} ({result['torch_build']}), {megabytes:,.0f} MB in the venv, "
          f"{len(installed)} packages ({len(result['nvidia_packages'])} nvidia-*), built in {seconds:.0f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--yml", type=Path, default=ROOT / "environment.yml", help="the environment file to measure")
    parser.add_argument("--torch-wheels", type=Path, help="a folder holding PyTorch's CPU wheel, used in place of "
                        "PyTorch's CPU index where that index cannot be reached")
    parser.add_argument("--before", metavar="COMMIT", help="also measure this commit's environment.yml")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs = [measure(str(args.yml.relative_to(ROOT) if args.yml.is_relative_to(ROOT) else args.yml),
                    pip_section(args.yml.read_text(), str(args.yml)), args.torch_wheels)]
    if args.before:
        text = subprocess.run(["git", "show", f"{args.before}:environment.yml"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout
        runs.append(measure(f"environment.yml at {args.before}", pip_section(text, args.before), args.torch_wheels))
    write_results(args.out, {
        "what": "environment.yml's pip section installed into a fresh venv the way conda does "
                "(pip install -U -r FILE --exists-action=b, in the repository root), pip's cache off",
        "not_measured": "the conda part (python, pip and git from conda-forge); PyTorch's CPU index, replaced by "
                        "--find-links to a folder with the same wheel where --torch-wheels is given",
        "python": platform.python_version(), "runs": runs,
    }, overwrite=True)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
