"""Job steps for tests/test_jobs.py: `python -m tests.job_fixtures <command> [args]`.

Each is a tiny stand-in for a real GroupTune step, run by the job worker exactly as a CLI
command would be. `count` is resumable the way real steps must be: it keeps its state in a
checkpoint written atomically after every step, and continues from it when run again.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from core.io import read_json, write_json
from core.progress import log_metrics, track


def sleep(args) -> None:
    print(f"sleeping {args.seconds} s", flush=True)
    time.sleep(args.seconds)
    print("slept", flush=True)


def fail(args) -> None:
    print("about to fail", flush=True)
    raise RuntimeError(args.message)


def exit_with(args) -> None:
    print(f"exiting with {args.code}", flush=True)
    raise SystemExit(args.code)


def stubborn(args) -> None:
    """Ignore interrupts (a step that never stops by itself): only a kill ends it."""
    deadline = time.monotonic() + args.seconds
    print("ignoring interrupts", flush=True)
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except KeyboardInterrupt:
            print("interrupt ignored", flush=True)


def env(args) -> None:
    for key in ("GROUPTUNE_JOB_ID", "GROUPTUNE_JOB_DB"):
        print(f"{key}={os.environ.get(key)}", flush=True)
    print(f"cwd={os.getcwd()}", flush=True)


def count(args) -> None:
    """Count 1..TO, summing squares; each step appends its number to --trace (if given)."""
    checkpoint = Path(args.checkpoint)
    state = read_json(checkpoint) if checkpoint.exists() else {"value": 0, "sum_sq": 0}
    print(f"resuming from {state['value']}", flush=True)
    with track(args.to, "count") as bar:
        bar.update(state["value"])
        while state["value"] < args.to:
            time.sleep(args.delay)
            value = state["value"] + 1
            state = {"value": value, "sum_sq": state["sum_sq"] + value * value}
            write_json(checkpoint, state)
            if args.trace:
                with open(args.trace, "a") as fh:
                    fh.write(f"{value}\n")
            log_metrics({"step": value, "sum_sq": state["sum_sq"]})
            bar.update(1)
    print(f"counted to {args.to}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.job_fixtures")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sleep")
    p.add_argument("seconds", type=float)
    p.set_defaults(fn=sleep)
    p = sub.add_parser("fail")
    p.add_argument("--message", default="boom")
    p.set_defaults(fn=fail)
    p = sub.add_parser("exit")
    p.add_argument("code", type=int)
    p.set_defaults(fn=exit_with)
    p = sub.add_parser("stubborn")
    p.add_argument("seconds", type=float)
    p.set_defaults(fn=stubborn)
    sub.add_parser("env").set_defaults(fn=env)
    p = sub.add_parser("count")
    p.add_argument("to", type=int)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--trace")
    p.set_defaults(fn=count)
    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
