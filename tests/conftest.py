import pytest
import torch

import sdtune
from sdtune.models.tiny import save_untrained_pipeline


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    """The tiny architecture with random weights, saved as a diffusers folder: every code path of the shipped
    model (tokenizer files, fp32 loading, LoRA, sampling) without depending on its training."""
    return save_untrained_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_path):
    pipe = sdtune.load_pipeline(tiny_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def judge():
    return sdtune.load_judge()


@pytest.fixture(scope="session")
def guessing_judge():
    """The judge naming its most probable value on every image (`sure=0`), as the figures of pretraining, the
    judge-agreement study and the audit were counted; the course's judge (`judge`) answers "unsure" below 0.9."""
    return sdtune.load_judge(sure=0.0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
