"""The one executor seam: run a per-batch step function over items.

A step is a picklable callable `step(batch: list[T]) -> list[Result]` that loads its models
lazily (once per worker). The same callable can later be handed to a distributed engine
(for example Ray Data's `map_batches`) unchanged. The executor guarantees that one bad item
never aborts the run: if a batch raises, its items are retried one by one and the item that
still raises is recorded as failed with the file named. The exception is a full disk
(`prep.fsutil.DiskFull`): every later item would fail the same way, so it stops the run and the
command reports "no space left on <path>".
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import Field

from prep.fsutil import DiskFull
from prep.images import ImageLoadError
from prep.options import StageOptions

T = TypeVar("T")


@dataclass(slots=True)  # one per image: no __dict__ each (100k-image runs)
class Result:
    """What a step did to one item. `data` carries step-specific fields."""

    id: str
    status: str  # ok | skipped | failed | retryable | blocked | flagged
    source: str = ""
    outputs: list[str] = field(default_factory=list)
    reason: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "skipped", "flagged")


StepFn = Callable[[list[T]], list[Result]]
Kind = Literal["thread", "process", "serial"]


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def _item_id(item: Any) -> str:
    return str(getattr(item, "id", item))


def _item_source(item: Any) -> str:
    p = getattr(item, "path", None)
    return str(p) if p is not None else _item_id(item)


def failure_for(item: Any, exc: BaseException) -> Result:
    """A failed Result whose reason names the file and the cause."""
    if isinstance(exc, ImageLoadError):
        reason = str(exc)
    else:
        reason = f"{_item_source(item)}: {type(exc).__name__}: {exc}"
    return Result(id=_item_id(item), status="failed", source=_item_source(item), reason=reason)


def run_guarded(step: StepFn, batch: list[Any]) -> list[Result]:
    """Run `step` on `batch`; on an exception fall back to one item at a time."""
    try:
        results = step(batch)
        if len(results) != len(batch):
            raise RuntimeError(f"step returned {len(results)} results for {len(batch)} items")
        return results
    except (KeyboardInterrupt, SystemExit, DiskFull):
        raise
    except BaseException:
        if len(batch) == 1:
            return [failure_for(batch[0], sys.exc_info()[1])]  # type: ignore[arg-type]
    out: list[Result] = []
    for item in batch:
        try:
            r = step([item])
            out.extend(r if r else [failure_for(item, RuntimeError("step returned nothing"))])
        except (KeyboardInterrupt, SystemExit, DiskFull):
            raise
        except BaseException as exc:
            out.append(failure_for(item, exc))
    return out


def batched(items: Sequence[T], size: int) -> Iterator[list[T]]:
    size = max(1, size)
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


class Progress(Generic[T]):
    """Minimal progress protocol: the CLI passes a rich-backed one; libraries pass None."""

    def start(self, total: int, description: str) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def stop(self) -> None: ...


@dataclass
class LocalExecutor:
    """Threads (I/O-bound or GIL-releasing work) or spawn processes (Python-heavy work)."""

    workers: int = field(default_factory=default_workers)
    kind: Kind = "thread"
    batch_size: int = 1
    max_in_flight: int | None = None

    def run(
        self,
        step: StepFn,
        items: Iterable[T],
        *,
        progress: Progress | None = None,
        description: str = "working",
    ) -> Iterator[Result]:
        """Yield results as batches finish (not in input order)."""
        items = list(items)
        if progress:
            progress.start(len(items), description)
        try:
            if self.kind == "serial" or self.workers <= 1 or len(items) <= self.batch_size:
                for batch in batched(items, self.batch_size):
                    for r in run_guarded(step, batch):
                        if progress:
                            progress.advance()
                        yield r
                return
            yield from self._pooled(step, items, progress)
        finally:
            if progress:
                progress.stop()

    def _pool(self) -> Executor:
        if self.kind == "process":
            return ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"))
        return ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="loraprep")

    def _pooled(self, step: StepFn, items: list[Any], progress: Progress | None) -> Iterator[Result]:
        limit = self.max_in_flight or self.workers * 2
        batches = iter(batched(items, self.batch_size))
        pool = self._pool()
        pending: set[Future[list[Result]]] = set()
        try:
            for b in batches:
                pending.add(pool.submit(run_guarded, step, b))
                if len(pending) >= limit:
                    break
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    for r in fut.result():
                        if progress:
                            progress.advance()
                        yield r
                    nxt = next(batches, None)
                    if nxt is not None:
                        pending.add(pool.submit(run_guarded, step, nxt))
        except BaseException:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


Engine = Literal["local", "ray"]
ENGINE_KEYS = frozenset({"engine", "ray_address", "gpus", "shard_size"})
"""Options that choose where a stage runs, never what it writes (left out of output fingerprints)."""


class EngineOptions(StageOptions):
    """Where a stage's per-image work runs; inherited by the options of every stage that can scale out."""

    engine: Engine = Field("local", description="Where the work runs: local (threads on this machine) or ray (Ray Data actors; pip install 'loraprep[ray]').")
    ray_address: str = Field("local", description="With --engine ray: local (start a private Ray), auto (join the running cluster) or ray://host:port.")
    gpus: float = Field(0.0, ge=0, description="With --engine ray: GPUs per worker actor (ONNX models then use onnxruntime's CUDA provider when it is installed).")
    shard_size: int = Field(16, ge=1, description="With --engine ray: images per shard (the unit a worker runs and a retry repeats).")


def make_executor(
    options: StageOptions | None = None,
    *,
    workers: int | None = None,
    kind: Kind = "thread",
    batch_size: int = 1,
) -> Any:
    """The executor `options` ask for: LocalExecutor by default, RayExecutor for engine = ray.

    Both have `run(step, items, progress=, description=)` yielding Results; a stage does not care
    which it got. `batch_size` is what the step wants per call; a Ray shard is a multiple of it."""
    if options is not None and getattr(options, "engine", "local") == "ray":
        from prep.ray_engine import RayExecutor  # noqa: PLC0415  (optional extra)

        shard = max(batch_size, (getattr(options, "shard_size", 16) // max(1, batch_size)) * max(1, batch_size))
        return RayExecutor(
            workers=workers if workers and workers > 0 else None,
            batch_size=shard,
            step_batch=max(1, batch_size),
            address=getattr(options, "ray_address", "local"),
            gpus=float(getattr(options, "gpus", 0.0)),
        )
    return LocalExecutor(workers=workers or default_workers(), kind=kind, batch_size=batch_size)


def run_step(
    step: StepFn,
    items: Iterable[T],
    *,
    workers: int | None = None,
    kind: Kind = "thread",
    batch_size: int = 1,
    progress: Progress | None = None,
    description: str = "working",
    options: StageOptions | None = None,
) -> list[Result]:
    """Convenience: run to completion (on the engine `options` name) and return results sorted by id."""
    ex = make_executor(options, workers=workers, kind=kind, batch_size=batch_size)
    return sorted(ex.run(step, items, progress=progress, description=description), key=lambda r: r.id)


def rel_or_abs(path: Path, base: Path) -> str:
    """`path` relative to `base` when inside it (what manifests store), else absolute."""
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())
