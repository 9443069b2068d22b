"""Jobs as Ray tasks, for a cluster (`pip install 'grouptune[ray]'`).

The same jobs, the same worker: each Ray task runs `python -m core.jobs.runner` as a
subprocess on whichever node Ray picks (with the job's `resources` as num_cpus / num_gpus, so
Ray also sets CUDA_VISIBLE_DEVICES). The driver keeps the job database: tasks report state
through Ray to a JobRelay actor on the driver's node (core.jobs.relay), so no node opens the
SQLite file. Artifacts go to the workspace path, which every node must reach (a shared
folder), and GroupTune must be importable at the same path (or installed) on every node.
A task lost with its node is retried by Ray (`max_retries`, default 2) and resumes from the
step's checkpoint; `grouptune jobs` shows the attempt.

Ray does the resource accounting, so there is no job limit by default: ready jobs are handed
to Ray at once and stay `queued` (marked claimed) until Ray starts them. A watcher thread in
this process dispatches the next jobs as tasks finish. Ray stops a driver's tasks when the
driver exits, so the process that owns a RayBackend must live as long as its jobs (unlike the
local backend, whose workers are detached).
"""

from __future__ import annotations

import os
import threading
import time
import traceback

from core.errors import GroupTuneError
from core.jobs.database import TERMINAL, JobStore
from core.jobs.launch import child_env, job_cwd
from core.jobs.relay import JobRelay, run_relayed

# How long a Ray task may outlive its job's end in the database before it is killed: time for
# the worker to stop by itself and relay its last state.
FORCE_AFTER_S = 15.0


def use_token_file(path: str | os.PathLike) -> None:
    """Connect with the cluster token in `path` (Ray reads RAY_AUTH_TOKEN_PATH)."""
    token = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(token) or not os.access(token, os.R_OK):
        raise GroupTuneError(f"Ray auth token file {token} is not a readable file")
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = token


class RayBackend:
    """Start jobs as Ray tasks on the cluster at `address`, or on a local instance if None.

    A local instance gets `num_cpus` (None: all), no dashboard and a small object store (jobs
    pass no data through it). Extra keyword arguments go to `ray.init`.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        dispatch=None,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        object_store_memory: int = 100 * 2**20,
        auth_token_file: str | os.PathLike | None = None,
        max_retries: int = 2,
        relay_interval_s: float = 1.0,
        **init_kwargs,
    ):
        # Authentication is Ray's own and stays on: a local instance makes its own token (Ray
        # >= 2.59); a secured cluster's token is passed, from RAY_AUTH_TOKEN(_PATH) in the
        # environment or from `auth_token_file`, never turned off.
        if auth_token_file is not None:
            use_token_file(auth_token_file)
        try:
            import ray
        except ImportError as exc:
            raise GroupTuneError("the Ray backend needs Ray: pip install 'grouptune[ray]'") from exc
        self._ray = ray
        self._dispatch = dispatch  # core.jobs.scheduler.dispatch: what starts the next jobs
        self.owns_instance = False
        # Ray workers must import GroupTune to unpickle the task: give them our PYTHONPATH,
        # for the whole Ray job when we connect (workers start once), else task by task.
        self._runtime_env = {"env_vars": {"PYTHONPATH": child_env()["PYTHONPATH"]}}
        if not ray.is_initialized():
            init_kwargs.setdefault("runtime_env", self._runtime_env)
            if address is None:
                ray.init(  # "local": a new instance, never one found running on this machine
                    address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                    object_store_memory=object_store_memory, **init_kwargs,
                )  # fmt: skip
                self.owns_instance = True
            else:
                ray.init(address=address, **init_kwargs)
            self._task_runtime_env = None
        else:
            self._task_runtime_env = self._runtime_env
        # Ray retries a task whose worker or node died (not one whose step failed: the job
        # records that itself); the retry resumes from the step's checkpoint
        self._task = ray.remote(max_retries=max_retries)(run_relayed)
        self._relay = self._start_relay()
        self._interval = relay_interval_s
        self._refs: dict = {}  # ObjectRef -> (db, job_id)
        self._outlived: dict = {}  # ref -> when its job was first seen finished, task running
        self._stores: dict[str, JobStore] = {}  # opened once: the watcher reads them often
        self._dbs: set[str] = set()  # databases this backend has started jobs of
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._watcher = threading.Thread(
            target=self._watch, name="grouptune-ray-watch", daemon=True
        )
        self._watcher.start()

    def _start_relay(self):
        """The JobRelay actor, on this (the driver's) node, where the database file is."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = self._ray.get_runtime_context().get_node_id()
        options = {"num_cpus": 0, "max_concurrency": 1}
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(here, soft=False)
        if self._task_runtime_env is not None:
            options["runtime_env"] = self._task_runtime_env
        relay = self._ray.remote(JobRelay).options(**options).remote()
        self._ray.get(relay.__ray_ready__.remote())  # up before any task reports to it
        return relay

    @property
    def closed(self) -> bool:
        return self._closed

    def gpus(self) -> float:
        return float(self._ray.cluster_resources().get("GPU", 0))

    def default_limit(self) -> None:
        return None

    def start(self, db: str, job: dict, extra_env: dict[str, str]) -> None:
        resources = job.get("resources") or {}
        ours = child_env(extra_env)
        env = {k: v for k, v in ours.items() if k.startswith("GROUPTUNE_") or k == "PYTHONPATH"}
        options = {
            "num_cpus": resources.get("cpus", 1),
            "num_gpus": resources.get("gpus", 0),
            "resources": resources.get("custom") or None,
            "name": f"grouptune-{job['id']}-{job['step']}",
        }
        if self._task_runtime_env is not None:
            options["runtime_env"] = self._task_runtime_env
        args = (self._relay, str(db), job, env, str(job_cwd(job)), self._interval)
        ref = self._task.options(**options).remote(*args)
        with self._lock:
            self._refs[ref] = (db, job["id"])
            self._dbs.add(db)
        self._wake.set()
        return None

    def _watch(self) -> None:
        """As tasks finish: record outcomes the worker could not, then dispatch what is next."""
        dispatch = self._dispatch
        while not self._closed:
            with self._lock:
                refs = list(self._refs)
            if not refs:
                self._wake.wait(1.0)
                self._wake.clear()
                self._dispatch_all(dispatch)  # jobs resumed from elsewhere (the CLI, the UI)
                continue
            try:
                self._kill_outlived(refs)
                ready, _ = self._ray.wait(refs, num_returns=1, timeout=0.5)
                for ref in ready:
                    with self._lock:
                        db, job_id = self._refs.pop(ref)
                    self._outlived.pop(ref, None)
                    self._settle(db, job_id, ref)
                    dispatch(db, backend=self)
            except Exception:
                if not self._closed:
                    traceback.print_exc()

    def _kill_outlived(self, refs) -> None:
        """A task still running FORCE_AFTER_S after its job ended in the database (cancelled
        before it started, or given up by `grouptune jobs cancel` after its grace) is killed
        with its worker (core.jobs.relay: the worker dies with its task). A cancel itself
        reaches a running task through the relay's answers, as a clean stop."""
        now = time.monotonic()
        for ref in refs:
            db, job_id = self._refs[ref]
            if self._store(db).peek(job_id)["state"] not in TERMINAL:
                continue
            since = self._outlived.setdefault(ref, now)
            if now - since >= FORCE_AFTER_S:
                self._ray.cancel(ref, force=True)
                self._outlived[ref] = float("inf")  # asked once

    def _dispatch_all(self, dispatch) -> None:
        for db in list(self._dbs):
            try:
                dispatch(db, backend=self)
            except Exception:
                traceback.print_exc()

    def _store(self, db: str) -> JobStore:
        if db not in self._stores:
            self._stores[db] = JobStore(db)
        return self._stores[db]

    def _settle(self, db: str, job_id: int, ref) -> None:
        store = self._store(db)
        try:
            code = self._ray.get(ref)
            why = f"worker exited with code {code} without recording an outcome"
        except Exception as exc:  # the task itself was lost: worker crash, node gone
            why = f"ray task failed: {exc}".splitlines()[0]
        if store.peek(job_id)["state"] not in TERMINAL:
            store.mark_failed(job_id, why)

    def pending(self) -> int:
        """How many of this backend's tasks have not finished."""
        with self._lock:
            return len(self._refs)

    def shutdown(self) -> None:
        """Stop watching; stop the Ray instance if this backend started it."""
        self._closed = True
        self._wake.set()
        self._watcher.join(timeout=5)
        if self.owns_instance:
            self._ray.shutdown()
