"""prep.onnx.release_freed_heap: freed heap pages really go back to the OS (issue 17: a loaded
ONNX model otherwise keeps its parsed file's pages resident for the whole run)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from prep.onnx import release_freed_heap

CHILD = textwrap.dedent("""
    import ctypes, json
    from prep.onnx import release_freed_heap

    def rss_mib():
        return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # Freeing one large mmapped block raises glibc's mmap threshold, so the 1 MiB blocks below
    # come from the heap, as the parse buffers of a model file do.
    big = libc.malloc(16 << 20)
    ctypes.memset(big, 1, 16 << 20)
    libc.free(big)
    blocks = [libc.malloc(1 << 20) for _ in range(256)]
    for b in blocks:
        ctypes.memset(b, 1, 1 << 20)
    guard = libc.malloc(1 << 20)  # keeps the freed blocks below the heap's top: no automatic trim
    ctypes.memset(guard, 1, 1 << 20)
    for b in blocks:
        libc.free(b)
    before = rss_mib()
    released = release_freed_heap()
    print(json.dumps({"released": released, "before": before, "after": rss_mib()}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim is Linux-only")
def test_freed_heap_pages_are_returned_to_the_os() -> None:
    import json

    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=60).stdout
    r = json.loads(out)
    assert r["released"] is True
    assert r["before"] - r["after"] > 200, r  # 256 MiB were freed but resident before the call


def test_release_is_a_no_op_where_there_is_no_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert release_freed_heap() is False
