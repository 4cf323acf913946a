"""The boost experiment's script (bench/boost_experiment.py) end to end at a tiny size: asset shards of both
domains, a small LGM trained from random weights on domain A, boosted with LoRA on domain B, both scored by the
evaluation job on held-out objects of both domains, the table, the curves and the report; a rerun resumes
without training or scoring again. What the boost does to held-out objects (the right direction, with its 95 %
interval) is asserted at CI size by tests/train/test_mechanism.py, whose oracle arm is this experiment's boost
(the same steps: ground-truth domain-B shards, the same base, LoRA, the same evaluation) at the sizes where the
effect is measurable; the full-size figures are in docs/boost.md."""
import json
import subprocess
import sys

from conftest import REPO

TINY = {"per_domain": 10, "held_out": 3, "image": 32, "base_steps": 8, "boost_steps": 4, "eval_resolution": 32}


def test_boost_experiment_runs_reports_and_resumes(tmp_path):
    out = tmp_path / "boost"
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    r = subprocess.run([sys.executable, "bench/boost_experiment.py", "--out", str(out), "--size", "ci", *sets],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert {k: summary["meta"][k] for k in TINY} == TINY  # the overrides reached the run
    rows = {(x["mode"], x["held_out"], x["metric"]): x for x in summary["rows"]}
    n = TINY["held_out"]
    for domain in ("B", "A"):  # every held-out object scored by both models, with a paired difference
        for metric in ("PSNR ↑", "LPIPS-alex ↓"):
            row = rows[("gt_ortho", domain, metric)]
            assert row["n"] == n and row["ci95"][0] <= row["diff"] <= row["ci95"][1], row
    assert summary["models"][0].startswith("base=") and "+" in summary["models"][1]  # base + the LoRA adapter
    history = [json.loads(x) for x in (out / "runs" / "base" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == list(range(1, TINY["base_steps"] + 1))
    assert (out / "curves.png").stat().st_size > 10_000 and "training curves" in (out / "report.html").read_text()
    assert "| held-out |" in (out / "summary.md").read_text()
    # the held-out lists are the pinned ones, disjoint from what was trained on
    lib = out / "library"
    for d in ("A", "B"):
        train = set((lib / f"{d}_train.txt").read_text().split())
        held = set((lib / f"{d}_held_out.txt").read_text().split())
        assert not train & held and len(held) == n and len(train) == TINY["per_domain"] - n
    # a rerun resumes: nothing is trained or scored again, the table is the same (in this process: no start-up)
    sys.path.insert(0, str(REPO / "bench"))
    import boost_experiment

    again = boost_experiment.run(out, "ci", TINY)
    assert again["rows"] == summary["rows"] and again["meta"]["seconds"] < 60
