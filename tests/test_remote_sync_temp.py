"""A file still being written (our temp files) is never sent to or pulled from a remote box."""

from __future__ import annotations

from pathlib import Path

from prep.fsutil import TEMP_PREFIX
from train_bridge.remote.sync import list_local


def test_temp_files_in_flight_are_not_listed_for_sync(tmp_path: Path) -> None:
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "lora-000001.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "output" / f"{TEMP_PREFIX}123-abcd1234-lora-000002.safetensors.tmp").write_bytes(b"partial")
    (tmp_path / "output" / ".tmp-lora-000003.safetensors").write_bytes(b"partial")
    assert sorted(list_local(tmp_path)) == ["output/lora-000001.safetensors"]
