import json

import numpy as np
import pytest
from PIL import Image

from sdtune.data.folder import DatasetError, load_examples, load_image, scan_folder


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
