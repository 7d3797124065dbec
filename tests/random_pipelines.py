"""Tiny random SD 1.5 and SDXL pipelines (`sdtune.models.architectures`, small): the real-model code paths on a CPU."""

from sdtune.models.architectures import random_pipeline


def random_sd15(tiny_path=None):
    return random_pipeline("sd15", small=True)


def random_sdxl(tiny_path=None):
    return random_pipeline("sdxl", small=True)
