"""Era3D pipeline: 6 views x {normal, colour} from one RGBA image, and the MVBoost refinement (SDEdit).

Loads a folder in the official layout (``model_index.json`` + ``unet/``, ``vae/``, ``image_encoder/``,
``feature_extractor/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``image_noising_scheduler/``,
``image_normalizer/``) with the standard diffusers/transformers classes, and the UNet into our own
:class:`~mvboost.models.era3d.Era3DUNet`. Nothing named by the checkpoint is imported or executed.
Schedulers come from the checkpoint's own configs (v-prediction, linear betas for the official one).
See docs/models.md (Era3D, the refinement).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import check_state_dict, read_safetensors
from .era3d import ERA3D_UNET_CLASS, Era3DUNet, apply_guidance, cfg_layout, set_attention_upcast

VIEW_NAMES = ("front", "front_right", "right", "back", "left", "front_left")
PROMPT_TEMPLATE = "a rendering image of 3D models, {view} view, {domain} map."
DOMAINS = ("normal", "color")
COMPONENTS = ("unet", "vae", "image_encoder", "feature_extractor", "text_encoder", "tokenizer", "scheduler",
              "image_noising_scheduler", "image_normalizer")
_SCHEDULERS = {"DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler",
               "PNDMScheduler"}


@dataclass
class Era3DOutput:
    colors: np.ndarray  # (B, 6, H, W, 3) float in [0, 1]
    normals: np.ndarray  # (B, 6, H, W, 3) float in [0, 1], (n + 1) / 2 in the front camera's frame
    pose_pred: np.ndarray | None  # (B, 2): elevation (rad), focal code; None for the ortho model
    cond_images: np.ndarray  # (B, H, W, 3) the preprocessed condition images
    cameras: dict | None = None  # the 6 views: names, azimuths, elevation 0, orthographic (see geometry)


def _scheduler(folder: Path):
    import diffusers

    cfg = json.loads((folder / "scheduler_config.json").read_text())
    name = cfg.get("_class_name", "DDIMScheduler")
    if name not in _SCHEDULERS:
        raise ValueError(f"{folder}: unsupported scheduler class {name!r}")
    return getattr(diffusers, name).from_pretrained(str(folder))


def preprocess_rgba(rgba: np.ndarray, size: int = 512, crop_size: int | None = None,
                    background=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Era3D's condition image: crop to the alpha bbox, long side ``crop_size`` (420 at 512), centred on a
    ``size`` canvas, composited over ``background``. Returns (size, size, 3) float in [0,1]."""
    from PIL import Image

    if rgba.ndim != 3 or rgba.shape[-1] != 4:
        raise ValueError(f"Era3D needs an RGBA image, got shape {rgba.shape}")
    crop_size = crop_size or int(round(420 * size / 512))
    alpha = rgba[..., 3]
    ys, xs = np.nonzero(alpha > 0)
    if ys.size == 0:
        raise ValueError("the condition image's alpha channel is empty")
    crop = rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape[:2]
    s = crop_size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    crop = np.asarray(Image.fromarray(crop, "RGBA").resize((nw, nh), Image.Resampling.BICUBIC))
    canvas = np.zeros((size, size, 4), np.uint8)
    oy, ox = (size - nh) // 2, (size - nw) // 2
    canvas[oy:oy + nh, ox:ox + nw] = crop
    a = canvas[..., 3:4].astype(np.float32) / 255.0
    return canvas[..., :3].astype(np.float32) / 255.0 * a + np.asarray(background, np.float32) * (1 - a)


class Era3DPipeline:
    """``folder``: a checkpoint folder (resolve ids with :func:`mvboost.models.hub.resolve`).

    ``compile``: ``torch.compile`` the UNet (the batch is then best kept at a fixed size: every new
    shape compiles again). ``attention_upcast``: cast q/k/v to fp32 before SDPA (the slow legacy path,
    see :mod:`mvboost.models.era3d`)."""

    def __init__(self, folder: str | Path, device="cpu", dtype: torch.dtype = torch.float32, strict: bool = True,
                 compile: bool = False, attention_upcast: bool = False):
        import diffusers
        import transformers
        from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

        folder = Path(folder)
        index = json.loads((folder / "model_index.json").read_text())
        missing = [c for c in COMPONENTS if c not in index or not (folder / c).is_dir()]
        if missing:
            raise FileNotFoundError(f"{folder} is not an Era3D checkpoint: missing components {missing}")
        if index["unet"][1] != ERA3D_UNET_CLASS:
            raise ValueError(f"{folder}: unet class {index['unet'][1]!r} is not {ERA3D_UNET_CLASS}")
        self.folder, self.device, self.dtype = folder, torch.device(device), dtype
        unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
        with torch.device("meta"):
            unet = Era3DUNet.from_config(unet_cfg)
        weights = next((folder / "unet").glob("diffusion_pytorch_model*.safetensors"), None)
        if weights is None:
            raise FileNotFoundError(f"{folder}/unet has no diffusion_pytorch_model.safetensors")
        state = read_safetensors(weights)
        if strict:
            check_state_dict(unet, state, f"{weights.parent.name}/{weights.name}")
        unet = unet.to_empty(device="cpu")
        unet.load_state_dict(state, strict=strict)
        self.unet = unet.to(self.device, dtype).eval()
        set_attention_upcast(self.unet, attention_upcast)
        self.compiled = bool(compile)
        if compile:
            self.unet.compile()  # in place: same module, compiled forward
        kw = dict(dtype=dtype)
        self.vae = diffusers.AutoencoderKL.from_pretrained(str(folder / "vae"), **kw).to(self.device).eval()
        self.image_encoder = transformers.CLIPVisionModelWithProjection.from_pretrained(
            str(folder / "image_encoder"), **kw).to(self.device).eval()
        self.feature_extractor = transformers.CLIPImageProcessor.from_pretrained(str(folder / "feature_extractor"))
        self.text_encoder = transformers.CLIPTextModel.from_pretrained(str(folder / "text_encoder"), **kw).to(
            self.device).eval()
        self.tokenizer = transformers.CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
        self.scheduler = _scheduler(folder / "scheduler")
        self.noising_scheduler = _scheduler(folder / "image_noising_scheduler")
        self.normalizer = StableUnCLIPImageNormalizer.from_pretrained(str(folder / "image_normalizer")).to(
            self.device, dtype)
        self.num_views = self.unet.num_views
        self.scaling = float(self.vae.config.scaling_factor)
        side = int(unet_cfg.get("sample_size", 64))
        self.latent_shape = (int(unet_cfg.get("out_channels", 4)), side, side)
        self.resolution = side * 2 ** (len(self.vae.config.block_out_channels) - 1)
        self._prompt_embeds = None

    def save(self, folder: str | Path) -> None:
        """Write this pipeline's components in the official folder layout (a fine-tuned model is loaded back
        like the released one)."""
        write_era3d_folder(Path(folder), {"_class_name": ERA3D_UNET_CLASS, **self.unet.config}, self.unet, self.vae,
                           self.image_encoder, self.text_encoder, self.tokenizer,
                           int(self.feature_extractor.crop_size["height"]), dtype=torch.float32,
                           normalizer=self.normalizer)
        for module in (self.vae, self.image_encoder, self.text_encoder, self.normalizer):
            module.to(self.device, self.dtype)

    # ---- conditioning -------------------------------------------------------------------------
    @torch.no_grad()
    def prompt_embeds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(normal (6,77,D), colour (6,77,D)): the checkpoint's text encoder on the documented prompts (cached)."""
        if self._prompt_embeds is None:
            self._prompt_embeds = self.encode_prompts()
        return self._prompt_embeds

    def encode_prompts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`prompt_embeds` computed afresh, differentiable (fine-tuning the text encoder uses it)."""
        out = []
        for domain in DOMAINS:
            prompts = [PROMPT_TEMPLATE.format(view=v, domain=domain) for v in VIEW_NAMES[: self.num_views]]
            ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(self.device)
            out.append(self.text_encoder(ids)[0].to(self.dtype))
        return tuple(out)

    def clip_pixels(self, images: np.ndarray) -> torch.Tensor:
        """Condition images (B, H, W, 3) in [0, 1] -> the image encoder's input (the checkpoint's processor)."""
        return self.feature_extractor(images=[(im * 255).round().astype(np.uint8) for im in images],
                                      return_tensors="pt").pixel_values.to(self.device, self.dtype)

    @torch.no_grad()
    def image_embeds(self, images: np.ndarray, gens: list[torch.Generator]) -> torch.Tensor:
        """CLIP embedding with unCLIP noise augmentation at level 0 + the level's sinusoid -> (B, 2*proj)."""
        pix = self.clip_pixels(images)
        noise = torch.stack([torch.randn(self.image_encoder.config.projection_dim, generator=g) for g in gens])
        return self.clip_condition(pix, noise)

    def clip_condition(self, pix: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The class-label input of the UNet from encoder pixels: CLIP image embedding, unCLIP noise augmentation
        at level 0 with ``noise``, then the level's sinusoid. Differentiable (fine-tuning uses it as is)."""
        from diffusers.models.embeddings import get_timestep_embedding

        emb = self.image_encoder(pix).image_embeds
        noise = noise.to(emb)
        level = torch.zeros(emb.shape[0], dtype=torch.long, device=self.device)
        emb = self.normalizer.unscale(self.noising_scheduler.add_noise(self.normalizer.scale(emb), noise, level))
        sinus = get_timestep_embedding(level, emb.shape[-1], flip_sin_to_cos=True, downscale_freq_shift=0)
        return torch.cat([emb, sinus.to(emb)], dim=1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample_gens: list[torch.Generator] | None = None) -> torch.Tensor:
        """images (N,3,H,W) in [0,1] -> scaled latents; posterior mode, or a sample per generator."""
        dist = self.vae.encode(images.to(self.device, self.dtype) * 2 - 1).latent_dist
        if sample_gens is None:
            return dist.mode() * self.scaling
        eps = torch.stack([torch.randn(dist.mean.shape[1:], generator=g) for g in sample_gens]).to(dist.mean)
        return (dist.mean + dist.std * eps) * self.scaling

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (self.vae.decode(latents / self.scaling).sample.float() / 2 + 0.5).clamp(0, 1)

    # ---- the denoising loop -------------------------------------------------------------------
    def _layout(self, per_object: torch.Tensor) -> torch.Tensor:
        """(B, 2, V, ...) [object, domain, view] -> (2·B·V, ...) domain-major rows."""
        return per_object.transpose(0, 1).reshape(-1, *per_object.shape[3:])

    def _noise(self, gens, shape) -> torch.Tensor:
        """One (2, V, *shape) draw per object from its own generator, in domain-major row layout."""
        per = torch.stack([torch.randn((2, self.num_views, *shape), generator=g) for g in gens])
        return self._layout(per).to(self.device, self.dtype)

    @torch.no_grad()
    def _denoise(self, latents, timesteps, cond_images, gens, guidance: float, eta: float):
        b, v = len(gens), self.num_views
        cond = torch.from_numpy(np.stack(cond_images)).permute(0, 3, 1, 2).float()
        img_lat = self.encode(cond).repeat_interleave(v, dim=0)  # (B·V, 4, h, w)
        clip = self.image_embeds(cond_images, gens).repeat_interleave(v, dim=0)
        n_emb, c_emb = self.prompt_embeds()
        n_emb, c_emb = n_emb.repeat(b, 1, 1), c_emb.repeat(b, 1, 1)
        use_cfg = guidance != 1.0
        if use_cfg:
            zeros_lat, zeros_clip = torch.zeros_like(img_lat), torch.zeros_like(clip)
            img_in = cfg_layout(zeros_lat, img_lat, zeros_lat, img_lat)
            clip_in = cfg_layout(zeros_clip, clip, zeros_clip, clip)
            text_in = cfg_layout(n_emb, n_emb, c_emb, c_emb)
        else:
            img_in, clip_in, text_in = torch.cat([img_lat, img_lat]), torch.cat([clip, clip]), torch.cat([n_emb, c_emb])
        pose = None
        half = b * v
        for t in timesteps:
            if use_cfg:
                n_lat, c_lat = latents[:half], latents[half:]
                model_in = cfg_layout(n_lat, n_lat, c_lat, c_lat)
            else:
                model_in = latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            pred, pose = self.unet(torch.cat([model_in, img_in], dim=1), t, text_in, clip_in)
            if use_cfg:
                pred = apply_guidance(pred, guidance)
            step_noise = self._noise(gens, latents.shape[1:]) if eta > 0 else None
            latents = self.scheduler.step(pred, t, latents, eta=eta, variance_noise=step_noise).prev_sample
        if pose is not None and use_cfg:
            pose = pose[:b] + guidance * (pose[b:] - pose[:b])
        return latents, pose

    def _finish(self, latents, pose, cond_images) -> Era3DOutput:
        b, v = len(cond_images), self.num_views
        images = self.decode(latents).permute(0, 2, 3, 1).cpu().numpy()  # (2·B·V, H, W, 3)
        normals, colors = images[: b * v].reshape(b, v, *images.shape[1:]), images[b * v:].reshape(
            b, v, *images.shape[1:])
        from ..geometry.cameras import ERA3D_AZIMUTHS

        cams = {"views": list(VIEW_NAMES[:v]), "azimuths_deg": list(ERA3D_AZIMUTHS[:v]), "elevation_deg": 0.0,
                "model": "ortho", "normals_frame": "front camera, OpenGL axes, encoded (n + 1) / 2",
                "resolution": int(images.shape[1])}
        return Era3DOutput(colors=colors, normals=normals,
                           pose_pred=None if pose is None else pose.float().cpu().numpy(),
                           cond_images=np.stack(cond_images), cameras=cams)

    def _setup_timesteps(self, steps: int):
        self.scheduler.set_timesteps(steps, device=self.device)
        return self.scheduler.timesteps

    @torch.no_grad()
    def generate(self, rgba_images: list[np.ndarray], seeds: list[int], steps: int = 40, guidance: float = 3.0,
                 eta: float = 1.0, crop_size: int | None = None) -> Era3DOutput:
        """6 colour + 6 normal views per RGBA input (Algorithm 1, line 2)."""
        cond = [preprocess_rgba(im, self.resolution, crop_size) for im in rgba_images]
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        latents = self._noise(gens, self.latent_shape) * self.scheduler.init_noise_sigma
        latents, pose = self._denoise(latents, self._setup_timesteps(steps), cond, gens, guidance, eta)
        return self._finish(latents, pose, cond)

    @staticmethod
    def refine_timesteps(timesteps: torch.Tensor, strength: float) -> torch.Tensor:
        """diffusers' img2img rule: keep the last int(N * strength) timesteps."""
        n = len(timesteps)
        k = min(int(n * strength), n)
        return timesteps[n - k:]

    @torch.no_grad()
    def refine(self, rendered_colour: np.ndarray, rendered_normal: np.ndarray, rgba_images: list[np.ndarray],
               strength: float = 0.95, seeds: list[int] | None = None, steps: int = 40, guidance: float = 3.0,
               eta: float = 1.0, crop_size: int | None = None) -> Era3DOutput:
        """SDEdit (MVBoost Eq. 4-5): encode the renders, noise them to the first kept timestep, and run
        the remaining steps with the same conditioning as generation.

        ``rendered_colour``/``rendered_normal``: (B, 6, H, W, 3) in [0,1] on white (normals may be the
        first pass's Era3D normals). Strength 1 starts from pure noise (= plain generation for the
        same seed); strength 0 returns the inputs through the VAE round trip.
        """
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        b = len(rgba_images)
        seeds = list(seeds if seeds is not None else range(b))
        cond = [preprocess_rgba(im, self.resolution, crop_size) for im in rgba_images]
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        all_t = self._setup_timesteps(steps)
        kept = self.refine_timesteps(all_t, strength)
        noise = self._noise(gens, self.latent_shape)
        if len(kept) == len(all_t):  # strength 1: ignore the renders, exactly like generate()
            latents = noise * self.scheduler.init_noise_sigma
        else:
            views = np.stack([np.asarray(rendered_normal), np.asarray(rendered_colour)], axis=1)  # (B,2,V,H,W,3)
            x = self._layout(torch.from_numpy(views).float()).permute(0, 3, 1, 2)
            if x.shape[-1] != self.resolution:
                x = torch.nn.functional.interpolate(x, size=(self.resolution,) * 2, mode="bilinear",
                                                   align_corners=False)
            # every row draws its posterior sample from its own object's generator (domain-major rows)
            sample_gens = [torch.Generator().manual_seed(int(s) ^ 0x5EED) for s in seeds]
            bv = b * self.num_views
            x0 = self.encode(x, [sample_gens[(r % bv) // self.num_views] for r in range(2 * bv)])
            latents = x0 if len(kept) == 0 else self.scheduler.add_noise(x0, noise, kept[:1].repeat(x0.shape[0]))
        latents, pose = self._denoise(latents, kept, cond, gens, guidance, eta)
        return self._finish(latents, pose, cond)


# ---- the official folder layout, written (tiny and full-size random models) ---------------------------
MODEL_INDEX = {"_class_name": "StableUnCLIPImg2ImgPipeline", "_diffusers_version": "0.26.0",
               "feature_extractor": ["transformers", "CLIPImageProcessor"],
               "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
               "image_noising_scheduler": ["diffusers", "DDPMScheduler"],
               "image_normalizer": ["stable_diffusion", "StableUnCLIPImageNormalizer"],
               "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
               "tokenizer": ["transformers", "CLIPTokenizer"],
               "unet": ["mvdiffusion.models.unet_mv2d_condition", ERA3D_UNET_CLASS],
               "vae": ["diffusers", "AutoencoderKL"]}


def write_era3d_folder(folder: Path, unet_config: dict, unet: Era3DUNet, vae, image_encoder, text_encoder, tokenizer,
                       clip_image_size: int, dtype: torch.dtype | None = None, normalizer=None) -> None:
    """Save Era3D components exactly like the official checkpoint folder (docs/models.md, Era3D):
    ``model_index.json``, ``unet/{config.json, diffusion_pytorch_model.safetensors}`` and the standard
    diffusers/transformers sub-folders, with the checkpoint's scheduler and processor settings."""
    from diffusers import DDIMScheduler, DDPMScheduler
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    folder = Path(folder)
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    (folder / "unet" / "config.json").write_text(json.dumps(unet_config, indent=2))
    save_file({k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in unet.state_dict().items()},
              str(folder / "unet" / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    for name, module in (("vae", vae), ("image_encoder", image_encoder), ("text_encoder", text_encoder)):
        module.to("cpu", dtype=dtype)
        module.save_pretrained(str(folder / name))
    CLIPImageProcessor(size={"shortest_edge": clip_image_size},
                       crop_size={"height": clip_image_size, "width": clip_image_size},
                       image_mean=[0.48145466, 0.4578275, 0.40821073],
                       image_std=[0.26862954, 0.26130258, 0.27577711]
                       ).save_pretrained(str(folder / "feature_extractor"))
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                  prediction_type="v_prediction", timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False,
                  clip_sample=False).save_pretrained(str(folder / "scheduler"))
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                  prediction_type="epsilon").save_pretrained(str(folder / "image_noising_scheduler"))
    norm = normalizer
    if norm is None:  # a new model: random statistics (a tiny random checkpoint exercises the full path)
        norm = StableUnCLIPImageNormalizer(embedding_dim=image_encoder.config.projection_dim)
        with torch.no_grad():
            norm.mean.normal_(0, 0.1)
            norm.std.uniform_(0.5, 1.5)
    norm.to("cpu").save_pretrained(str(folder / "image_normalizer"))
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
