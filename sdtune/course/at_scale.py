"""The chapters' "at scale" cells: the real SD 1.5 / SDXL call a learner runs on a GPU, run in CI on tiny random pipelines.

    scale = at_scale("sd15", "lora")       # None on a CPU (the cell says why and stops there)
    if scale:
        out = train(TrainConfig(model=scale.model, data=scale.data("my_photos", WHAT), out=scale.out("out/my_lora"),
                                steps=scale.steps(1500), **scale.settings))
        image = sdtune.sample(pipe, prompt, **scale.sampling(30, 7.5))[0]

On a GPU, `model` is the hub id and `settings` come from `sdtune.fit` for this GPU's memory (printed with reasons).
In CI (the tests set SDTUNE_SD15_MODEL / SDTUNE_SDXL_MODEL to tiny random pipelines of the same architectures), the
same lines run on the CPU: the settings a 15 GB T4 would get, with the CPU's stand-ins for what needs CUDA (float32
for fp16, AdamW for 8-bit AdamW), a toy-world folder for the learner's photos, and 2 steps. So no line of a chapter's
GPU path is first run by a learner.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import fit
from ..data import toyworld
from ..data.folder import IMAGE_EXTENSIONS

REAL = {"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5", "sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}
FAMILY = {"sd15": "sd1", "sdxl": "sdxl"}
ENV = {"sd15": "SDTUNE_SD15_MODEL", "sdxl": "SDTUNE_SDXL_MODEL"}  # set by the tests: a tiny random pipeline folder
T4_GB = 15.0  # the GPU whose settings CI runs: Colab's free T4


@dataclass
class AtScale:
    """Where an "at scale" cell runs and with what: the model, the settings, and CI's stand-ins."""

    kind: str  # 'sd15' or 'sdxl'
    model: str  # the hub id, or in CI a tiny random pipeline folder
    settings: dict  # TrainConfig settings that fit the GPU (sdtune.fit)
    ci: bool

    def steps(self, steps: int) -> int:
        """The learner's step count; 2 in CI."""
        return 2 if self.ci else steps

    def count(self, n: int) -> int:
        """A count the learner sets, such as class images to generate; 2 in CI."""
        return 2 if self.ci else n

    def sampling(self, steps: int, guidance: float) -> dict:
        """`sdtune.sample` keyword arguments: the learner's, or 2 steps in CI."""
        return {"num_inference_steps": self.steps(steps), "guidance_scale": guidance}

    def out(self, folder: str) -> str:
        """An output folder: the learner's, or a fresh temporary one in CI."""
        return tempfile.mkdtemp(prefix="sdtune-at-scale-") + "/out" if self.ci else folder

    def data(self, folder: str, what: str, stand_in: Callable[[Path], Path] | None = None) -> str:
        """The learner's data folder, checked before anything loads: one clear message saying what to put there when it
        is missing. In CI, a stand-in: `stand_in(tmp)` if given, else 8 captioned toy-world images."""
        if self.ci:
            tmp = Path(tempfile.mkdtemp(prefix="sdtune-at-scale-data-"))
            return str(stand_in(tmp) if stand_in else toyworld.write_dataset(toyworld.sample_scenes(8, seed=0), tmp / "images"))
        path = Path(folder)
        if not path.is_dir() or not any(p.suffix.lower() in IMAGE_EXTENSIONS or p.suffix == ".safetensors" for p in path.rglob("*")):
            raise FileNotFoundError(f"{path.resolve()} is missing or empty: {what}")
        return folder


def at_scale(kind: str, method: str) -> AtScale | None:
    """The real model of `kind` ('sd15' or 'sdxl') for `method` (a `sdtune.fit` method: 'lora', 'dreambooth',
    'dreambooth-lora', 'textual-inversion', 'full'), or None, said out loud, where the cell cannot run."""
    if kind not in REAL:
        raise ValueError(f"Unknown model kind {kind!r}: choose one of {', '.join(REAL)}.")
    ci_model = os.environ.get(ENV[kind])
    if ci_model:
        plan = fit.plan(FAMILY[kind], method, T4_GB, bf16=False)
        cpu = {"mixed_precision": "no", "optimizer": "adamw"}  # the CPU's stand-ins for fp16 and bitsandbytes
        print(f"CI: {REAL[kind]} replaced by a tiny random pipeline of its architecture ({ci_model}), 2 steps; "
              f"a T4's settings: {plan.settings} (on the CPU: {cpu})")
        return AtScale(kind, ci_model, plan.settings | cpu, ci=True)
    if not torch.cuda.is_available():
        print(f"This cell runs {REAL[kind]} and needs a GPU (Colab: Runtime > Change runtime type > GPU): skipped on this CPU.")
        return None
    return AtScale(kind, REAL[kind], fit.settings_for(FAMILY[kind], method), ci=False)
