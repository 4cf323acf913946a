"""Fitting an Era3D checkpoint to multi-view data: the VAE, then the multi-view UNet with its image conditioning.

The model is loaded and saved by :class:`~mvboost.models.era3d_pipeline.Era3DPipeline` (the loader of the
generation job's ``era3d`` and ``refine`` stages) in the official folder layout, so what this trains is
resolved and run by the chain like any released checkpoint. Two phases:

1. **VAE** (encoder and decoder): reconstruction (MSE + L1) of every target view, normal map and condition
   image, with a small KL term; then the latent scaling factor is set so that the scaled latents have unit
   standard deviation (Stable Diffusion's recipe for its 0.18215).
2. **UNet, image encoder and text encoder** (VAE frozen): Era3D's objective, v-prediction on the scaled
   latents of the 6 normal and 6 colour views of an object, one timestep per object, conditioned exactly as
   :meth:`Era3DPipeline._denoise` conditions (the condition image's latent concatenated to the input, the
   CLIP embedding with its noise-level sinusoid as class label, the per-view prompts' text embeddings: the
   only input that tells a normal map from a colour view, so the text encoder learns too); both
   image conditions are dropped together for ``cond_drop`` of the objects (classifier-free guidance's
   unconditional branch: zeros, as the pipeline feeds). An exponential moving average of the trained weights
   is what is saved.

Seeded (every step's draws come from ``(seed, step)``), resumable (``state.pt`` every ``checkpoint_every``
steps; a rerun continues where it stopped and gives the same weights as an uninterrupted run), with a
``history.jsonl`` line per step.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DONE = "done.json"


@dataclass
class Era3DExamples:
    """Training objects: the condition (an RGBA front view) and the 12 targets at Era3D's cameras."""

    cond: np.ndarray  # (N, H, W, 4) uint8
    views: np.ndarray  # (N, 6, H, W, 3) uint8, on white
    normals: np.ndarray  # (N, 6, H, W, 3) uint8, (n + 1) / 2 in the front camera's frame, on white

    def __post_init__(self):
        n = len(self.cond)
        if not (len(self.views) == len(self.normals) == n) or self.views.shape != self.normals.shape:
            raise ValueError(f"examples disagree: {self.cond.shape}, {self.views.shape}, {self.normals.shape}")


@dataclass
class Era3DFitConfig:
    vae_steps: int = 400
    vae_batch: int = 32  # images
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = 2000
    batch: int = 4  # objects (12 latents each)
    unet_lr: float = 5e-4
    cond_drop: float = 0.1
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 250


def _gen(seed: int, phase: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + phase * 100_003 + step)


def _images(x: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(x)).float() / 255.0
    return t.reshape(-1, *t.shape[-3:]).permute(0, 3, 1, 2).contiguous()


class _Fit:
    def __init__(self, init: Path, data: Era3DExamples, work: Path, cfg: Era3DFitConfig, progress):
        from ..models.era3d_pipeline import Era3DPipeline, preprocess_rgba

        self.cfg, self.work, self.progress = cfg, Path(work), progress
        self.work.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        self.pipe = Era3DPipeline(init)
        if self.pipe.unet.regress_elevation:
            raise ValueError("fitting the pose heads is not implemented: start from an orthographic (-ortho) "
                             "checkpoint")
        res = self.pipe.resolution
        self.cond = np.stack([preprocess_rgba(im, res) for im in data.cond]).astype(np.float32)  # (N,res,res,3)
        views, normals = _images(data.views), _images(data.normals)
        if views.shape[-1] != res:
            views = F.interpolate(views, size=(res, res), mode="area")
            normals = F.interpolate(normals, size=(res, res), mode="area")
        self.n = len(data.cond)
        self.views = views.reshape(self.n, 6, 3, res, res)
        self.normals = normals.reshape(self.n, 6, 3, res, res)
        self.history = (self.work / "history.jsonl").open("a")

    # ---- state -----------------------------------------------------------------------------------------
    def _save_state(self, phase: str, step: int, modules: dict, opt, ema: dict | None):
        state = {"phase": phase, "step": step, "modules": {k: m.state_dict() for k, m in modules.items()},
                 "opt": opt.state_dict(), "ema": ema, "scaling": self.pipe.scaling}
        tmp = self.work / "state.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.work / "state.pt")

    def _load_state(self):
        path = self.work / "state.pt"
        return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None

    def _log(self, rec: dict):
        self.history.write(json.dumps(rec) + "\n")
        self.history.flush()

    # ---- phase 1: the VAE ------------------------------------------------------------------------------
    def fit_vae(self, state):
        cfg, vae = self.cfg, self.pipe.vae
        modules = {"vae": vae}
        opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        start = 0
        if state is not None:
            vae.load_state_dict(state["modules"]["vae"])
            if state["phase"] == "vae":
                opt.load_state_dict(state["opt"])
                start = state["step"]
            else:
                return
        pool = torch.cat([self.views.flatten(0, 1), self.normals.flatten(0, 1),
                          torch.from_numpy(self.cond).permute(0, 3, 1, 2)])
        vae.train()
        for step in range(start, cfg.vae_steps):
            g = _gen(cfg.seed, 1, step)
            x = pool[torch.randint(len(pool), (cfg.vae_batch,), generator=g)] * 2 - 1
            dist = vae.encode(x).latent_dist
            z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
            y = vae.decode(z).sample
            rec = F.mse_loss(y, x) + 0.1 * F.l1_loss(y, x)
            kl = dist.kl().mean() / x[0].numel()
            loss = rec + cfg.kl_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            psnr = float(10 * torch.log10(4.0 / F.mse_loss(y.detach(), x)))  # images in [-1, 1]: peak-to-peak 2
            self._log({"phase": "vae", "step": step + 1, "loss": float(loss.detach()), "psnr": psnr})
            self.progress("vae", step + 1, cfg.vae_steps)
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.vae_steps:
                self._save_state("vae", step + 1, modules, opt, None)
        vae.eval()
        with torch.no_grad():
            lat = torch.cat([vae.encode(c * 2 - 1).latent_dist.mode() for c in pool.split(64)])
        self.pipe.scaling = float(1.0 / lat.std())
        vae.register_to_config(scaling_factor=self.pipe.scaling)
        self._save_state("vae_done", 0, modules, opt, None)

    # ---- phase 2: the UNet and the image encoder ---------------------------------------------------------
    @torch.no_grad()
    def _encode_all(self):
        pipe = self.pipe
        targets = torch.stack([self.normals, self.views], dim=1)  # (N, 2, 6, 3, h, w): [normal ; colour]
        lat = torch.cat([pipe.encode(x) for x in targets.flatten(0, 2).split(64)])
        self.latents = lat.reshape(self.n, 2, 6, *lat.shape[1:])
        cond = torch.from_numpy(self.cond).permute(0, 3, 1, 2)
        self.cond_latents = torch.cat([pipe.encode(x) for x in cond.split(64)])
        self.pix = pipe.clip_pixels(self.cond)

    def fit_unet(self, state):
        cfg, pipe = self.cfg, self.pipe
        vae_state = state["modules"]["vae"] if state is not None else None
        if vae_state is not None:
            pipe.vae.load_state_dict(vae_state)
            pipe.scaling = float(state["scaling"])
            pipe.vae.register_to_config(scaling_factor=pipe.scaling)
        pipe.vae.eval().requires_grad_(False)
        self._encode_all()
        unet, enc, txt = pipe.unet, pipe.image_encoder, pipe.text_encoder
        modules = {"vae": pipe.vae, "unet": unet, "image_encoder": enc, "text_encoder": txt}
        trained = {"unet": unet, "image_encoder": enc, "text_encoder": txt}
        params = [p for m in trained.values() for p in m.parameters()]
        opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.0)
        start, ema = 0, None
        if state is not None and state["phase"] == "unet":
            for k, m in trained.items():
                m.load_state_dict(state["modules"][k])
            opt.load_state_dict(state["opt"])
            start, ema = state["step"], state["ema"]
        names = [f"{m}.{k}" for m, module in trained.items() for k, _ in module.named_parameters()]
        if ema is None:
            ema = {k: p.detach().clone() for k, p in zip(names, params)}
        sched, v, b = pipe.scheduler, pipe.num_views, cfg.batch
        alphas = sched.alphas_cumprod
        for m in trained.values():
            m.train()
        for step in range(start, cfg.unet_steps):
            g = _gen(cfg.seed, 2, step)
            idx = torch.randint(self.n, (b,), generator=g)
            x0 = pipe._layout(self.latents[idx])  # (2·b·6, 4, h, w), domain-major
            t_obj = torch.randint(len(alphas), (b,), generator=g)
            t = t_obj.repeat_interleave(v).repeat(2)
            noise = torch.randn(x0.shape, generator=g)
            noisy = sched.add_noise(x0, noise, t)
            target = sched.get_velocity(x0, noise, t)
            keep = (torch.rand(b, generator=g) >= cfg.cond_drop).float()
            clip_noise = torch.randn(b, enc.config.projection_dim, generator=g)
            clip = pipe.clip_condition(self.pix[idx], clip_noise) * keep[:, None]
            img = self.cond_latents[idx] * keep[:, None, None, None]
            img = img.repeat_interleave(v, dim=0).repeat(2, 1, 1, 1)
            clip = clip.repeat_interleave(v, dim=0).repeat(2, 1)
            n_emb, c_emb = pipe.encode_prompts()
            text = torch.cat([n_emb.repeat(b, 1, 1), c_emb.repeat(b, 1, 1)])
            pred, _ = unet(torch.cat([noisy, img], dim=1), t, text, clip)
            loss = F.mse_loss(pred, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, p in zip(names, params):
                    ema[k].mul_(decay).add_(p.detach(), alpha=1 - decay)
            self._log({"phase": "unet", "step": step + 1, "loss": float(loss.detach())})
            self.progress("unet", step + 1, cfg.unet_steps)
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.unet_steps:
                self._save_state("unet", step + 1, modules, opt, ema)
        with torch.no_grad():
            for k, p in zip(names, params):
                p.copy_(ema[k])
        for m in trained.values():
            m.eval()
        pipe._prompt_embeds = None


def fit_era3d(init: str | Path, data: Era3DExamples, work: str | Path, cfg: Era3DFitConfig | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Train the Era3D checkpoint folder ``init`` on ``data``; returns ``<work>/model``, the trained checkpoint in
    the official layout. Resumes from ``<work>/state.pt``; a finished run returns at once."""
    cfg = cfg or Era3DFitConfig()
    work = Path(work)
    model = work / "model"
    done = work / DONE
    if done.is_file() and json.loads(done.read_text()).get("config") == asdict(cfg):
        return model
    fit = _Fit(Path(init), data, work, cfg, progress or (lambda *a: None))
    try:
        fit.fit_vae(fit._load_state())
        fit.fit_unet(fit._load_state())
    finally:
        fit.history.close()
    fit.pipe.save(model)
    done.write_text(json.dumps({"config": asdict(cfg), "examples": fit.n}, indent=1))
    return model


__all__ = ["Era3DExamples", "Era3DFitConfig", "fit_era3d"]
