"""Shards from 3D assets: the asset source of the generation job, its renderer at Era3D's
orthographic cameras against an independent projection oracle, rejects that name the asset, resume, and
the shards as the training reads them."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from mvboost.assets.gso import AssetError, asset_key, list_assets, load_asset
from mvboost.assets.render import MeshRenderer
from mvboost.config import ConfigError
from mvboost.eval.fixtures import fixtures_root
from mvboost.geometry.cameras import era3d_cameras
from mvboost.io.codec import encode_png, tile_views
from mvboost.io.sample import decode_meta, iter_tar

SMOKE = REPO / "ray_jobs" / "configs" / "assets_smoke.yaml"


def _box(extents=(0.6, 1.0, 0.4), textured=False):
    import trimesh
    from PIL import Image

    m = trimesh.creation.box(extents=extents)
    if textured:
        uv = np.c_[(m.vertices[:, 0] + 0.5) % 1.0, (m.vertices[:, 1] + 0.5) % 1.0]
        tex = np.zeros((32, 32, 3), np.uint8)
        tex[..., 0], tex[..., 2] = 200, 40
        m.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(tex))
    return m


def _project(cams, points: np.ndarray) -> np.ndarray:
    """(V, N, 2) pixel coordinates of world points under orthographic cameras, from the cameras' own
    world-to-camera matrices and intrinsics (u = fx * x + cx): the oracle the renderer must agree with."""
    w2c = cams.viewmats.double().numpy()
    k = cams.K.double().numpy()
    homog = np.c_[points, np.ones(len(points))]
    cam = np.einsum("vij,nj->vni", w2c, homog)[..., :3]
    return np.stack([k[:, None, 0, 0] * cam[..., 0] + k[:, None, 0, 2],
                     k[:, None, 1, 1] * cam[..., 1] + k[:, None, 1, 2]], -1)


def test_renderer_matches_the_orthographic_projection_of_era3d_cameras(tmp_path):
    _box().export(tmp_path / "box.glb")
    obj = load_asset(str(tmp_path), "box.glb", "mesh")
    assert np.abs(obj.vertices).max() == pytest.approx(0.5)  # render space: longest side 1
    cams = era3d_cameras(96)
    renderer = MeshRenderer()
    try:
        rgb, alpha = renderer.render(obj, cams, 1)
    finally:
        renderer.close()
    uv = _project(cams, obj.vertices)
    for i in range(len(cams)):
        mask = alpha[i, ..., 0] > 0.5
        cols, rows = np.where(mask.any(0))[0], np.where(mask.any(1))[0]
        got = np.array([cols.min(), cols.max() + 1, rows.min(), rows.max() + 1], float)  # pixel edges
        want = np.array([uv[i, :, 0].min(), uv[i, :, 0].max(), uv[i, :, 1].min(), uv[i, :, 1].max()])
        assert np.abs(got - want).max() <= 1.0, (i, got, want)
    # an untextured mesh is drawn in its flat colour, not white on white
    assert 0.3 < rgb[alpha[..., 0] > 0.5].mean() < 0.9


def _asset_folder(root):
    """Good and bad assets side by side: GSO folders, a textured GLB, an untextured OBJ, and four that must be
    rejected with their reasons."""
    root.mkdir()
    fx = fixtures_root()
    for name in ("duck", "box"):
        shutil.copytree(fx / name, root / name)
    shutil.copytree(fx / "box", root / "notex")
    (root / "notex" / "materials" / "textures" / "texture.png").unlink()
    _box(textured=True).export(root / "crate.glb")
    _box((1.0, 0.5, 0.5)).export(root / "plain.obj")
    (root / "broken.obj").write_text("this is not a mesh\n")
    (root / "noise.glb").write_bytes(np.random.default_rng(0).bytes(300))
    (root / "README.txt").write_text("not an asset")
    return root


def _cfg(out, assets, *extra):
    from mvboost.pipeline.job import load_job_config

    return load_job_config(SMOKE, [f"job.output={out}", f"prompts.assets={assets}", "job.progress=false", *extra])


def test_asset_source_plans_every_asset_and_records_bad_ones(tmp_path, monkeypatch):
    import tempfile

    from mvboost.assets.gso import load_object
    from mvboost.pipeline.job import run_in_process
    from mvboost.train.data import decode_sample

    root = _asset_folder(tmp_path / "assets")
    tmpd = tmp_path / "tmp"  # the temp dir: left as it was by the job and by loading local objects
    tmpd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpd))
    found = dict(list_assets(str(root)))
    assert found == {"box": "gso", "broken.obj": "mesh", "crate.glb": "mesh", "duck": "gso", "noise.glb": "mesh",
                     "notex": "gso", "plain.obj": "mesh"}
    out = tmp_path / "out"
    summary = run_in_process(_cfg(out, root))
    assert (summary.accepted, summary.rejected) == (4, 3)
    assert load_object(str(root), "duck").folder == root / "duck"  # a local object is read in place
    assert list(tmpd.iterdir()) == []  # before: one empty temporary folder per object loaded
    rejects = {json.loads(line)["key"]: json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()}
    reasons = {k: r["reason"] for k, r in rejects.items()}
    assert reasons[asset_key("broken.obj")] == "asset broken.obj: empty mesh: no faces"
    assert reasons[asset_key("noise.glb")].startswith("asset noise.glb: unreadable mesh")
    assert reasons[asset_key("notex")].startswith("asset notex: missing texture")
    assert {r["stage"] for r in rejects.values()} == {"asset_render"}
    samples = {}
    for tar in sorted(out.glob("shard-*.tar")):
        with open(tar, "rb") as f:
            samples.update(dict(iter_tar(f)))
    assert sorted(samples) == sorted(asset_key(n) for n in ("box", "crate.glb", "duck", "plain.obj"))
    for key, fields in samples.items():
        meta = decode_meta(fields)
        assert meta["asset"]["root"] == str(root) and asset_key(meta["asset"]["name"]) == key
        assert "TINY_RENDERER" in meta["asset"]["renderer"] and "orthographic" in meta["asset"]["renderer"]
        assert fields["views.png"] == fields["refined.png"]  # the asset's renders are the targets
        cams = json.loads(fields["cameras.json"])
        assert cams["model"] == "ortho" and cams["width"] == 64
        s = decode_sample(fields)  # what the training reads: 4 input views, 6 targets, a mask, the cameras
        assert s["inputs"].shape == (4, 3, 64, 64) and s["target"].shape == (6, 3, 64, 64)
        assert 0.05 < float(s["mask"].mean()) < 0.8
        assert torch.equal(s["inputs"][0], s["target"][0])  # input view 0 is Era3D's front view
    # the textured GLB keeps its texture (red-dominant), the plain OBJ its flat grey
    crate = decode_sample(samples[asset_key("crate.glb")])
    fg = crate["mask"][:, 0] > 0.9
    r, b = crate["target"][:, 0][fg].mean(), crate["target"][:, 2][fg].mean()
    assert r > 0.6 and b < 0.3, (r, b)
    # resume: a rerun finds everything finished, rejects included
    again = run_in_process(_cfg(out, root))
    assert again.skipped_already_done == 7 and again.requested == 7, again
    # a list selects assets; an unknown name, a missing folder, no folder at all are clear errors
    listed = _write(tmp_path, "duck", "plain.obj")
    picked = run_in_process(_cfg(tmp_path / "out2", root, f"prompts.asset_list={listed}"))
    assert (picked.accepted, picked.rejected) == (2, 0)
    with pytest.raises(ConfigError, match="not found under"):
        run_in_process(_cfg(tmp_path / "out3", root, f"prompts.asset_list={_write(tmp_path, 'duck', 'chair')}"))
    with pytest.raises(ConfigError, match="asset folder not found"):
        run_in_process(_cfg(tmp_path / "out4", tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="prompts.assets"):
        _cfg(tmp_path / "out5", "''")


def _write(tmp_path, *names):
    p = tmp_path / f"list-{len(list(tmp_path.glob('list-*')))}.txt"
    p.write_text("# the assets to use\n" + "\n".join(names) + "\n")
    return p


def test_load_asset_reasons(tmp_path):
    (tmp_path / "empty.obj").write_text("# no geometry\n")
    with pytest.raises(AssetError, match="empty mesh"):
        load_asset(str(tmp_path), "empty.obj", "mesh")
    with pytest.raises(AssetError, match="no meshes/model.obj|unreadable"):
        load_asset(str(tmp_path), "missing", "gso")


def test_assets_smoke_job_on_ray_reads_back_with_ray_data(tmp_path):
    out = tmp_path / "shards"
    r = subprocess.run([sys.executable, "-m", "ray_jobs.generate", "--config", str(SMOKE), "--output", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "accepted 5, rejected 0" in r.stdout
    assert "b3Warning" not in r.stdout + r.stderr  # pybullet's importer noise stays out of the log
    check = ("import ray, sys; ray.init(num_cpus=1, include_dashboard=False); "
             "rows = ray.data.read_webdataset(sys.argv[1], file_extensions=['tar']).take_all(); "
             "print(len(rows), sorted(k for k in rows[0] if not k.startswith('__')))")
    r = subprocess.run([sys.executable, "-c", check, str(out)], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == ("5 ['alpha.png', 'cameras.json', 'input.png', 'meta.json', "
                                                 "'prompt.txt', 'refined.png', 'views.png']")


def test_shard_targets_and_the_training_renderer_share_a_frame(tmp_path):
    """The convention chain of asset shards: Gaussians placed on an asset's surface, rendered by the training
    renderer at the cameras the shard records, cover the same pixels as the asset's target views (an
    asymmetric box, so a mirrored, rotated or rescaled frame anywhere would show)."""
    import trimesh

    from mvboost.gaussians import Gaussians
    from mvboost.geometry.cameras import Cameras
    from mvboost.metrics.geometry import sample_surface
    from mvboost.render import render
    from mvboost.stages.asset_render import AssetRenderStage

    box = trimesh.util.concatenate([_box((0.6, 1.0, 0.4)), _box((0.3, 0.3, 0.3)).apply_translation([0.35, 0.3, 0.15])])
    box.export(tmp_path / "lshape.glb")
    stage = AssetRenderStage(AssetRenderStage.Config(size=64, supersample=2))
    stage.ensure_setup()
    [res] = stage.process([{"item_id": "x", "asset_root": str(tmp_path), "asset": "lshape.glb", "asset_kind": "mesh"}])
    from mvboost.io.codec import decode_array

    target_alpha = decode_array(res["rgba"])[..., 3] > 127  # the front view's alpha
    views = decode_array(res["views"])
    cams = Cameras.from_json(json.loads(res["cameras"]))
    obj = load_asset(str(tmp_path), "lshape.glb", "mesh")
    pts = torch.from_numpy(sample_surface(obj.vertices, obj.faces, 60000, 0)).float()
    n = len(pts)
    g = Gaussians(pts, torch.ones(n), torch.full((n, 3), 0.006), torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4),
                  torch.full((n, 3), 0.5))
    out = render(g, cams, background=(1.0, 1.0, 1.0))
    pred = out.alpha[0, :, 0].numpy() > 0.5  # (6, H, W)
    from mvboost.train.data import decode_sample

    fields = {"views.png": encode_png(tile_views(views)), "refined.png": encode_png(tile_views(views)),
              "alpha.png": encode_png(tile_views(decode_array(res["alpha"])[..., 0])), "cameras.json": res["cameras"]}
    target = decode_sample(fields)["mask"][:, 0].numpy() > 0.5  # the training's own target: the renderer's alpha
    assert (target[0] ^ target_alpha).sum() <= 0.02 * target_alpha.sum()  # input.png's alpha: the same silhouette

    def centroid(m):
        ys, xs = np.nonzero(m)
        return np.array([xs.mean(), ys.mean()])

    # splats are soft (the rasteriser's 0.3 px² low-pass, tens of overlapping splats at an edge), so their
    # silhouette grows ~2 px at each edge: compare centres (sub-pixel) and extents (within 3 px)
    for i in range(6):
        assert np.abs(centroid(pred[i]) - centroid(target[i])).max() < 0.75, (i, centroid(pred[i]), centroid(target[i]))
        for axis in (0, 1):
            p_idx, t_idx = np.nonzero(pred[i].any(axis))[0], np.nonzero(target[i].any(axis))[0]
            assert abs(p_idx.min() - t_idx.min()) <= 3 and abs(p_idx.max() - t_idx.max()) <= 3
    # the check can fail: mirrored targets (a flipped frame) are off by pixels
    for i in (0, 1, 5):
        assert np.abs(centroid(pred[i]) - centroid(target[i][:, ::-1])).max() > 2.0, i


def test_gt_ortho_evaluation_feeds_lgm_the_shards_input_views(tmp_path):
    """The evaluation's gt_ortho inputs for an object are the asset shard's input views of the same object
    (one renderer, same cameras, size and supersampling), so a model is scored on what it was trained on."""
    from mvboost.config import load_config
    from mvboost.eval.config import EvalConfig
    from mvboost.eval.predict import EvalWorker
    from mvboost.eval.score import prepare_gt
    from mvboost.geometry.cameras import ERA3D_TO_LGM_VIEWS
    from mvboost.io.codec import decode_array, to_uint8
    from mvboost.stages.asset_render import AssetRenderStage

    cfg = load_config(EvalConfig, REPO / "ray_jobs" / "configs" / "evaluate_smoke.yaml",
                      ["job.mode=gt_ortho", "protocol.input_size=64", f"job.output={tmp_path / 'eval'}"])
    worker = EvalWorker(cfg, str(fixtures_root()))
    obj = load_asset(str(fixtures_root()), "duck", "gso")
    preds, extras = worker.predict("duck", prepare_gt(obj, cfg.protocol, worker.renderer))
    assert not isinstance(preds["base"], str)
    stage = AssetRenderStage(AssetRenderStage.Config(size=64, supersample=cfg.protocol.supersample))
    stage.ensure_setup()
    [res] = stage.process([{"item_id": "x", "asset_root": str(fixtures_root()), "asset": "duck", "asset_kind": "gso"}])
    shard_views = decode_array(res["views"])
    assert np.abs(to_uint8(extras["gt_inputs"]).astype(int) - shard_views.astype(int)).max() <= 1
    assert shard_views[list(ERA3D_TO_LGM_VIEWS)].shape == (4, 64, 64, 3)


def _disc(size=64, r=18, value=1.0, outline=0.55):
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(yy - size / 2, xx - size / 2)
    img = np.ones((size, size, 3), np.float32)
    img[d < r] = value
    img[(d >= r - 3) & (d < r)] = outline  # the object's shaded rim (matting's opening removes a 1-px line)
    return img, (d < r)


def test_alpha_target_keeps_a_white_object_opaque_and_a_haze_transparent():
    """Before: the target was a near-white threshold on the refined colours, so a white object (>= 250/255)
    was learned as transparent and a light haze around it as opaque. Now: the true alpha when the shard has it,
    else the refined normals (a white background is no unit normal), else white matting."""
    from mvboost.train.data import foreground_mask, matted_alpha, normals_alpha, target_alpha

    img, inside = _disc()
    yy, xx = np.mgrid[:64, :64]
    haze = np.hypot(yy - 8, xx - 8) < 6
    img[haze] = 0.975  # a faint off-white haze in a corner (6/255 from white)
    views = np.repeat(img[None], 6, 0)
    old = foreground_mask(views)
    core = inside & (img[..., 0] == 1.0)  # the white body inside the rim
    assert old[0][core].max() == 0.0 and old[0][haze].min() > 0.9  # the defect, shown on the old target
    matted = matted_alpha(views)
    assert matted[0][inside].mean() > 0.95 and matted[0][haze].max() == 0.0
    normals = np.ones_like(views)
    normals[:, inside] = (np.array([0.0, 0.0, 1.0]) + 1) / 2  # a surface facing the camera; white elsewhere
    by_normals = normals_alpha(normals)
    assert by_normals[0][inside].min() == 1.0 and by_normals[0][~inside].max() == 0.0
    fields = {"refined_normals.png": encode_png(tile_views(np.round(normals * 255).astype(np.uint8)))}
    assert np.array_equal(target_alpha(fields, views) > 0.5, by_normals > 0.5)
    gt = np.zeros((6, 64, 64), np.uint8)
    gt[:, inside] = 255
    fields["alpha.png"] = encode_png(tile_views(gt))
    assert np.array_equal(target_alpha(fields, views), gt / 255.0)  # the true alpha wins


def test_alpha_target_iou_on_asset_renders_against_the_true_alpha(tmp_path):
    """The choice measured on asset renders (where the renderer's alpha is the truth): white matting of the
    colours is at least as close to the true alpha as the old near-white threshold, and close in absolute
    terms, on every asset of the fixture library."""
    from mvboost.io.codec import decode_array
    from mvboost.stages.asset_render import AssetRenderStage
    from mvboost.train.data import foreground_mask, matted_alpha

    root = _asset_folder(tmp_path / "assets")
    stage = AssetRenderStage(AssetRenderStage.Config(size=64, supersample=2))
    stage.ensure_setup()
    rows = [{"item_id": n, "asset_root": str(root), "asset": n, "asset_kind": k}
            for n, k in list_assets(str(root)) if n in ("box", "crate.glb", "duck", "plain.obj")]
    ious = {"threshold": [], "matting": []}
    for res in stage.process(rows):
        views = decode_array(res["views"]).astype(np.float32) / 255
        truth = decode_array(res["alpha"])[..., 0] > 127
        for name, alpha in (("threshold", foreground_mask(views)), ("matting", matted_alpha(views))):
            pred = alpha > 0.5
            ious[name].append((pred & truth).sum() / max(1, (pred | truth).sum()))
    mean = {k: float(np.mean(v)) for k, v in ious.items()}
    print("alpha target IoU against the renderer's alpha:", mean)
    assert mean["matting"] >= mean["threshold"] - 0.01 and mean["matting"] > 0.9, mean
