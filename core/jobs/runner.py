"""The worker process of one job: `python -m core.jobs.runner DB JOB_ID [--no-dispatch]`.

A job is exactly a command a user could type (`grouptune <argv>`), so the worker looks its
program up among the installed console scripts (core.jobs.programs) and calls it in-process
with that argv, after it has:
  - marked the job running with its pid (and given up if the job was cancelled meanwhile);
  - sent its stdout and stderr (file descriptors, so child processes too) to the job's log,
    `<workspace>/logs/<id>-<step>.log`, appended to across attempts;
  - set GROUPTUNE_JOB_ID / GROUPTUNE_JOB_DB (and GROUPTUNE_PROGRESS=0 unless set: no bars in
    logs), changed to the directory the job was submitted from, and installed a
    `core.progress` reporter that writes progress and metrics to the DB;
  - started a heartbeat thread, which also turns a cancel request into an interrupt of the step.
The outcome: a normal return or SystemExit(0/None) is done; another exit code or an exception
is failed (traceback in the log, its last line in `error`); a cancel request is cancelled.
Then, unless --no-dispatch, the worker starts whatever queued jobs may now run.

Steps must be idempotent and resumable: a job that is resumed or retried is run again with the
same argv, and it is the step that finds its checkpoint and continues from it.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from core import progress, settings
from core.jobs.backends import LocalBackend
from core.jobs.database import HOST, JobNotFound, JobStore
from core.jobs.heartbeat import Heartbeat
from core.jobs.launch import job_cwd
from core.jobs.programs import command_line, resolve
from core.jobs.reporter import DbReporter


class JobCancelled(KeyboardInterrupt):
    """Raised in a step when its job is cancelled.

    A KeyboardInterrupt, so steps that already save a checkpoint on Ctrl-C do the same here,
    and `except Exception` in a step does not swallow it.
    """


class _Interrupts:
    """Turns SIGTERM, SIGINT and cancel requests into JobCancelled inside the step only.

    Outside the step (set-up, recording the outcome) a signal only sets `requested`, so the
    worker always gets to write the job's final state.
    """

    def __init__(self):
        self.in_step = False
        self.requested = False
        self._main = threading.main_thread().ident

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handler)
        signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum, frame) -> None:
        self.requested = True
        if self.in_step:
            raise JobCancelled(f"job cancelled ({signal.Signals(signum).name})")

    def interrupt_main(self) -> None:
        # A real signal (not _thread.interrupt_main) so a step blocked in sleep() wakes up.
        self.requested = True
        signal.pthread_kill(self._main, signal.SIGINT)


def run_job(db: str | os.PathLike, job_id: int) -> int:
    """Run one job in this process and record its outcome; return the worker's exit code."""
    store = JobStore(db)
    job = store.peek(job_id)
    if not store.mark_running(job_id, os.getpid(), HOST):
        # cancelled (or finished) before this worker got to it: nothing to run
        if store.peek(job_id)["cancel_requested"]:
            store.mark_cancelled(job_id, "cancelled before it started")
        return 0
    interrupts = _Interrupts()
    interrupts.install()
    log_path = Path(job["log_path"])
    start_offset = _redirect_output(log_path)
    print(_header(job), flush=True)
    _enter_job(job, store.path)
    reporter = DbReporter(store, job_id)
    progress.set_reporter(reporter)
    beat = Heartbeat(store, job_id, store.heartbeat_s, reporter, interrupts.interrupt_main)
    progress.reset_timings()
    step_started = time.time()
    with beat:
        state, exit_code, error = _run_step(job, interrupts)
    # where the job's time went, for `grouptune jobs show` and bench/e2e.py's startup_share
    reporter.metrics({"timing": _timing(step_started)})
    progress.set_reporter(None)
    try:
        reporter.flush()
    except Exception:
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    if state == "failed" and error is None:
        error = f"exit code {exit_code}: {_last_line(log_path, start_offset) or 'no output'}"
    if state == "done":
        store.mark_done(job_id)
    elif state == "cancelled":
        store.mark_cancelled(job_id, "cancelled while running")
    else:
        store.mark_failed(job_id, error, exit_code)
    print(f"=== job {job_id} {state} at {time.strftime('%Y-%m-%d %H:%M:%S')} ===", flush=True)
    return 0 if state == "done" else 1


def _timing(step_started: float) -> dict:
    """The step's start and end (epoch seconds), the process's start when the OS says (Linux),
    and the seconds of compute and model loading inside the step (core.progress)."""
    return {
        "process_started": _process_started(),
        "step_started": round(step_started, 3),
        "step_finished": round(time.time(), 3),
        **progress.timings(),
    }


def _process_started() -> float | None:
    """When this process started (epoch seconds, to 10 ms), from /proc; None elsewhere."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    age = uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, in ticks
    return round(time.time() - age, 3)


def _run_step(job: dict, interrupts: _Interrupts) -> tuple[str, int | None, str | None]:
    """Run the job's program; return (state, exit_code, error)."""
    state, code, error = _call_program(job["program"], job["argv"], interrupts)
    if state == "failed" and interrupts.requested:
        # however the step ended once asked to stop (click turns KeyboardInterrupt into
        # Abort or exit code 1), it was cancelled, not broken
        print("[grouptune] job cancelled", file=sys.stderr)
        return "cancelled", None, None
    return state, code, error


def _call_program(program: str, argv: list[str], interrupts: _Interrupts):
    sys.argv = [program, *argv]
    try:
        if interrupts.requested:
            raise JobCancelled("job cancelled before its step started")
        main = resolve(program)
        interrupts.in_step = True
        try:
            sys.exit(main())  # what a console script's wrapper does with main's return
        finally:
            interrupts.in_step = False
    except SystemExit as exc:
        code = exc.code
        if code is None or code == 0:
            return "done", 0, None
        if isinstance(code, int):
            return "failed", code, None
        print(code, file=sys.stderr)  # what Python itself does with sys.exit("message")
        return "failed", 1, str(code)
    except BaseException as exc:
        if not interrupts.requested:
            traceback.print_exc()
        return "failed", 1, traceback.format_exception_only(type(exc), exc)[-1].strip()
    return "done", 0, None


def _redirect_output(log_path: Path) -> int:
    """Point fds 1 and 2 at the log (appending); return where this attempt's output starts."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    start = os.fstat(fd).st_size
    for stream, target in ((sys.stdout, 1), (sys.stderr, 2)):
        if stream is not None:
            stream.flush()
        os.dup2(fd, target)
    os.close(fd)
    for name, target in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if stream is None or stream.fileno() != target:
            setattr(sys, name, open(target, "w", buffering=1, closefd=False))
        else:
            stream.reconfigure(line_buffering=True)  # so the log is readable while it runs
    return start


def _enter_job(job: dict, db: Path) -> None:
    os.environ["GROUPTUNE_JOB_ID"] = str(job["id"])
    os.environ["GROUPTUNE_JOB_DB"] = str(db)
    # no tqdm bars in a log file (a line per refresh): the database has the numbers
    os.environ.setdefault("GROUPTUNE_PROGRESS", "0")
    cpus = (job.get("resources") or {}).get("cpus")
    if cpus and not settings.text("GROUPTUNE_THREADS"):  # torch threads follow the job's CPUs
        os.environ["GROUPTUNE_THREADS"] = str(max(1, int(cpus)))
    cwd = job_cwd(job)
    os.chdir(cwd)
    if str(cwd) not in sys.path:
        sys.path.insert(0, str(cwd))  # a `module:function` program may live there, as in a shell


_jobs_in_this_process = 0


def _header(job: dict) -> str:
    global _jobs_in_this_process
    _jobs_in_this_process += 1
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    command = command_line(job)
    reused = f", its job {_jobs_in_this_process}" if _jobs_in_this_process > 1 else ""
    return (
        f"=== job {job['id']} ({job['step']}) attempt {job['attempts']}: {command}"
        f" | pid {os.getpid()}{reused} on {HOST} at {when} ==="
    )


def _last_line(log_path: Path, start: int) -> str | None:
    """The last non-empty line this attempt wrote to the log (the message of a failed CLI)."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(max(start, os.path.getsize(log_path) - 8192))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    lines = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("=== job")]
    return lines[-1][:500] if lines else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.jobs.runner", description="Run one GroupTune job (the worker)."
    )
    parser.add_argument("db", help="path of the job database (workspace/jobs.db)")
    parser.add_argument("job_id", type=int)
    parser.add_argument(
        "--no-dispatch", action="store_true", help="do not start queued jobs when this one ends"
    )
    args = parser.parse_args(argv)
    code = _run_guarded(args.db, args.job_id)
    if code == 2 or args.no_dispatch:
        return code
    try:
        from core.jobs.scheduler import REUSE_WORKERS_ENV, dispatch

        if settings.text(REUSE_WORKERS_ENV) == "1":
            while (job_id := _claim_next_here(args.db)) is not None:
                code = _run_guarded(args.db, job_id)
        dispatch(args.db)
    except Exception:
        traceback.print_exc()
    return code


def _run_guarded(db: str, job_id: int) -> int:
    """run_job, with the worker's own failures (not the step's) recorded on the job."""
    try:
        return run_job(db, job_id)
    except JobNotFound as exc:
        print(f"grouptune runner: {exc}", file=sys.stderr)
        return 2
    except BaseException as exc:
        traceback.print_exc()
        try:
            JobStore(db).mark_failed(job_id, f"worker error: {exc!r}")
        except Exception:
            traceback.print_exc()
        return 1


def _claim_next_here(db: str) -> int | None:
    """Claim the next ready job (not a driver) for this very process, within the same limit a
    dispatcher keeps: a chain of jobs that pays process start and imports once."""
    store = JobStore(db)
    limit = LocalBackend().default_limit()  # the dispatcher's own rule, not a copy of it
    job = store.claim_next("local", limit, f"{HOST}:{os.getpid()}", workers_only=True)
    if job is None:
        return None
    store.set_pid(job["id"], os.getpid())
    gc.collect()  # what the last step left (its model) goes before the next one loads
    return job["id"]


if __name__ == "__main__":
    # Run the copy imported under its real name, so `core.jobs.runner.JobCancelled` is the class
    # steps see raised (this file also executes as __main__).
    from core.jobs.runner import main as _main

    sys.exit(_main())
