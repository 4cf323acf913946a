import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from fake_openai import FakeOpenAI
from mvboost.config import load_config
from mvboost.prompts.dedupe import Deduper
from mvboost.prompts.filters import check_prompt
from mvboost.prompts.llm import PromptGenConfig, generate_bank
from mvboost.prompts.offline import offline_prompts
from mvboost.prompts.taxonomy import all_categories

SMOKE = REPO / "prompts" / "configs" / "llm_smoke.yaml"


@pytest.fixture(scope="module")
def embed():
    from mvboost.prompts.dedupe import load_embedder

    return load_embedder()


def cfg_for(server, tmp_path, *extra):
    return load_config(PromptGenConfig, SMOKE, [f"out={tmp_path}/bank.jsonl", f"llm.base_url={server.base_url}",
                                                f"cache_dir={tmp_path}/cache", "progress=false",
                                                "llm.timeout_s=1", *extra])


def lines(path):
    return [json.loads(x) for x in open(path) if x.strip()]


def test_taxonomy_and_offline_source():
    cats = all_categories()
    assert len(cats) >= 200 and len({c for _, c in cats}) == len(cats)
    rows = offline_prompts(2000)
    assert len({r["prompt"] for r in rows}) == 2000 and len({r["prompt_id"] for r in rows}) == 2000
    assert offline_prompts(5) == rows[:5]  # deterministic
    assert all(r["source"] == "offline-taxonomy-v1" for r in rows)


def test_filters_have_reasons():
    assert check_prompt("a red ceramic coffee mug with a gold rim") is None
    assert check_prompt("a red mug").startswith("too short")
    assert check_prompt("a nude marble statue of a goddess").startswith("unsafe")
    assert check_prompt("a cozy kitchen scene with pots").startswith("not a single object")
    assert check_prompt("%%%% #### 1234 5678 @@@@").startswith("garbage")
    assert check_prompt("see https://example.com for a nice red mug").startswith("garbage")
    assert check_prompt(" ".join(["word"] * 50)).startswith("too long")


def test_deduper_exact_and_near(embed):
    d = Deduper(0.9, embed)
    r = d.add(["A red ceramic coffee mug.", "a red ceramic coffee mug", "a small red ceramic coffee mug",
               "a crimson porcelain cup for coffee", "a steam locomotive"])
    assert r[0] is None and r[1].startswith("duplicate: exact") and r[2].startswith("duplicate: near-duplicate")
    assert r[3] is None and r[4] is None
    assert d.matched == [None, None, 0, None, None]  # the near-duplicate names the indexed row it repeats
    assert d.add(["a tiny red ceramic coffee mug"])[0].startswith("duplicate: near")
    assert d.matched == [0] and d.size == 3 and d.counts == {"exact": 1, "near": 2}


def test_file_bank_near_duplicates_match_a_brute_force_greedy_scan(tmp_path, monkeypatch):
    """plan.near_duplicates (batched Deduper, chunked matmuls, cached verdicts) against the O(n^2) definition:
    walking in order, a text is dropped when its cosine with any earlier *kept* text reaches the threshold;
    it names the most similar kept one."""
    import numpy as np

    from mvboost.pipeline.items import near_duplicates

    monkeypatch.setenv("MVBOOST_CACHE", str(tmp_path))
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 384))
    # 200 texts: mostly copies of 40 directions with noise, so near-duplicates cross batch boundaries
    vecs = base[rng.integers(0, 40, 200)] + rng.normal(scale=0.35, size=(200, 384))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    texts = [f"text {i}" for i in range(200)]
    table = dict(zip(texts, vecs))

    def embed(batch):
        return np.stack([table[t] for t in batch])

    expect, kept = {}, []
    for i in range(200):
        sims = [float(vecs[i] @ vecs[j]) for j in kept]
        if sims and max(sims) >= 0.9:
            expect[i] = kept[int(np.argmax(sims))]
        else:
            kept.append(i)
    assert 20 < len(expect) < 180  # both outcomes are exercised
    got = near_duplicates(texts, 0.9, "oracle", embed, batch=7)
    assert {i: j for i, (j, _) in got.items()} == expect
    assert all(why.startswith("duplicate: near-duplicate (cosine") for _, why in got.values())

    def no_embed(batch):
        raise AssertionError("a cached verdict must not embed again")

    assert near_duplicates(texts, 0.9, "oracle", no_embed, batch=7) == got


@pytest.mark.parametrize("stream", [False, True])
def test_fault_injection_accounting_and_free_rerun(tmp_path, embed, stream):
    with FakeOpenAI(hang_s=2.5) as server:
        cfg = cfg_for(server, tmp_path, f"llm.stream={str(stream).lower()}")
        s = generate_bank(cfg, embed=embed)
        first_requests = server.requests
    assert s.requested == s.accepted + s.rejected  # exact accounting over item slots
    assert s.requested == 3 * 4 * 5 and s.bank_size == 30  # 3 parts of 4 requests x 5 item slots
    reasons = s.rejected_by_reason
    assert reasons["malformed response: not JSON"] == 5  # request 4, all 5 slots
    assert sum(v for k, v in reasons.items() if k.startswith("schema")) == 3  # request 5
    assert reasons["duplicate: exact match after normalisation"] == 2 and reasons["duplicate: near-duplicate"] == 1
    assert reasons["unsafe: nude"] == 1 and reasons["too short: 3 words"] == 1
    assert reasons["not a single object: scene"] == 1 and reasons["garbage: not natural-language text"] == 1
    # the 429, the 500 and the hang were retried: no slot of requests 1-3 is lost
    rejects = lines(f"{tmp_path}/bank.jsonl.rejects.jsonl")
    assert not [r for r in rejects if r["request"] in (1, 2, 3)]
    assert len(rejects) == s.rejected
    bank = lines(f"{tmp_path}/bank.jsonl")
    assert len(bank) == 30 and len({b["prompt_id"] for b in bank}) == 30
    assert all(b["source"].startswith("llm:smoke-model@http://127.0.0.1") for b in bank)
    assert s.prompt_tokens > 0 and first_requests == 12 + 3  # 12 requests + the 3 retried attempts
    # a rerun into a fresh output pays only for the one unusable answer (request 4's truncated JSON is
    # never cached): every usable response comes from the cache
    with FakeOpenAI() as server2:
        cfg2 = cfg_for(server2, tmp_path, f"llm.stream={str(stream).lower()}", f"out={tmp_path}/bank2.jsonl")
        s2 = generate_bank(cfg2, embed=embed)
        assert server2.requests == 1 and server2.attempts == {4: 1}
    assert s2.requests == 12 and s2.requests_from_cache == 11
    strip = lambda rows: [{k: v for k, v in r.items() if k != "source"} for r in rows]  # noqa: E731 (port differs)
    assert strip(lines(f"{tmp_path}/bank2.jsonl")) == strip(bank)


def test_killed_run_resumes_without_duplicates(tmp_path, embed):
    with FakeOpenAI(hang_s=2.5) as server:
        out = tmp_path / "bank.jsonl"
        cmd = [sys.executable, "-m", "prompts.generate", "--config", str(SMOKE), "--out", str(out),
               "--base-url", server.base_url, "--n", "120", "--set", f"cache_dir={tmp_path}/cache",
               "--set", "requests_per_part=2", "--set", "llm.requests_per_min=120"]
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        parts = tmp_path / "bank.jsonl.parts"
        deadline = time.time() + 120
        while time.time() < deadline and len(list(parts.glob("*.done.json"))) < 3 and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        done_before = len(list(parts.glob("*.done.json")))
        assert done_before >= 3 and not out.exists()
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    bank = lines(out)
    assert len(bank) == 120 and len({b["prompt_id"] for b in bank}) == 120
    assert len({b["prompt"].lower() for b in bank}) == 120
    summary = json.loads((tmp_path / "bank.jsonl.summary.json").read_text())
    assert summary["requested"] == summary["accepted"] + summary["rejected"]
    assert "source llm:smoke-model" in r.stdout


def test_a_200_that_is_not_a_completion_is_retried_then_recorded(tmp_path):
    # request 3 hangs 0.3 s then answers 200 "{}" (no choices): with a 1 s timeout the client gets that
    # body, which must count as a failed attempt, not crash the run
    with FakeOpenAI(hang_s=0.3) as server:
        s = generate_bank(cfg_for(server, tmp_path, "near_duplicates=false", "n=10"))
    assert s.requested == s.accepted + s.rejected
    rejects = lines(f"{tmp_path}/bank.jsonl.rejects.jsonl")
    assert not [r for r in rejects if r["request"] == 3]  # the retry got a proper answer
    assert server.attempts[3] == 2


def test_bad_key_or_model_stops_with_a_clear_message(tmp_path):
    from mvboost.prompts.llm import FatalLLMError

    class Refusing(FakeOpenAI):
        def _handler(self):
            base = super()._handler()

            class H(base):
                def do_POST(self):
                    self.rfile.read(int(self.headers["Content-Length"]))
                    self._send(401, json.dumps({"error": {"message": "bad key"}}))

            return H

    with Refusing() as server:
        os.environ["MVBOOST_TEST_KEY"] = "sk-secret-value"
        try:
            with pytest.raises(FatalLLMError, match="check the model name and the key") as e:
                generate_bank(cfg_for(server, tmp_path, "llm.api_key_env=MVBOOST_TEST_KEY", "near_duplicates=false"))
        finally:
            os.environ.pop("MVBOOST_TEST_KEY")
    assert "sk-secret-value" not in str(e.value)
