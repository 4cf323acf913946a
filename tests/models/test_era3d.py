import json

import numpy as np
import pytest
import torch

from conftest import read_key_list
from mvboost.models.checkpoint import CheckpointError
from mvboost.models.era3d import (
    Era3DUNet,
    apply_guidance,
    cfg_layout,
    joint_domain_attention,
    rowwise_view_attention,
    sdpa_attention,
    split_cfg,
)

EMA_FIELDS = {"decay": 0.9999, "inv_gamma": 1.0, "min_decay": 0.0, "optimization_step": 40000, "power": 0.6667,
              "update_after_step": 0, "use_ema_warmup": False, "_class_name": "UNetMV2DConditionModel",
              "_diffusers_version": "0.19.3", "_name_or_path": "…/checkpoint-40000/unet_ema"}


def official_config(spec_dir):
    lines = (spec_dir / "era3d_unet_state_dict.txt").read_text().splitlines()
    line = next(ln for ln in lines if ln.startswith("# config:"))
    return {**json.loads(line.split(":", 1)[1]), **EMA_FIELDS}


@pytest.mark.parametrize("ortho", [False, True])
def test_unet_matches_official_key_lists(spec_dir, ortho):
    ref = read_key_list(spec_dir / "era3d_unet_state_dict.txt")
    if ortho:
        ref = {k: v for k, v in ref.items() if "NOORTHO" not in v[1]}
    cfg = official_config(spec_dir)
    if ortho:
        cfg.update(regress_elevation=False, regress_focal_length=False)
    with torch.device("meta"):
        unet = Era3DUNet.from_config(cfg)
    mine = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert set(mine) == set(ref)
    assert {k: s for k, s in mine.items() if s != ref[k][0]} == {}
    total = sum(p.numel() for p in unet.parameters())
    assert total == (919_783_684 if ortho else 947_664_646)


def test_unsupported_options_are_refused(spec_dir):
    with pytest.raises(ValueError, match="cd_attention_mid"):
        Era3DUNet.from_config({**official_config(spec_dir), "cd_attention_mid": True})


class _Attn(torch.nn.Module):
    def __init__(self, dim=16, heads=2):
        super().__init__()
        from diffusers.models.attention_processor import Attention

        self.a = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False, out_bias=True)


def naive(attn, x, ctx=None):
    ctx = x if ctx is None else ctx
    q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
    h = attn.heads
    b, n, c = q.shape
    q, k, v = (t.reshape(b, -1, h, c // h).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / (c // h) ** 0.5, dim=-1)
    return attn.to_out[0]((w @ v).transpose(1, 2).reshape(b, n, c))


def test_sdpa_equals_naive_softmax():
    torch.manual_seed(0)
    a = _Attn().a.double()
    x, ctx = torch.randn(3, 10, 16, dtype=torch.float64), torch.randn(3, 7, 16, dtype=torch.float64)
    torch.testing.assert_close(sdpa_attention(a, x), naive(a, x))
    torch.testing.assert_close(sdpa_attention(a, x, ctx), naive(a, x, ctx))
    # joint attention = naive attention over the concatenated normal+colour sequence
    x2 = torch.randn(4, 9, 16, dtype=torch.float64)
    ref = naive(a, torch.cat([x2[:2], x2[2:]], dim=1))
    torch.testing.assert_close(joint_domain_attention(a, x2), torch.cat([ref[:, :9], ref[:, 9:]]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sdpa_in_the_model_dtype_is_as_accurate_as_the_upcast_path(dtype):
    """Why q/k/v stay in bf16/fp16: SDPA computes scores, softmax and the PV sum in fp32 internally, so
    against an fp64 reference (from the same rounded q/k/v) it is as accurate as casting to fp32 first,
    also where naive half-precision scores overflow."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    for length, scale in ((384, 1.0), (2048, 4.0), (256, 40.0)):  # |QK^T|/8 up to ~9000 in the last case
        q, k = (torch.randn(2, 4, length, 64) * scale).to(dtype), (torch.randn(2, 4, length, 64) * scale).to(dtype)
        v = torch.randn(2, 4, length, 64).to(dtype)
        ref = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 8, -1) @ v.double()
        native = F.scaled_dot_product_attention(q, k, v).double()
        upcast = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(dtype).double()
        rel_native, rel_up = ((native - ref).norm() / ref.norm()).item(), ((upcast - ref).norm() / ref.norm()).item()
        assert torch.isfinite(native).all()
        assert rel_native <= 1.5 * rel_up, (length, scale, rel_native, rel_up)
        assert rel_native < torch.finfo(dtype).eps  # the output's own rounding, nothing more
    # scores of 40·40·64 = 102,400 do not fit fp16 (max 65,504): naive fp16 attention turns them into NaN,
    # SDPA in fp16 returns the exact answer (uniform weights -> the mean of v)
    q = torch.full((1, 1, 4, 64), 40.0, dtype=torch.float16)
    v = torch.arange(4 * 64, dtype=torch.float16).reshape(1, 1, 4, 64) / 256
    naive = torch.softmax(q @ q.transpose(-1, -2), -1) @ v
    assert not torch.isfinite(naive).all()
    torch.testing.assert_close(F.scaled_dot_product_attention(q, q, v, scale=1.0), v.mean(2, keepdim=True).expand_as(v))


def test_unet_attention_path_switch_and_half_precision_accuracy():
    """The UNet's attention runs in the model dtype by default; the legacy up-cast path is a switch. Over
    3 random tiny UNets the default is as close to the fp64 UNet as the up-cast path (bf16 and fp16)."""
    import copy

    from mvboost.models.era3d import Era3DUNet, set_attention_upcast
    from mvboost.models.tiny import TINY_UNET_CONFIG

    errs = {(dt, up): [] for dt in (torch.bfloat16, torch.float16) for up in (False, True)}
    for seed in range(3):
        torch.manual_seed(seed)
        unet = Era3DUNet.from_config(TINY_UNET_CONFIG).double().eval()
        x = torch.randn(24, 8, 8, 8, dtype=torch.float64)
        ehs, cl = torch.randn(24, 77, 32, dtype=torch.float64), torch.randn(24, 64, dtype=torch.float64)
        with torch.no_grad():
            ref, _ = unet(x, 500, ehs, cl)
            for dt in (torch.bfloat16, torch.float16):
                low = copy.deepcopy(unet).to(dt)
                for up in (False, True):
                    assert set_attention_upcast(low, up) == 3 * 10  # attn1, attn_mv, attn2 at the 10 tiny sites
                    y, _ = low(x.to(dt), 500, ehs.to(dt), cl.to(dt))
                    assert torch.isfinite(y).all()
                    errs[(dt, up)].append(((y.double() - ref).norm() / ref.norm()).item())
    mean = {k: sum(v) / len(v) for k, v in errs.items()}
    for dt in (torch.bfloat16, torch.float16):
        assert mean[(dt, False)] < 0.1  # measured: bf16 0.060, fp16 0.028 (weights and activations rounded)
        assert mean[(dt, False)] < 1.3 * mean[(dt, True)]  # measured ratios 1.10 (bf16), 0.96 (fp16): no path is closer


def test_dtype_and_compile_choices(monkeypatch):
    from mvboost.stages.common import pick_compile, pick_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_dtype("auto", cuda) == torch.bfloat16  # the GPU default where supported
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert pick_dtype("auto", cuda) == torch.float16
    assert pick_dtype("fp16", cuda) == torch.float16 and pick_dtype("bf16", cpu) == torch.bfloat16
    assert pick_compile("auto", cuda) and not pick_compile("auto", cpu) and pick_compile("true", cpu)
    assert not pick_compile(False, cuda)
    with pytest.raises(ValueError, match="compile must be auto"):
        pick_compile("sometimes", cpu)


def test_bad_dtype_fails_at_preflight_with_the_key(tiny_cache):
    from mvboost.config import ConfigError
    from mvboost.stages.era3d import Era3DStage

    with pytest.raises(ConfigError, match="era3d.dtype: unknown dtype 'fp64'"):
        Era3DStage(Era3DStage.Config(model="tiny:era3d", dtype="fp64"), None).preflight()


def changed(f, x, idx):
    with torch.no_grad():
        y = f(x)
        x2 = x.clone()
        x2[idx] += 1.0
        return ((f(x2) - y).abs().amax(-1) > 1e-9)


def test_joint_attention_mixes_only_normal_and_colour_of_the_same_image():
    torch.manual_seed(0)
    a = _Attn().a.double()
    n = 5  # images per domain
    x = torch.randn(2 * n, 9, 16, dtype=torch.float64)
    moved = changed(lambda t: joint_domain_attention(a, t), x, (1, 4))  # normal image 1, token 4
    rows = moved.any(1).nonzero().flatten().tolist()
    assert rows == [1, 1 + n]
    assert moved[1].all() and moved[1 + n].all()


def test_rowwise_attention_mixes_only_the_same_row_of_one_objects_views():
    torch.manual_seed(0)
    a = _Attn().a.double()
    v, side = 6, 4
    x = torch.randn(2 * v, side * side, 16, dtype=torch.float64)  # 2 objects (or domains) x 6 views
    r, c = 2, 1
    moved = changed(lambda t: rowwise_view_attention(a, t, v), x, (3, r * side + c))
    imgs, toks = moved.nonzero(as_tuple=True)
    assert sorted(set(imgs.tolist())) == list(range(6))  # all 6 views of object 0, none of object 1
    assert set((toks // side).tolist()) == {r}  # only row r
    assert moved[:6, r * side:(r + 1) * side].all()
    with pytest.raises(ValueError, match="square"):
        rowwise_view_attention(a, torch.randn(6, 12, 16, dtype=torch.float64), 6)


def test_cfg_layout_round_trip_and_guidance():
    blocks = [torch.full((12, 1), float(i)) for i in range(4)]
    x = cfg_layout(*blocks)
    assert [b[0, 0].item() for b in split_cfg(x)] == [0.0, 1.0, 2.0, 3.0]
    g = apply_guidance(x, 3.0)
    assert g.shape == (24, 1)
    assert g[0].item() == 0 + 3 * (1 - 0) and g[12].item() == 2 + 3 * (3 - 2)


# ---- the pipeline on the tiny checkpoint ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_era3d(tiny_cache):
    from mvboost.models.hub import resolve as resolve_model

    return resolve_model("tiny:era3d")


def rgba_object():
    img = np.zeros((64, 64, 4), np.uint8)
    img[12:52, 22:42] = (210, 60, 40, 255)
    return img


def test_tiny_folder_has_the_official_layout(tiny_era3d):
    from pathlib import Path

    folder = Path(tiny_era3d)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"] == ["mvdiffusion.models.unet_mv2d_condition", "UNetMV2DConditionModel"]
    for sub in ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                "scheduler/scheduler_config.json", "image_normalizer/config.json", "tokenizer"):
        assert (folder / sub).exists(), sub
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction" and sched["beta_schedule"] == "linear"


def test_generate_shapes_determinism_and_prompt_embeds(tiny_era3d):
    from mvboost.models.era3d_pipeline import PROMPT_TEMPLATE, VIEW_NAMES, Era3DPipeline

    pipe = Era3DPipeline(tiny_era3d)
    assert pipe.scheduler.config.prediction_type == "v_prediction"  # read from the checkpoint
    out = pipe.generate([rgba_object(), rgba_object()], seeds=[3, 4], steps=3)
    assert out.colors.shape == (2, 6, 64, 64, 3) and out.normals.shape == (2, 6, 64, 64, 3)
    assert out.pose_pred.shape == (2, 2) and np.isfinite(out.colors).all()
    assert out.cameras["views"][2] == "right" and out.cameras["azimuths_deg"][2] == 90.0
    again = pipe.generate([rgba_object(), rgba_object()], seeds=[3, 4], steps=3)
    assert np.array_equal(out.colors, again.colors) and np.array_equal(out.normals, again.normals)
    assert not np.allclose(out.colors[0], out.colors[1])  # different seeds differ
    n_emb, c_emb = pipe.prompt_embeds()
    assert n_emb.shape == (6, 77, 32)
    ids = pipe.tokenizer([PROMPT_TEMPLATE.format(view=VIEW_NAMES[2], domain="color")], padding="max_length",
                         max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(c_emb[2], pipe.text_encoder(ids)[0][0])
    assert "front_right view, normal map." in PROMPT_TEMPLATE.format(view="front_right", domain="normal")


def test_batch_composition_does_not_change_an_object(tiny_era3d):
    from mvboost.models.era3d_pipeline import Era3DPipeline

    pipe = Era3DPipeline(tiny_era3d, dtype=torch.float64)  # fp64: no batch-size-dependent rounding
    both = pipe.generate([rgba_object(), rgba_object()[:, ::-1].copy()], seeds=[5, 6], steps=3)
    alone = pipe.generate([rgba_object()[:, ::-1].copy()], seeds=[6], steps=3)
    assert np.abs(both.colors[1] - alone.colors[0]).max() < 1e-4


def test_stages_run_in_bf16_and_share_one_pipeline(tiny_era3d):
    """era3d and refine in one process (a fused group's worker) hold one Era3D pipeline; bf16 runs on CPU."""
    from mvboost.io.codec import decode_array, encode_array
    from mvboost.stages.era3d import Era3DStage, RefineStage

    kw = dict(model="tiny:era3d", steps=2, device="cpu", dtype="bf16")
    gen, ref = Era3DStage(Era3DStage.Config(**kw), None), RefineStage(RefineStage.Config(**kw), None)
    gen.setup()
    ref.setup()
    assert gen.pipe is ref.pipe and gen.pipe.unet.dtype == torch.bfloat16
    other = RefineStage(RefineStage.Config(**{**kw, "dtype": "fp32"}), None)
    other.setup()
    assert other.pipe is not gen.pipe  # another dtype is another model
    row = {"rgba": encode_array(rgba_object()), "seed": 1}
    out = gen.process([row])[0]
    assert decode_array(out["views"]).shape == (6, 64, 64, 3)


def test_compiled_pipelines_pad_short_batches_without_changing_objects(tiny_era3d):
    """With compile on, a short batch is padded to batch_size (one compiled shape); the real rows'
    outputs equal an unpadded run (fp64: no batch-size-dependent rounding)."""
    from mvboost.io.codec import decode_array, encode_array
    from mvboost.stages.base import Resources
    from mvboost.stages.era3d import Era3DStage

    st = Era3DStage(Era3DStage.Config(model="tiny:era3d", steps=2, device="cpu", dtype="fp32",
                                      resources=Resources(batch_size=3)), None)
    from mvboost.models.era3d_pipeline import Era3DPipeline

    st.pipe = Era3DPipeline(tiny_era3d, dtype=torch.float64)
    calls = []
    real = st.pipe.generate
    st.pipe.generate = lambda rgba, **kw: calls.append(len(rgba)) or real(rgba, **kw)
    row = {"rgba": encode_array(rgba_object()), "seed": 7}
    plain = st.process([row])[0]
    st.pipe.compiled = True  # as after torch.compile: batches are padded to batch_size
    padded = st.process([row])
    assert calls == [1, 3] and len(padded) == 1
    assert np.abs(decode_array(padded[0]["views"]).astype(int) - decode_array(plain["views"]).astype(int)).max() <= 1


def test_refine_strength_semantics(tiny_era3d):
    from mvboost.models.era3d_pipeline import Era3DPipeline

    pipe = Era3DPipeline(tiny_era3d)
    rgba = [rgba_object()]
    gen = pipe.generate(rgba, seeds=[7], steps=40)
    calls = []
    real = pipe.unet.forward
    pipe.unet.forward = lambda x, t, *a, **k: (calls.append(int(t)), real(x, t, *a, **k))[1]
    pipe.refine(gen.colors, gen.normals, rgba, strength=0.95, seeds=[7], steps=40)
    assert len(calls) == 38 and calls[0] == 926 and calls[-1] == 1
    pipe.unet.forward = real
    same = pipe.refine(gen.colors, gen.normals, rgba, strength=1.0, seeds=[7], steps=40)
    assert np.array_equal(same.colors, gen.colors)
    # strength 0: no denoising, the renders come back through the VAE round trip
    zero = pipe.refine(gen.colors, gen.normals, rgba, strength=0.0, seeds=[7], steps=40)
    x = torch.from_numpy(np.concatenate([gen.normals[0], gen.colors[0]])).permute(0, 3, 1, 2).float()
    gens = [torch.Generator().manual_seed(7 ^ 0x5EED)]
    ref = pipe.decode(pipe.encode(x, gens * 12)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(zero.colors[0], ref[6:], atol=1e-5)
    with pytest.raises(ValueError, match="strength"):
        pipe.refine(gen.colors, gen.normals, rgba, strength=1.5)


def test_loader_is_strict_and_runs_no_checkpoint_code(tiny_era3d, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from mvboost.models.era3d_pipeline import Era3DPipeline

    bad = tmp_path / "bad"
    shutil.copytree(tiny_era3d, bad)
    w = bad / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(w))
    state.pop("camera_embedding.linear_1.bias")
    save_file(state, str(w))
    with pytest.raises(CheckpointError, match="(?s)missing keys \\(1\\).*camera_embedding.linear_1.bias"):
        Era3DPipeline(bad)
    shutil.rmtree(bad / "vae")
    with pytest.raises(FileNotFoundError, match="missing components \\['vae'\\]"):
        Era3DPipeline(bad)
