import json

import numpy as np
import pytest
from PIL import Image

from sdtune.data import toyworld as tw


def test_every_concept_renders_a_distinct_64px_rgb_image():
    images = {}
    for shape in tw.SHAPES:
        for style in tw.STYLES:
            image = tw.render(tw.Scene(shape=shape, style=style, background="gray"))
            assert image.size == (64, 64) and image.mode == "RGB"
            images[shape, style] = np.asarray(image)
    flat = [images[s, "flat"] for s in tw.SHAPES]
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            assert np.abs(flat[i].astype(int) - flat[j]).mean() > 3, "two shapes render alike"
    for style in tw.NOVEL_STYLES:
        assert np.abs(images["circle", style].astype(int) - images["circle", "flat"]).mean() > 3


def test_generation_is_seeded():
    a = [tw.render_array(s) for s in tw.sample_scenes(5, seed=3)]
    b = [tw.render_array(s) for s in tw.sample_scenes(5, seed=3)]
    c = [tw.render_array(s) for s in tw.sample_scenes(5, seed=4)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_caption_form_and_partial_captions():
    scene = tw.Scene(shape="circle", colour="red", background="white")
    assert tw.caption(scene) == "a red circle on a white background"
    assert tw.caption(tw.Scene(style="striped")) == "a striped red circle on a white background"
    assert tw.caption(scene, drop=["shape", "background"]) == "a red shape"


def test_base_selection_holds_only_base_concepts():
    for scene in tw.sample_scenes(200, seed=0):
        assert scene.shape in tw.BASE_SHAPES and scene.colour in tw.BASE_COLOURS
        assert scene.background in tw.BASE_BACKGROUNDS and scene.style == "flat"
    assert len(tw.base_prompts()) == 72
    assert set(tw.NOVEL_SHAPES).isdisjoint(tw.BASE_SHAPES) and len(tw.NOVEL_SHAPES) >= 2
    assert len(tw.NOVEL_STYLES) >= 2 and len(tw.NOVEL_BACKGROUNDS) >= 2


def test_pairs_differ_only_in_the_paired_property():
    for kind, field in (("shading", "style"), ("sharpness", "blur")):
        for a, b in tw.paired_scenes(4, seed=1, kind=kind):
            diff = {k for k in vars(a) if getattr(a, k) != getattr(b, k)}
            assert diff == {field}
            assert np.abs(tw.render_array(a) - tw.render_array(b)).mean() > 0.002


def test_unknown_attribute_names_the_choices():
    with pytest.raises(ValueError, match="Unknown shape 'hexagon'.*circle"):
        tw.Scene(shape="hexagon")
    with pytest.raises(ValueError, match="Bad colour selection"):
        tw.sample_scenes(3, colours=["teal"])


def test_write_dataset_is_a_user_style_folder_and_refuses_to_overwrite(tmp_path):
    scenes = tw.sample_scenes(3, seed=0, styles=["dotted"])
    folder = tw.write_dataset(scenes, tmp_path / "ds")
    names = sorted(p.name for p in folder.iterdir())
    # plus sdtune's manifest of what it wrote (hidden): what a later --overwrite may replace
    assert names == [".sdtune-manifest.json", "0000.png", "0000.txt", "0001.png", "0001.txt", "0002.png", "0002.txt", "scenes.jsonl"]
    assert (folder / "0001.txt").read_text().strip() == tw.caption(scenes[1])
    assert Image.open(folder / "0000.png").size == (64, 64)
    assert json.loads((folder / "scenes.jsonl").read_text().splitlines()[2])["style"] == "dotted"
    with pytest.raises(FileExistsError, match="overwrite"):
        tw.write_dataset(scenes[:1], folder)
    assert len(list(folder.iterdir())) == 8  # untouched
    tw.write_dataset(scenes[:1], folder, overwrite=True)
    assert len(list(folder.iterdir())) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a staging folder was left behind"


def test_broad_images_cover_more_than_the_palette():
    rng = np.random.default_rng(0)
    images = np.stack([tw.broad_image(rng) for _ in range(50)])
    assert images.min() >= 0 and images.max() <= 1
    palette = np.array(list(tw.COLOURS_RGB.values()) + list(tw.BACKGROUNDS_RGB.values())) / 255
    pixels = images.reshape(-1, 3)[::37]
    distance = np.min(np.linalg.norm(pixels[:, None] - palette[None], axis=2), axis=1)
    assert (distance > 0.15).mean() > 0.5, "broad images should be mostly off the toy palette"
