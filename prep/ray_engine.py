"""`--engine ray`: the same step callables, run by Ray Data actors instead of local threads.

The executor seam (`prep.executor`) hands a picklable `step(batch) -> list[Result]` and the items
to an engine; this engine ships both to a Ray Data pipeline: items become rows, a pool of actors
(one per worker) each builds the step once — so an ONNX session lives in its actor, loaded once —
and runs `run_guarded` on each shard (a batch of rows), exactly as the local engine does. Results
stream back to the driver as shards finish; the driver writes the stage's manifest and outputs
list as it does locally, so a killed driver resumes from that manifest and the two engines give
the same files. A shard whose worker dies is retried (actor restarts, task retries); a full disk
in a worker stops the run as it does locally.

Ray is an optional extra (`pip install loraprep[ray]`); nothing imports it unless asked.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prep.executor import Progress, Result, StepFn, batched, run_guarded
from prep.fsutil import DiskFull

RAY_MISSING = "--engine ray needs Ray: pip install 'loraprep[ray]' (or pip install 'ray[data]')"


class RayUnavailable(RuntimeError):
    """Ray is not installed or the cluster cannot be reached; the message says which and the fix."""


def _ray() -> Any:
    try:
        import ray  # noqa: PLC0415
        import ray.data  # noqa: F401, PLC0415
    except ImportError:
        raise RayUnavailable(RAY_MISSING) from None
    return ray


def ensure_ray(address: str = "local", *, num_cpus: int | None = None, num_gpus: int | None = None) -> Any:
    """Connect to (or start) Ray once per process: `local` starts a private one, `auto` joins a
    running cluster, `ray://host:port` is a Ray Client address. An already-initialised Ray (a
    test fixture, a notebook) is used as it is."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address in ("", "local"):
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except Exception as exc:  # noqa: BLE001  (ConnectionError, an auth token it lacks, a version mismatch ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayUnavailable(f"cannot reach Ray at {address!r}: {first} (start one with `ray start --head`, or use --ray-address local)") from exc
    return ray


class _StepActor:
    """One per worker: unpickles the step once (its model loads lazily, once, in this actor)."""

    def __init__(self, step_blob: bytes, step_batch: int = 1):
        self.step: StepFn = pickle.loads(step_blob)
        self.step_batch = max(1, step_batch)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np  # noqa: PLC0415

        items = [pickle.loads(b) for b in batch["item"]]
        try:
            results = [r for b in batched(items, self.step_batch) for r in run_guarded(self.step, b)]
        except DiskFull as exc:
            # carried as data, not as a Ray error, so the driver can raise the same DiskFull
            results = [Result(_id(it), "disk_full", reason=str(exc.path)) for it in items]
        out = np.empty(len(results), dtype=object)
        out[:] = [pickle.dumps(r) for r in results]
        return {"result": out}


def _id(item: Any) -> str:
    return str(getattr(item, "id", item))


@dataclass
class RayExecutor:
    """Ray Data actors over shards of `batch_size` items (the step sees `step_batch` at a time, as
    locally); `workers` actors (default: all CPUs Ray
    has), each with `gpus` GPUs when asked (the CUDA provider then runs inside the actor)."""

    workers: int | None = None
    batch_size: int = 16
    step_batch: int = 1
    address: str = "local"
    gpus: float = 0.0
    max_retries: int = 3

    def run(self, step: StepFn, items: Iterable[Any], *, progress: Progress | None = None, description: str = "working") -> Iterator[Result]:
        """Yield results as shards finish (not in input order), like LocalExecutor.run."""
        items = list(items)
        if progress:
            progress.start(len(items), description)
        try:
            if not items:
                return
            yield from self._run(step, items, progress)
        finally:
            if progress:
                progress.stop()

    def _run(self, step: StepFn, items: list[Any], progress: Progress | None) -> Iterator[Result]:
        ray = ensure_ray(self.address, num_cpus=self.workers)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        workers = self.workers or max(1, int(ray.available_resources().get("CPU", 1)))
        workers = max(1, min(workers, (len(items) + self.batch_size - 1) // self.batch_size))
        shard = max(1, self.batch_size)
        dumps = ray.cloudpickle.dumps  # by value where plain pickle cannot (steps defined in tests, closures)
        rows = [{"item": dumps(it)} for it in items]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, (len(rows) + shard - 1) // shard))
        del rows  # in the object store now: not a second copy in the driver for the whole run
        remote: dict[str, Any] = {"max_restarts": self.max_retries, "max_task_retries": self.max_retries}
        if self.gpus:
            remote["num_gpus"] = self.gpus
        out = ds.map_batches(
            _StepActor,
            fn_constructor_args=(dumps(step), self.step_batch),
            batch_size=shard,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            zero_copy_batch=False,
            **remote,
        )
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            for blob in batch["result"]:
                r: Result = pickle.loads(blob)
                if r.status == "disk_full":
                    raise DiskFull(r.reason or "?")
                if progress:
                    progress.advance()
                yield r
