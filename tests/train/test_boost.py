"""The boost, at CI size: a small LGM trained from random weights on domain-A asset shards, boosted with LoRA on
domain-B asset shards, scored by the evaluation job on held-out objects it never saw. The boost must move the
held-out B metrics the right way with their 95 % intervals on the right side of zero, and not cost held-out A
more than 0.5 dB. Sizes in bench/boost_experiment.py (``SIZES["ci"]``), chosen from measured curves."""
import json
import subprocess
import sys

from conftest import REPO


def _run(out):
    r = subprocess.run([sys.executable, "bench/boost_experiment.py", "--out", str(out), "--size", "ci"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def test_boost_improves_held_out_domain_b_without_forgetting_a(tmp_path):
    out = tmp_path / "boost"
    summary = _run(out)
    rows = {(r["mode"], r["held_out"], r["metric"]): r for r in summary["rows"]}
    psnr_b, lpips_b = rows[("gt_ortho", "B", "PSNR ↑")], rows[("gt_ortho", "B", "LPIPS-alex ↓")]
    psnr_a = rows[("gt_ortho", "A", "PSNR ↑")]
    n = summary["meta"]["held_out"]
    assert psnr_b["n"] == n and psnr_a["n"] == n  # every held-out object scored by both models
    assert psnr_b["diff"] > 0 and psnr_b["ci95"][0] > 0, psnr_b
    assert lpips_b["diff"] < 0 and lpips_b["ci95"][1] < 0, lpips_b
    assert psnr_a["diff"] >= -0.5, psnr_a
    assert summary["meta"]["peak_rss_gb"] < 4.0
    assert (out / "curves.png").stat().st_size > 10_000 and "training curves" in (out / "report.html").read_text()
    # the held-out lists are the pinned ones, disjoint from what was trained on
    lib = out / "library"
    for d in ("A", "B"):
        train = set((lib / f"{d}_train.txt").read_text().split())
        held = set((lib / f"{d}_held_out.txt").read_text().split())
        assert not train & held and len(held) == n
    # a rerun resumes: nothing is trained or scored again, the table is the same (in this process: no start-up)
    sys.path.insert(0, str(REPO / "bench"))
    import boost_experiment

    again = boost_experiment.run(out, "ci")
    assert again["rows"] == summary["rows"] and again["meta"]["seconds"] < 60
