"""Tiny random-weight models in the official on-disk layouts (builders only).

``mvboost.models.hub.resolve("tiny:sd" | "tiny:lgm" | "tiny:era3d" | "tiny:era3d-ortho")`` calls these
once and returns the cached folder; they hold tiny instances of the real classes saved exactly as the
official checkpoints are laid out, so the stages load them through the same code path as
``stabilityai/sdxl-turbo``, ``ashawkey/LGM`` or ``pengHTYX/MacLab-Era3D-512-6view``. Weights are
random (seeded): outputs are noise, but every tensor flows through the real code.
"""
from __future__ import annotations

from pathlib import Path

from .era3d import OFFICIAL_UNET_CONFIG

#: the official Era3D UNet config at a tiny size (64² images, 8² latents); every other key as released,
#: plus two of the EMA bookkeeping fields the official unet/config.json carries (the loader ignores them)
TINY_UNET_CONFIG = {
    **OFFICIAL_UNET_CONFIG, "sample_size": 8, "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1,
    "cross_attention_dim": 32, "attention_head_dim": [2, 2, 4, 4], "projection_class_embeddings_input_dim": 64,
    "decay": 0.9999, "optimization_step": 40000,
}


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


def tiny_vae(channels: tuple[int, ...] = (32, 32, 32, 32)):
    """SD's VAE class at a tiny width; ``len(channels) - 1`` halvings (the default: 8x like SD's, 64² <-> 8²)."""
    from diffusers import AutoencoderKL

    n = len(channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=tuple(channels), layers_per_block=1, norm_num_groups=32,
                         sample_size=8 * 2 ** (n - 1))


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

    from .lgm import LGM, LGMConfig, save_lgm

    torch.manual_seed(seed)
    save_lgm(LGM(LGMConfig.preset("tiny")), folder)


def build_tiny_era3d(folder: Path, seed: int = 0, ortho: bool = False,
                     vae_channels: tuple[int, ...] = (32, 32, 32, 32)) -> None:
    """Tiny random Era3D components saved exactly like the official checkpoint folder: 8² latents, images of
    8 x 2^(len(vae_channels) - 1) pixels (the default: 64²)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from .era3d import Era3DUNet
    from .era3d_pipeline import write_era3d_folder

    torch.manual_seed(seed)
    cfg = dict(TINY_UNET_CONFIG)
    if ortho:
        cfg.update(regress_elevation=False, regress_focal_length=False)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                            num_attention_heads=2, image_size=32, patch_size=8,
                                                            projection_dim=32))
    write_era3d_folder(folder, cfg, Era3DUNet.from_config(cfg), tiny_vae(vae_channels), vision,
                       tiny_clip_text_model(hidden=32), tiny_clip_tokenizer(), clip_image_size=32)


def build_tiny_openlrm(folder: Path, seed: int = 0) -> None:
    """A tiny OpenLRM saved like ``zxhezexin/openlrm-obj-base-1.1`` (``config.json`` + ``model.safetensors``)."""
    import torch

    from .openlrm import OpenLRM, OpenLRMConfig, save_openlrm

    torch.manual_seed(seed)
    save_openlrm(OpenLRM(OpenLRMConfig.preset("tiny")), folder)
