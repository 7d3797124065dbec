"""A learner's own photos through training: aspect-ratio buckets on tiny random SD 1.5 and SDXL, kohya's caption
conventions, the latent cache on disk, and the training log in TensorBoard."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from random_pipelines import random_sd15, random_sdxl
from sdtune.data.latents import default_cache_folder
from sdtune.training import Run, TrainConfig, train


def photo_folder(folder, sizes=((48, 96), (96, 48), (64, 64), (72, 96))):
    """Phone-like pictures of mixed shapes (height, width) with captions."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes * 2):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.jpg")
        (folder / f"img{i}.txt").write_text(f"sks photo, tag{i}, red, outdoors")
    return folder


def spy_on_batches(monkeypatch) -> list:
    """Record the latents' shape and the SDXL time ids of every UNet call the training loop makes."""
    seen = []
    predict = Run.predict

    def recording(self, model, z, t, cond, time_ids=None):
        seen.append((tuple(z.shape), None if time_ids is None else time_ids.clone()))
        return predict(self, model, z, t, cond, time_ids)

    monkeypatch.setattr(Run, "predict", recording)
    return seen


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
def test_mixed_aspect_photos_train_with_buckets_on_real_architectures(architecture, tmp_path, monkeypatch):
    pipe = (random_sd15 if architecture == "sd15" else random_sdxl)()
    pipe.set_progress_bar_config(disable=True)
    seen = spy_on_batches(monkeypatch)
    out = train(TrainConfig(data=str(photo_folder(tmp_path / "photos")), out=str(tmp_path / "o"), steps=12, batch_size=2, lr=1e-3,
                            rank=4), pipe=pipe)
    assert json.loads((out / "training_config.json").read_text())["buckets"] is None, "on by default for real models"
    shapes = {shape[2:] for shape, _ in seen}
    assert len(shapes) > 1, f"every batch was one square bucket: {shapes}"
    assert all(shape[0] == 2 for shape, _ in seen), "each batch is one shape"
    if architecture == "sdxl":
        for shape, ids in seen:  # original size (h, w), crop (top, left), target (h, w) = the bucket's size in pixels
            assert ids.shape == (2, 6) and all(tuple(row[4:].tolist()) == (shape[2] * 8, shape[3] * 8) for row in ids)
        assert {tuple(row[:2].tolist()) for _, ids in seen for row in ids} <= {(48.0, 96.0), (96.0, 48.0), (64.0, 64.0), (72.0, 96.0)}


def test_the_tiny_model_keeps_its_square_images_and_buckets_can_be_turned_off(tiny_pipe, tmp_path, monkeypatch):
    seen = spy_on_batches(monkeypatch)
    train(TrainConfig(data=str(photo_folder(tmp_path / "photos")), out=str(tmp_path / "o"), steps=4, batch_size=2, rank=4), pipe=tiny_pipe)
    assert {shape[2:] for shape, _ in seen} == {(8, 8)}


def test_kohya_repeat_folders_caption_extension_and_shuffle(tiny_pipe, tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "5_sks toy").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (64, 64), (200, 30 * i, 30)).save(data / "5_sks toy" / f"{i}.png")
        (data / "5_sks toy" / f"{i}.caption").write_text(f"sks toy, red, tag{i}, studio")
    captions = []
    encode = __import__("sdtune.training", fromlist=["encode_captions"]).encode_captions

    def recording(pipe, texts, device):
        captions.extend(texts)
        return encode(pipe, texts, device)

    monkeypatch.setattr("sdtune.training.encode_captions", recording)
    train(TrainConfig(data=str(data), out=str(tmp_path / "o"), steps=6, batch_size=2, rank=4, caption_extension=".caption",
                      shuffle_caption=True, keep_tokens=1), pipe=tiny_pipe)
    trained = [c for c in captions if c]
    assert trained and all(c.startswith("sks toy, ") for c in trained), "the kept leading tag stays first"
    assert len(set(trained)) > 2, "the other tags are shuffled from step to step"


def test_the_latent_cache_on_disk_is_reused(tiny_pipe, tmp_path, monkeypatch):
    data = photo_folder(tmp_path / "photos")
    options = dict(data=str(data), steps=2, batch_size=2, rank=4, cache_latents_to_disk=True)
    train(TrainConfig(out=str(tmp_path / "a"), **options), pipe=tiny_pipe)
    files = sorted(default_cache_folder(data).rglob("*.safetensors"))
    assert len(files) == 8
    stamps = [f.stat().st_mtime_ns for f in files]
    train(TrainConfig(out=str(tmp_path / "b"), **options), pipe=tiny_pipe)
    assert [f.stat().st_mtime_ns for f in files] == stamps, "the second run read the cache, it wrote nothing"


def test_tensorboard_gets_the_loss_the_learning_rate_and_validation_images(tiny_pipe, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = train(TrainConfig(data=str(photo_folder(tmp_path / "photos")), out=str(tmp_path / "o"), steps=3, batch_size=2, rank=4,
                            report_to="tensorboard", validation_prompt="a sks photo", validation_every=3), pipe=tiny_pipe)
    events = EventAccumulator(str(next((out / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert {"loss", "lr"} <= set(events.Tags()["scalars"]) and "validation" in events.Tags()["images"]
    losses = json.loads((out / "loss.json").read_text())["loss"]
    assert [round(e.value, 5) for e in events.Scalars("loss")] == [round(v, 5) for v in losses]


def test_report_to_an_unknown_tracker_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--report-to must be tensorboard or wandb"):
        train(TrainConfig(data=str(tmp_path), out=str(tmp_path / "o"), report_to="mlflow"))
    assert torch.tensor(1)  # nothing trained, nothing written
