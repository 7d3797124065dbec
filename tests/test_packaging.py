import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_the_assets_and_the_course_helpers(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
        check=True, timeout=600,
    )
    (wheel,) = tmp_path.glob("sdtune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "sdtune" / "assets").rglob("*") if p.is_file()}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert "sdtune/assets/judge/model.safetensors" in names
    assert "sdtune/course/solutions/ch00.py" in names
    assert {"sdtune/methods/lycoris.py", "sdtune/formats/kohya.py"} <= names


def test_the_shipped_weights_fit_in_25_mb():
    total = sum(p.stat().st_size for p in (ROOT / "sdtune" / "assets").rglob("*") if p.is_file())
    assert total <= 25_000_000, f"{total / 1e6:.2f} MB of package data"
