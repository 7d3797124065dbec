"""The course in a real browser: JupyterLab in Debian's Chromium, driven by Playwright.

    apt-get install -y --no-install-recommends chromium        # /usr/bin/chromium (or set SDTUNE_CHROMIUM)
    pip install -e ".[test,course,browser]"
    python -m pytest -m browser --dist load tests/browser -rP  # every chapter with a slider, and the controls
    python -m pytest -m browser --dist load tests/browser -k "control or 12_ or 13_" -rP   # what CI runs

Each chapter is copied, as committed, into a temporary folder that JupyterLab serves (so the browser never writes
to course/), and opened in Chromium. Then, as a learner would: Edit > Clear Outputs of All Cells, Run > Run All
Cells, wait until no cell is queued and the kernel is idle, and check that
  - every code cell ran and none has an error output;
  - the chapter's `interact` widget rendered with its slider (ipywidgets' front end loaded) and shows a picture;
  - pressing the arrow key on the slider's handle changes the slider's value, and then the picture;
with screenshots of the page in the test's temporary folder (`-rP` prints where, with the times, the slider's
values and the peak memory of the server and the kernel). The controls run the same check on small notebooks that
must fail it: a slider whose picture never changes, a cell that raises, and a slider in a JupyterLab whose
ipywidgets extension is disabled; and on one that must pass it.

`--dist load` spreads the tests over pytest-xdist's two workers, each with its own JupyterLab and Chromium, and
the root conftest.py gives each worker's kernels one thread (two threads per kernel on a busy machine crawl).

This module runs only when asked (`-m browser`; pyproject.toml deselects the marker by default).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

COURSE = Path(__file__).resolve().parents[2] / "course"
CHROMIUM = os.environ.get("SDTUNE_CHROMIUM", "/usr/bin/chromium")
# As root on a machine with no internet: no sandbox, no GPU, and none of Chromium's calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# Every cell in the DOM (no virtual scrolling), nothing saved behind our back, no news or update checks.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}
WIDGETS_EXTENSION = "@jupyter-widgets/jupyterlab-manager"
RUN_TIMEOUT_S = 15 * 60  # a chapter takes about 2 minutes on 2 cores; CI runs it after the whole suite


def chapters_with_sliders() -> list[Path]:
    """The chapters whose `interact` has a slider (chapter 14's widget is a dropdown only)."""
    def has_slider(path: Path) -> bool:
        cells = nbformat.read(path, as_version=4).cells
        return any("Slider(" in cell.source for cell in cells if cell.cell_type == "code")

    return sorted(p for p in COURSE.glob("[0-9][0-9]_*.ipynb") if has_slider(p))


# --- JupyterLab, on a free localhost port with a token -----------------------------------------------------------


@dataclass
class Lab:
    root: Path
    url: str
    token: str
    log: Path
    runtime: Path  # where the kernels' connection files are
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)

    def peak_memory_gib(self) -> dict[str, float]:
        """Peak resident memory (VmHWM) in GiB of the server and its running kernels: what a student's server holds."""
        peaks = {"server": peak_gib(self.process.pid)}
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                command = (proc / "cmdline").read_text()
                if "ipykernel" in command and str(self.runtime) in command:
                    peaks[f"kernel {proc.name}"] = peak_gib(int(proc.name))
            except OSError:  # a process that ended meanwhile
                continue
        return peaks

    def api(self, method: str, path: str) -> object:
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shut_down_kernels(self) -> None:
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")


def peak_gib(pid: int) -> float:
    """A process's peak resident memory (VmHWM), in GiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 2**20, 2)
    raise OSError(f"no VmHWM for process {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(folder: Path, disabled_extensions: tuple[str, ...] = ()) -> Lab:
    """`jupyter lab` serving `folder/root`, with its settings, config and runtime files in `folder` too."""
    root = folder / "root"
    root.mkdir(parents=True)
    for name, settings in LAB_SETTINGS.items():
        (folder / "settings" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "settings" / name).write_text(json.dumps(settings))
    (folder / "config" / "labconfig").mkdir(parents=True)
    (folder / "config" / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {name: True for name in disabled_extensions}}))
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(folder / "settings"),
           "JUPYTER_CONFIG_DIR": str(folder / "config"), "JUPYTERLAB_WORKSPACES_DIR": str(folder / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(folder / "runtime")}
    port, token = free_port(), os.urandom(16).hex()
    log = folder / "jupyter-lab.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: the notebook's cells, read by CELLS_JS
         "--LabApp.extension_manager=readonly"],  # no calls to PyPI
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    lab = Lab(root, f"http://127.0.0.1:{port}", token, log, folder / "runtime", process)
    deadline = time.time() + 120
    while True:
        try:
            lab.api("GET", "/api/status")
            return lab
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                raise RuntimeError(f"jupyter lab did not start; its log:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.5)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail('Playwright is missing: pip install -e ".[test,course,browser]"')
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set SDTUNE_CHROMIUM)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = start_lab(tmp_path_factory.mktemp("lab"))
    yield lab
    lab.stop()


# --- one notebook, top to bottom, as a learner runs it -----------------------------------------------------------

# The notebook's cells as JupyterLab holds them (window.jupyterapp: --LabApp.expose_app_in_browser).
CELLS_JS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = [];
  for (const cell of panel.content.model.cells) {
    if (cell.type !== 'code') continue;
    const errors = cell.outputs.toJSON().filter(o => o.output_type === 'error').map(o => `${o.ename}: ${o.evalue}`);
    cells.push({count: cell.executionCount, errors});
  }
  const queued = [...panel.node.querySelectorAll('.jp-InputPrompt')].filter(p => p.textContent.includes('*'));
  return {cells, queued: queued.length, kernel: panel.sessionContext.session?.kernel?.status ?? 'none'};
}"""


def wait_until(condition, timeout_s: float, what: str, poll_s: float = 1.0):
    """Poll `condition()` until it returns something truthy; fail after `timeout_s` saying `what` we waited for."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if value := condition():
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def menu(page, name: str, item: str) -> None:
    """Click JupyterLab's menu `name`, then its item `item`."""
    page.locator(".lm-MenuBar-itemLabel", has_text=name).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def check_in_browser(lab: Lab, browser, notebook: Path, shots: Path, redraw_timeout_s: float = 120) -> dict:
    """Open `notebook` in JupyterLab in Chromium, Run All, and check its cells, its slider and its picture.

    Raises AssertionError naming what went wrong; returns what it saw (times, slider values)."""
    shutil.copy(notebook, lab.root / notebook.name)
    shots.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)
    seen: dict = {"notebook": notebook.name}
    try:
        start = time.time()
        page.goto(f"{lab.url}/lab/tree/{notebook.name}?reset&token={lab.token}")  # reset: no notebook of before
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
        wait_until(lambda: page.evaluate(CELLS_JS)["kernel"] == "idle", 120, "the kernel to start")
        seen["open_s"] = round(time.time() - start, 1)

        # The committed outputs go first (Edit > Clear Outputs of All Cells), so all that is checked is this run's.
        menu(page, "Edit", "Clear Outputs of All Cells")
        kept = [i for i, cell in enumerate(page.evaluate(CELLS_JS)["cells"]) if cell["count"] is not None]
        assert not kept, f"{notebook.name}: code cells {kept} kept their committed outputs"
        start = time.time()
        menu(page, "Run", "Run All Cells")
        # Done: no cell queued ([*]) and the kernel idle, twice in a row (the kernel is idle between two cells).
        done = [0]

        def finished() -> dict | None:
            state = page.evaluate(CELLS_JS)
            done[0] = done[0] + 1 if state["queued"] == 0 and state["kernel"] == "idle" else 0
            return state if done[0] >= 2 else None

        state = wait_until(finished, RUN_TIMEOUT_S, f"Run All Cells to finish in {notebook.name}", poll_s=2)
        seen["run_s"] = round(time.time() - start, 1)
        page.screenshot(path=shots / f"{notebook.stem}-after-run-all.png")
        errors = [f"code cell {i}: {e}" for i, cell in enumerate(state["cells"]) for e in cell["errors"]]
        assert not errors, f"{notebook.name}: error outputs in the browser:\n" + "\n".join(errors)
        not_run = [i for i, cell in enumerate(state["cells"]) if cell["count"] is None]
        assert not not_run, f"{notebook.name}: code cells {not_run} did not run"

        # The interact widget: rendered by ipywidgets' front end, with a slider and a picture.
        interact = page.locator(".widget-interact").filter(has=page.locator(".widget-slider")).first
        assert interact.count() == 1, (
            f"{notebook.name}: no interact widget with a slider rendered (is {WIDGETS_EXTENSION} enabled?)")
        interact.scroll_into_view_if_needed()
        slider = interact.locator(".widget-slider").first
        picture = interact.locator("img").first
        before = wait_until(lambda: picture.count() and picture.get_attribute("src"), 60, "the widget's picture")
        value_before = slider.locator(".widget-readout").inner_text()
        interact.screenshot(path=shots / f"{notebook.stem}-widget-before.png")

        slider.locator(".noUi-handle").first.focus()
        page.keyboard.press("ArrowRight")
        readout = slider.locator(".widget-readout")
        value_after = wait_until(lambda: readout.inner_text() != value_before and readout.inner_text(), 10,
                                 f"{notebook.name}'s slider to move from {value_before}")
        start = time.time()
        try:
            wait_until(lambda: picture.count() and picture.get_attribute("src") not in (None, before), redraw_timeout_s,
                       "a new picture", poll_s=0.5)
        except AssertionError:
            raise AssertionError(f"{notebook.name}: moving the slider from {value_before} to {value_after} did not "
                                 f"change the picture in {redraw_timeout_s:.0f} s") from None
        seen.update(slider=f"{value_before} -> {value_after}", redraw_s=round(time.time() - start, 1))
        interact.screenshot(path=shots / f"{notebook.stem}-widget-after.png")
        seen["peak_memory_gib"] = lab.peak_memory_gib()
        return seen
    except Exception:
        page.screenshot(path=shots / f"{notebook.stem}-failed.png")  # what the page showed
        raise
    finally:
        page.close()
        lab.shut_down_kernels()


@pytest.mark.parametrize("chapter", chapters_with_sliders(), ids=lambda p: p.stem)
def test_chapter_in_browser(lab: Lab, browser, chapter: Path, tmp_path: Path) -> None:
    seen = check_in_browser(lab, browser, chapter, tmp_path)
    print(f"\n{seen}; screenshots in {tmp_path}")


# --- controls: notebooks that must fail the check ----------------------------------------------------------------

SLIDER_CELL = """import ipywidgets as widgets
import matplotlib.pyplot as plt


def show(x=1.0):
    plt.figure(figsize=(2, 2)); plt.plot([0, 1], [0, {y}]); plt.ylim(0, 2); plt.show()


widgets.interact(show, x=widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.5));"""


def small_notebook(folder: Path, name: str, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def test_control_passes_when_the_picture_follows_the_slider(lab: Lab, browser, tmp_path: Path) -> None:
    notebook = small_notebook(tmp_path, "follows", SLIDER_CELL.format(y="x"))
    seen = check_in_browser(lab, browser, notebook, tmp_path / "shots", redraw_timeout_s=20)
    print(f"\n{seen}")
    assert seen["slider"] == "1.00 -> 1.50"


def test_control_fails_when_the_picture_ignores_the_slider(lab: Lab, browser, tmp_path: Path) -> None:
    notebook = small_notebook(tmp_path, "ignores", SLIDER_CELL.format(y="1"))
    with pytest.raises(AssertionError, match="did not change the picture"):
        check_in_browser(lab, browser, notebook, tmp_path / "shots", redraw_timeout_s=20)


def test_control_fails_on_an_error_output(lab: Lab, browser, tmp_path: Path) -> None:
    notebook = small_notebook(tmp_path, "raises", "1 / 0", SLIDER_CELL.format(y="x"))
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        check_in_browser(lab, browser, notebook, tmp_path / "shots", redraw_timeout_s=20)


def test_control_fails_without_the_widgets_extension(browser, tmp_path: Path) -> None:
    lab = start_lab(tmp_path / "lab", disabled_extensions=(WIDGETS_EXTENSION,))
    try:
        notebook = small_notebook(tmp_path, "no_extension", SLIDER_CELL.format(y="x"))
        with pytest.raises(AssertionError, match="no interact widget with a slider rendered"):
            check_in_browser(lab, browser, notebook, tmp_path / "shots", redraw_timeout_s=20)
    finally:
        lab.stop()
