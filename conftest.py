"""Settings shared by the package tests (tests/) and the chapters (course/, which nbval runs as tests).

pytest-xdist runs up to two workers (pyproject.toml: `-n auto --maxprocesses 2 --dist loadscope`: every test
module and every notebook stays on one worker, in order). Each worker, and each notebook kernel it starts, gets
an equal share of the cores. The tiny model's tensors are small: on 2 cores, chapter 03 took 135 s with one
thread and 122 s with two, so two single-thread workers nearly halve the time of the whole suite.
"""

import os

_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _threads = max(1, (os.cpu_count() or 1) // _workers)
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # inherited by the notebook kernels nbval starts
        os.environ[_name] = str(_threads)

    import torch

    torch.set_num_threads(_threads)


def pytest_configure(config):
    """The chapters' "at scale" cells run in the tests on tiny random SD 1.5 and SDXL pipelines (sdtune.course.at_scale):
    built once per machine into the cache (keyed by the builder's source), and named in the environment, which the
    notebook kernels that nbval starts inherit."""
    import hashlib
    from pathlib import Path

    from sdtune.course.at_scale import ENV
    from sdtune.io import staged_folder
    from sdtune.models import architectures

    key = hashlib.sha256(Path(architectures.__file__).read_bytes()).hexdigest()[:12]
    root = Path(os.environ.get("SDTUNE_CACHE", Path.home() / ".cache" / "sdtune")) / "random-pipelines" / key
    for kind, variable in ENV.items():
        folder = root / kind
        if not (folder / "model_index.json").is_file():
            with staged_folder(folder, record=False) as tmp:
                architectures.save_random_pipeline(kind, tmp, small=True)
        os.environ.setdefault(variable, str(folder))
