"""Executors for generate jobs: in-process, a local spawn process pool, or Ray tasks.

All three call the same :func:`~hybridsim.data.job.run_sample` with one torch thread and yield
its results as they complete (any order); the caller writes them. Nothing here writes files.

Ray: ``address="local"`` starts a private single-node Ray head bound to 127.0.0.1 (the tests use
it); ``"auto"`` joins the cluster this machine belongs to (``RAY_ADDRESS``, or a head started with
``ray start --head`` here) and falls back to a private local head when there is none; anything
else is passed to ``ray.init(address=...)``, e.g. ``ray://head-node:10001`` (Ray Client) from a
laptop. On a cluster, install the same hybridsim (and its dependencies) on every node; each task
returns the sample's bytes to the driver, which alone writes the output folder, so the nodes need
no shared filesystem.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Iterable, Iterator

from .job import GenerateJob, prepare_process, run_sample, single_threaded

__all__ = ["run_in_process", "run_local_pool", "run_ray"]


def run_in_process(job: GenerateJob, indices: Iterable[int]) -> Iterator[dict]:
    """Generate one sample after another in this process (torch on one thread meanwhile)."""
    with single_threaded():
        for index in indices:
            yield run_sample(job, index)


# --------------------------------------------------------------------------------------------
# Local process pool
# --------------------------------------------------------------------------------------------


def _worker_init(backend: str | None, parent: int, rigid: bool = False) -> None:
    _exit_with_parent(parent)
    try:
        prepare_process(backend, rigid)
    except Exception:  # noqa: BLE001 - the job itself reports the problem, naming the sample
        pass


def _exit_with_parent(parent: int) -> None:
    """A pool worker outlives a ``kill -9`` of its parent (it blocks on its task queue forever):
    leave as soon as the parent is gone, so an interrupted run leaves no orphans."""

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="hybridsim-parent-watch", daemon=True).start()


def run_local_pool(job: GenerateJob, indices: Iterable[int], workers: int, backend: str | None = None,
                   rigid: bool = False) -> Iterator[dict]:
    """Generate on ``workers`` spawned processes (spawn, never fork: forking after torch or Taichi
    started threads can hang), about two samples per worker in flight. Each worker warms its
    kernel caches once (the rigid-body solver and mesh renderer too with ``rigid``). A worker that
    dies (killed, out of memory) stops the run with an error."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from ..errors import ResourceError

    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(backend, os.getpid(), rigid))
    todo = list(indices)[::-1]
    running: set = set()
    try:
        while todo or running:
            while todo and len(running) < 2 * workers:
                running.add(executor.submit(run_sample, job, todo.pop()))
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    result = future.result()
                except BrokenProcessPool:
                    raise ResourceError("a worker process died (killed or out of memory); finished samples are "
                                        "kept: rerun the same command to resume") from None
                yield result
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------


def _ray_sample(job: GenerateJob, index: int, backend: str | None, rigid: bool = False) -> dict:
    prepare_process(backend, rigid)
    return run_sample(job, index)


def _import_ray(local: bool):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports leave the machine
    if local:
        # a single-node head keeps every address on loopback (the raylet and workers read this too)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        from ..errors import HybridsimError

        raise HybridsimError('Ray is not installed; pip install "hybridsim[ray]" (or "ray[default]")') from None
    if local:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the variable was set
    return ray


def _start_local(ray, workers: int) -> None:
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")


def connect_ray(address: str, workers: int) -> tuple[object, bool, str]:
    """Initialise Ray for ``address`` ("local", "auto" or a cluster address); returns
    (ray module, whether this call started it, a description)."""
    if address == "local":
        ray = _import_ray(local=True)
        if ray.is_initialized():
            return ray, False, "existing Ray session"
        _start_local(ray, workers)
        return ray, True, f"private local Ray head on 127.0.0.1 ({workers} CPUs)"
    if address == "auto":
        has_cluster = bool(os.environ.get("RAY_ADDRESS")) or os.path.exists("/tmp/ray/ray_current_cluster")
        ray = _import_ray(local=not has_cluster)
        if ray.is_initialized():
            return ray, False, "existing Ray session"
        if has_cluster:
            ray.init(address="auto", log_to_driver=False)
            return ray, True, "Ray cluster (auto)"
        _start_local(ray, workers)
        return ray, True, f"no Ray cluster found: private local Ray head on 127.0.0.1 ({workers} CPUs)"
    ray = _import_ray(local=False)
    if ray.is_initialized():
        return ray, False, "existing Ray session"
    ray.init(address=address, log_to_driver=False)
    return ray, True, f"Ray cluster at {address}"


def run_ray(job: GenerateJob, indices: Iterable[int], address: str, workers: int,
            backend: str | None = None, on_connect=None, rigid: bool = False) -> Iterator[dict]:
    """Generate as Ray tasks (one CPU each), keeping about two tasks per cluster CPU in flight.
    ``on_connect(description)`` is called once Ray is up."""
    ray, started, description = connect_ray(address, workers)
    try:
        if on_connect is not None:
            on_connect(description)
        remote = ray.remote(num_cpus=1, max_retries=3)(_ray_sample)
        job_ref = ray.put(job)
        window = max(2, 2 * int(ray.cluster_resources().get("CPU", workers)))
        todo = list(indices)[::-1]
        running: list = []
        while todo or running:
            while todo and len(running) < window:
                running.append(remote.remote(job_ref, todo.pop(), backend, rigid))
            done, running = ray.wait(running, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started:
            ray.shutdown()
