"""The dashboard in a real browser: `grouptune app` on 127.0.0.1, driven by Debian's chromium
through Playwright. Every page renders; the main path works by clicking (pick tasks and save
a config, run a gradients job and watch it finish, move a task between groups, export the
report); and a job survives the page being closed and the server being restarted."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from dashboard import copy_workspace

from core.views.jobs import read_jobs
from core.workspace import Workspace

pytestmark = pytest.mark.browser
sys.path.insert(0, str(ROOT / "scripts"))
from screenshots import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    PAGES,
    free_port,
    start_app,
    stop_app,
    wait_rendered,
)

if not Path(CHROMIUM).exists():
    pytest.skip(
        f"{CHROMIUM} is absent: install Debian's chromium (apt-get install -y chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
JOB_TIMEOUT_MS = 240_000  # a tiny gradients job: python + torch start, then seconds of work


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class App:
    """`grouptune app --workspace W` on a free port, stopped (with its server) at the end."""

    def __init__(self, workspace: Path, **env):
        self.port = free_port()
        self.proc = start_app(workspace, self.port, env={k: str(v) for k, v in env.items()})

    def url(self, page: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{page}"

    def stop(self) -> None:
        stop_app(self.proc)


def open_page(browser, app: App, page: str):
    tab = browser.new_page(viewport={"width": 1400, "height": 1000})
    tab.goto(app.url(PAGES[page]))
    wait_rendered(tab)
    return tab


def select(tab, label: str, option: str) -> None:
    """Pick `option` in the selectbox labelled `label` (typed, as a user searching it would:
    the highlighted option's accessible name is not its text alone)."""
    tab.get_by_test_id("stSelectbox").filter(has_text=label).first.click()
    tab.keyboard.type(option)
    tab.keyboard.press("Enter")
    wait_rendered(tab)


def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(0.2)


def test_every_page_renders(real_ws, browser, tmp_path):
    app = App(real_ws)
    try:
        titles = {
            "home": "GroupTune",
            "datasets": "Datasets",
            "gradients": "Gradient features",
            "affinity": "Task affinity",
            "groups": "Task groups",
            "training": "Training",
            "compare": "Compare",
            "try_it": "Try it",
        }
        for page, title in titles.items():
            tab = open_page(browser, app, page)
            assert title in tab.get_by_test_id("stMain").locator("h1").first.inner_text()
            assert tab.get_by_test_id("stException").count() == 0, page
            assert tab.get_by_test_id("stSidebarNav").count() == 1  # app.py's navigation
            tab.screenshot(path=str(tmp_path / f"{page}.png"), full_page=True)
            assert (tmp_path / f"{page}.png").stat().st_size > 20_000
            tab.close()
    finally:
        app.stop()


def test_main_path_by_clicking(real_ws, browser, tmp_path):
    ws = copy_workspace(real_ws, "browser_path")
    shutil.rmtree(ws / "features" / "topics")
    app = App(ws, GROUPTUNE_WORKSPACES=tmp_path / "experiments")
    try:
        # 1. Datasets: drop the last task, add a sample task, save as a new experiment
        tab = open_page(browser, app, "datasets")
        tab.get_by_test_id("stMultiSelect").first.click()
        tab.keyboard.press("Backspace")
        tab.keyboard.type("yelp")
        tab.keyboard.press("Enter")
        tab.keyboard.press("Escape")
        tab.get_by_test_id("stMultiSelect").first.get_by_text("yelp").wait_for()
        wait_rendered(tab)
        tab.get_by_label("Experiment name").fill("from-browser")
        tab.get_by_role("button", name="Save as a new experiment").click()
        saved = tmp_path / "experiments" / "from-browser" / "config.yaml"
        wait_until(saved.is_file)
        assert Workspace(saved.parent).load_config().task_names == [
            "reviews_a",
            "reviews_b",
            "yelp",
        ]
        tab.close()

        # 2. Gradients: one task is missing; compute it as a job and watch it finish
        tab = open_page(browser, app, "gradients")
        tab.get_by_text("2 / 3").first.wait_for(timeout=JOB_TIMEOUT_MS)  # slow machines render late
        assert tab.get_by_text("2 / 3").count() == 1
        tab.get_by_role("button", name="Compute", exact=True).click()
        tab.get_by_text("3 / 3").wait_for(timeout=JOB_TIMEOUT_MS)  # the page follows the job
        (job,) = read_jobs(Workspace(ws))
        assert job["state"] == "done" and job["argv"][:3] == ["gradients", "--task", "topics"]
        tab.close()

        # 3. Groups: move a task, see the prediction change, save
        tab = open_page(browser, app, "groups")
        select(tab, "Move task", "topics")
        select(tab, "to", "group 0")
        tab.get_by_role("button", name="Move", exact=True).click()
        tab.locator("code", has_text="group --move topics:0").first.wait_for()  # the CLI twin
        tab.get_by_role("button", name="Save as the chosen grouping").click()
        wait_until(lambda: "edited" in (ws / "groupings" / "chosen.json").read_text())
        chosen = json.loads((ws / "groupings" / "chosen.json").read_text())
        assert chosen["method"] == "edited"
        assert chosen["groups"] == [["reviews_a", "reviews_b", "topics"]]
        tab.close()

        # 4. Compare: export, and download the HTML report
        tab = open_page(browser, app, "compare")
        tab.get_by_role("button", name="Export the report").click()
        with tab.expect_download() as download:
            tab.get_by_role("button", name="report.html").click()  # waits for it to appear
        got = Path(download.value.path()).read_bytes()
        assert got == (ws / "exports" / "report.html").read_bytes()
        tab.close()
    finally:
        app.stop()


def test_try_it_by_typing(real_ws, browser):
    """Type a sentence, press Answer: the page follows the predict job and shows its answer."""
    ws = copy_workspace(real_ws, "browser_try")
    app = App(ws)
    try:
        tab = open_page(browser, app, "try_it")
        select(tab, "Task", "topics")
        tab.get_by_label("Text", exact=True).fill("The team won the game on Sunday.")
        tab.keyboard.press("Control+Enter")  # a text area's value reaches the server on submit
        wait_rendered(tab)
        tab.get_by_role("button", name="Answer").click()
        tab.get_by_text("Ensemble answer").wait_for(timeout=JOB_TIMEOUT_MS)
        (job,) = read_jobs(Workspace(ws))
        assert job["state"] == "done" and job["argv"][:3] == ["predict", "--task", "topics"]
        doc = json.loads(next((ws / "tryit").glob("*/predictions.json")).read_text())
        main = tab.get_by_test_id("stMain")
        answers = main.get_by_test_id("stMetricValue").all_inner_texts()
        assert answers == [doc["rows"][0]["answer"], doc["rows"][0]["baseline"]["answer"]]
    finally:
        app.stop()


def test_mixing_weights_by_clicking(real_ws, browser):
    """Groups page: a slider per task of the adapter, Suggest weights runs `grouptune mix
    --suggest` as a job that the page follows, and Use the suggestion moves the sliders there."""
    ws = copy_workspace(real_ws, "browser_mix")
    app = App(ws)
    try:
        tab = open_page(browser, app, "groups")
        select(tab, "Adapter", "single adapter")
        tasks = Workspace(ws).load_config().task_names

        def shown(task: str) -> float:  # the slider's own range input
            return float(tab.locator(f'input[type=range][aria-label="{task}"]').input_value())

        assert [shown(t) for t in tasks] == [1.0] * len(tasks)
        tab.get_by_role("button", name="Suggest weights").click()
        tab.get_by_role("button", name="Use the suggestion").wait_for(timeout=JOB_TIMEOUT_MS)
        (job,) = read_jobs(Workspace(ws))
        assert job["state"] == "done" and job["argv"][:2] == ["mix", "--suggest"]
        weights = json.loads((ws / "groupings" / "mix-all.json").read_text())["weights"]
        tab.get_by_role("button", name="Use the suggestion").click()
        wait_rendered(tab)
        for task in tasks:
            assert shown(task) == pytest.approx(round(weights[task], 1))
        assert any(round(w, 1) != 1.0 for w in weights.values())  # the sliders did move
    finally:
        app.stop()


def test_closing_the_page_and_restarting_the_server_loses_nothing(real_ws, browser):
    ws = copy_workspace(real_ws, "browser_restart")
    shutil.rmtree(ws / "features" / "reviews_b")
    first = App(ws)
    try:
        tab = open_page(browser, first, "gradients")
        tab.get_by_role("button", name="Compute", exact=True).click()
        wait_until(lambda: read_jobs(Workspace(ws)), timeout_s=120)  # a loaded machine
        tab.close()  # the browser goes away ...
    finally:
        first.stop()  # ... and so does the server, while the job runs or waits
    (job,) = read_jobs(Workspace(ws))
    assert job["state"] in ("queued", "running")
    second = App(ws)
    try:
        tab = open_page(browser, second, "gradients")
        tab.get_by_text("3 / 3").wait_for(timeout=JOB_TIMEOUT_MS)
        assert read_jobs(Workspace(ws))[0]["state"] == "done"
        tab.goto(second.url(PAGES["training"]))
        wait_rendered(tab)
        select(tab, "Job", f"{job['id']} · gradients:reviews_b")
        tab.locator("code", has_text=f"=== job {job['id']} done").first.wait_for()  # its log
    finally:
        second.stop()
