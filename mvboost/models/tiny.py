"""Tiny random-weight models in the official on-disk layouts, created on first use.

``resolve_model("tiny:sd")`` (or ``tiny:lgm``, ``tiny:era3d``) returns a local folder holding a tiny
instance of the real classes, saved exactly as the official checkpoints are laid out, so the stages
load them through the same code path as ``stabilityai/sdxl-turbo``, ``ashawkey/LGM`` or
``pengHTYX/MacLab-Era3D-512-6view``. Anything else is returned unchanged (a path or a hub id).
Weights are random (seeded): outputs are noise, but every tensor flows through the real code.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

TINY_PREFIX = "tiny:"
TINY_KINDS = ("sd", "lgm", "era3d")


def cache_root() -> Path:
    return Path(os.environ.get("MVBOOST_CACHE", Path.home() / ".cache" / "mvboost")) / "tiny-models"


def resolve_model(source: str) -> str:
    if not isinstance(source, str) or not source.startswith(TINY_PREFIX):
        return source
    kind = source[len(TINY_PREFIX):]
    builders = {"sd": build_tiny_sd, "lgm": build_tiny_lgm, "era3d": _build_tiny_era3d}
    if kind not in builders:
        raise ValueError(f"unknown tiny model {source!r}; choose one of {[TINY_PREFIX + k for k in TINY_KINDS]}")
    folder = cache_root() / kind
    if not (folder / ".complete").is_file():
        tmp = folder.with_name(f"{kind}.tmp-{uuid.uuid4().hex[:8]}")
        builders[kind](tmp)
        (tmp / ".complete").write_text("ok\n")
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:  # another process won the race: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def check_model_available(source: str, what: str) -> str:
    """Resolve ``source`` to a local folder/file, or raise FileNotFoundError naming ``what``.

    Tiny models are created here; Hugging Face ids must already be in the local cache (no download)."""
    path = resolve_model(source)
    if Path(os.path.expanduser(path)).exists():
        return path
    if "/" in path and not path.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(path, local_files_only=True)
        except Exception as e:  # noqa: BLE001
            raise FileNotFoundError(f"{what}: model {source!r} is neither a local path nor in the local Hugging Face "
                                    f"cache ({type(e).__name__}); download it first, e.g. "
                                    f"`huggingface-cli download {source}`") from e
    raise FileNotFoundError(f"{what}: model {source!r} not found")


def tiny_clip_tokenizer():
    """A byte-level CLIP tokenizer with no merges (real class, minimal vocabulary)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_clip_text_model(hidden: int = 32, layers: int = 2, vocab_size: int = 514, proj: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=77,
                         projection_dim=proj or hidden, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                         pad_token_id=vocab_size - 1)
    return CLIPTextModel(cfg)


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=32,
                         sample_size=64)  # 8x down-sampling like SD's VAE: 64² images <-> 8² latents


def build_tiny_sd(folder: Path, seed: int = 0) -> None:
    """A tiny StableDiffusionPipeline folder (model_index.json + unet/vae/text_encoder/tokenizer/scheduler)."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=tiny_vae(), text_encoder=tiny_clip_text_model(), tokenizer=tiny_clip_tokenizer(),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)


def build_tiny_lgm(folder: Path, seed: int = 0) -> None:
    """A tiny LGM saved like ``ashawkey/LGM`` (``model_fp16_fixrot.safetensors``)."""
    import torch

    from .lgm import LGM, LGMConfig
    from .loading import save_lgm

    torch.manual_seed(seed)
    save_lgm(LGM(LGMConfig.preset("tiny")), folder)


def _build_tiny_era3d(folder: Path, seed: int = 0) -> None:
    from .era3d_pipeline import build_tiny_era3d

    build_tiny_era3d(folder, seed)
