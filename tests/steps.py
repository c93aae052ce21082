"""Picklable step functions for executor tests (spawned workers import this module)."""

from __future__ import annotations

import os

from prep.executor import Result


class Square:
    def __call__(self, batch):
        out = []
        for x in batch:
            if x == 13:
                raise ValueError("unlucky number")
            out.append(Result(str(x), "ok", data={"sq": x * x, "pid": os.getpid()}))
        return out
