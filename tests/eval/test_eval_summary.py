"""The evaluation summary and report as a reviewer reads them: comparable means over the objects every model
scored, failures counted and imputed (never dropped), the bootstrap interval against hand-computed cases,
the paper's column beside the right variant, the header, the report's structure, and run comparison."""
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from conftest import call_main
from mvboost.eval.protocol import Protocol
from mvboost.eval.summary import PAPER, bootstrap_ci, markdown, summarise

REPO = Path(__file__).parents[2]


# ---- the bootstrap -------------------------------------------------------------------------------------
def test_bootstrap_interval_of_two_objects_is_the_hand_computed_one():
    """Paired differences (0, 1): a resample of 2 objects has mean 0 (p 1/4), 0.5 (p 1/2) or 1 (p 1/4), so
    the 2.5th and 97.5th percentiles of many resamples are 0 and 1."""
    lo, hi = bootstrap_ci(np.array([0.0, 1.0]), 20000, seed=0)
    assert (lo, hi) == (0.0, 1.0)
    assert bootstrap_ci(np.array([0.5, 0.5, 0.5]), 500, seed=3) == (0.5, 0.5)
    assert all(np.isnan(bootstrap_ci(np.array([1.0]), 100, 0)))  # one object: no interval
    # fixed seed: the same interval again; another seed may differ
    d = np.array([0.3, -0.2, 1.4, 0.9, 0.1])
    assert bootstrap_ci(d, 2000, 7) == bootstrap_ci(d, 2000, 7)


def _record(obj, values: dict, status="done"):
    """An evaluation record; ``values``: model -> {"psnr": x, "cd": y, "f": z} or a failure reason."""
    models = {}
    for m, v in values.items():
        if isinstance(v, str):
            models[m] = {"status": "failed", "reason": v}
            continue
        variant = {"psnr": {"all": v["psnr"], "novel": v["psnr"]}, "cd": v["cd"], "f@0.1": v["f"], "f_sq@0.05": v["f"]}
        models[m] = {"status": "done", "canonical": variant, "aligned": v.get("aligned", variant),
                     "frame_warning": v.get("warning")}
    return {"object": obj, "status": status, "noise_floor_cd": 0.01, "models": models}


def _row(summary, label, variant="aligned"):
    return next(r for r in summary["tables"][variant] if r["metric"] == label)


def test_pairing_removes_the_spread_between_objects():
    """boosted = base + 1 on objects whose values spread over 30 dB: the paired interval is exactly [1, 1]."""
    recs = [_record(f"o{i}", {"base": {"psnr": p, "cd": 0.1, "f": 0.5},
                              "boosted": {"psnr": p + 1, "cd": 0.1, "f": 0.5}})
            for i, p in enumerate([10.0, 20.0, 30.0, 40.0])]
    row = _row(summarise(recs, ["base", "boosted"], 1000, 0), "PSNR (21 views)")
    diff = row["boosted − base"]
    assert diff["mean"] == pytest.approx(1.0) and diff["ci95"] == pytest.approx([1, 1])


def test_a_failure_is_counted_shown_and_imputed_never_dropped():
    """base fails o3 (its prediction) and has no mesh on o4: the side-by-side means are over the objects both
    scored, so they agree with the paired difference; the failures are counted; the imputed rows score all."""
    recs = [_record("o1", {"base": {"psnr": 20.0, "cd": 0.1, "f": 0.8},
                           "boosted": {"psnr": 21.0, "cd": 0.05, "f": 0.9}}),
            _record("o2", {"base": {"psnr": 22.0, "cd": 0.2, "f": 0.9},
                           "boosted": {"psnr": 25.0, "cd": 0.1, "f": 0.95}}),
            _record("o3", {"base": "NaN in the prediction", "boosted": {"psnr": 10.0, "cd": 0.5, "f": 0.2}})]
    no_mesh = _record("o4", {"base": {"psnr": 15.0, "cd": None, "f": None,
                                      "aligned": {"status": "n/a", "reason": "no mesh: …"}},
                             "boosted": {"psnr": 16.0, "cd": 0.3, "f": 0.4}})
    no_mesh["models"]["base"]["canonical"].pop("f@0.1")
    no_mesh["models"]["base"]["canonical"].pop("f_sq@0.05")
    no_mesh["models"]["base"]["mesh"] = "no mesh: the Gaussians' density never reaches the iso-level"
    s = summarise(recs + [no_mesh], ["base", "boosted"], 500, 0)
    psnr = _row(s, "PSNR (21 views)")
    # aligned: base scored o1, o2 only (o3 failed, o4 not aligned): n = 2, means 21 and 23, difference +2
    assert (psnr["n"], psnr["base"], psnr["boosted"]) == (2, 21.0, 23.0)
    assert psnr["boosted − base"]["mean"] == pytest.approx(psnr["boosted"] - psnr["base"])
    assert (psnr["base failed"], psnr["boosted failed"]) == (2, 0)
    assert psnr["boosted own mean"] == pytest.approx((21 + 25 + 10 + 16) / 4) and psnr["boosted own n"] == 4
    # canonical: o4's 2D metrics exist for base (only its mesh failed), so PSNR has n = 3 there
    assert _row(s, "PSNR (21 views)", "canonical")["n"] == 3
    cd = _row(s, "CD (Euclidean, ½+½)")
    assert cd["n"] == 2 and cd["base failed"] == 2
    imputed = _row(s, "CD (Euclidean, ½+½) [failures imputed]")
    worst = 0.5  # the largest CD any model had on any object
    assert imputed["n"] == 4
    assert imputed["base"] == pytest.approx((0.1 + 0.2 + worst + worst) / 4)
    assert imputed["boosted"] == pytest.approx((0.05 + 0.1 + 0.5 + 0.3) / 4)
    f = _row(s, "F@0.1 [failures imputed]")
    assert f["base"] == pytest.approx((0.8 + 0.9 + 0 + 0) / 4)
    reasons = {f["object"]: f["reason"] for f in s["model_failures"]["base"]}
    assert reasons["o3"] == "NaN in the prediction" and "no mesh" in reasons["o4"]
    assert s["model_failures"]["boosted"] == []
    md = markdown(s)
    assert "| PSNR (21 views) ↑ | 2 | 21.0000 | 23.0000 | +2.0000" in md
    assert "base on o3: NaN in the prediction" in md
    # the old summary compared per-model means over different object sets (21 vs 18.667 here)
    assert psnr["boosted"] != pytest.approx(psnr["boosted own mean"])


def test_the_papers_column_sits_beside_the_variant_it_corresponds_to():
    recs = [_record(f"o{i}", {"base": {"psnr": 20.0 + i, "cd": 0.1, "f": 0.5, "warning": "axis permutation" if i == 0
                                       else None}}) for i in range(3)]
    s = summarise(recs, ["base"], 100, 0, header={"mode": "single", "renderer": "pybullet",
                                                  "split": {"split": "all", "objects": 3, "sha256": "ab" * 32},
                                                  "protocol": {"sha256": "cd" * 32,
                                                               "differs_from_default": {"resolution": 64}},
                                                  "models": [{"name": "base", "id": "tiny:lgm"}]})
    assert _row(s, "F_sq@0.05")["paper (reference)"] == PAPER["F_sq@0.05"] == "0.6349 / 0.7977"
    assert _row(s, "F@0.1")["paper (reference)"] == ""
    assert all(r["paper (reference)"] == "" for r in s["tables"]["canonical"])
    assert any("squared distances" in n and "tau = 0.05" in n for n in s["notes"])
    md = markdown(s)
    assert "- split: all (3 objects, sha256 abababababababab…)" in md and "{'split'" not in md
    assert "fields differing from the default: resolution=64" in md and "- renderer: pybullet" in md
    assert "## Frame warnings" in md and "o0 (base): axis permutation" in md
    assert "LPIPS-vgg" not in md  # a metric nobody computed has no row


# ---- protocol pieces -------------------------------------------------------------------------------------
def test_novel_views_leave_out_the_input_view():
    from mvboost.eval.score import image_metrics

    p = Protocol()
    gt = np.full((21, 16, 16, 3), 0.5, np.float32)
    pred = gt.copy()
    pred[p.input_index()] = 0.6  # only the input view differs: MSE 0.01 there, 0 elsewhere (capped at 100 dB)
    m = image_metrics(pred, gt, lambda a, b: {"alex": np.zeros(len(a))}, p.input_index())
    assert m["psnr"]["novel"] == 100.0
    assert m["psnr"]["all"] == pytest.approx((20 * 100.0 + 20.0) / 21, abs=1e-3)
    assert len(m["psnr"]["per_view"]) == 21


def test_crm24_orbit_and_the_input_view():
    p = Protocol(views="crm24")
    orbit = p.orbit()
    assert len(orbit) == 24 and sorted({e for e, _ in orbit}) == [0.0, 15.0, 30.0]
    assert sorted({a for _, a in orbit}) == [k * 45.0 for k in range(8)]
    assert orbit[p.input_index()] == (0.0, 0.0)
    from mvboost.eval.gt import eval_cameras

    cams = eval_cameras(p, 32)
    pos = cams.c2w[:, :3, 3].double().numpy()
    assert np.allclose(np.linalg.norm(pos, axis=1), 1.5)
    assert (pos[[i for i, (e, _) in enumerate(orbit) if e == 30.0], 1] > 0.7).all()  # positive elevation is above
    with pytest.raises(ValueError, match="views"):
        Protocol(views="42").check()


def test_supersampling_is_the_area_average_of_the_larger_render():
    """Predictions at supersample 2 are the 2x2 block means of the render at twice the size (the GT path uses
    the same downsample), so GT and prediction get the same anti-aliasing."""
    import torch

    from mvboost.eval.gt import downsample, eval_cameras, predicted_views
    from mvboost.gaussians import Gaussians

    torch.manual_seed(0)
    n = 300
    g = Gaussians(torch.rand(1, n, 3) - 0.5, torch.full((1, n), 0.8), torch.full((1, n, 3), 0.03),
                  torch.tensor([[1.0, 0, 0, 0]]).repeat(1, n, 1), torch.rand(1, n, 3))
    p = Protocol(resolution=24)
    small, _ = predicted_views(g, eval_cameras(p), 2)
    big, _ = predicted_views(g, eval_cameras(p, 48), 1)
    assert np.allclose(small, downsample(big, 2), atol=1e-6)
    assert np.allclose(downsample(big, 2), big.reshape(21, 24, 2, 24, 2, 3).mean(axis=(2, 4)))
    assert Protocol().supersample == 2  # GT (hard-edged rasteriser) and splats area-averaged by default


def test_gso30_is_an_error_that_says_how_to_pin_it(tmp_path):
    from mvboost.eval.gso import gso30, resolve_split

    names = ["Alarm_Clock_X", "alarm", "backpack"]
    with pytest.raises(ValueError, match=r"not pinned to a GSO folder .* set each value to the exact GSO folder name"):
        resolve_split("gso30", names)  # a short name that happens to be a folder is not matched by guessing
    pinned = tmp_path / "gso30.json"
    pinned.write_text(json.dumps({"objects": {"alarm": "Alarm_Clock_X", "backpack": "Backpack_Y"}}))
    with pytest.raises(ValueError, match="Backpack_Y"):
        gso30(names, pinned)
    assert gso30(names + ["Backpack_Y"], pinned) == ["Alarm_Clock_X", "Backpack_Y"]


# ---- the report ----------------------------------------------------------------------------------------
class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells, self.classes, self.items, self.imgs, self._in = [], [], [], 0, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("td", "li"):
            self._in = tag
            self.classes.append(a.get("class", ""))
        if tag == "img" and a.get("src", "").startswith("data:image/png;base64,"):
            self.imgs += 1

    def handle_data(self, data):
        if self._in == "td":
            self.cells.append((data, self.classes[-1]))
        elif self._in == "li":
            self.items.append(data)

    def handle_endtag(self, tag):
        self._in = None if tag in ("td", "li") else self._in


def test_report_plots_only_computed_metrics_colours_zero_neutral_and_reads_well(tmp_path):
    from mvboost.eval.output import EvalOutput
    from mvboost.eval.report import _plots, eval_report

    recs = [_record(f"o{i}", {"base": {"psnr": 20.0 + i, "cd": 0.1, "f": 0.5},
                              "same": {"psnr": 20.0 + i, "cd": 0.1, "f": 0.5, "warning": "axis permutation [1, 0, 0]"
                                       if i == 0 else None}}) for i in range(3)]
    for r in recs:
        for m in r["models"].values():
            m["aligned"]["lpips_alex"] = {"all": 0.1, "novel": 0.1}
    s = summarise(recs, ["base", "same"], 100, 0, header={"split": {"split": "all", "objects": 3, "sha256": "ab" * 32}})
    titles = [t for t, _ in _plots(recs, ["base", "same"])]
    assert titles == ["per-object psnr", "per-object cd", "scatter", "histograms"]
    from mvboost.eval import report

    computed = report._computed_metrics(recs, ["base", "same"])
    assert [k for k, _ in computed] == ["psnr", "lpips_alex", "cd"]  # no LPIPS-vgg axes: it was not computed
    page = _Page()
    page.feed(eval_report(EvalOutput(str(tmp_path)), recs, s))
    diffs = [(text, cls) for text, cls in page.cells if text.startswith("+0.0000")]
    assert diffs and all(cls == "neutral" for _, cls in diffs)  # a zero difference is neither a win nor a loss
    assert any(i.startswith("split: all (3 objects") for i in page.items)
    assert any("o0 (same): axis permutation" in i for i in page.items)
    assert page.imgs == len(titles)


def _fake_eval_output(root: Path, models: dict[str, dict[str, float]]):
    """An evaluation output folder as the job writes it (records, eval.json, summary.json, view strips)."""
    from PIL import Image

    from mvboost.eval.summary import write_summary

    (root / "objects").mkdir(parents=True)
    names = sorted({o for per in models.values() for o in per})
    recs = []
    for o in names:
        rec = _record(o, {m: ({"psnr": per[o], "cd": 0.1, "f": 0.5} if o in per else "missing")
                          for m, per in models.items()})
        recs.append(rec)
        (root / "objects" / f"{o}.json").write_text(json.dumps(rec))
        (root / "objects" / o).mkdir()
        for m in models:
            Image.new("RGB", (16, 8), (200, 10, 10)).save(root / "objects" / o / f"{m}_views.png")
    (root / "eval.json").write_text(json.dumps({"objects": names,
                                                "config": {"job": {"models": [f"{m}=x" for m in models]}}}))

    class Out:
        def write(self, rel, data):
            (root / rel).write_bytes(data)

    header = {"mode": "single", "protocol": {"sha256": "p" * 64}}
    write_summary(Out(), summarise(recs, list(models), 100, 0, header=header))


def test_compare_two_runs_in_one_table_and_gallery(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _fake_eval_output(a, {"base": {"o1": 20.0, "o2": 22.0, "o3": 24.0}})
    _fake_eval_output(b, {"base": {"o1": 21.0, "o2": 24.0}})  # run b did not evaluate o3
    out = tmp_path / "cmp.html"
    r = call_main("ray_jobs.report", "--compare", a, b, "--labels", "v1", "v2", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    md = (tmp_path / "cmp.md").read_text()
    assert "| PSNR (21 views) ↑ | 2 | 21.0000 | 22.5000 | +1.5000" in md  # paired over o1, o2
    assert "v2.base on o3: not in this run" in md or "v2.base on o3" in md
    page = _Page()
    page.feed(out.read_text())
    assert page.imgs == 5  # o1, o2 in both runs + o3 in run v1
    assert any(i.startswith("v1: ") for i in page.items) and any(i.startswith("v2: ") for i in page.items)
    r = call_main("ray_jobs.report", "--compare", a)
    assert r.returncode == 2 and r.stderr.startswith("error: --compare needs at least two")
