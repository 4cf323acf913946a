"""Writing single files atomically at any fsspec URL (a temporary name, then a rename), and JSON Lines bytes: what
the shard writer, the evaluation, the prompt banks and the metrics' service discovery file share."""
from __future__ import annotations

import json
import uuid


def write_atomic(fs, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` on fsspec filesystem ``fs`` under a temporary name, then rename."""
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def jsonl_bytes(rows) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
