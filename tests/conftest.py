import pytest
import torch

import sdtune


@pytest.fixture(scope="session")
def tiny_pipe():
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def judge():
    return sdtune.load_judge()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
