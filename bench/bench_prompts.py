"""Prompt bank throughput and de-duplication cost.

    python bench/bench_prompts.py [--dedupe-n 100000] [--latency 0.05]

1. prompts/s against a local OpenAI-compatible server (127.0.0.1, fixed latency per request) as
   concurrency grows, printed as the ratio to concurrency 1 (measured in the same run);
2. de-duplication of N prompts with MiniLM embeddings: seconds (embedding vs similarity search) and
   peak RSS growth.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def throughput(latency: float, concurrency: int, requests: int) -> float:
    import fake_openai
    from mvboost.config import from_dict
    from mvboost.prompts.llm import PromptGenConfig, generate_bank

    class Slow(fake_openai.FakeOpenAI):
        def __init__(self):
            super().__init__()
            self.attempts = {1: 1, 2: 1, 3: 1}  # skip the injected 429 / 500 / hang of the test server

        def _handler(self):
            base = super()._handler()

            class H(base):
                def do_POST(self):
                    time.sleep(latency)
                    super().do_POST()

            return H

    with tempfile.TemporaryDirectory() as d, Slow() as server:
        fake_openai.items_for = fake_openai.valid_items  # no injected faults here
        cfg = from_dict(PromptGenConfig, {
            "source": "llm", "n": requests * 10, "out": f"{d}/bank.jsonl", "items_per_request": 10,
            "requests_per_part": max(concurrency, 8), "cache_dir": f"{d}/cache", "progress": False,
            "near_duplicates": False,
            "llm": {"base_url": server.base_url, "model": "bench", "concurrency": concurrency,
                    "requests_per_min": 1e9, "tokens_per_min": 1e12}})
        t = time.perf_counter()
        s = generate_bank(cfg)
        return s.accepted / (time.perf_counter() - t)


def dedupe_cost(n: int):
    from mvboost.prompts.dedupe import Deduper, load_embedder
    from mvboost.prompts.offline import offline_prompts

    texts = [p["prompt"] for p in offline_prompts(n, seed=1)]
    embed = load_embedder()
    timing = {"embed": 0.0}

    def timed_embed(batch):
        t = time.perf_counter()
        out = embed(batch)
        timing["embed"] += time.perf_counter() - t
        return out

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    d = Deduper(embed=timed_embed)
    t = time.perf_counter()
    for i in range(0, n, 2000):
        d.add(texts[i:i + 2000])
    total = time.perf_counter() - t
    rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return total, timing["embed"], d.size, d.counts, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dedupe-n", type=int, default=100_000)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--requests", type=int, default=64)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = None
    for c in (1, 4, 16, 64):
        r = throughput(a.latency, c, a.requests)
        base = base or r
        print(f"concurrency {c:>3}: {r:8.1f} prompts/s = x{r / base:.1f} of concurrency 1 "
              f"({a.latency * 1000:.0f} ms per request, 10 items each)", flush=True)
    total, emb, kept, counts, rss = dedupe_cost(a.dedupe_n)
    print(f"de-duplication of {a.dedupe_n} prompts: {total:.1f} s ({emb:.1f} s embedding, "
          f"{total - emb:.1f} s similarity search), kept {kept}, removed {counts}, peak RSS +{rss:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
