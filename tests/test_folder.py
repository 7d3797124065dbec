import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from sdtune.data.captions import shuffle_caption
from sdtune.data.folder import DatasetError, image_size, load_examples, load_image, read_image, scan_folder


def _image(path, size=(64, 64), mode="RGB", colour=(200, 10, 10)):
    Image.new(mode, size, colour if mode == "RGB" else None).save(path)


def test_kohya_style_folder(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a red square\n")
    _image(tmp_path / "b.jpg")
    (tmp_path / "b.txt").write_text("another")
    examples = scan_folder(tmp_path)
    assert [(e.image.name, e.caption) for e in examples] == [("a.png", "a red square"), ("b.jpg", "another")]
    pixels = load_examples(examples, 64)
    assert pixels.shape == (2, 3, 64, 64) and pixels.min() >= -1 and pixels.max() <= 1


def test_metadata_jsonl_and_instance_prompt(tmp_path):
    _image(tmp_path / "x.png")
    _image(tmp_path / "y.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "x.png", "text": "from metadata"}) + "\n")
    with pytest.raises(DatasetError, match="y.png has no caption"):
        scan_folder(tmp_path)
    examples = scan_folder(tmp_path, instance_prompt="a sks shape")
    assert [e.caption for e in examples] == ["from metadata", "a sks shape"]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "No images in"),
        (lambda d: (d / "notes.exe").write_text("x"), "neither images"),
        (lambda d: (_image(d / "a.png"), (d / "a.txt").write_text("x"), (d / "b.txt").write_text("y")), "without an image.*b.txt"),
        (lambda d: ((d / "a.png").write_bytes(b"not a png"), (d / "a.txt").write_text("x")), "Cannot read image .*a.png"),
        (lambda d: (_image(d / "a.png"), (d / "metadata.jsonl").write_text("{bad json\n")), "metadata.jsonl, line 1"),
    ],
)
def test_bad_folders_get_one_clear_error(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DatasetError, match=message):
        load_examples(scan_folder(tmp_path), 64)


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_folder(tmp_path / "nope")


def test_modes_and_sizes_are_converted_and_center_cropped(tmp_path):
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 32, 64))
    rgba.save(tmp_path / "rgba.png")
    Image.new("L", (128, 64), 90).save(tmp_path / "wide.png")
    rgb = load_image(tmp_path / "rgba.png", 64)
    assert rgb.shape == (64, 64, 3)
    assert tuple(rgb[10, 5]) == (255, 0, 0) and tuple(rgb[10, 60]) == (255, 255, 255)  # transparent -> white
    wide = load_image(tmp_path / "wide.png", 32)
    assert wide.shape == (32, 32, 3) and np.all(wide == 90)


def test_kohya_repeat_folders(tmp_path, caplog):
    """10_sks toy/: each image counts 10 times; without a caption file it is captioned with the folder's name."""
    _image(tmp_path / "top.png")
    (tmp_path / "top.txt").write_text("a top-level image")
    toy = tmp_path / "10_sks toy"
    toy.mkdir()
    _image(toy / "a.png")
    _image(toy / "b.png")
    (toy / "b.txt").write_text("sks toy, on a table")
    (tmp_path / "3_").mkdir()
    _image(tmp_path / "3_" / "c.png")  # no name after N_: the instance prompt, else an error
    for ignored in ("originals", "0_off"):
        (tmp_path / ignored).mkdir()
        _image(tmp_path / ignored / "x.png")
    (tmp_path / ".sdtune-cache").mkdir()  # hidden: the latent cache
    with pytest.raises(DatasetError, match="c.png has no caption"):
        scan_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        examples = scan_folder(tmp_path, instance_prompt="a photo")
    assert [(e.image.relative_to(tmp_path).as_posix(), e.caption, e.repeats) for e in examples] == [
        ("top.png", "a top-level image", 1), ("10_sks toy/a.png", "sks toy", 10), ("10_sks toy/b.png", "sks toy, on a table", 10),
        ("3_/c.png", "a photo", 3)]
    assert "0_off, originals" in caplog.text and "N_name" in caplog.text


def test_caption_extension(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "a.caption").write_text("from the .caption file")
    with pytest.raises(DatasetError, match=r"a.png has no caption.*a.caption is there"):
        scan_folder(tmp_path)
    assert [e.caption for e in scan_folder(tmp_path, caption_extension=".caption")] == ["from the .caption file"]
    assert [e.caption for e in scan_folder(tmp_path, caption_extension="caption")] == ["from the .caption file"]
    (tmp_path / "b.caption").write_text("orphan")
    with pytest.raises(DatasetError, match="without an image.*b.caption"):
        scan_folder(tmp_path, caption_extension=".caption")


def test_empty_captions_are_warned_about_and_all_empty_is_refused(tmp_path, caplog):
    for name, caption in (("a", "a red square"), ("b", "  \n")):
        _image(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text(caption)
    with caplog.at_level(logging.WARNING):
        scan_folder(tmp_path)
    assert [r.levelno for r in caplog.records] == [logging.WARNING] and "b.png" in caplog.text and "a.png" not in caplog.text
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(DatasetError, match="Every caption .* is empty"):
        scan_folder(tmp_path)


def test_phone_photos_are_turned_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view", as phones save portrait photos
    Image.new("RGB", (40, 20), (10, 200, 10)).save(tmp_path / "phone.jpg", exif=exif)
    assert image_size(tmp_path / "phone.jpg") == (40, 20)  # (height, width) as viewed, from the header alone
    assert read_image(tmp_path / "phone.jpg").size == (20, 40)  # PIL's (width, height)


def test_shuffle_caption_keeps_the_leading_tags():
    caption = "sks toy, red, on a table, studio light, smiling, 3d render"
    gen = torch.Generator().manual_seed(0)
    shuffled = [shuffle_caption(caption, 1, gen) for _ in range(20)]
    assert all(s.startswith("sks toy, ") for s in shuffled)
    assert all(sorted(s.split(", ")) == sorted(caption.split(", ")) for s in shuffled)
    assert len(set(shuffled)) > 10  # 5! = 120 orders
    assert not all(s.startswith("sks toy, red, ") for s in [shuffle_caption(caption, 0, gen) for _ in range(20)])
    assert shuffle_caption(caption, 10, gen) == caption
    state = gen.get_state()
    first = shuffle_caption(caption, 2, gen)
    gen.set_state(state)
    assert shuffle_caption(caption, 2, gen) == first  # from the trainer's generator alone: a resumed run shuffles the same
