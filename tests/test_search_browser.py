"""Notebook 07's search widget in a real browser: JupyterLab + Debian's Chromium driven by Playwright.

Starts JupyterLab on 127.0.0.1 with a token (``--allow-root`` as root) serving a copy of notebook 07
(so the browser's autosave never touches the committed file), opens it at ``?reset``, runs every
cell, types a query into the widget, presses Enter, and checks that result rows with audio players
appear, each with its z-score, under a line on the best clip's fit, and that the upload button shows its
whole label. The screenshot is saved under build/test-artifacts/ (and as figures/search_widget.png when
COURSE_UPDATE_FIGURES=1 or that figure is missing). The server is stopped at the end.

Needs /usr/bin/chromium (Debian: ``apt-get install chromium``) and the ``playwright`` package; never
``playwright install``. Without them the test skips, but in CI (``CI=true``) it fails. The notebook
builds its data under COURSE_DATA_DIR when that is set (reusing a prepared profile), else under a
fresh folder: then it trains the synthetic model first, with the quick setting (COURSE_QUICK=1), except
when it redraws the README's figure, which shows the fully trained model (a few minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.long(40)]  # make test runs it, first; make check leaves it out (pyproject.toml)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "07_search_widget.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "build" / "test-artifacts"
FIGURE = ROOT / "figures" / "search_widget.png"
RUN_ALL_SECONDS = 40 * 60  # a fresh data root trains the model first
QUERY = "a siren wails on a busy street"


def missing_browser() -> str:
    """Why the browser test cannot run here ('' when it can)."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install -c constraints.txt playwright (never `playwright install`)"
    return ""


@pytest.fixture(scope="module")
def browser_ready() -> None:
    if reason := missing_browser():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the browser test, but {reason}.")
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(browser_ready, tmp_path_factory: pytest.TempPathFactory):
    """A JupyterLab server on 127.0.0.1 serving a copy of notebook 07; yields its base URL and token; stopped after."""
    work = tmp_path_factory.mktemp("lab")
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    settings = work / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)  # no news toast, no update check: nothing may cover the notebook
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    token, port = secrets.token_hex(16), free_port()
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(work / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(work / "ws"),
           "COURSE_DATA_DIR": os.environ.get("COURSE_DATA_DIR") or str(work / "data"),
           # The widget is what is tested: a quickly trained model does (COURSE_QUICK=1), except for the README's figure.
           "COURSE_QUICK": "0" if updating_figure() else "1"}
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = open(work / "jupyterlab.log", "wb")  # noqa: SIM115 - closed after the server stops
    server = subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start: see {work / 'jupyterlab.log'}") from None
                time.sleep(0.5)
        yield url, token, work
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own session: it and the kernels it started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


ALL_CELLS_DONE = """() => {
  const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  const prompts = cells.map(c => (c.querySelector('.jp-InputPrompt')?.textContent || '').trim());
  return cells.length > 0 && prompts.every(p => /^\\[\\d+\\]:$/.test(p));
}"""
ERRORS = "() => [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type=\"application/vnd.jupyter.stderr\"]')]" \
         ".map(e => e.textContent).filter(t => t.includes('Traceback') || t.includes('Error'))"


def test_the_search_widget_runs_in_jupyterlab_in_chromium(lab) -> None:
    from playwright.sync_api import sync_playwright

    url, token, work = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1500})
            page.goto(f"{url}/lab/tree/{NOTEBOOK.name}?reset&token={token}")
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=120_000)
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel", timeout=120_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            try:
                page.wait_for_function(ALL_CELLS_DONE, timeout=RUN_ALL_SECONDS * 1000, polling=2000)
            finally:
                page.screenshot(path=str(ARTIFACTS / "search_notebook_after_run_all.png"))
            assert page.evaluate(ERRORS) == [], "a cell of notebook 07 raised in the browser"

            query_box = page.locator(".widget-text input.widget-input").first
            query_box.scroll_into_view_if_needed()
            widget_audio_before = page.locator("audio.jupyter-widgets").count()
            query_box.fill(QUERY)
            query_box.press("Enter")
            widget = page.locator(".jp-OutputArea-output:has(.widget-text input.widget-input)").first
            page.wait_for_function(f"() => document.querySelectorAll('audio.jupyter-widgets').length >= "
                                   f"{widget_audio_before + 5}", timeout=60_000)
            assert f"'{QUERY}' in evaluation: the 5 nearest clips" in widget.inner_text()
            assert "(each used as a query)" in widget.inner_text()  # the best clip's fit, either way it falls
            rows = widget.locator(".widget-hbox:has(audio.jupyter-widgets)")
            assert rows.count() >= 5
            assert "1." in rows.nth(0).inner_text() and rows.nth(0).locator("img").count() == 1
            assert "z " in rows.nth(0).inner_text()  # each row's z-score over the index
            upload = widget.locator("button.widget-upload").first
            assert upload.inner_text().strip().startswith("Upload a sound")
            assert upload.evaluate("button => button.scrollWidth <= button.clientWidth"), "the upload button's label is cut"

            widget.scroll_into_view_if_needed()
            widget.screenshot(path=str(ARTIFACTS / "search_widget.png"))
            if updating_figure():
                FIGURE.parent.mkdir(exist_ok=True)
                shutil.copy(ARTIFACTS / "search_widget.png", FIGURE)
        finally:
            browser.close()


def updating_figure() -> bool:
    """Whether this run redraws figures/search_widget.png (asked for, or missing)."""
    return os.environ.get("COURSE_UPDATE_FIGURES") == "1" or not FIGURE.exists()
