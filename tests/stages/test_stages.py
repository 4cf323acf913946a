import json

import numpy as np
import torch

from mvboost.gaussians import Gaussians
from mvboost.geometry.cameras import Cameras, era3d_cameras
from mvboost.io.codec import decode_array, encode_array
from mvboost.io.sample import encode_sample as sample_fields
from mvboost.render import render_normals
from mvboost.stages.era3d import Era3DConfig, Era3DStage, RefineConfig, RefineStage
from mvboost.stages.lgm import LGMStage, LGMStageConfig, RenderConfig, RenderStage


def flat_gaussian(normal_axis_scale=1e-3):
    q = torch.tensor([[1.0, 0, 0, 0]])
    return Gaussians(torch.zeros(1, 3), torch.tensor([0.95]), torch.tensor([[0.2, 0.2, normal_axis_scale]]), q,
                     torch.tensor([[1.0, 1.0, 1.0]]))


def test_rendered_normals_face_the_camera_in_world_axes():
    from mvboost.render import render

    cams = era3d_cameras(32)
    n = render_normals(flat_gaussian(), cams, background=(1, 1, 1))[0]  # (6,3,H,W)
    a = render(flat_gaussian(), cams).alpha[0, :, 0, 16, 16]
    front, back = n[0, :, 16, 16], n[3, :, 16, 16]
    # +z faces the front camera; the back camera sees it flipped; both composited on white
    torch.testing.assert_close(front, torch.tensor([0.5, 0.5, 1.0]) * a[0] + (1 - a[0]))
    torch.testing.assert_close(back, torch.tensor([0.5, 0.5, 0.0]) * a[3] + (1 - a[3]))
    assert a[0] > 0.9


def lgm_rows(tiny_cache, n=2):
    rng = np.random.default_rng(0)
    views = [encode_array(rng.integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)) for _ in range(n)]
    return {"item_id": [f"k{i}" for i in range(n)], "views": views}


def test_lgm_and_render_stages(tiny_cache):
    lgm = LGMStage(LGMStageConfig(model="tiny:lgm", device="cpu", dtype="fp32"))
    out = lgm(lgm_rows(tiny_cache))
    assert out["status"] == ["ok", "ok"]
    g = decode_array(out["gaussians"][0])
    assert g.shape == (4 * 32 * 32, 14) and np.isfinite(g).all()
    rs = RenderStage(RenderConfig(size=32, device="cpu"))
    out = rs(out)
    assert out["status"] == ["ok", "ok"]
    assert decode_array(out["renders"][0]).shape == (6, 32, 32, 3)
    assert decode_array(out["render_alpha"][0]).shape == (6, 32, 32, 1)
    assert decode_array(out["render_normals"][0]).shape == (6, 32, 32, 3)
    cams = Cameras.from_json(json.loads(out["cameras"][0]))
    assert cams.model == "ortho" and len(cams) == 6 and cams.width == 32
    # an invisible object is rejected with a reason
    empty = Gaussians(torch.zeros(1, 8, 3), torch.zeros(1, 8), torch.full((1, 8, 3), 0.01),
                      torch.tensor([1.0, 0, 0, 0]).expand(1, 8, 4), torch.ones(1, 8, 3)).to_lgm()[0]
    bad = rs({"item_id": ["e"], "gaussians": [encode_array(empty.numpy())]})
    assert bad["status"] == ["rejected"] and bad["reject_reason"][0].startswith("empty render")


def test_era3d_and_refine_stages(tiny_cache):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[10:54, 20:44] = (30, 90, 200, 255)
    rows = {"item_id": ["a", "b"], "rgba": [encode_array(rgba)] * 2, "seed": [1, 2]}
    gen = Era3DStage(Era3DConfig(model="tiny:era3d", steps=2, device="cpu", dtype="fp32"))(rows)
    assert gen["status"] == ["ok", "ok"]
    views = decode_array(gen["views"][0])
    assert views.shape == (6, 64, 64, 3) and views.dtype == np.uint8
    assert set(json.loads(gen["pose_pred"][0])) == {"elevation_rad", "focal_code"}
    gen["renders"] = gen["views"]
    gen["render_normals"] = gen["normals"]
    ref = RefineStage(RefineConfig(model="tiny:era3d", steps=4, strength=0.5, device="cpu", dtype="fp32"))(gen)
    assert ref["status"] == ["ok", "ok"] and decode_array(ref["refined"][1]).shape == (6, 64, 64, 3)
    assert ref["t_refine"][0] > 0


def test_sample_fields_ply_and_views(tiny_cache):
    g = np.random.default_rng(0).random((50, 14)).astype(np.float32)
    g[:, 7:11] /= np.linalg.norm(g[:, 7:11], axis=1, keepdims=True)
    g[:, 3] = 0.5
    views = np.zeros((6, 8, 8, 3), np.uint8)
    views[2] = 255
    fields = sample_fields({"item_id": "k1", "prompt": "a mug", "gaussians": encode_array(g),
                            "views": encode_array(views), "seed": 3, "t_lgm": 0.5}, {"job": "t"})
    back = Gaussians.from_ply(fields["gaussians.ply"])
    np.testing.assert_allclose(back.means[0].numpy(), g[:, :3], atol=1e-6)
    from mvboost.io.codec import decode_png, untile_views

    tiles = untile_views(decode_png(fields["views.png"]), 6)
    assert tiles.shape == (6, 8, 8, 3) and tiles[2].min() == 255 and tiles[1].max() == 0
    meta = json.loads(fields["meta.json"])
    assert meta["stage_seconds"] == {"lgm": 0.5} and meta["job"] == "t" and meta["seed"] == 3


def test_text_to_image_pads_short_batches_when_compiled(tiny_cache):
    """A compiled denoiser must see one shape: a short batch is padded to batch_size (the UNet would recompile
    on every partial batch otherwise); the padding's outputs are dropped and the real item's image is the one
    an unpadded batch gives."""
    from mvboost.stages.base import Resources
    from mvboost.stages.text_to_image import TextToImageConfig, TextToImageStage

    st = TextToImageStage(TextToImageConfig(model="tiny:sd", steps=2, size=64, device="cpu", dtype="fp32",
                                            resources=Resources(batch_size=3)), None)
    st.ensure_setup()
    calls = []
    real = st.pipe.__call__
    st.pipe = type("Spy", (), {"__call__": lambda self, **kw: calls.append(len(kw["prompt"])) or real(**kw)})()
    row = {"prompt": "a red ceramic mug", "seed": 11}
    plain = st.process([row])
    st.compiled = True  # as after torch.compile of the denoiser
    padded = st.process([row])
    assert calls == [1, 3] and len(plain) == len(padded) == 1
    diff = np.abs(decode_array(padded[0]["image"]).astype(int) - decode_array(plain[0]["image"]).astype(int))
    assert diff.max() <= 2
