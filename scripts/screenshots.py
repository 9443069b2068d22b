"""Screenshot every dashboard page of a real workspace into docs/screenshots/<page>.png.

    python scripts/screenshots.py --workspace workspaces/quick
    python scripts/screenshots.py --build /tmp/demo    # first run a small demo experiment

`--build DIR` first runs the whole pipeline with the CLI on six sample tasks (a small cut of
sample_data/quick.yaml: SmolLM2-135M in full precision; about ten minutes on 2 CPU cores).
Needs Debian's chromium (/usr/bin/chromium) and the playwright package (no browser download).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGES = {
    "home": "",
    "datasets": "datasets",
    "gradients": "gradients",
    "affinity": "affinity",
    "groups": "groups",
    "training": "training",
    "compare": "compare",
    "try_it": "try_it",
}
DEMO = {  # a small cut of sample_data/quick.yaml: real tasks and the real model. Full precision:
    # bitsandbytes' 4-bit CPU path is several times slower, and this is about the pictures.
    "name": "demo",
    "model": {"name": "smollm2-135m", "quantization": "none"},
    "data": {"max_train": 32, "max_val": 24, "max_test": 48, "max_tokens": 80},
    "tasks": ["yelp", "amazon", "imdb", "snli", "spam", "newsgroups"],
    "adapter": {"r": 4, "alpha": 32, "dropout": 0.1},
    "features": {"k": 256, "batch_size": 16},
    "estimator": {"subsets": 20, "subset_size": 3},
    "training": {"epochs": 2, "batch_size": 8, "lr": 0.0005},
}


def build_demo(folder: Path) -> Path:
    """Run every pipeline step with the CLI on six sample tasks (the DEMO config)."""
    from core.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "demo.yaml"
    data = {**DEMO, "data": {**DEMO["data"], "root": str(ROOT / "sample_data" / "tasks")}}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    ws = folder / "demo"
    steps = [
        ["init", "--config", str(config)],
        ["evaluate", "--zero-shot"],
        ["gradients"],
        ["affinity"],
        ["group"],
        ["train"],
        ["evaluate"],
        ["report"],
    ]
    for argv in steps:
        print("grouptune", *argv, flush=True)
        try:
            code = main([*argv, "--workspace", str(ws)])
        except SystemExit as exit_:  # typer's standalone mode always exits
            code = exit_.code
        if code:
            raise SystemExit(f"step {argv[0]} failed")
    return ws


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(workspace: Path, port: int, env: dict | None = None) -> subprocess.Popen:
    """`grouptune app` on 127.0.0.1:port, waiting until /_stcore/health answers."""
    cmd = [sys.executable, "-m", "core.cli", "app", "--workspace", str(workspace)]
    cmd += ["--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    env.setdefault("STREAMLIT_SERVER_FILE_WATCHER_TYPE", "none")  # no reloads, no inotify
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the dashboard exited with code {proc.returncode}") from None
            time.sleep(0.3)
    proc.terminate()
    raise RuntimeError("the dashboard did not answer /_stcore/health within 60 s")


def stop_app(proc: subprocess.Popen) -> None:
    """Stop `grouptune app` and the Streamlit server it started (its whole process group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def wait_rendered(page, timeout_ms: int = 30000) -> None:
    """Until the page has a title, Streamlit has stopped running, and charts are drawn."""
    page.wait_for_selector('[data-testid="stMain"] h1', timeout=timeout_ms)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms
    )
    page.wait_for_function(  # plotly draws a moment after its element arrives
        "() => [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')]"
        ".every(c => c.querySelector('.main-svg'))",
        timeout=timeout_ms,
    )
    settled(page)


def settled(page, checks: int = 4, every_ms: int = 750) -> None:
    """Until the page's content has kept one height for `checks` looks in a row: on a loaded
    machine Streamlit may not have shown its running widget yet when the first checks pass."""
    script = (
        "() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
        " return (m ? m.innerText.length : 0) + ':' + (m ? m.scrollHeight : 0); }"
    )
    last, same = None, 0
    while same < checks:
        page.wait_for_timeout(every_ms)
        now = page.evaluate(script)
        same = same + 1 if now == last else 0
        last = now


def shoot(page, path: Path) -> None:
    """A screenshot of the whole page: the viewport is grown to the content's height."""
    height = page.evaluate(
        "() => Math.max(...['stMain', 'stMainBlockContainer', 'stAppViewContainer']"
        '.map(id => document.querySelector(`[data-testid="${id}"]`))'
        ".filter(Boolean).map(e => e.scrollHeight), document.body.scrollHeight)"
    )
    page.set_viewport_size({"width": 1400, "height": min(max(int(height) + 40, 900), 6000)})
    page.wait_for_timeout(2500)  # tables are drawn on a canvas once they are in view
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)


def screenshots(workspace: Path, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    port = free_port()
    proc = start_app(workspace, port)
    written = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            for name, url in PAGES.items():
                page.goto(f"http://127.0.0.1:{port}/{url}")
                wait_rendered(page)
                shoot(page, out / f"{name}.png")
                written.append(out / f"{name}.png")
                page.set_viewport_size({"width": 1400, "height": 900})
            browser.close()
    finally:
        stop_app(proc)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="an experiment folder (config.yaml)")
    parser.add_argument("--build", type=Path, help="build a demo experiment in this folder")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    if (args.workspace is None) == (args.build is None):
        parser.error("give exactly one of --workspace and --build")
    workspace = args.workspace or build_demo(args.build)
    for path in screenshots(workspace.resolve(), args.out):
        print(path)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
