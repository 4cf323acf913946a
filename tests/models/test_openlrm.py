"""OpenLRM v1.1: the architecture against the official key list and parameter counts,
strict loading, rendering (chunk-invariant, deterministic by default), mesh extraction, and equivalence with
the official module definitions where a copy of them is at hand (OPENLRM_SRC; not in CI)."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, read_key_list
from mvboost.models.checkpoint import CheckpointError
from mvboost.models.loading import load_openlrm
from mvboost.models.openlrm import (
    OpenLRM,
    OpenLRMConfig,
    extract_mesh,
    march,
    render_camera,
    save_openlrm,
    source_camera,
)

#: parameters and tensors of the official ModelLRM (v1.1, commit 3108b69) built from its own module definitions
#: (DINOv2 with pretrained=False) at the model card's sizes: small and large; base is in the official key list
#: (tests/data/state_dicts)
OFFICIAL = {"small": (111_390_948, 456), "base": (260_201_972, 432), "large": (452_138_004, 544)}


def _meta(name):
    with torch.device("meta"):
        return OpenLRM(OpenLRMConfig.preset(name))


def test_base_matches_the_official_key_list(spec_dir):
    official = read_key_list(spec_dir / "openlrm_base_state_dict.txt")
    ours = {k: tuple(v.shape) for k, v in _meta("base").state_dict().items()}
    assert list(ours) == list(official)  # same keys, same order
    assert ours == {k: shape for k, (shape, _) in official.items()}


@pytest.mark.parametrize("name", ["small", "base", "large"])
def test_parameter_counts(name):
    m = _meta(name)
    assert (sum(p.numel() for p in m.parameters()), len(m.state_dict())) == OFFICIAL[name]


def _tiny(seed=0):
    torch.manual_seed(seed)
    m = OpenLRM(OpenLRMConfig.preset("tiny")).eval()
    with torch.no_grad():  # a non-trivial field: planes with some structure, a decoder that is not ~0
        for p in m.synthesizer.decoder.parameters():
            p.mul_(3.0)
    return m


def test_strict_loading_names_the_keys(tmp_path):
    m = _tiny()
    save_openlrm(m, tmp_path / "ok")
    back = load_openlrm(tmp_path / "ok")
    for k, v in m.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert back.config == m.config
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "ok" / "model.safetensors"))
    state["extra.weight"] = torch.zeros(1)
    del state["upsampler.bias"]
    state["camera_embedder.mlp.0.weight"] = torch.zeros(3, 3)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    save_file(state, str(tmp_path / "bad" / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_openlrm(tmp_path / "bad")
    msg = str(e.value)
    assert "upsampler.bias" in msg and "extra.weight" in msg and "camera_embedder.mlp.0.weight" in msg
    (tmp_path / "bad" / "config.json").write_text('{"transformer_dim": 32, "not_a_key": 1}')
    with pytest.raises(CheckpointError, match="not_a_key"):
        load_openlrm(tmp_path / "bad")


def _orbit(n=3, distance=2.0):
    """OpenGL camera-to-world around the origin in OpenLRM's Z-up world, the first one on -Y (the source view)."""
    out = []
    for a in np.linspace(0, 2 * np.pi, n, endpoint=False):
        pos = np.array([distance * np.sin(a), -distance * np.cos(a), 0.3])
        z = pos / np.linalg.norm(pos)
        x = np.cross([0, 0, 1.0], z)
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        c2w = np.eye(4)
        c2w[:3, :3] = np.stack([x, y, z], 1)
        c2w[:3, 3] = pos
        out.append(c2w)
    return torch.tensor(np.stack(out), dtype=torch.float32)


def test_render_is_chunk_invariant_deterministic_and_bounded():
    m = _tiny()
    img = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        planes = m.forward_planes(img, source_camera())
        assert planes.shape == (1, 3, 8, 16, 16)
        cams = render_camera(_orbit())[None]
        a = m.render(planes, cams, 24, chunk=97)
        b = m.render(planes, cams, 24, chunk=10 ** 6)
        s1 = m.render(planes, cams, 24, stochastic=True, generator=torch.Generator().manual_seed(1))
        s2 = m.render(planes, cams, 24, stochastic=True, generator=torch.Generator().manual_seed(2))
    assert a["rgb"].shape == (1, 3, 3, 24, 24) and a["alpha"].shape == (1, 3, 1, 24, 24)
    for k in ("rgb", "depth", "alpha"):
        assert torch.allclose(a[k], b[k], atol=1e-6), k  # memory is bounded by ``chunk``, not the result
    assert (s1["rgb"] - s2["rgb"]).abs().max() > 1e-4  # the official, stochastic sampling differs per draw
    assert 0 <= float(a["alpha"].min()) and float(a["alpha"].max()) <= 1 + 1e-5
    assert float(a["alpha"].max()) > 0.05  # the field is visible
    # background: where alpha is ~0 the colour is the background
    with torch.no_grad():
        black = m.render(planes, cams, 24, background=0.0)
    assert torch.allclose(a["rgb"] - black["rgb"], 1 - a["alpha"], atol=1e-5)


def test_marcher_matches_the_volume_rendering_integral():
    """A constant density sigma over a segment of length L gives alpha = 1 - exp(-sigma L) (midpoint rule exact)."""
    depths = torch.linspace(1.0, 3.0, 65).expand(1, 1, 65)
    raw = torch.full((1, 1, 65, 1), 2.0)  # softplus(2 - 1) = 1.3133
    rgb = torch.full((1, 1, 65, 3), 0.25)
    colour, depth, weights = march(rgb, raw, depths, background=1.0)
    sigma = float(torch.nn.functional.softplus(torch.tensor(1.0)))
    alpha = 1 - np.exp(-sigma * 2.0)
    assert float(weights.sum()) == pytest.approx(alpha, rel=1e-5)
    assert float(colour[0, 0, 0]) == pytest.approx(0.25 * alpha + (1 - alpha), rel=1e-5)


def test_mesh_extraction():
    m = _tiny()
    with torch.no_grad():
        planes = m.forward_planes(torch.rand(1, 3, 56, 56), source_camera())
        sigma, _ = m.query(planes, torch.rand(1, 4096, 3) * 2 - 1)
    level = float(sigma.median())
    mesh = extract_mesh(m, planes, resolution=24, threshold=level)
    assert len(mesh.faces) > 0 and np.abs(mesh.vertices).max() <= 1.0 + 1e-6
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    with pytest.raises(ValueError, match="no surface"):
        extract_mesh(m, planes, resolution=8, threshold=1e6)


OFFICIAL_SRC = os.environ.get("OPENLRM_SRC", "")


@pytest.mark.skipif(not (OFFICIAL_SRC and (Path(OFFICIAL_SRC) / "openlrm").is_dir()),
                    reason="set OPENLRM_SRC to a checkout of 3DTopia/OpenLRM v1.1 (not in CI: no network)")
def test_equivalence_with_the_official_modules():
    """Identical random weights, fp32: planes from the official ModelLRM vs ours; the official decoder query
    and ray marcher vs ours on the same samples; importance sampling with the official det=True."""
    from accelerate import PartialState

    PartialState(cpu=True)
    torch._dynamo.config.disable = True
    sys.path.insert(0, OFFICIAL_SRC)
    import openlrm.models.encoders.dinov2_wrapper as dw
    from openlrm.models.modeling_lrm import ModelLRM
    from openlrm.models.rendering.utils.ray_marcher import MipRayMarcher2

    build = dw.Dinov2Wrapper._build_dinov2
    dw.Dinov2Wrapper._build_dinov2 = staticmethod(lambda name, modulation_dim=None, pretrained=True:
                                                  build(name, modulation_dim, pretrained=False))
    kw = dict(camera_embed_dim=64, rendering_samples_per_ray=16, transformer_dim=64, transformer_layers=2,
              transformer_heads=4, triplane_low_res=4, triplane_high_res=8, triplane_dim=8, encoder_freeze=False,
              encoder_type="dinov2", encoder_model_name="dinov2_vits14_reg", encoder_feat_dim=384)
    torch.manual_seed(0)
    official = ModelLRM(**kw).eval()
    ours = OpenLRM(OpenLRMConfig(**kw)).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    img, cam = torch.rand(2, 3, 70, 70), source_camera(batch=2) + 0.01 * torch.randn(2, 16)
    with torch.no_grad():
        p_off = official.forward_planes(img, cam)
        p_ours = ours.forward_planes(img, cam)
        err = (p_off - p_ours).abs().max().item()
        print(f"planes: max |official - ours| = {err:.3g} (scale {p_off.abs().max().item():.3g})")
        assert err < 1e-4
        pts = torch.rand(2, 500, 3) * 2.2 - 1.1
        r = official.synthesizer.renderer
        off = r.run_model(p_off, official.synthesizer.decoder, pts, torch.zeros_like(pts),
                          official.synthesizer.rendering_kwargs)
        from mvboost.models.openlrm import sample_planes

        sig, rgb = ours.synthesizer.decoder(sample_planes(p_ours, pts))
        assert (off["sigma"] - sig).abs().max() < 1e-4 and (off["rgb"] - rgb).abs().max() < 1e-5
        depths = torch.sort(torch.rand(2, 30, 20, 1) * 3 + 1, dim=2).values
        colours, dens = torch.rand(2, 30, 20, 3), torch.randn(2, 30, 20, 1) * 3
        marcher = MipRayMarcher2(r.activation_factory)
        c_off, d_off, w_off = marcher(colours, dens, depths, official.synthesizer.rendering_kwargs,
                                      bg_colors=torch.ones(2, 1))
        c, d, w = march(colours, dens, depths[..., 0], 1.0)
        assert (c_off - c).abs().max() < 1e-5 and (w_off[..., 0] - w).abs().max() < 1e-6
        assert (d_off - d).abs().max() < 1e-4
        # importance sampling: the official draws u ~ U(0, 1); with u at evenly spaced quantiles it is ours
        from unittest import mock

        from mvboost.models.openlrm import importance_depths

        def quantiles(n_rays, n, device=None):
            return torch.linspace(0, 1, n).expand(n_rays, n).contiguous()

        with mock.patch("torch.rand", quantiles):
            fine_off = r.sample_importance(depths, w_off, 12)
        fine = importance_depths(depths[..., 0], w, 12, stochastic=False)
        assert (fine_off[..., 0] - fine).abs().max() < 1e-5


def test_reconstruction_interface_maps_our_cameras_to_openlrm_frame():
    """Our input camera (on +Z, Y up, LGM's distance 1.5) is OpenLRM's source camera (on -Y, Z up), the world
    scaled by 1 / OPENLRM_SCALE (1.898: the chain's framings, test_openlrm_renders_have_the_shard_views_framing)."""
    from mvboost.geometry.cameras import lgm_input_cameras
    from mvboost.models.openlrm import OPENLRM_SCALE, world_cameras

    cams = world_cameras(lgm_input_cameras(32))
    c2w = cams[0, :16].reshape(4, 4)
    src = source_camera(distance=1.5 / OPENLRM_SCALE)[0, :12].reshape(3, 4)
    assert torch.allclose(c2w[:3], src, atol=1e-6)
    fx = float(cams[0, 16:].reshape(3, 3)[0, 0])  # normalised focal of LGM's 49.1° field of view
    assert fx == pytest.approx(0.5 / np.tan(np.radians(49.1 / 2)), rel=1e-5)


def test_infer_with_openlrm(tmp_path):
    """``python -m mvboost.infer … --model openlrm:<folder>`` on a photo: a folder laid out as the official
    checkpoints, the mesh (or the recorded reason there is none), the turntable and meta.json."""
    import json

    from PIL import Image
    from skimage import data

    from mvboost.infer.__main__ import main

    save_openlrm(_tiny(), tmp_path / "ckpt")
    Image.fromarray(data.chelsea()).save(tmp_path / "cat.png")
    rc = main([str(tmp_path / "cat.png"), "--output", str(tmp_path / "out"), "--model", f"openlrm:{tmp_path / 'ckpt'}",
               "--set", "openlrm.source_size=56", "--set", "output.turntable_frames=3",
               "--set", "output.turntable_size=32", "--set", "output.mesh_resolution=24",
               "--set", "openlrm.mesh_threshold=0.5"])
    assert rc == 0
    meta = json.loads((tmp_path / "out" / "cat" / "meta.json").read_text())
    assert meta["backend"] == "openlrm" and meta["triplanes"] == [3, 8, 16, 16]
    assert "turntable.gif" in meta["files"] and ("mesh.glb" in meta["files"] or "no surface" in meta["mesh_skipped"])
    assert Image.open(tmp_path / "out" / "cat" / "turntable.gif").n_frames == 3
    assert main(["x.png", "--output", str(tmp_path / "o2"), "--model", "nerf:thing"]) == 2


def test_evaluation_scores_openlrm_beside_lgm(tmp_path):
    """One evaluation run, single mode, LGM and OpenLRM side by side on a fixture object: both scored by the same
    protocol (the OpenLRM reconstruction through the shared interface), paired differences in the summary."""
    import json

    from mvboost.config import load_config
    from mvboost.eval.config import EvalConfig
    from mvboost.eval.job import run_in_process

    save_openlrm(_tiny(), tmp_path / "lrm")
    (tmp_path / "split.txt").write_text("duck\n")
    cfg = load_config(EvalConfig, REPO / "ray_jobs" / "configs" / "evaluate_smoke.yaml", [
        f"job.output={tmp_path / 'eval'}", f"job.split={tmp_path / 'split.txt'}", "protocol.resolution=32",
        "protocol.mesh_resolution=24", "protocol.align=false", "openlrm.source_size=56", "openlrm.mesh_threshold=0.5",
        "job.bootstrap=50"])
    cfg.job.models = ["lgm=tiny:lgm", f"lrm=openlrm:{tmp_path / 'lrm'}"]
    summary = run_in_process(cfg)
    rec = json.loads((tmp_path / "eval" / "objects" / "duck.json").read_text())
    assert rec["status"] == "done" and set(rec["models"]) == {"lgm", "lrm"}
    lrm = rec["models"]["lrm"]
    assert lrm["status"] == "done" and lrm["representation"] == "TriplaneReconstruction"
    assert 0 < lrm["canonical"]["psnr"]["all"] < 60
    rows = {r["metric"]: r for r in summary["tables"]["canonical"]}
    assert rows["PSNR (21 views)"]["n"] == 1 and "lrm − lgm" in rows["PSNR (21 views)"]
    assert [m["backend"] for m in summary["header"]["models"]] == ["lgm", "openlrm"]
    with pytest.raises(ValueError, match="one image"):
        from mvboost.eval.config import parse_model

        parse_model("x=openlrm:tiny", "gt4")


def test_orthographic_cameras_render_through_distant_pinholes():
    """Era3D's orthographic views (what the shards carry) become OpenLRM render cameras: every pixel's ray, back in
    our world, passes within 1 % of a pixel of where the orthographic projection puts that pixel on the plane
    through the origin (exact up to rounding: the pinhole's field of view is defined on that plane), and the rays
    diverge by the distant pinhole's geometry only: the corner pixel's ray is atan(r / 100) off the axis, r its
    distance from the axis (0.0094 rad)."""
    from mvboost.geometry.cameras import PINHOLE_FOR_ORTHO, ZUP_TO_YUP, era3d_cameras
    from mvboost.models.openlrm import OPENLRM_SCALE, camera_rays, world_cameras

    ortho = era3d_cameras(32)
    origins, dirs = camera_rays(world_cameras(ortho).double(), 32)
    back = torch.tensor(ZUP_TO_YUP, dtype=torch.float64)  # OpenLRM's frame -> ours
    origins, dirs = origins @ back.T * OPENLRM_SCALE, dirs @ back.T
    for v in range(len(ortho)):
        c2w = ortho.c2w[v].double()
        forward = -c2w[:3, 2]
        t = -(origins[v] @ forward) / (dirs[v] @ forward)  # to the plane through the origin facing the camera
        hit = origins[v] + t[:, None] * dirs[v]
        f = float(ortho.K[v, 0, 0])  # pixels per world unit
        px = (hit - c2w[:3, 3]) @ c2w[:3, 0] * f + 16
        py = -((hit - c2w[:3, 3]) @ c2w[:3, 1]) * f + 16
        ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        assert (px - (xs.reshape(-1) + 0.5).double()).abs().max() < 0.01
        assert (py - (ys.reshape(-1) + 0.5).double()).abs().max() < 0.01
        corner = float(np.hypot(15.5, 15.5)) / f  # the farthest pixel centre from the axis, in world units
        expected = np.cos(np.arctan(corner / PINHOLE_FOR_ORTHO))  # the cameras are float32: rounding ~1e-7
        assert float((dirs[v] @ forward).min()) == pytest.approx(expected, abs=1e-7)


def _train_cfg(shards, tmp_path, *extra):
    from mvboost.config import load_config
    from mvboost.train.config import TrainConfig

    return load_config(TrainConfig, REPO / "train" / "configs" / "openlrm_lora_smoke.yaml", [
        f"data.source={shards}", f"run.storage_path={tmp_path}/runs", "deepspeed.micro_batch=4", *extra])


def test_train_openlrm_lora_merge_and_infer(smoke_shards, tmp_path, ds_env, tiny_cache):
    """The boosting loop with OpenLRM (``model.checkpoint: openlrm:tiny``): LoRA on the transformer's q/k/v/out
    projections, the input view from the shard, the six views ray-marched at the shard's orthographic cameras; the
    loss falls; ``train.merge --base openlrm:tiny`` writes the official layout, whose planes equal base + adapter;
    inference runs the merged model."""
    from peft import PeftModel

    from mvboost.infer.__main__ import main as infer
    from mvboost.models.hub import resolve
    from mvboost.models.openlrm import source_camera
    from mvboost.train.context import LocalContext, latest_adapter
    from mvboost.train.loop import train_loop
    from train.merge import main as merge

    cfg = _train_cfg(smoke_shards, tmp_path, "train.steps=6", "train.checkpoint_every=6", "optim.lr=0.05")
    local = LocalContext(cfg)
    train_loop(cfg, local.ctx)
    losses = [h["loss"] for h in local.history]
    assert len(losses) == 6 and min(losses[-2:]) < 0.995 * losses[0], losses
    assert local.history[-1]["adapter_tensors"] == 2 * 2 * 2 * 4  # A and B x 2 layers x 2 attentions x q/k/v/out
    adapter = latest_adapter(local.root)
    assert merge(["--base", "openlrm:tiny", "--adapter", str(adapter), "--out", str(tmp_path / "merged"),
                  "--dtype", "fp32"]) == 0
    assert {p.name for p in (tmp_path / "merged").iterdir()} == {"config.json", "model.safetensors"}
    x, cam = torch.rand(1, 3, 56, 56), source_camera()
    with torch.no_grad():
        base = load_openlrm(resolve("tiny:openlrm"))(x, cam)
        lora = PeftModel.from_pretrained(load_openlrm(resolve("tiny:openlrm")), str(adapter)).eval()(x, cam)
        merged = load_openlrm(tmp_path / "merged")(x, cam)
    assert (lora - base).abs().max() > 1e-4  # training changed the model
    torch.testing.assert_close(merged, lora, rtol=1e-4, atol=1e-5)
    from PIL import Image
    from skimage import data

    Image.fromarray(data.chelsea()[::4, ::4]).save(tmp_path / "cat.png")
    assert infer([str(tmp_path / "cat.png"), "--output", str(tmp_path / "out"), "--model",
                  f"openlrm:{tmp_path / 'merged'}", "--set", "openlrm.source_size=56", "--set", "output.mesh=false",
                  "--set", "output.turntable_frames=2", "--set", "output.turntable_size=16"]) == 0
    assert merge(["--base", "openlrm:tiny", "--adapter", str(tmp_path), "--out", str(tmp_path / "m2")]) == 2
    # the evaluation takes the adapter as LGM's (openlrm:<base>+<adapter>) and scores it as the merged model
    from mvboost.config import load_config
    from mvboost.eval.config import EvalConfig, ModelSpec, parse_model
    from mvboost.eval.job import run_in_process

    assert parse_model("b=openlrm:tiny@v2+/ad", "single") == ModelSpec("b", "tiny:openlrm", "v2", "/ad", "openlrm")
    (tmp_path / "split.txt").write_text("duck\n")
    ecfg = load_config(EvalConfig, REPO / "ray_jobs" / "configs" / "evaluate_smoke.yaml", [
        f"job.output={tmp_path / 'eval'}", f"job.split={tmp_path / 'split.txt'}", "protocol.resolution=32",
        "protocol.mesh_resolution=24", "protocol.align=false", "openlrm.source_size=56", "job.bootstrap=20"])
    ecfg.job.models = [f"boosted=openlrm:tiny+{adapter}", f"merged=openlrm:{tmp_path / 'merged'}"]
    run_in_process(ecfg)
    rec = json.loads((tmp_path / "eval" / "objects" / "duck.json").read_text())["models"]
    assert rec["boosted"]["status"] == "done"
    assert rec["boosted"]["canonical"]["psnr"]["all"] == pytest.approx(rec["merged"]["canonical"]["psnr"]["all"],
                                                                       abs=1e-3)


def test_train_openlrm_full_parameters_learn_and_write_the_official_layout(smoke_shards, tmp_path, ds_env,
                                                                            tiny_cache):
    """``lora.mode: full`` with OpenLRM: every parameter trains (the loss falls by a fifth in 6 steps, measured
    0.90 -> 0.58 in 8) and the checkpoint's model folder is an official-layout OpenLRM that loads strictly."""
    from mvboost.train.context import LocalContext, latest_model
    from mvboost.train.loop import train_loop

    cfg = _train_cfg(smoke_shards, tmp_path, "lora.mode=full", "train.steps=6", "train.checkpoint_every=6",
                     "optim.lr=0.01", "run.name=full")
    local = LocalContext(cfg)
    train_loop(cfg, local.ctx)
    losses = [h["loss"] for h in local.history]
    assert min(losses[-2:]) < 0.8 * losses[0], losses
    folder = latest_model(local.root)
    assert json.loads((folder / "config.json").read_text())["transformer_layers"] == 2
    trained = load_openlrm(folder)
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(trained.state_dict().values(), _tiny_base().values()))


def _tiny_base():
    from mvboost.models.hub import resolve

    return load_openlrm(resolve("tiny:openlrm")).state_dict()


def _plate_extent(cams: torch.Tensor, size: int, half: float) -> int:
    """Columns (pixels) that a square plate |x|, |z| <= half in OpenLRM's y = 0 plane (facing the source
    camera) covers, seen through OpenLRM render cameras (K, 25): the analytic silhouette, no model needed."""
    from mvboost.models.openlrm import camera_rays

    o, d = camera_rays(cams.double(), size)
    t = -o[..., 1] / d[..., 1]
    hit = o + t[..., None] * d
    inside = (hit[..., 0].abs() <= half) & (hit[..., 2].abs() <= half)
    return int(inside[0].reshape(size, size).any(0).sum())


@pytest.mark.parametrize("framing", ["chain", "asset"])
def test_openlrm_renders_have_the_shard_views_framing(framing):
    """The training-render scale, derived from the two framings: a flat object in front of OpenLRM's source
    camera fills some fraction of the input image; the same object rendered at the shard's front view (Era3D's
    orthographic camera through world_cameras) fills that fraction times target/input framing — 420/512 / 0.8
    for the chain's matted input, 1 for an asset shard whose input is its front view — within 1 px at 64².
    The old hand-picked scale (0.5) is 2.5 px off on the chain's framing."""
    from mvboost.geometry.cameras import era3d_cameras
    from mvboost.models.openlrm import (
        CHAIN_INPUT_FRACTION,
        ERA3D_TARGET_FRACTION,
        OPENLRM_SCALE,
        SAME_FRAMING_SCALE,
        world_cameras,
    )

    size, half = 64, 1.0
    src = render_camera(torch.cat([source_camera()[0, :12].reshape(3, 4), torch.tensor([[0.0, 0, 0, 1]])])[None])
    input_px = _plate_extent(src, size, half)
    assert input_px == pytest.approx(size * 2 * half * 0.75 / 2.0, abs=1)  # 0.75 of the input: 48 px
    ratio = ERA3D_TARGET_FRACTION / CHAIN_INPUT_FRACTION if framing == "chain" else 1.0
    scale = OPENLRM_SCALE if framing == "chain" else SAME_FRAMING_SCALE
    front = era3d_cameras(size)  # view 0 is the front view
    target_px = _plate_extent(world_cameras(front, scale)[:1], size, half)
    assert abs(target_px - input_px * ratio) <= 1, (target_px, input_px * ratio)
    if framing == "chain":
        assert abs(_plate_extent(world_cameras(front, 0.5)[:1], size, half) - input_px * ratio) > 2


def test_source_size_comes_from_the_checkpoint():
    from mvboost.models.openlrm import source_size_for

    assert [source_size_for(OpenLRMConfig.preset(p)) for p in ("small", "base", "large")] == [224, 336, 448]
    assert source_size_for(OpenLRMConfig.preset("tiny")) == 56
