"""Benchmark: how soon after the install does `make demo` show the Home page? (issue: use what
was trained)

Run in a checkout whose install is done (`make install model`, or a finished `make test`):
`make demo` then only copies the demo workspace, queues the feature recompute as a background
job and starts the dashboard. The clock runs from `make demo`'s start until chromium (Debian's,
driven by playwright, as in tests/test_browser.py) shows Home drawn: its title, Streamlit idle,
every chart rendered. Each repeat starts from a checkout without workspaces/quick, as a fresh
clone has, and cancels the feature job it queued before the next.

    .venv/bin/python bench/demo_start.py [--repeats 3]
Writes bench/results/demo_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))

from machine import machine_info  # noqa: E402
from screenshots import CHROMIUM, CHROMIUM_ARGS, free_port, wait_rendered  # noqa: E402


def one_start(browser, port: int, timeout_s: float) -> float:
    """Seconds from `make demo` to Home drawn in the browser."""
    shutil.rmtree(ROOT / "workspaces" / "quick", ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["make", "demo", f"PORT={port}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # make, grouptune app and streamlit stop together
    )
    try:
        page = browser.new_page()
        while True:
            try:
                page.goto(f"http://127.0.0.1:{port}/", timeout=5000)
                break
            except Exception:  # the server is not listening yet
                if time.perf_counter() - start > timeout_s:
                    raise
                time.sleep(0.25)
        wait_rendered(page, timeout_ms=int(timeout_s * 1000))
        seconds = time.perf_counter() - start
        page.close()
        return seconds
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        stop_jobs(ROOT / "workspaces" / "quick")


def stop_jobs(workspace: Path) -> None:
    """Cancel the feature recompute `make demo` queued (a detached worker outlives the app)."""
    from core.jobs import cancel, db_path, open_store

    db = db_path(workspace)
    if not db.exists():
        return
    for job in open_store(db).list(("queued", "running")):
        cancel(db, job["id"])


def main() -> None:
    from playwright.sync_api import sync_playwright

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=180.0, help="seconds per start at most")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "demo_start.json")
    args = p.parse_args()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        seconds = [
            round(one_start(browser, free_port(), args.timeout), 1) for _ in range(args.repeats)
        ]
        browser.close()
    result = {
        "command": "python bench/demo_start.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "what": "make demo on an installed checkout until Home is drawn in chromium",
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],  # what ran beside
        "seconds": seconds,
        "median_s": sorted(seconds)[len(seconds) // 2],
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("seconds", "median_s")}))


if __name__ == "__main__":
    main()
