"""The prompt bank's resumable writer and its summary (the layout is in :mod:`mvboost.prompts.llm`)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..io.files import jsonl_bytes, write_atomic


class BankWriter:
    """Resumable bank under ``out`` (see module doc)."""

    def __init__(self, out: str, storage_options: dict | None = None):
        import fsspec

        self.out = out
        self.fs, self.path = fsspec.core.url_to_fs(out, **(storage_options or {}))
        self.parts = self.path + ".parts"

    def _write(self, path: str, data: bytes) -> None:
        write_atomic(self.fs, path, data)

    def done_parts(self) -> list[int]:
        try:
            names = [p.rsplit("/", 1)[-1] for p in self.fs.ls(self.parts, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(int(n[5:11]) for n in names if n.endswith(".done.json"))

    def load(self, part: int):
        base = f"{self.parts}/part-{part:06d}"
        read = lambda p: [json.loads(x) for x in self.fs.cat(p).decode().splitlines() if x.strip()]  # noqa: E731
        return read(base + ".jsonl"), read(base + ".rejects.jsonl"), json.loads(self.fs.cat(base + ".done.json"))

    def commit(self, part: int, accepted: list, rejects: list, stats: dict) -> None:
        base = f"{self.parts}/part-{part:06d}"
        self._write(base + ".jsonl", jsonl_bytes(accepted))
        self._write(base + ".rejects.jsonl", jsonl_bytes(rejects))
        self._write(base + ".done.json", json.dumps(stats, sort_keys=True).encode())

    def finish(self, accepted: list, rejects: list, summary: dict) -> None:
        self._write(self.path + ".rejects.jsonl", jsonl_bytes(rejects))
        self._write(self.path + ".summary.json", json.dumps(summary, indent=1, sort_keys=True).encode())
        self._write(self.path, jsonl_bytes(accepted))


@dataclass
class BankSummary:
    source: str
    out: str
    requested: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_by_reason: dict = field(default_factory=dict)
    requests: int = 0
    requests_from_cache: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_usd: float | None = None
    duplicates: dict = field(default_factory=dict)
    bank_size: int = 0
    wall_seconds: float = 0.0
    stopped: str = ""  # why the run stopped before n prompts (a spend bound); "" = finished

    def format(self) -> str:
        cost = "unknown (set llm.price_*_per_1m)" if self.estimated_usd is None else f"${self.estimated_usd:.4f}"
        lines = [f"prompt bank at {self.out}: {self.bank_size} prompts, source {self.source}",
                 f"item slots requested {self.requested} = accepted {self.accepted} + rejected {self.rejected}"]
        for r, n in sorted(self.rejected_by_reason.items(), key=lambda x: -x[1]):
            lines.append(f"  rejected {n:>6}  {r}")
        if self.requests:
            lines.append(f"requests {self.requests} ({self.requests_from_cache} from cache), tokens in "
                         f"{self.prompt_tokens} / out {self.completion_tokens}, estimated cost {cost}")
        lines.append(f"duplicates removed: {self.duplicates}; wall time {self.wall_seconds:.1f} s")
        if self.stopped:
            lines.append(f"STOPPED before {self.out} was complete: {self.stopped}. The parts so far are kept: rerun "
                         "(with a higher bound, or once the endpoint is fixed) to resume.")
        return "\n".join(lines)


def reject_group(reason: str) -> str:
    """A rejected item slot's reason without its details, for counting: the kind and its first clause
    ("duplicate: near-duplicate (cosine 0.93 …) of …" -> "duplicate: near-duplicate")."""
    return reason.split(":")[0] + (": " + reason.split(":")[1].split("(")[0].strip() if ":" in reason else "")
