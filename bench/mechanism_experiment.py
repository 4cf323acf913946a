"""The MVBoost mechanism in miniature: pseudo ground truth made by generate -> reconstruct -> render -> refine, from
single-view images of a new domain, and what training on it does to a reconstruction model.

    python bench/mechanism_experiment.py --out outputs/mechanism             # full size
    python bench/mechanism_experiment.py --out outputs/mechanism_ci --size ci --jobs 2  # two processes

One command, resumable (every step keeps its output; a rerun skips what is done and training resumes from its
last checkpoint), a line per step and progress bars. Everything comes from what packages ship.

1. **Assets**: the two-domain library of :mod:`mvboost.eval.asset_library` (domain A: smooth hue bands; domain B:
   fine checker with dots, stretched 1.6x), disjoint train / held-out lists.
2. **A generator trained on domain A**: a tiny Era3D (the real UNet with its multi-view and cross-domain
   attention, the VAE and the CLIP image conditioning, in the official folder layout) fitted by
   :func:`mvboost.train.era3d.fit_era3d` to domain-A renders: six colour views and normal maps at Era3D's
   orthographic cameras, conditioned on the front view, each object at ``yaws`` turns. Its samples on held-out A
   objects are scored against their ground-truth views (``era3d_quality``) and drawn (``era3d_samples.png``).
3. **A reconstruction base trained on domain A**: the small LGM of the boost experiment, every parameter trained
   on domain-A asset shards.
4. **The chain on domain-B images only**: the front views of the domain-B *training* objects, written as a folder
   of RGBA images, go through the generation job (``prompts.source: images``, stages ``[image_read, matting,
   era3d, lgm, render, refine, write]``) with the trained checkpoints resolved like any local model, once per
   refine strength ``s``. Each sample keeps the raw Era3D views and the LGM renders beside the refined views: the
   raw arm trains on those views (``data.target: views``) of the first strength's samples.
5. **The arms**: LoRA boosts of the same base (the paper's recipe) on each arm's shards; the oracle arm boosts on
   ground-truth asset shards of the same domain-B objects (the ceiling). The evaluation job scores every arm
   against the base on held-out B (the boost) and held-out A (forgetting): paired differences, bootstrap 95 %.
6. **Table 3 in miniature**: the training targets themselves (raw views, LGM renders, refined views at each s)
   against the ground-truth renders of the same domain-B objects, and their cross-view consistency (how well the
   base LGM, fed four of a set's views, re-renders all six). **Table 4 in miniature**: step 5's table.
7. **Report**: ``summary.md`` / ``summary.json``, ``curves.png``, ``targets.png`` and one picture per arm under
   ``pictures/`` (GT | raw | LGM render | refined), ``report.html``.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import boost_experiment as boost  # noqa: E402  (the LGM base, training and evaluation steps are the same)


@dataclass(frozen=True)
class Size:
    per_domain: int  # objects per domain (train + held-out)
    held_out: int
    image: int  # the views of shards, Era3D and the renders (px)
    cond_image: int  # the single-view images the chain reads (px)
    yaws: int  # turns of each domain-A object in Era3D's training data
    vae_steps: int
    vae_batch: int  # images per VAE step
    unet_steps: int
    era3d_batch: int
    gen_steps: int  # DDIM steps of generation (refinement keeps int(gen_steps * s) of them)
    guidance: float
    strengths: tuple  # the refine strengths of the arms
    base_steps: int
    boost_steps: int
    batch: int
    base_lr: float
    boost_lr: float
    lora_rank: int
    eval_resolution: int
    bootstrap: int = 2000


SIZES = {
    "full": Size(per_domain=80, held_out=16, image=32, cond_image=128, yaws=4, vae_steps=800, vae_batch=32,
                 unet_steps=4000, era3d_batch=4, gen_steps=20, guidance=2.0, strengths=(0.5, 0.9, 0.95, 1.0),
                 base_steps=2000, boost_steps=800, batch=4, base_lr=2e-3, boost_lr=2e-3, lora_rank=16,
                 eval_resolution=48),
    "ci": Size(per_domain=24, held_out=8, image=32, cond_image=96, yaws=2, vae_steps=150, vae_batch=16,
               unet_steps=300, era3d_batch=2, gen_steps=10, guidance=2.0, strengths=(0.95,), base_steps=150,
               boost_steps=80, batch=4, base_lr=2e-3, boost_lr=2e-3, lora_rank=16, eval_resolution=48, bootstrap=1000),
}
#: MVBoost (arXiv 2411.17772) Tables 3 and 4, PSNR (dB): the original views vs refined at s = 0.95
PAPER = {"table3": (17.811, 19.132), "table4": (17.851, 18.093)}
ERA3D_VAE = (32, 64, 64)  # two halvings: 32² views <-> 8² latents


def log(msg: str) -> None:
    print(f"[mechanism {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def arm(strength: float) -> str:
    """The arm (model and folder) name of a refine strength: s0_95 for 0.95."""
    return "s" + f"{strength:g}".replace(".", "_")


def arm_names(size: Size) -> list[str]:
    return ["raw"] + [arm(s) for s in size.strengths]


# ---- 2: the generator -----------------------------------------------------------------------------------
def _turned(obj, yaw_deg: float):
    """The object turned about the up axis (both renderers follow ``transform`` and ``vertices``)."""
    a = np.radians(yaw_deg)
    r = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    t = np.eye(4)
    t[:3, :3] = r
    return replace(obj, vertices=obj.vertices @ r.T, transform=t @ obj.transform)


def render_examples(lib: Path, names: list[str], size: Size, yaws: int, seed: int = 0, targets: bool = True):
    """(cond RGBA (N,c,c,4), views (N,6,s,s,3), normals (N,6,s,s,3)) uint8: each object at ``yaws`` turns
    (the first unturned), Era3D's cameras, the front view at the chain's input size. ``targets=False``: the
    front views only (views and normals None)."""
    import tempfile

    from mvboost.assets.gso import load_asset
    from mvboost.assets.render import MeshRenderer, normal_maps
    from mvboost.geometry.cameras import era3d_cameras
    from mvboost.io.codec import to_uint8

    cams, front = era3d_cameras(size.image), era3d_cameras(size.cond_image)
    front = type(front)(front.c2w[:1], front.K[:1], front.width, front.height, front.model)
    rng = np.random.default_rng(seed)
    conds, views, normals = [], [], []
    renderer = MeshRenderer()
    with tempfile.TemporaryDirectory() as cache:
        for name in names:
            base = load_asset(str(lib), name, "gso", Path(cache))
            for k in range(yaws):
                obj = base if k == 0 else _turned(base, float(rng.uniform(0, 360)))
                crgb, calpha = renderer.render(obj, front, 2)
                conds.append(np.concatenate([to_uint8(crgb[0]), to_uint8(calpha[0])], -1))
                if targets:
                    views.append(to_uint8(renderer.render(obj, cams, 2)[0]))
                    normals.append(to_uint8(normal_maps(obj, cams, 2)[0]))
    renderer.close()
    return np.stack(conds), np.stack(views) if targets else None, np.stack(normals) if targets else None


def examples(out: Path, split: dict, part: str, size: Size, yaws: int):
    path = out / "era3d_data" / f"A_{part}.npz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        cond, views, normals = render_examples(out / "library", split["domains"]["A"][part]["objects"], size, yaws)
        np.savez_compressed(path.with_suffix(".tmp.npz"), cond=cond, views=views, normals=normals)
        path.with_suffix(".tmp.npz").rename(path)
    d = np.load(path)
    return d["cond"], d["views"], d["normals"]


def train_generator(out: Path, split: dict, size: Size) -> Path:
    from tqdm.auto import tqdm

    from mvboost.models.tiny import build_tiny_era3d
    from mvboost.train.era3d import Era3DExamples, Era3DFitConfig, fit_era3d

    init = out / "era3d_init"
    if not (init / "model_index.json").is_file():
        build_tiny_era3d(init, seed=0, ortho=True, vae_channels=ERA3D_VAE)
    cond, views, normals = examples(out, split, "train", size, size.yaws)
    cfg = Era3DFitConfig(vae_steps=size.vae_steps, vae_batch=size.vae_batch, unet_steps=size.unet_steps,
                         batch=size.era3d_batch)
    log(f"Era3D: {len(cond)} training examples (domain A, {size.yaws} turns per object); VAE {cfg.vae_steps} steps, "
        f"UNet {cfg.unet_steps} steps of {cfg.batch} objects")
    bars = {}

    def progress(phase, step, total):
        for other in [k for k in bars if k != phase]:
            bars.pop(other).close()
        if phase not in bars:
            bars[phase] = tqdm(total=total, initial=step - 1, desc=f"era3d {phase}", mininterval=5)
        bars[phase].update(1)

    model = fit_era3d(init, Era3DExamples(cond, views, normals), out / "era3d_train", cfg, progress)
    for b in bars.values():
        b.close()
    return model


def generator_quality(out: Path, model: Path, split: dict, size: Size) -> dict:
    """The trained generator's colour views on held-out A objects (front view in) against their ground truth:
    PSNR / SSIM / LPIPS-alex per view (view 0 is the input's own view)."""
    path = out / "era3d_quality.json"
    if path.is_file():
        return json.loads(path.read_text())
    from mvboost.eval.score import LPIPSSet, image_metrics
    from mvboost.models.era3d_pipeline import Era3DPipeline

    cond, views, normals = examples(out, split, "held_out", size, 1)
    lp = LPIPSSet(["alex"])

    def score(folder):
        pipe = Era3DPipeline(folder)
        outs = [pipe.generate([c], seeds=[i], steps=size.gen_steps, guidance=size.guidance)
                for i, c in enumerate(cond)]
        return outs, [image_metrics(o.colors[0], v.astype(np.float32) / 255, lp, 0) for o, v in zip(outs, views)]

    outs, per = score(model)
    res = {k: {"per_view": np.mean([p[k]["per_view"] for p in per], 0).round(4).tolist(),
               "mean": float(np.mean([p[k]["all"] for p in per])),
               "novel": float(np.mean([p[k]["novel"] for p in per]))}
           for k in ("psnr", "ssim", "lpips_alex")}
    res["objects"] = len(per)
    _, before = score(out / "era3d_init")  # the same classes with the initial (random) weights: the reference
    res["untrained"] = {k: float(np.mean([p[k]["all"] for p in before])) for k in ("psnr", "ssim", "lpips_alex")}
    _strip(out / "era3d_samples.png", [
        [cond[i][..., :3]] + list(views[i]) for i in range(min(4, len(cond)))], [
        [np.full_like(cond[i][..., :3], 255)] + list((outs[i].colors[0] * 255).round().astype(np.uint8))
        for i in range(min(4, len(cond)))], [
        [np.full_like(cond[i][..., :3], 255)] + list((outs[i].normals[0] * 255).round().astype(np.uint8))
        for i in range(min(4, len(cond)))])
    path.write_text(json.dumps(res, indent=1))
    return res


def _strip(path: Path, *row_groups) -> None:
    """Rows of equally sized images (each row resized to the first's height) -> one PNG."""
    from PIL import Image

    rows = []
    for group in zip(*row_groups):
        for row in group:
            h = min(im.shape[0] for im in row)
            ims = [np.asarray(Image.fromarray(im).resize((h, h), Image.Resampling.BOX)) if im.shape[0] != h else im
                   for im in row]
            rows.append(np.concatenate(ims, 1))
    w = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, w - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    Image.fromarray(np.concatenate(rows, 0)).resize((w * 3, sum(r.shape[0] for r in rows) * 3),
                                                    Image.Resampling.NEAREST).save(path)


# ---- 4: the chain on domain-B images ---------------------------------------------------------------------
def image_folder(out: Path, split: dict, size: Size) -> Path:
    """The front views of the domain-B training objects, one RGBA PNG each: the single-view image dataset."""
    from PIL import Image

    folder = out / "images" / "B_train"
    names = split["domains"]["B"]["train"]["objects"]
    if folder.is_dir() and len(list(folder.glob("*.png"))) == len(names):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    cond, _, _ = render_examples(out / "library", names, size, 1, targets=False)
    for name, rgba in zip(names, cond):
        Image.fromarray(rgba, "RGBA").save(folder / f"{name}.png")
    return folder


def run_chain(out: Path, name: str, images: Path, era3d: Path, lgm: Path, size: Size) -> Path:
    from mvboost.pipeline.job import load_job_config, run_in_process

    dest = out / "chain" / name
    sets = [f"job.output={dest}", f"job.name=mechanism-{name}", "job.progress=false", "job.shard_size=16",
            "job.stages=[image_read, matting, era3d, lgm, render, refine, write]", f"prompts.images={images}",
            f"image_read.min_size={size.cond_image}",
            f"matting.size={size.cond_image}", f"era3d.model={era3d}", f"era3d.steps={size.gen_steps}",
            f"era3d.guidance={size.guidance}", f"lgm.model={lgm}", f"render.size={size.image}",
            f"refine.model={era3d}", f"refine.steps={size.gen_steps}", f"refine.guidance={size.guidance}",
            f"refine.strength={float(name[1:].replace('_', '.'))}"]
    cfg = load_job_config(REPO / "ray_jobs" / "configs" / "images_smoke.yaml", sets)
    s = run_in_process(cfg)
    log(f"chain {name}: {s.accepted} accepted ({s.skipped_already_done} of them done by an earlier run), "
        f"{s.rejected} rejected")
    if s.rejected:
        log(f"chain {name}: rejects by reason: {s.rejected_by_reason}")
    return dest


def chain_folder(out: Path, name: str, size: Size) -> Path:
    """The chain output an arm trains on: its strength's, or for ``raw`` the first strength's (the raw views and
    renders of a sample do not depend on the refinement that follows them)."""
    return out / "chain" / (arm(size.strengths[0]) if name == "raw" else name)


# ---- 6: the targets against the ground truth (Table 3) -----------------------------------------------------
def _samples(folder: Path) -> dict[str, dict]:
    """object name -> the sample's fields, for every committed shard of a job's output."""
    from mvboost.io.reader import iter_output
    from mvboost.io.sample import decode_meta, decode_prompt

    res = {}
    for _, _, fields in iter_output(str(folder)):
        meta = decode_meta(fields)
        name = meta["asset"]["name"] if "asset" in meta else Path(decode_prompt(fields)).stem
        res[name] = fields
    return res


def target_sets(out: Path, size: Size) -> tuple[dict, dict]:
    """(GT views per object, {set name: views per object}): raw, LGM render, refined at each s."""
    from mvboost.io.sample import VIEW_MEMBERS
    from mvboost.io.sample import decode_views as decode

    def decode_views(fields, member):
        return (decode(fields, member) * 255).round().astype(np.uint8)

    gt = {k: decode_views(f, VIEW_MEMBERS["refined"]) for k, f in _samples(out / "shards" / "B").items()}
    raw = _samples(chain_folder(out, "raw", size))
    sets = {"raw Era3D views": {k: decode_views(f, VIEW_MEMBERS["views"]) for k, f in raw.items()},
            "LGM renders": {k: decode_views(f, VIEW_MEMBERS["renders"]) for k, f in raw.items()}}
    for s in size.strengths:
        sets[f"refined s={s:g}"] = {k: decode_views(f, VIEW_MEMBERS["refined"])
                                   for k, f in _samples(out / "chain" / arm(s)).items()}
    return gt, sets


def target_quality(out: Path, base_lgm: Path, size: Size) -> dict:
    """Per set: PSNR / SSIM / LPIPS-alex against the GT (mean over objects, bootstrap 95 % interval), the paired
    difference from the raw views, and the cross-view consistency (PSNR of the base LGM's re-render of the set
    from its views 0, 2, 3, 4 against the set's 6 views)."""
    import torch

    from mvboost.eval.score import LPIPSSet, image_metrics
    from mvboost.eval.summary import bootstrap_ci
    from mvboost.gaussians import Gaussians
    from mvboost.geometry.cameras import ERA3D_TO_LGM_VIEWS, era3d_cameras
    from mvboost.metrics.geometry import psnr
    from mvboost.models.loading import load_lgm
    from mvboost.render import render

    gt, sets = target_sets(out, size)
    lp = LPIPSSet(["alex"])
    model = load_lgm(str(base_lgm), dtype=torch.float32)
    cams = era3d_cameras(size.image)

    @torch.no_grad()
    def consistency(views: np.ndarray) -> float:
        x = torch.from_numpy(views[list(ERA3D_TO_LGM_VIEWS)]).permute(0, 3, 1, 2).float()[None] / 255
        g = Gaussians.from_lgm(model(model.prepare_inputs(x)).float())
        rgb = render(g, cams, background=(1.0, 1.0, 1.0)).rgb[0].permute(0, 2, 3, 1).numpy()
        return float(np.mean([psnr(a, b.astype(np.float32) / 255) for a, b in zip(rgb, views)]))

    objects = sorted(set(gt).intersection(*[set(v) for v in sets.values()]))
    per: dict[str, dict[str, np.ndarray]] = {}
    for name, views in {"ground truth": gt, **sets}.items():
        rows = [image_metrics(views[o].astype(np.float32) / 255, gt[o].astype(np.float32) / 255, lp, 0)
                for o in objects]
        per[name] = {k: np.array([r[k]["all"] for r in rows]) for k in ("psnr", "ssim", "lpips_alex")}
        per[name]["consistency"] = np.array([consistency(views[o]) for o in objects])
    res = {"objects": len(objects), "sets": {}}
    for name, vals in per.items():
        rec = {}
        for k, v in vals.items():
            if name == "ground truth" and k != "consistency":
                continue
            rec[k] = {"mean": float(v.mean()), "ci95": _ci(v, size.bootstrap)}
            if name not in ("ground truth", "raw Era3D views"):
                d = v - per["raw Era3D views"][k]
                rec[k]["minus_raw"] = {"mean": float(d.mean()), "ci95": list(bootstrap_ci(d, size.bootstrap, 0))}
        res["sets"][name] = rec
    _target_picture(out, gt, sets, objects[:3])
    return res


def _ci(v: np.ndarray, n: int) -> list[float]:
    """Bootstrap 95 % interval of a mean over objects."""
    rng = np.random.default_rng(0)
    means = v[rng.integers(0, len(v), size=(n, len(v)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def _target_picture(out: Path, gt: dict, sets: dict, objects: list[str]) -> None:
    """``targets.png`` (every set) and ``pictures/<arm>.png`` (GT | raw | LGM render | refined at s): per object a
    row per set, the 6 views side by side."""
    (out / "pictures").mkdir(exist_ok=True)
    names = ["raw Era3D views", "LGM renders"]
    _strip(out / "targets.png", [[gt[o][i] for i in range(6)] for o in objects],
           *[[[s[o][i] for i in range(6)] for o in objects] for s in sets.values()])
    for name, s in sets.items():
        if name == "LGM renders":
            continue
        label = "raw" if name in names else arm(float(name.split("=")[1]))
        groups = [[[gt[o][i] for i in range(6)] for o in objects]] + [
            [[sets[n][o][i] for i in range(6)] for o in objects] for n in names]
        if label != "raw":
            groups.append([[s[o][i] for i in range(6)] for o in objects])
        _strip(out / "pictures" / f"{label}.png", *groups)


# ---- report -----------------------------------------------------------------------------------------------
def boost_table(results: dict, names: list[str]) -> list[dict]:
    """Per held-out domain, metric and arm: base, arm, arm − base [95 %], n (the evaluation job's paired rows)."""
    rows = []
    for domain, summary in results.items():
        for row in summary["tables"].get("canonical", []):
            for label, short in boost.ROWS[:3]:
                if row["metric"] != label:
                    continue
                for name in names:
                    diff = row[f"{name} − base"]
                    rows.append({"held_out": domain, "metric": short, "arm": name, "n": row["n"], "base": row["base"],
                                 "value": row[name], "diff": diff["mean"], "ci95": diff["ci95"]})
    return rows


def verdict(rows: list[dict], targets: dict, size: Size) -> dict:
    def get(domain, metric, arm):
        return next((r for r in rows if r["held_out"] == domain and r["metric"] == metric and r["arm"] == arm), None)

    strength = 0.95 if 0.95 in size.strengths else size.strengths[-1]
    main = arm(strength)
    psnr_b, lpips_b, psnr_a = get("B", "PSNR ↑", main), get("B", "LPIPS-alex ↓", main), get("A", "PSNR ↑", main)
    raw_b = get("B", "PSNR ↑", "raw")
    refined = targets["sets"].get(f"refined s={strength:g}", {}).get("psnr", {}).get("minus_raw")
    return {"boost_B_psnr_ge_1dB": bool(psnr_b and psnr_b["diff"] >= 1.0),
            "boost_B_psnr_lower_bound_gt_0": bool(psnr_b and psnr_b["ci95"][0] > 0),
            "boost_B_lpips_upper_bound_lt_0": bool(lpips_b and lpips_b["ci95"][1] < 0),
            "refined_targets_closer_than_raw": bool(refined and refined["ci95"][0] > 0),
            "refined_boost_ge_raw_boost": bool(psnr_b and raw_b and psnr_b["diff"] >= raw_b["diff"]),
            "forgetting_A_ge_-0.5dB": bool(psnr_a and psnr_a["diff"] >= -0.5)}


def _fmt(rec: dict, digits: int = 3) -> str:
    lo, hi = rec["ci95"]
    return f"{rec['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(summary: dict) -> str:
    meta, tq, gq = summary["meta"], summary["targets"], summary["era3d_quality"]
    lines = [f"# MVBoost mechanism experiment ({meta['size']})", "",
             f"Objects per domain: {meta['per_domain'] - meta['held_out']} train + {meta['held_out']} held out; "
             f"views {meta['image']}²; generator: tiny Era3D, VAE {meta['vae_steps']} + UNet {meta['unet_steps']} "
             f"steps on domain A ({meta['yaws']} turns per object), {meta['gen_steps']} DDIM steps, guidance "
             f"{meta['guidance']}; LGM base {meta['base_steps']} full steps on domain A; each arm + LoRA "
             f"r={meta['lora_rank']}, {meta['boost_steps']} steps.", "",
             f"## The generator on held-out A ({gq['objects']} objects, colour views against the ground truth)", "",
             "| | PSNR ↑ | SSIM ↑ | LPIPS-alex ↓ |", "|---|---|---|---|",
             f"| all 6 views | {gq['psnr']['mean']:.2f} | {gq['ssim']['mean']:.3f} | {gq['lpips_alex']['mean']:.3f} |",
             f"| 5 novel views | {gq['psnr']['novel']:.2f} | {gq['ssim']['novel']:.3f} | "
             f"{gq['lpips_alex']['novel']:.3f} |",
             f"| per view (PSNR) | {' / '.join(f'{x:.1f}' for x in gq['psnr']['per_view'])} | | |",
             f"| untrained (initial weights), all 6 | {gq['untrained']['psnr']:.2f} | {gq['untrained']['ssim']:.3f} | "
             f"{gq['untrained']['lpips_alex']:.3f} |", "",
             f"## Table 3 in miniature: the training targets against the ground truth ({tq['objects']} domain-B "
             "training objects; mean [95 % CI]; Δ: paired difference from the raw views)", "",
             "| targets | PSNR ↑ | Δ PSNR | SSIM ↑ | LPIPS-alex ↓ | Δ LPIPS | consistency (dB) ↑ |",
             "|---|---|---|---|---|---|---|"]
    for name, rec in tq["sets"].items():
        if name == "ground truth":
            lines.append(f"| ground truth | | | | | | {_fmt(rec['consistency'], 2)} |")
            continue
        dp = _fmt(rec["psnr"]["minus_raw"], 2) if "minus_raw" in rec["psnr"] else ""
        dl = _fmt(rec["lpips_alex"]["minus_raw"]) if "minus_raw" in rec["lpips_alex"] else ""
        lines.append(f"| {name} | {_fmt(rec['psnr'], 2)} | {dp} | {_fmt(rec['ssim'])} | {_fmt(rec['lpips_alex'])} | "
                     f"{dl} | {_fmt(rec['consistency'], 2)} |")
    lines += ["", f"The paper's Table 3 (PSNR of the targets, full scale): original {PAPER['table3'][0]} dB, "
              f"refined at s = 0.95: {PAPER['table3'][1]} dB.", "",
              "## Table 4 in miniature: the boosted models on held-out objects (canonical frame, "
              "arm − base [95 % CI])", "", "| held-out | metric | n | base | " + " | ".join(summary["arms"]) + " |",
              "|---|---|---|---|" + "---|" * len(summary["arms"])]
    keys = sorted({(r["held_out"], r["metric"]) for r in summary["rows"]}, key=lambda k: (k[0] != "B", k[1]))
    for domain, metric in keys:
        rs = {r["arm"]: r for r in summary["rows"] if r["held_out"] == domain and r["metric"] == metric}
        first = next(iter(rs.values()))
        cells = [f"{r['value']:.3f}, {r['diff']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"
                 for r in (rs[a] for a in summary["arms"])]
        lines.append(f"| {domain} | {metric} | {first['n']} | {first['base']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", f"The paper's Table 4 (held-out PSNR of the boosted model): trained on the original views "
              f"{PAPER['table4'][0]} dB, on refined at s = 0.95: {PAPER['table4'][1]} dB.",
              "", "Targets: " + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in meta["verdict"].items()),
              f"Wall time: {meta['seconds'] / 60:.1f} min (this run; steps done by earlier runs are not counted); "
              f"peak RSS {meta['peak_rss_gb']:.2f} GB", ""]
    return "\n".join(lines)


def curves_png(out: Path, runs: dict[str, Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = [json.loads(x) for x in (out / "era3d_train" / "history.jsonl").read_text().splitlines()]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for phase, ax, key in (("vae", axes[0], "psnr"), ("unet", axes[1], "loss")):
        rows = {h["step"]: h[key] for h in hist if h["phase"] == phase}
        steps = sorted(rows)
        vals = [rows[s] for s in steps]
        k = max(1, len(vals) // 50)
        ax.plot(steps, [np.mean(vals[max(0, i - k):i + 1]) for i in range(len(vals))])
        ax.set_title({"vae": "Era3D VAE: reconstruction PSNR (dB)", "unet": "Era3D UNet: v-prediction loss"}[phase])
    for name, run in runs.items():
        h = boost.read_history(run)
        if h:
            vals = [x["psnr"] for x in h]
            k = max(1, len(vals) // 50)
            axes[2].plot([x["step"] for x in h], [np.mean(vals[max(0, i - k):i + 1]) for i in range(len(vals))],
                         label=name)
    axes[2].set_title("LGM training PSNR of the batch (dB)")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def report_html(out: Path, md: str, names: list[str]) -> str:
    import html

    def img(path: Path) -> str:
        return f"<img src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}' alt='{path.stem}'>"

    pics = "".join(f"<h3>{a}</h3>{img(out / 'pictures' / f'{a}.png')}" for a in names
                   if (out / "pictures" / f"{a}.png").is_file())
    links = "".join(f'<li><a href="eval/gt_ortho_{d}/report.html">held-out {d}</a></li>' for d in ("B", "A"))
    return (f"<!doctype html><meta charset='utf-8'><title>MVBoost mechanism experiment</title>"
            f"<pre>{html.escape(md)}</pre>{img(out / 'curves.png')}<h2>The generator on held-out A (input | 6 GT "
            f"views; generated colours; generated normals)</h2>{img(out / 'era3d_samples.png')}"
            f"<h2>Targets (rows per object: GT, raw, LGM render, refined at each s)</h2>{img(out / 'targets.png')}"
            f"<h2>Per arm: GT | raw | LGM render | refined</h2>{pics}<h2>Evaluation reports</h2><ul>{links}</ul>")


# ---- the run ----------------------------------------------------------------------------------------------
class Side:
    """Runs independent steps side by side in ``jobs`` worker processes (spawned, kept for the whole run), each
    with its share of torch's threads; ``jobs`` = 1 runs them one after another in this process. On 2 CPU cores
    two one-thread trainings do ~1.5x the steps of one two-thread training (small tensors scale poorly across
    threads)."""

    def __init__(self, jobs: int):
        self.jobs, self.pool, self.peak, self._stop = max(1, jobs), None, 0, None
        if self.jobs > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            import torch

            threads = max(1, torch.get_num_threads() // self.jobs)
            self.pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_worker_threads, initargs=(threads,))

    def __enter__(self):
        if self.pool is not None:  # the memory of this process and its workers together, sampled every 0.1 s
            import threading

            import psutil  # here, not in the thread: a missing psutil stops the run instead of reporting 0 GB

            self._stop = threading.Event()
            self._sampler = threading.Thread(target=self._sample, args=(psutil,), daemon=True)
            self._sampler.start()
        return self

    def _sample(self, psutil) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.1):
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:  # a worker that just ended
                    pass
            self.peak = max(self.peak, total)

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=exc[0] is not None)
            self._stop.set()
            self._sampler.join()

    def peak_rss_gb(self) -> float:
        """The peak resident memory of the run: this process's (exact) with one process, else the sampled total
        of this process and its workers."""
        import resource

        if self.pool is None:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        return self.peak / 2 ** 30

    def map(self, calls: list[tuple]) -> list:
        """``calls``: (function, *args) each; their results in order."""
        if self.pool is None:
            return [fn(*args) for fn, *args in calls]
        return [f.result() for f in [self.pool.submit(fn, *args) for fn, *args in calls]]


def _worker_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def generator(out: Path, split: dict, size: Size) -> tuple[Path, dict]:
    """Step 2: the Era3D checkpoint trained on domain A and its quality on held-out A."""
    era3d = train_generator(out, split, size)
    quality = generator_quality(out, era3d, split, size)
    log(f"Era3D on held-out A: PSNR {quality['psnr']['mean']:.2f} dB (novel {quality['psnr']['novel']:.2f}), "
        f"LPIPS {quality['lpips_alex']['mean']:.3f}")
    return era3d, quality


def run(out: Path, size_name: str, overrides: dict | None = None, jobs: int = 1) -> dict:
    size = replace(SIZES[size_name], **(overrides or {}))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    from mvboost.train.context import latest_adapter, latest_model

    with Side(jobs) as side:
        split = boost.build_shards(out, size)  # library + GT asset shards of both domains' training objects
        # the generator and the reconstruction base learn domain A independently of each other
        (era3d, quality), base_run = side.map([
            (generator, out, split, size),
            (boost.train, out, "base", "full", boost.init_model(out), out / "shards" / "A", size.base_steps,
             size.base_lr, size)])
        base = latest_model(base_run)
        images = image_folder(out, split, size)
        arms = arm_names(size)
        # one chain per strength (the raw arm's views are in every chain's samples)
        side.map([(run_chain, out, name, images, era3d, base, size) for name in arms[1:]])
        calls = [(boost.train, out, f"boost-{name}", "lora", base,
                  out / "shards" / "B" if name == "oracle" else chain_folder(out, name, size), size.boost_steps,
                  size.boost_lr, size, ["data.target=views"] if name == "raw" else [])
                 for name in arms + ["oracle"]]
        *arm_runs, targets = side.map([*calls, (target_quality, out, base, size)])
        runs = {"base (A, full)": base_run}
        models = [f"base={base}"]
        for name, r in zip(arms + ["oracle"], arm_runs):
            runs[f"{name} (B, LoRA)"] = r
            models.append(f"{name}={base}+{latest_adapter(r)}")
        results = dict(zip("BA", side.map([(boost.evaluate, out, "gt_ortho", d, models, size) for d in "BA"])))
    rows = boost_table(results, arms + ["oracle"])
    meta = {"size": size_name, **asdict(size), "jobs": side.jobs, "seconds": time.perf_counter() - t0,
            "peak_rss_gb": round(side.peak_rss_gb(), 3),
            "verdict": verdict(rows, targets, size),
            "splits_sha256": {d: {p: v["sha256"] for p, v in parts.items()} for d, parts in split["domains"].items()}}
    summary = {"meta": meta, "arms": arms + ["oracle"], "rows": rows, "targets": targets, "era3d_quality": quality,
               "models": models}
    md = markdown(summary)
    curves_png(out, runs)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(md)
    (out / "report.html").write_text(report_html(out, md, arms))
    log(f"done in {meta['seconds'] / 60:.1f} min: {out / 'summary.md'}, {out / 'report.html'}")
    print(md)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/mechanism_experiment.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/mechanism", help="output folder (a rerun resumes there)")
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"change one size field ({', '.join(Size.__dataclass_fields__)}), e.g. --set unet_steps=800")
    p.add_argument("--jobs", type=int, default=1,
                   help="independent steps (the generator and the base, the chains, the arms, the evaluations) run "
                        "side by side in this many processes, the CPU threads shared out (on CPU: one per core)")
    a = p.parse_args(argv)
    try:
        overrides = boost.size_overrides(a.overrides, SIZES[a.size], exclude=("strengths",))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.jobs < 1:
        print(f"error: --jobs must be at least 1, got {a.jobs}", file=sys.stderr)
        return 2
    run(Path(a.out), a.size, overrides, a.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
