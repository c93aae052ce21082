"""`--engine ray`: the same step callables on Ray Data actors give the same results as local threads;
a worker killed mid-shard is retried; a full disk in a worker stops the run as it does locally."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from prep.executor import EngineOptions, Result, make_executor, run_step
from prep.fsutil import DiskFull

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'loraprep[ray]'); CI installs the extra")


@pytest.fixture(scope="module", autouse=True)
def _by_value(ray_session):
    """Test-module steps travel by value: Ray workers do not have tests/ on their path."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


class Square:
    """A step: one Result per item, data computed from it; records which process ran it."""

    def __call__(self, batch: list[int]) -> list[Result]:
        return [Result(f"{i:04d}", "ok", data={"sq": i * i, "pid": os.getpid(), "batch": len(batch)}) for i in batch]


class DiesOnce:
    """Kills its own worker process the first time it sees item 7 (a marker file says it did)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __call__(self, batch: list[int]) -> list[Result]:
        if 7 in batch and not self.marker.exists():
            self.marker.write_text("died")
            os._exit(1)
        return [Result(f"{i:04d}", "ok", data={"sq": i * i}) for i in batch]


class Full:
    def __call__(self, batch: list[int]) -> list[Result]:
        raise DiskFull("/data/out/x.png")


class BadItem:
    def __call__(self, batch: list[int]) -> list[Result]:
        if 3 in batch:
            raise ValueError("cannot read item 3")
        return [Result(f"{i:04d}", "ok") for i in batch]


RAY = EngineOptions(engine="ray", shard_size=4)


def test_ray_and_local_give_the_same_results_and_run_in_worker_processes():
    local = run_step(Square(), range(40), workers=2, batch_size=2)
    remote = run_step(Square(), range(40), workers=2, batch_size=2, options=RAY)
    assert [(r.id, r.status, r.data["sq"]) for r in remote] == [(r.id, r.status, r.data["sq"]) for r in local]
    assert {r.data["pid"] for r in remote}.isdisjoint({os.getpid()})
    assert max(r.data["batch"] for r in remote) == 2  # the step still sees its own batch size inside a shard


def test_the_local_engine_is_the_default():
    ex = make_executor(EngineOptions(), workers=2)
    assert type(ex).__name__ == "LocalExecutor"
    assert type(make_executor(RAY, workers=2)).__name__ == "RayExecutor"


def test_a_worker_killed_mid_shard_is_retried(tmp_path):
    marker = tmp_path / "died"
    results = run_step(DiesOnce(marker), range(20), workers=2, options=RAY)
    assert marker.exists()  # it really died once
    assert [r.id for r in results] == [f"{i:04d}" for i in range(20)]
    assert all(r.status == "ok" and r.data["sq"] == int(r.id) ** 2 for r in results)


def test_one_bad_item_fails_alone_with_its_reason():
    results = run_step(BadItem(), range(8), workers=2, batch_size=4, options=RAY)
    failed = [r for r in results if r.status == "failed"]
    assert [r.id for r in failed] == ["3"]
    assert "cannot read item 3" in (failed[0].reason or "")
    assert sum(r.status == "ok" for r in results) == 7


def test_a_full_disk_in_a_worker_stops_the_run_naming_the_path():
    with pytest.raises(DiskFull, match="/data/out/x.png"):
        run_step(Full(), range(4), workers=1, options=RAY)


def test_an_unreachable_cluster_is_a_usage_error_naming_the_fix(tmp_path, anime_dir):
    """`--ray-address auto` with no Ray running: exit 2 and the fix, not a traceback (a fresh
    process: the session's Ray lives in pytest's tmp, where `auto` does not look)."""
    import shutil
    import subprocess

    src = tmp_path / "raw"
    src.mkdir()
    shutil.copy(next(anime_dir.glob("*.png")), src / "a.png")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"HOME": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0", "TMPDIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "prep.cli", "check", str(src), "--engine", "ray", "--ray-address", "auto", "--no-faces"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2, res.stderr[-1500:]
    assert "cannot reach Ray at 'auto'" in res.stdout + res.stderr and "ray start --head" in res.stdout + res.stderr
