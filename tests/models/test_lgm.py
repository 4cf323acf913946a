import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import read_key_list
from mvboost.models.checkpoint import CheckpointError
from mvboost.models.lgm import LGM, LGMConfig, activate_gaussians, save_lgm
from mvboost.models.loading import load_lgm


def test_big_matches_official_key_list(spec_dir):
    ref = read_key_list(spec_dir / "lgm_big_state_dict.txt")
    with torch.device("meta"):
        model = LGM(LGMConfig.preset("big"))
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(mine) == set(ref)
    assert {k: s for k, s in mine.items() if s != ref[k][0]} == {}
    assert sum(p.numel() for p in model.parameters()) == 415_042_848
    # the only nn.Linear layers are the 16 qkv + 16 proj of the cross-view attention
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 32 and all(n.endswith(("attn.qkv", "attn.proj")) for n in linears)


def test_small_preset_count():
    with torch.device("meta"):
        assert sum(p.numel() for p in LGM(LGMConfig.preset("small")).parameters()) == 412_958_240


def test_tiny_forward_contract():
    torch.manual_seed(0)
    model = LGM(LGMConfig.preset("tiny")).eval()
    assert sum(p.numel() for p in model.parameters()) < 10_000_000
    x = model.prepare_inputs(torch.rand(2, 4, 3, 80, 80))
    assert x.shape == (2, 4, 9, 64, 64)
    with torch.no_grad():
        y = model(x)
    s = model.config.splat_size
    assert y.shape == (2, 4 * s * s, 14)
    assert y[..., 0:3].abs().max() <= 1
    assert ((y[..., 3] > 0) & (y[..., 3] < 1)).all()
    assert (y[..., 4:7] > 0).all()
    assert torch.allclose(y[..., 7:11].norm(dim=-1), torch.ones(2, 4 * s * s), atol=1e-5)
    assert ((y[..., 11:14] >= 0) & (y[..., 11:14] <= 1)).all()
    with pytest.raises(ValueError, match="views"):
        model(x[:, :3])


def test_activations_channel_order():
    raw = torch.zeros(1, 2, 14)
    raw[0, 0, 0:3] = torch.tensor([2.0, -0.5, -3.0])
    raw[0, 0, 7:11] = torch.tensor([2.0, 0.0, 0.0, 0.0])
    out = activate_gaussians(raw)
    assert out[0, 0, 0:3].tolist() == [1.0, -0.5, -1.0]
    assert out[0, 0, 3] == pytest.approx(0.5)
    assert out[0, 0, 4] == pytest.approx(0.1 * torch.nn.functional.softplus(torch.tensor(0.0)).item())
    assert out[0, 0, 7:11].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert out[0, 0, 11:14].tolist() == [0.5, 0.5, 0.5]
    legacy = activate_gaussians(raw, legacy_rotation_norm=True)  # normalised across Gaussians
    assert legacy[0, 0, 7].item() == pytest.approx(1.0) and legacy[0, 1, 7:11].abs().sum() == 0


def test_views_are_a_parameter():
    model = LGM(LGMConfig.preset("tiny", num_views=6)).eval()
    with torch.no_grad():
        y = model(model.prepare_inputs(torch.rand(1, 6, 3, 64, 64)))
    assert y.shape == (1, 6 * 32 * 32, 14)


def test_cross_view_attention_mixes_views():
    torch.manual_seed(0)
    model = LGM(LGMConfig.preset("tiny")).eval()
    x = model.prepare_inputs(torch.rand(1, 4, 3, 64, 64))
    x2 = x.clone()
    x2[0, 3, :3] += 0.5  # change only view 3
    with torch.no_grad():
        y, y2 = model(x), model(x2)
    n = 32 * 32
    assert (y[0, :n] - y2[0, :n]).abs().max() > 1e-5  # view 0's Gaussians react to view 3


def test_tiny_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(1)
    model = LGM(LGMConfig.preset("tiny")).eval()
    path = save_lgm(model, tmp_path, dtype=torch.float32)
    assert path.name == "model_fp16_fixrot.safetensors"
    loaded = load_lgm(tmp_path)  # preset inferred from the shapes
    assert loaded.config == model.config
    x = model.prepare_inputs(torch.rand(1, 4, 3, 64, 64))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # fp16 / bf16 files load too and stay close
    for dt, tol in ((torch.float16, 0.05), (torch.bfloat16, 0.25)):
        save_lgm(model, tmp_path / str(dt), dtype=dt)
        with torch.no_grad():
            y = load_lgm(tmp_path / str(dt) / "model_fp16_fixrot.safetensors", preset="tiny")(x)
            assert (y - model(x)).abs().max() < tol


def test_loader_errors_are_explicit(tmp_path):
    model = LGM(LGMConfig.preset("tiny"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    del state["conv.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["unet.conv_in.weight"] = torch.zeros(32, 9, 1, 1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_lgm(tmp_path / "bad.safetensors", preset="tiny")
    msg = str(e.value)
    assert "missing keys (1)" in msg and "conv.bias" in msg
    assert "unexpected keys (1)" in msg and "extra.weight" in msg
    assert "mis-shaped keys (1)" in msg and "unet.conv_in.weight" in msg
    with pytest.raises(CheckpointError, match="only .safetensors"):
        torch.save(state, tmp_path / "x.pt")
        load_lgm(tmp_path / "x.pt", preset="tiny")
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        load_lgm("nobody/no-such-lgm")


def test_legacy_checkpoint_refused_unless_allowed(tmp_path):
    model = LGM(LGMConfig.preset("tiny"))
    save_lgm(model, tmp_path, filename="model_fp16.safetensors")
    with pytest.raises(CheckpointError, match="rotation-normalisation bug"):
        load_lgm(tmp_path / "model_fp16.safetensors")
    legacy = load_lgm(tmp_path / "model_fp16.safetensors", allow_legacy_rotation=True)
    assert legacy.config.legacy_rotation_norm


def test_config_file_beside_weights(tmp_path):
    cfg = LGMConfig.preset("tiny", down_channels=(32, 32, 64, 64), up_channels=(64, 64, 32))
    model = LGM(cfg)
    save_lgm(model, tmp_path)
    with pytest.raises(CheckpointError, match="match none of the LGM presets"):
        load_lgm(tmp_path)
    (tmp_path / "lgm_config.json").write_text(json.dumps(cfg.to_dict()))
    assert load_lgm(tmp_path).config == cfg
