"""Model resolution (mvboost.models.hub): ids + revisions from a real Hugging Face cache layout, built
tiny/random models, and the full-size random checkpoints' architectures against the official lists."""
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import read_key_list
from mvboost.models import hub


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """A Hugging Face cache with repo acme/lgm: refs main -> commit a…, v2 -> commit b…, each snapshot
    holding a different tiny LGM checkpoint (huggingface_hub reads it offline, exactly as on a node)."""
    from mvboost.models.lgm import LGM, LGMConfig, save_lgm

    root = tmp_path / "hf" / "hub"
    repo = root / "models--acme--lgm"
    commits = {"main": "a" * 40, "v2": "b" * 40}
    for seed, (ref, commit) in enumerate(commits.items()):
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        torch.manual_seed(seed)
        save_lgm(LGM(LGMConfig.preset("tiny")), repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return commits


def test_hub_ids_resolve_at_their_revision(hf_cache):
    for ref, commit in hf_cache.items():
        assert hub.resolve("acme/lgm", ref).name == commit
    assert hub.resolve("acme/lgm", None).name == hf_cache["main"]  # default revision: main
    assert hub.resolve("acme/lgm", "b" * 40).name == hf_cache["v2"]  # a commit hash works too
    assert hub.check("acme/lgm", "v2") == f"hub acme/lgm@{'b' * 12}"
    with pytest.raises(hub.ModelNotFound, match=r"acme/lgm.*revision 'v3'.*hf download acme/lgm --revision v3"):
        hub.resolve("acme/lgm", "v3", what="lgm")
    with pytest.raises(hub.ModelNotFound,
                       match=r"lgm: model 'acme/nothing' at revision 'main'.*hf download acme/nothing`"):
        hub.check("acme/nothing", "main", what="lgm")


def test_revision_reaches_the_loaders_trainer_and_stages(hf_cache, tmp_path):
    """The revision selects the weights everywhere: load_lgm, the LGM stage, the trainer, the merge
    tool, and the commit recorded in every sample's meta.json."""
    from mvboost.models.loading import load_lgm
    from mvboost.pipeline.job import build_units, job_meta, load_job_config
    from mvboost.stages.lgm import LGMStage
    from mvboost.train.config import TrainConfig
    from mvboost.train.loop import build_model
    from train.merge import merge

    main, v2 = load_lgm("acme/lgm"), load_lgm("acme/lgm", revision="v2")
    key = "conv.weight"
    assert not torch.equal(main.state_dict()[key], v2.state_dict()[key])

    stage = LGMStage(LGMStage.Config(model="acme/lgm", revision="v2", device="cpu"), None)
    stage.preflight()
    stage.setup()
    assert torch.equal(stage.model.state_dict()[key], v2.state_dict()[key])

    cfg = TrainConfig()
    cfg.model.checkpoint, cfg.model.revision = "acme/lgm", "v2"
    trained = build_model(cfg, "cpu")
    assert torch.equal(trained.base_model.model.state_dict()[key].float(), v2.state_dict()[key].float())

    from peft import get_peft_model_state_dict

    adapter = tmp_path / "adapter"
    trained.save_pretrained(str(adapter))
    assert get_peft_model_state_dict(trained)
    merged = merge("acme/lgm", str(adapter), revision="v2")
    assert torch.allclose(merged.state_dict()[key], v2.state_dict()[key])  # conv is not a LoRA target

    job = load_job_config(None, ["job.stages=[text_to_image, matting, era3d, lgm, write]", "lgm.model=acme/lgm",
                                 "lgm.revision=v2", "text_to_image.model=tiny:sd", "era3d.model=tiny:era3d"])
    meta = job_meta(job, build_units(job))["models"]
    assert meta["lgm"] == {"id": "acme/lgm", "revision": "v2", "commit": hf_cache["v2"], "adapter": None}
    assert meta["era3d"] == {"id": "tiny:era3d", "revision": None, "commit": None, "adapter": None}  # one record shape


def test_local_paths_and_errors(tmp_path):
    (tmp_path / "m").mkdir()
    assert hub.resolve(str(tmp_path / "m"), "ignored") == tmp_path / "m"
    with pytest.raises(hub.ModelNotFound, match="neither a local file or folder"):
        hub.resolve(str(tmp_path / "missing"))
    with pytest.raises(hub.ModelNotFound, match=r"unknown built model 'random:nope'.*random:era3d"):
        hub.check("random:nope", what="era3d")
    with pytest.raises(hub.ModelNotFound, match="no model given"):
        hub.resolve("")


def test_built_models_are_checked_without_building_and_built_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MVBOOST_CACHE", str(tmp_path))
    assert "built on first use" in hub.check("tiny:lgm")
    assert not hub.built_folder("tiny:lgm").exists()  # the driver-side check builds nothing
    folder = hub.resolve("tiny:lgm")
    assert folder == tmp_path / "tiny-models" / hub.BUILDER_VERSION / "lgm"
    stamp = (folder / ".complete").stat().st_mtime_ns
    assert hub.resolve("tiny:lgm") == folder and (folder / ".complete").stat().st_mtime_ns == stamp
    assert "cached" in hub.check("tiny:lgm")
    assert [p.name for p in folder.parent.iterdir() if ".tmp-" in p.name] == []


def test_no_module_but_the_hub_resolves_models():
    """One owner: only mvboost/models/hub.py calls huggingface_hub's resolvers."""
    repo = Path(__file__).resolve().parents[2]
    offenders = [str(p.relative_to(repo)) for d in ("mvboost", "ray_jobs", "train", "prompts", "bench")
                 for p in (repo / d).rglob("*.py")
                 if p.name != "hub.py" and any(s in p.read_text() for s in ("snapshot_download", "hf_hub_download"))]
    assert offenders == []


# ---- full-size random checkpoints: the real architectures (built on meta here) ------------------------
def test_random_era3d_unet_matches_the_official_key_lists(spec_dir):
    from mvboost.models.fullsize import era3d_unet

    line = next(ln for ln in (spec_dir / "era3d_unet_state_dict.txt").read_text().splitlines()
                if ln.startswith("# config:"))
    from mvboost.models.era3d import OFFICIAL_UNET_CONFIG

    assert {k: v for k, v in OFFICIAL_UNET_CONFIG.items() if k != "_class_name"} == json.loads(line[len("# config:"):])
    ref = read_key_list(spec_dir / "era3d_unet_state_dict.txt")
    for ortho in (False, True):
        unet = era3d_unet(ortho=ortho, device="meta")
        shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
        want = {k: s for k, (s, mark) in ref.items() if not (ortho and "NOORTHO" in mark)}
        assert shapes == want
        assert sum(p.numel() for p in unet.parameters()) == (919_783_684 if ortho else 947_664_646)


def test_random_lgm_and_sd_turbo_components_have_the_real_sizes(spec_dir):
    from mvboost.models import fullsize

    lgm = fullsize.lgm_big(device="meta")
    ref = read_key_list(spec_dir / "lgm_big_state_dict.txt")
    assert {k: tuple(v.shape) for k, v in lgm.state_dict().items()} == {k: s for k, (s, _) in ref.items()}
    counts = {name: sum(p.numel() for p in fn(device="meta").parameters()) for name, fn in (
        ("sd2_unet", fullsize.sd2_unet), ("vae", fullsize.sd_vae), ("text", fullsize.openclip_h_text),
        ("vision", fullsize.clip_vit_h_vision))}
    # published sizes: SD 2.x UNet 865.9M, SD VAE 83.7M, OpenCLIP-H text tower (23 layers) 340.4M, ViT-H/14 632.1M
    assert counts == {"sd2_unet": 865_910_724, "vae": 83_653_863, "text": 340_387_840, "vision": 632_076_800}
    text = fullsize.openclip_h_text(device="meta")
    assert (text.config.num_hidden_layers, text.config.hidden_size, text.config.vocab_size) == (23, 1024, 49408)


def test_tiny_era3d_folder_is_what_the_official_class_would_load(tiny_cache):
    """The pose heads are 1280 wide whatever the channel widths (official ResidualLiner width)."""
    from safetensors import safe_open

    folder = hub.resolve("tiny:era3d")
    with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if "regressor" in k}
    mid = json.loads((folder / "unet" / "config.json").read_text())["block_out_channels"][-1]
    assert shapes["elevation_regressor.linear_in.0.weight"] == (1280, 2 * mid)
    assert shapes["focal_regressor.blocks.2.linear2.weight"] == (1280, 1280)
    assert shapes["elevation_regressor.linear_out.weight"] == (1, 1280)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"] == ["mvdiffusion.models.unet_mv2d_condition", "UNetMV2DConditionModel"]


@pytest.mark.slow
def test_random_lgm_is_saved_in_the_official_layout_and_loads(tmp_path, monkeypatch):
    """random:lgm end to end on CPU (≈ 3 GB peak, a minute): built, saved as the official file, loaded."""
    from mvboost.models.lgm import LGM_FILENAME
    from mvboost.models.loading import load_lgm

    monkeypatch.setenv("MVBOOST_CACHE", str(tmp_path))
    folder = hub.resolve("random:lgm")
    assert (folder / LGM_FILENAME).stat().st_size > 800e6  # fp16, like the official 830 MB file
    model = load_lgm("random:lgm")
    assert sum(p.numel() for p in model.parameters()) == 415_042_848
    assert os.path.getsize(folder / LGM_FILENAME) < 900e6
