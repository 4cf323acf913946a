"""Full-size random-weight models in the official on-disk layouts (builders for ``random:<kind>``).

Each builds the real architecture at its real size (the same classes the official checkpoints load
into), initialises it with the classes' own random initialisation, and saves it exactly like the
official folder, so a GPU machine without network runs the production chain end to end and measures
real timings (``ray_jobs/configs/generate_gpu_random.yaml``). Built on the GPU when one is visible
(seconds), else on the CPU (a few minutes); stored in fp16 like the official files.

=====================  ===================================================================  ============
``random:sd-turbo``    stabilityai/sd-turbo: SD2.1 UNet (865.9M), SD VAE, OpenCLIP-H text      ≈ 2.6 GB
                       tower (23 layers), Euler "trailing" scheduler
``random:era3d``       pengHTYX/MacLab-Era3D-512-6view: Era3D UNet (947.7M), SD VAE, CLIP      ≈ 3.9 GB
                       ViT-H/14 image encoder, OpenCLIP-H text tower, unCLIP normaliser
``random:era3d-ortho`` the -ortho checkpoint (no pose heads, 919.8M UNet)                     ≈ 3.8 GB
``random:lgm``         ashawkey/LGM big (415.0M), ``model_fp16_fixrot.safetensors``             ≈ 0.8 GB
=====================  ===================================================================  ============

The tokenizers are byte-level CLIP tokenizers (the BPE vocabulary cannot be downloaded here); the
text towers keep the real 49,408-token embedding, so only token ids differ from the real model.
"""
from __future__ import annotations

from pathlib import Path

import torch

SD_VOCAB = 49408


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sd2_unet(device="cpu"):
    """Stable Diffusion 2.1's UNet (the architecture of stabilityai/sd-turbo)."""
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, flip_sin_to_cos=True, freq_shift=0,
            norm_num_groups=32, act_fn="silu")


def sd_vae(device="cpu"):
    """The SD 2.x VAE (4 latent channels, 128-256-512-512, scaling 0.18215)."""
    from diffusers import AutoencoderKL

    with torch.device(device):
        return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                             block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                             sample_size=768, scaling_factor=0.18215, force_upcast=True)


def openclip_h_text(device="cpu", eos_token_id: int = SD_VOCAB - 1, bos_token_id: int = SD_VOCAB - 2):
    """SD2's OpenCLIP ViT-H text tower as diffusers ships it: 23 of 24 layers (penultimate-layer trick)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=SD_VOCAB, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                         num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
                         bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id)
    with torch.device(device):
        return CLIPTextModel(cfg)


def clip_vit_h_vision(device="cpu"):
    """OpenCLIP ViT-H/14 image tower with its 1024-d projection (SD 2.1 unCLIP's image encoder)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                           image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu")
    with torch.device(device):
        return CLIPVisionModelWithProjection(cfg)


def era3d_unet_config(ortho: bool = False) -> dict:
    from .era3d import OFFICIAL_UNET_CONFIG

    cfg = dict(OFFICIAL_UNET_CONFIG)
    if ortho:
        cfg.update(regress_elevation=False, regress_focal_length=False)
    return cfg


def era3d_unet(ortho: bool = False, device="cpu"):
    from .era3d import Era3DUNet

    with torch.device(device):
        return Era3DUNet.from_config(era3d_unet_config(ortho))


def lgm_big(device="cpu"):
    from .lgm import LGM, LGMConfig

    with torch.device(device):
        return LGM(LGMConfig.preset("big"))


def _tokenizer_and_text(device):
    from .tiny import tiny_clip_tokenizer

    tok = tiny_clip_tokenizer()
    return tok, openclip_h_text(device, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)


def build_random_sd_turbo(folder: Path, seed: int = 0, device: str | None = None) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    device = device or default_device()
    torch.manual_seed(seed)
    tok, text = _tokenizer_and_text(device)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   timestep_spacing="trailing", prediction_type="epsilon", steps_offset=1)
    pipe = StableDiffusionPipeline(unet=sd2_unet(device), vae=sd_vae(device), text_encoder=text, tokenizer=tok,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to("cpu", torch.float16).save_pretrained(str(folder), safe_serialization=True)


def build_random_era3d(folder: Path, seed: int = 0, ortho: bool = False, device: str | None = None) -> None:
    from .era3d_pipeline import write_era3d_folder

    device = device or default_device()
    torch.manual_seed(seed)
    tok, text = _tokenizer_and_text(device)
    write_era3d_folder(folder, era3d_unet_config(ortho), era3d_unet(ortho, device), sd_vae(device),
                       clip_vit_h_vision(device), text, tok, clip_image_size=224, dtype=torch.float16)


def build_random_lgm(folder: Path, seed: int = 0, device: str | None = None) -> None:
    from .lgm import save_lgm

    torch.manual_seed(seed)
    save_lgm(lgm_big(device or default_device()), folder)


def build_random_openlrm(folder: Path, seed: int = 0, device: str | None = None) -> None:
    """OpenLRM-base (260 M parameters) with random weights, in the official layout."""
    from .openlrm import OpenLRM, OpenLRMConfig, save_openlrm

    torch.manual_seed(seed)
    with torch.device(device or default_device()):
        save_openlrm(OpenLRM(OpenLRMConfig.preset("base")), folder)
