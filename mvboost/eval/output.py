"""An evaluation run's output: one JSON record per object, written last and atomically, beside its files."""
from __future__ import annotations

import json

from ..io.files import write_atomic


# ---- output -----------------------------------------------------------------------------------------------
class EvalOutput:
    """``<output>/objects/<name>.json`` (written last, atomically) + ``<output>/objects/<name>/`` files."""

    def __init__(self, url: str):
        import fsspec

        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.root = self.root.rstrip("/")
        self.url = url

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def write(self, rel: str, data: bytes) -> None:
        write_atomic(self.fs, self.path(rel), data)

    def record(self, name: str) -> dict | None:
        p = self.path("objects", f"{name}.json")
        if not self.fs.exists(p):
            return None
        try:
            with self.fs.open(p, "rb") as f:
                return json.loads(f.read())
        except (ValueError, OSError):
            return None

    def done(self, name: str) -> bool:
        rec = self.record(name)
        return rec is not None and rec.get("status") == "done"
