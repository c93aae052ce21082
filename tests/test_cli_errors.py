"""The shared pieces' problems end every CLI as one clean error naming the path, never a traceback."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from prep.cli.common import make_app
from prep.fsutil import DiskFull
from prep.lock import output_lock


def _app(exc: BaseException):
    app = make_app("t", "test app")

    @app.command()
    def write() -> None:
        raise exc

    return app


def test_a_full_disk_is_one_clean_error_naming_the_path(tmp_path: Path) -> None:
    res = CliRunner().invoke(_app(DiskFull(tmp_path / "out" / "[x].png", OSError(errno.ENOSPC, "full"))), ["write"])
    assert res.exit_code == 1
    assert f"no space left on {tmp_path / 'out' / '[x].png'}" in res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)


def test_a_folder_held_by_another_process_is_a_usage_error_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code = "import sys, time; from prep.lock import output_lock\nwith output_lock(sys.argv[1], 'prep crop'):\n    print('held', flush=True); time.sleep(30)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        app = make_app("t", "test app")

        @app.command()
        def write() -> None:
            with output_lock(out, "prep layout"):
                raise AssertionError("must not get the lock")

        res = CliRunner().invoke(app, ["write"])
        assert res.exit_code == 2, res.output
        assert str(holder.pid) in res.output and "in use" in res.output
    finally:
        holder.kill()
        holder.wait()
