"""OpenLRM v1.1 (single image -> triplane -> NeRF), loadable from the official checkpoints.

Architecture (3DTopia/OpenLRM v1.1, ``zxhezexin/openlrm-{obj,mix}-{small,base,large}-1.1``; our own code,
written from the published description and module layout; notes in ``docs/models.md``):

* **encoder**: DINOv2 with 4 registers (ViT-S/14 or ViT-B/14, 518² position grid interpolated bicubically with
  antialiasing to the input), trained, not frozen. Its output is the normalised class token followed by the
  normalised patch tokens (registers dropped). The image is RGB in [0, 1], not ImageNet-normalised.
* **camera embedder**: MLP(16 -> D_cam -> D_cam, SiLU) of the source camera: the flattened 3x4 camera-to-world
  (OpenGL axes, Z-up world) and fx, fy, cx, cy divided by the image size.
* **transformer**: 3 x 32² learnt triplane tokens; each layer: ModLN (LayerNorm modulated by the camera
  embedding) -> cross-attention to the image tokens, ModLN -> self-attention, ModLN -> MLP (GELU); a final
  LayerNorm. Attention is :class:`Attention`: ``nn.MultiheadAttention``'s maths and parameter names (without
  biases) with q/k/v/out projections as ``nn.Linear`` modules, so LoRA (peft) wraps them like any linear layer.
* **upsampler**: ConvTranspose2d(k=2, s=2): 3 planes of 32² -> 64², ``triplane_dim`` channels.
* **synthesizer**: a 4-layer MLP on the three planes' bilinear features concatenated (xy, xz, zy planes of the
  [-1, 1]³ box) -> density (softplus(x - 1) when rendered) and colour (sigmoid widened by 0.001), volume-rendered
  with a coarse pass and an importance pass (``samples_per_ray`` / 2 each), midpoint quadrature.

Rendering (:meth:`OpenLRM.render`) is ours: chunked over rays (``chunk`` rays at a time, so memory is bounded
by a setting, not by the image size), and deterministic by default (coarse samples at bin midpoints,
importance samples at evenly spaced quantiles); ``stochastic=True`` draws them at random as the official
renderer always does (two official renders of the same planes differ).

Checkpoints: a folder (or Hub id) with ``config.json`` (the model's constructor keywords) and
``model.safetensors`` (the whole state dict, encoder included). ``models.loading.load_openlrm`` loads strictly:
every key and shape must match, or a :class:`~mvboost.models.checkpoint.CheckpointError` names the missing, unexpected
and mis-shaped keys. Weights are CC-BY-NC 4.0 (research only).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG_FILENAME = "config.json"
WEIGHTS_FILENAME = "model.safetensors"
#: DINOv2-with-registers backbones by the official name: (width, depth, heads); patch 14, 518² grid, 4 registers
ENCODERS = {"dinov2_vits14_reg": (384, 12, 6), "dinov2_vitb14_reg": (768, 12, 12), "dinov2_vitl14_reg": (1024, 24, 16)}
PATCH = 14
BOX = 2.0  # the [-1, 1]^3 box the triplanes span (box_warp)
DEFAULT_SOURCE_DISTANCE = 2.0  # infer-b.yaml: source camera distance
DEFAULT_MESH_THRESHOLD = 3.0  # infer-b.yaml: marching-cubes level on the activated density
DEFAULT_FOCAL = 0.75  # fx / width of the inference cameras (source and render), a 67.4° field of view


@dataclass
class OpenLRMConfig:
    """The official ``config.json`` keys (ModelLRM's constructor), plus ``encoder_*`` sizes that only our tiny
    preset sets (the official encoders are fixed by ``encoder_model_name``)."""

    camera_embed_dim: int = 1024
    rendering_samples_per_ray: int = 96
    transformer_dim: int = 768
    transformer_layers: int = 12
    transformer_heads: int = 12
    triplane_low_res: int = 32
    triplane_high_res: int = 64
    triplane_dim: int = 48
    encoder_freeze: bool = False
    encoder_type: str = "dinov2"
    encoder_model_name: str = "dinov2_vitb14_reg"
    encoder_feat_dim: int = 768
    # ours (0: from encoder_model_name)
    encoder_depth: int = 0
    encoder_heads: int = 0
    encoder_grid: int = 37  # the position-embedding grid (518 / 14)

    PRESETS = ("tiny", "small", "base", "large")

    @classmethod
    def preset(cls, name: str, **overrides) -> "OpenLRMConfig":
        if name == "small":
            base = cls(transformer_dim=512, transformer_layers=12, transformer_heads=8, triplane_dim=32,
                       encoder_model_name="dinov2_vits14_reg", encoder_feat_dim=384)
        elif name == "base":
            base = cls()
        elif name == "large":
            base = cls(transformer_dim=1024, transformer_layers=16, transformer_heads=16, triplane_dim=80,
                       rendering_samples_per_ray=128)
        elif name == "tiny":  # same structure, ~0.1 M parameters, for CPU tests
            base = cls(camera_embed_dim=32, rendering_samples_per_ray=16, transformer_dim=32, transformer_layers=2,
                       transformer_heads=2, triplane_low_res=8, triplane_high_res=16, triplane_dim=8,
                       encoder_model_name="dinov2_vits14_reg", encoder_feat_dim=32, encoder_depth=2, encoder_heads=2,
                       encoder_grid=4)
        else:
            raise ValueError(f"unknown OpenLRM preset {name!r}; choose one of {cls.PRESETS}")
        return cls(**{**base.to_dict(), **overrides})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "OpenLRMConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown OpenLRM config keys: {unknown}")
        return cls(**d)

    def encoder_shape(self) -> tuple[int, int, int]:
        """(width, depth, heads) of the DINOv2 encoder."""
        if self.encoder_model_name not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder_model_name!r}; the official ones: {sorted(ENCODERS)}")
        width, depth, heads = ENCODERS[self.encoder_model_name]
        return self.encoder_feat_dim if self.encoder_depth else width, self.encoder_depth or depth, \
            self.encoder_heads or heads


# ---- DINOv2 with registers ------------------------------------------------------------------------------------
class _PatchEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, PATCH, PATCH)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class _ViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class _ViTMlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _ViTAttention(dim, heads)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _ViTMlp(dim)
        self.ls2 = _LayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DINOv2(nn.Module):
    """ViT/14 with a class token and 4 registers; ``forward`` -> normalised [class, patches] tokens."""

    def __init__(self, dim: int, depth: int, heads: int, grid: int = 37, registers: int = 4):
        super().__init__()
        self.grid = grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, registers, dim))
        self.patch_embed = _PatchEmbed(dim)
        self.blocks = nn.ModuleList(_ViTBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """The 518² grid's embedding resized to (h, w) patches: bicubic with antialiasing, by scale factor (the
        registers variant: no offset)."""
        pos = self.pos_embed.float()
        if h == w == self.grid:
            return pos
        dim = pos.shape[-1]
        grid = pos[:, 1:].reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=(h / self.grid, w / self.grid), mode="bicubic", antialias=True)
        if grid.shape[-2:] != (h, w):
            raise ValueError(f"position grid resized to {tuple(grid.shape[-2:])}, expected {(h, w)}")
        return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, dim)], dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b, _, h, w = image.shape
        if h % PATCH or w % PATCH:
            raise ValueError(f"image side must be a multiple of {PATCH}, got {h}x{w}")
        x = torch.cat([self.cls_token.expand(b, -1, -1), self.patch_embed(image)], dim=1)
        x = x + self.position_embedding(h // PATCH, w // PATCH).to(x.dtype)
        r = self.register_tokens.shape[1]
        x = torch.cat([x[:, :1], self.register_tokens.expand(b, -1, -1), x[:, 1:]], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return torch.cat([x[:, :1], x[:, 1 + r:]], dim=1)


class _Encoder(nn.Module):
    def __init__(self, cfg: OpenLRMConfig):
        super().__init__()
        width, depth, heads = cfg.encoder_shape()
        if width != cfg.encoder_feat_dim:
            raise ValueError(f"encoder_feat_dim {cfg.encoder_feat_dim} does not match {cfg.encoder_model_name} "
                             f"({width})")
        self.model = DINOv2(width, depth, heads, cfg.encoder_grid)

    def forward(self, image):
        return self.model(image)


# ---- the triplane transformer ---------------------------------------------------------------------------------
class CameraEmbedder(nn.Module):
    def __init__(self, raw_dim: int, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(raw_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, x):
        return self.mlp(x)


class ModLN(nn.Module):
    """LayerNorm modulated by a vector (adaLN): norm(x) * (1 + scale) + shift."""

    def __init__(self, dim: int, mod_dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(mod_dim, 2 * dim))

    def forward(self, x, mod):
        shift, scale = self.mlp(mod).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head attention without biases, ``nn.MultiheadAttention(dim, heads, bias=False, kdim, vdim,
    batch_first=True)`` in value and in state-dict layout: its packed ``in_proj_weight`` (or ``q/k/v_proj_weight``
    when keys are ``kdim`` wide) are ``q_proj``/``k_proj``/``v_proj`` Linear modules here, converted by state-dict
    hooks, so a checkpoint of either reads into the other."""

    def __init__(self, dim: int, heads: int, kdim: int | None = None):
        super().__init__()
        kdim = kdim or dim
        self.heads, self.packed = heads, kdim == dim
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(kdim, dim, bias=False)
        self.v_proj = nn.Linear(kdim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self._register_state_dict_hook(Attention._to_official)
        self._register_load_state_dict_pre_hook(self._from_official)

    PROJ = ("q_proj", "k_proj", "v_proj")

    @staticmethod
    def _to_official(module, state, prefix, local_metadata):
        keys = [f"{prefix}{p}.weight" for p in Attention.PROJ]
        if not all(k in state for k in keys):  # wrapped (LoRA): not the official layout anyway
            return state
        weights = [state.pop(k) for k in keys]
        if module.packed:
            state[f"{prefix}in_proj_weight"] = torch.cat(weights)
        else:
            state.update({f"{prefix}{p}_weight": w for p, w in zip(Attention.PROJ, weights)})
        state[f"{prefix}out_proj.weight"] = state.pop(f"{prefix}out_proj.weight")  # keep the official order
        return state

    def _from_official(self, state, prefix, *args):
        if f"{prefix}in_proj_weight" in state:
            for p, w in zip(self.PROJ, state.pop(f"{prefix}in_proj_weight").chunk(3)):
                state[f"{prefix}{p}.weight"] = w
        for p in self.PROJ:
            if f"{prefix}{p}_weight" in state:
                state[f"{prefix}{p}.weight"] = state.pop(f"{prefix}{p}_weight")

    def forward(self, x, context=None):
        context = x if context is None else context
        n, t, d = x.shape

        def heads(y):
            return y.reshape(n, -1, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(context)),
                                             heads(self.v_proj(context)))
        return self.out_proj(out.transpose(1, 2).reshape(n, t, d))


class CondModBlock(nn.Module):
    def __init__(self, dim: int, cond_dim: int, mod_dim: int, heads: int):
        super().__init__()
        self.norm1 = ModLN(dim, mod_dim)
        self.cross_attn = Attention(dim, heads, kdim=cond_dim)
        self.norm2 = ModLN(dim, mod_dim)
        self.self_attn = Attention(dim, heads)
        self.norm3 = ModLN(dim, mod_dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(4 * dim, dim),
                                 nn.Dropout(0.0))

    def forward(self, x, cond, mod):
        x = x + self.cross_attn(self.norm1(x, mod), cond)
        x = x + self.self_attn(self.norm2(x, mod))
        return x + self.mlp(self.norm3(x, mod))


class TransformerDecoder(nn.Module):
    def __init__(self, cfg: OpenLRMConfig):
        super().__init__()
        self.layers = nn.ModuleList(CondModBlock(cfg.transformer_dim, cfg.encoder_feat_dim, cfg.camera_embed_dim,
                                                 cfg.transformer_heads) for _ in range(cfg.transformer_layers))
        self.norm = nn.LayerNorm(cfg.transformer_dim, eps=1e-6)

    def forward(self, x, cond, mod):
        for layer in self.layers:
            x = layer(x, cond, mod)
        return self.norm(x)


class TriplaneDecoder(nn.Module):
    """The 4-layer MLP on the concatenated features of the three planes -> raw density, colour."""

    def __init__(self, triplane_dim: int, hidden: int = 64, layers: int = 4):
        super().__init__()
        mods: list[nn.Module] = [nn.Linear(3 * triplane_dim, hidden), nn.ReLU()]
        for _ in range(layers - 2):
            mods += [nn.Linear(hidden, hidden), nn.ReLU()]
        mods.append(nn.Linear(hidden, 4))
        self.net = nn.Sequential(*mods)

    def forward(self, features):  # (N, 3, M, C) -> sigma (N, M, 1) raw, rgb (N, M, 3)
        n, p, m, c = features.shape
        x = self.net(features.permute(0, 2, 1, 3).reshape(n, m, p * c))
        return x[..., :1], torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001


class _Synthesizer(nn.Module):
    def __init__(self, triplane_dim: int):
        super().__init__()
        self.decoder = TriplaneDecoder(triplane_dim)


def sample_planes(planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear features of points (N, M, 3) in the [-1, 1]^3 box from planes (N, 3, C, H, W): the xy, xz and
    zy planes (u along the plane's first axis = image width), zero outside -> (N, 3, M, C)."""
    n, _, c, h, w = planes.shape
    x, y, z = points.unbind(-1)
    uv = torch.stack([torch.stack([x, y], -1), torch.stack([x, z], -1), torch.stack([z, y], -1)], 1)  # (N,3,M,2)
    feats = F.grid_sample(planes.reshape(n * 3, c, h, w), uv.reshape(n * 3, 1, -1, 2).float(), mode="bilinear",
                          padding_mode="zeros", align_corners=False)  # (N*3, C, 1, M)
    return feats.reshape(n, 3, c, -1).permute(0, 1, 3, 2)


def density(raw: torch.Tensor) -> torch.Tensor:
    """Activated density: softplus(raw - 1)."""
    return F.softplus(raw - 1.0)


class OpenLRM(nn.Module):
    def __init__(self, config: OpenLRMConfig | None = None):
        super().__init__()
        cfg = self.config = config or OpenLRMConfig()
        if cfg.encoder_type != "dinov2":
            raise ValueError(f"encoder_type {cfg.encoder_type!r}: only v1.1's dinov2 encoders are supported")
        self.encoder = _Encoder(cfg)
        self.camera_embedder = CameraEmbedder(12 + 4, cfg.camera_embed_dim)
        self.pos_embed = nn.Parameter(torch.randn(1, 3 * cfg.triplane_low_res ** 2, cfg.transformer_dim)
                                      * cfg.transformer_dim ** -0.5)
        self.transformer = TransformerDecoder(cfg)
        self.upsampler = nn.ConvTranspose2d(cfg.transformer_dim, cfg.triplane_dim, 2, 2)
        self.synthesizer = _Synthesizer(cfg.triplane_dim)

    # ---- image -> planes ----------------------------------------------------------------------------------
    def forward_planes(self, image: torch.Tensor, source_camera: torch.Tensor) -> torch.Tensor:
        """image (N, 3, S, S) RGB in [0, 1]; source_camera (N, 16) -> planes (N, 3, triplane_dim, 2L, 2L)."""
        feats = self.encoder(image)
        mod = self.camera_embedder(source_camera)
        tokens = self.transformer(self.pos_embed.expand(image.shape[0], -1, -1), feats, mod)
        n, low = tokens.shape[0], self.config.triplane_low_res
        x = tokens.reshape(n, 3, low, low, -1).permute(0, 1, 4, 2, 3).reshape(n * 3, -1, low, low)
        x = self.upsampler(x)
        return x.reshape(n, 3, *x.shape[1:])

    forward = forward_planes

    # ---- planes -> fields ---------------------------------------------------------------------------------
    def query(self, planes: torch.Tensor, points: torch.Tensor,
              chunk: int = 2 ** 18) -> tuple[torch.Tensor, torch.Tensor]:
        """Activated density (N, M, 1) and colour (N, M, 3) at points (N, M, 3), ``chunk`` points at a time."""
        sig, rgb = [], []
        for i in range(0, points.shape[1], chunk):
            s, c = self.synthesizer.decoder(sample_planes(planes, points[:, i:i + chunk]))
            sig.append(density(s))
            rgb.append(c)
        return torch.cat(sig, 1), torch.cat(rgb, 1)

    def _field(self, planes, origins, dirs, depths):
        """Raw density (N, R, S, 1) and colour (N, R, S, 3) at depths (N, R, S) along the rays; samples outside
        the box get density -> 0 and black (as the official)."""
        points = _points(origins, dirs, depths)
        raw, rgb = self.synthesizer.decoder(sample_planes(planes, points))
        inside = (points.abs() <= BOX / 2).all(-1, keepdim=True)
        raw = torch.where(inside, raw, torch.full_like(raw, torch.finfo(raw.dtype).min / 8))
        return raw.reshape(*depths.shape, 1), (rgb * inside).reshape(*depths.shape, 3)

    # ---- volume rendering ---------------------------------------------------------------------------------
    def render(self, planes: torch.Tensor, cameras: torch.Tensor, size: int, background: float = 1.0,
               samples_per_ray: int | None = None, chunk: int = 16384, stochastic: bool = False,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Render planes (N, 3, C, H, W) at cameras (N, V, 25): 4x4 camera-to-world (OpenGL axes) + 3x3 intrinsics
        normalised by the image size -> rgb (N, V, 3, size, size), depth and alpha (N, V, 1, size, size).
        ``chunk`` rays per pass bound the memory; deterministic sampling unless ``stochastic``."""
        n, v = cameras.shape[:2]
        spr = samples_per_ray or self.config.rendering_samples_per_ray
        origins, dirs = camera_rays(cameras.reshape(n * v, 25), size)  # (N*V, R, 3)
        origins, dirs = origins.reshape(n, v * size * size, 3), dirs.reshape(n, v * size * size, 3)
        outs = [self._render_rays(planes, origins[:, i:i + chunk], dirs[:, i:i + chunk], spr, background, stochastic,
                                  generator) for i in range(0, origins.shape[1], chunk)]
        rgb, depth, alpha = (torch.cat([o[k] for o in outs], 1) for k in range(3))

        def image(x):
            return x.reshape(n, v, size, size, -1).permute(0, 1, 4, 2, 3)

        return {"rgb": image(rgb), "depth": image(depth), "alpha": image(alpha)}

    def _render_rays(self, planes, origins, dirs, samples_per_ray, background, stochastic, generator):
        n_coarse, n_fine = samples_per_ray // 2, samples_per_ray - samples_per_ray // 2
        start, end = ray_box(origins, dirs)
        steps = torch.linspace(0, 1, n_coarse, device=origins.device, dtype=origins.dtype)
        depths = start[..., None] + (end - start)[..., None] * steps  # (N, R, S)
        delta = (end - start)[..., None] / max(1, n_coarse - 1)
        jitter = (torch.rand(depths.shape, device=depths.device, dtype=depths.dtype, generator=generator)
                  if stochastic else torch.full_like(depths, 0.5))
        depths = depths + jitter * delta
        raw, rgb = self._field(planes, origins, dirs, depths)
        if n_fine > 0:
            _, _, weights = march(rgb, raw, depths, background)
            fine = importance_depths(depths, weights, n_fine, stochastic, generator)
            raw_f, rgb_f = self._field(planes, origins, dirs, fine)
            depths, order = torch.sort(torch.cat([depths, fine], -1), -1)
            raw = torch.gather(torch.cat([raw, raw_f], -2), -2, order[..., None])
            rgb = torch.gather(torch.cat([rgb, rgb_f], -2), -2, order[..., None].expand(*order.shape, 3))
        out_rgb, out_depth, weights = march(rgb, raw, depths, background)
        return out_rgb, out_depth, weights.sum(-1, keepdim=True)


def _points(origins, dirs, depths):
    """(N, R, S) depths along (N, R, 3) rays -> (N, R*S, 3) points."""
    return (origins[:, :, None] + depths[..., None] * dirs[:, :, None]).reshape(origins.shape[0], -1, 3)


def camera_rays(cameras: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, 25) cameras -> origins, unit directions (K, size², 3) through pixel centres, row-major from the top
    left (the camera-to-world is OpenGL: the camera looks along -Z, Y up)."""
    c2w = cameras[:, :16].reshape(-1, 4, 4)
    k = cameras[:, 16:25].reshape(-1, 3, 3)
    ys, xs = torch.meshgrid(torch.arange(size, device=cameras.device, dtype=cameras.dtype),
                            torch.arange(size, device=cameras.device, dtype=cameras.dtype), indexing="ij")
    u, v = (xs.reshape(-1) + 0.5) / size, (ys.reshape(-1) + 0.5) / size
    fx, fy, cx, cy, sk = k[:, 0, 0, None], k[:, 1, 1, None], k[:, 0, 2, None], k[:, 1, 2, None], k[:, 0, 1, None]
    y_cam = (v - cy) / fy
    x_cam = (u - cx - sk * y_cam) / fx
    d_cam = torch.stack([x_cam, -y_cam, -torch.ones_like(x_cam)], -1)  # OpenCV pixel ray -> OpenGL camera axes
    d = F.normalize(d_cam @ c2w[:, :3, :3].transpose(1, 2), dim=-1)
    return c2w[:, None, :3, 3].expand_as(d), d


def ray_box(origins: torch.Tensor, dirs: torch.Tensor, half: float = BOX / 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances of rays through the [-half, half]^3 box. A ray that misses it gets an empty
    range at its closest approach to the centre: its samples all lie outside the box and render as background
    (the official gives such rays the range of the rays that hit, which depends on what else is in the batch)."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0, t1 = (-half - origins) * inv, (half - origins) * inv
    start = torch.minimum(t0, t1).amax(-1)
    end = torch.maximum(t0, t1).amin(-1)
    hit = end > start
    closest = -(origins * dirs).sum(-1)
    return torch.where(hit, start, closest), torch.where(hit, end, closest)


def march(rgb: torch.Tensor, raw: torch.Tensor, depths: torch.Tensor, background: float):
    """Midpoint quadrature: colour, depth (N, R, 1) and weights (N, R, S-1), composited over ``background``."""
    deltas = depths[..., 1:] - depths[..., :-1]
    rgb_mid = (rgb[..., :-1, :] + rgb[..., 1:, :]) / 2
    sigma = density((raw[..., :-1, 0] + raw[..., 1:, 0]) / 2)
    depth_mid = (depths[..., 1:] + depths[..., :-1]) / 2
    alpha = 1 - torch.exp(-sigma * deltas)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha + 1e-10], -1), -1)[..., :-1]
    weights = alpha * trans
    total = weights.sum(-1, keepdim=True)
    colour = (weights[..., None] * rgb_mid).sum(-2) + background * (1 - total)
    depth = torch.nan_to_num((weights * depth_mid).sum(-1, keepdim=True) / total, float("inf"))
    return colour, torch.minimum(torch.maximum(depth, depths[..., :1]), depths[..., -1:]), weights


@torch.no_grad()
def importance_depths(depths: torch.Tensor, weights: torch.Tensor, n: int, stochastic: bool,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` more depths per ray drawn from the coarse weights (smoothed by a max then a mean filter of width 2,
    + 0.01), by inverse CDF over the bins between coarse midpoints; evenly spaced quantiles unless stochastic."""
    shape = depths.shape[:-1]
    z = depths.reshape(-1, depths.shape[-1])
    w = weights.reshape(-1, weights.shape[-1])[:, None]
    w = F.avg_pool1d(F.max_pool1d(w, 2, 1, padding=1), 2, 1)[:, 0] + 0.01
    bins = (z[:, :-1] + z[:, 1:]) / 2
    w = w[:, 1:-1] + 1e-5
    cdf = torch.cat([torch.zeros_like(w[:, :1]), torch.cumsum(w / w.sum(-1, keepdim=True), -1)], -1)
    u = (torch.rand(z.shape[0], n, device=z.device, dtype=z.dtype, generator=generator) if stochastic
         else torch.linspace(0, 1, n, device=z.device, dtype=z.dtype).expand(z.shape[0], n)).contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    below, above = (idx - 1).clamp_min(0), idx.clamp_max(w.shape[-1])
    cdf_lo, cdf_hi = torch.gather(cdf, 1, below), torch.gather(cdf, 1, above)
    bin_lo, bin_hi = torch.gather(bins, 1, below), torch.gather(bins, 1, above)
    denom = torch.where(cdf_hi - cdf_lo < 1e-5, torch.ones_like(cdf_lo), cdf_hi - cdf_lo)
    return (bin_lo + (u - cdf_lo) / denom * (bin_hi - bin_lo)).reshape(*shape, n)


def openlrm_input(rgba: np.ndarray, size: int) -> torch.Tensor:
    """RGBA uint8 (H, W, 4) -> (1, 3, size, size) RGB on white in [0, 1], resized bicubically (align_corners)."""
    x = torch.from_numpy(np.ascontiguousarray(rgba)).float().permute(2, 0, 1)[None] / 255.0
    x = x[:, :3] * x[:, 3:] + (1 - x[:, 3:])
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=True).clamp(0, 1)


# ---- cameras ----------------------------------------------------------------------------------------------------
def source_camera(distance: float = DEFAULT_SOURCE_DISTANCE, focal: float = DEFAULT_FOCAL,
                  batch: int = 1) -> torch.Tensor:
    """The canonical source camera of inference (N, 16): on -Y at ``distance`` looking at the origin, Z up, with
    normalised focal ``focal`` (fx / width; the official 0.75 is a 67.4° field of view) and a centred principal
    point."""
    c2w = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, -distance], [0, 1, 0, 0]])
    return torch.cat([c2w.reshape(12), torch.tensor([focal, focal, 0.5, 0.5])]).expand(batch, 16).clone()


def render_camera(c2w: torch.Tensor, focal: float = DEFAULT_FOCAL) -> torch.Tensor:
    """(V, 4, 4) OpenGL camera-to-world in OpenLRM's Z-up world -> (V, 25) render cameras (normalised intrinsics)."""
    k = torch.tensor([[focal, 0, 0.5], [0, focal, 0.5], [0, 0, 1.0]], dtype=c2w.dtype)
    return torch.cat([c2w.reshape(-1, 16), k.reshape(1, 9).expand(c2w.shape[0], 9)], -1)


def openlrm_scale(input_fraction: float, target_fraction: float, ortho_width: float | None = None,
                  distance: float = DEFAULT_SOURCE_DISTANCE, focal: float = DEFAULT_FOCAL) -> float:
    """Our world units per OpenLRM world unit, derived from the two framings.

    OpenLRM sees its input through the source camera (distance ``distance``, normalised focal ``focal``): an
    object filling ``input_fraction`` of the input image is input_fraction * distance / focal OpenLRM units wide
    (on the plane through the origin). The same object fills ``target_fraction`` of an Era3D view, which is
    ``ortho_width`` (1.370) of our units wide: target_fraction * ortho_width of our units. The ratio is the scale.
    """
    if ortho_width is None:
        from ..geometry.cameras import ERA3D_ORTHO_WORLD_WIDTH as ortho_width
    return (target_fraction * ortho_width) / (input_fraction * distance / focal)


#: the generation chain's framings: the matted input is recentred to 80 % of its frame (border ratio 0.2, LGM's
#: and OpenLRM's inference), Era3D's targets to 420/512 (82 %) of theirs
CHAIN_INPUT_FRACTION, ERA3D_TARGET_FRACTION = 0.8, 420 / 512
#: OpenLRM's world (Z up, source camera on -Y) -> ours (Y up, input camera on +Z): rotate Z-up to Y-up and scale:
#: 0.8203 * 1.370 / (0.8 * 2.0 / 0.75) = 0.5268 (a hand-picked 0.5 rendered the targets ~5 % small)
OPENLRM_SCALE = openlrm_scale(CHAIN_INPUT_FRACTION, ERA3D_TARGET_FRACTION)
#: the scale when the input is framed as the targets (an asset shard's input is its front target view): 0.5138
SAME_FRAMING_SCALE = openlrm_scale(1.0, 1.0)

#: the official models' input size by transformer width (model card: small 224, base 336, large 448)
SOURCE_SIZE_BY_DIM = {512: 224, 768: 336, 1024: 448}


def source_size_for(config: "OpenLRMConfig") -> int:
    """The input resolution a checkpoint was trained at (the official sizes by width; else the encoder's
    position grid: 14 px per patch)."""
    if config.encoder_type == "dinov2" and config.transformer_dim in SOURCE_SIZE_BY_DIM and not config.encoder_depth:
        return SOURCE_SIZE_BY_DIM[config.transformer_dim]
    return 14 * max(1, config.encoder_grid)


def world_cameras(cams, scale: float = OPENLRM_SCALE) -> torch.Tensor:
    """Our :class:`~mvboost.geometry.cameras.Cameras` (world Y up, input view on +Z) -> OpenLRM render cameras
    (V, 25): world rotated and scaled (``scale``: our units per OpenLRM unit, :func:`openlrm_scale`), intrinsics
    normalised by the image size. Orthographic cameras (Era3D's views) are rendered as distant pinholes
    (``Cameras.as_pinhole`` at ``PINHOLE_FOR_ORTHO``)."""
    from ..geometry.cameras import PINHOLE_FOR_ORTHO, ZUP_TO_YUP

    dtype = cams.c2w.dtype
    cams = cams.to(dtype=torch.float64).as_pinhole(PINHOLE_FOR_ORTHO)
    to_lrm = torch.eye(4, dtype=torch.float64)
    to_lrm[:3, :3] = torch.tensor(ZUP_TO_YUP, dtype=torch.float64).T / scale
    c2w = to_lrm @ cams.c2w
    c2w[:, :3, :3] = c2w[:, :3, :3] * scale  # keep the camera axes orthonormal
    k = cams.K.clone()
    k[:, 0] /= cams.width
    k[:, 1] /= cams.height
    return torch.cat([c2w.reshape(-1, 16), k.reshape(-1, 9)], -1).to(dtype)


# ---- mesh -------------------------------------------------------------------------------------------------------
@torch.no_grad()
def extract_mesh(model: OpenLRM, planes: torch.Tensor, resolution: int = 384,
                 threshold: float = DEFAULT_MESH_THRESHOLD, chunk: int = 2 ** 18):
    """Marching cubes of the activated density on a ``resolution``³ grid over [-1, 1]³ at ``threshold`` (the
    official inference default 3.0), vertex colours from the field -> a ``trimesh.Trimesh`` in OpenLRM's frame."""
    import trimesh
    from skimage.measure import marching_cubes

    axis = torch.linspace(-1, 1, resolution, device=planes.device)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3)
    sigma, _ = model.query(planes[:1], grid, chunk)
    vol = sigma.reshape(resolution, resolution, resolution).float().cpu().numpy()
    if not vol.min() < threshold < vol.max():
        raise ValueError(f"no surface: the density spans [{vol.min():.3g}, {vol.max():.3g}], threshold {threshold}")
    verts, faces, _, _ = marching_cubes(vol, threshold)
    verts = verts / (resolution - 1) * 2 - 1
    _, rgb = model.query(planes[:1], torch.from_numpy(verts).float()[None].to(planes.device), chunk)
    colours = (rgb[0].clamp(0, 1).cpu().numpy() * 255).astype("uint8")
    return trimesh.Trimesh(verts, faces[:, ::-1].copy(), vertex_colors=colours, process=False)


# ---- checkpoints ------------------------------------------------------------------------------------------------
def save_openlrm(model: OpenLRM, folder, dtype: torch.dtype = torch.float32) -> Path:
    """``config.json`` + ``model.safetensors``, the official checkpoints' layout."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    for key in ("encoder_depth", "encoder_heads", "encoder_grid"):  # ours: only written when not the default
        if cfg[key] == getattr(OpenLRMConfig, key):
            cfg.pop(key)
    (folder / CONFIG_FILENAME).write_text(json.dumps(cfg, indent=1))
    save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()},
              str(folder / WEIGHTS_FILENAME), metadata={"format": "pt"})
    return folder
