"""LGM (Large Multi-View Gaussian Model), our implementation of the official architecture.

Attribute names follow the official checkpoint's state-dict keys (``unet.…``, ``conv.…``) so
``model_fp16_fixrot.safetensors`` loads with ``strict=True``. Differences from the official code:
the number of views is a parameter (4 by default), attention uses PyTorch SDPA (no xformers), and
the model returns the activated Gaussians only (rendering lives in :mod:`mvboost.render`).
See docs/models.md (LGM).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry.cameras import LGM_FOVY_DEG, lgm_input_cameras, plucker_rays

#: the official checkpoint's file names (``ashawkey/LGM``)
LGM_FILENAME = "model_fp16_fixrot.safetensors"
LGM_LEGACY_FILENAME = "model_fp16.safetensors"
LGM_CONFIG_FILENAME = "lgm_config.json"  # optional, written by us for non-preset models

SKIP_SCALE = math.sqrt(0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GAUSSIAN_CHANNELS = 14


@dataclass
class LGMConfig:
    input_size: int = 256
    down_channels: tuple = (64, 128, 256, 512, 1024, 1024)
    down_attention: tuple = (False, False, False, True, True, True)
    mid_attention: bool = True
    up_channels: tuple = (1024, 1024, 512, 256, 128)
    up_attention: tuple = (True, True, True, False, False)
    splat_size: int = 128
    output_size: int = 512
    num_views: int = 4
    num_heads: int = 16
    norm_groups: int = 32
    fovy: float = LGM_FOVY_DEG
    legacy_rotation_norm: bool = False  # only to reproduce the pre-fixrot checkpoint (docs/models.md, LGM)

    PRESETS = ("big", "small", "tiny")

    def __post_init__(self):
        for name in ("down_channels", "down_attention", "up_channels", "up_attention"):
            setattr(self, name, tuple(getattr(self, name)))
        if len(self.down_attention) != len(self.down_channels):
            raise ValueError("down_attention must have one entry per down stage")
        if len(self.up_attention) != len(self.up_channels):
            raise ValueError("up_attention must have one entry per up stage")
        if len(self.up_channels) >= len(self.down_channels):
            raise ValueError("LGM needs fewer up stages than down stages")
        expected = self.input_size // 2 ** (len(self.down_channels) - len(self.up_channels))
        if self.splat_size != expected:
            raise ValueError(f"splat_size {self.splat_size} does not match the U-Net output side {expected}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "LGMConfig":
        if name == "big":  # the official checkpoint
            base = cls()
        elif name == "small":
            base = cls(up_channels=(1024, 1024, 512, 256), up_attention=(True, True, True, False),
                       splat_size=64, output_size=256)
        elif name == "tiny":  # same structure, a few M parameters, for CPU tests
            base = cls(input_size=64, down_channels=(32, 64, 128, 128), down_attention=(False, False, True, True),
                       up_channels=(128, 128, 64), up_attention=(True, True, False), splat_size=32,
                       output_size=128)
        else:
            raise ValueError(f"unknown LGM preset {name!r}; choose one of {cls.PRESETS}")
        return replace(base, **overrides)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "LGMConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown LGMConfig keys: {sorted(unknown)}")
        return cls(**d)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int = 32, eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (h + self.shortcut(x)) * SKIP_SCALE


class SelfAttention(nn.Module):
    """Multi-head self-attention with the official parameter layout (qkv without bias, proj with bias)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # x: [B, N, C]
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # scale 1/sqrt(head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MVAttention(nn.Module):
    """Cross-view self-attention: the V views of one object form one token sequence (view, row, col)."""

    def __init__(self, dim: int, num_heads: int = 16, num_views: int = 4, groups: int = 32, eps: float = 1e-5):
        super().__init__()
        self.num_views = num_views
        self.norm = nn.GroupNorm(groups, dim, eps=eps)
        self.attn = SelfAttention(dim, num_heads)

    def forward(self, x):  # x: [B*V, C, H, W]
        bv, c, h, w = x.shape
        v = self.num_views
        if bv % v:
            raise ValueError(f"batch of {bv} feature maps is not a multiple of num_views={v}")
        tokens = self.norm(x).reshape(bv // v, v, c, h, w).permute(0, 1, 3, 4, 2).reshape(bv // v, v * h * w, c)
        out = self.attn(tokens).reshape(bv // v, v, h, w, c).permute(0, 1, 4, 2, 3).reshape(bv, c, h, w)
        return (out + x) * SKIP_SCALE


class DownBlock(nn.Module):
    def __init__(self, cin, cout, attention, downsample, cfg: LGMConfig, num_layers=2):
        super().__init__()
        self.nets = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, cfg.norm_groups)
                                  for i in range(num_layers))
        self.attns = nn.ModuleList(
            MVAttention(cout, cfg.num_heads, cfg.num_views, cfg.norm_groups) for _ in range(num_layers)
        ) if attention else None
        self.downsample = nn.Conv2d(cout, cout, 3, stride=2, padding=1) if downsample else None

    def forward(self, x):
        skips = []
        for i, net in enumerate(self.nets):
            x = net(x)
            if self.attns is not None:
                x = self.attns[i](x)
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    def __init__(self, c, attention, cfg: LGMConfig, num_layers=1):
        super().__init__()
        self.nets = nn.ModuleList(ResnetBlock(c, c, cfg.norm_groups) for _ in range(num_layers + 1))
        self.attns = nn.ModuleList(
            MVAttention(c, cfg.num_heads, cfg.num_views, cfg.norm_groups) for _ in range(num_layers)
        ) if attention else None

    def forward(self, x):
        x = self.nets[0](x)
        for i, net in enumerate(self.nets[1:]):
            if self.attns is not None:
                x = self.attns[i](x)
            x = net(x)
        return x


class UpBlock(nn.Module):
    def __init__(self, cin, cskip_last, cout, attention, upsample, cfg: LGMConfig, num_layers=3):
        super().__init__()
        nets = []
        for i in range(num_layers):
            c_in = cin if i == 0 else cout
            c_skip = cskip_last if i == num_layers - 1 else cout
            nets.append(ResnetBlock(c_in + c_skip, cout, cfg.norm_groups))
        self.nets = nn.ModuleList(nets)
        self.attns = nn.ModuleList(
            MVAttention(cout, cfg.num_heads, cfg.num_views, cfg.norm_groups) for _ in range(num_layers)
        ) if attention else None
        self.upsample = nn.Conv2d(cout, cout, 3, padding=1) if upsample else None

    def forward(self, x, skips):
        for i, net in enumerate(self.nets):
            x = net(torch.cat([x, skips.pop()], dim=1))
            if self.attns is not None:
                x = self.attns[i](x)
        if self.upsample is not None:
            x = self.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class UNet(nn.Module):
    def __init__(self, cfg: LGMConfig, in_channels: int = 9, out_channels: int = GAUSSIAN_CHANNELS):
        super().__init__()
        dc, uc = cfg.down_channels, cfg.up_channels
        self.conv_in = nn.Conv2d(in_channels, dc[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock(dc[max(i - 1, 0)], dc[i], cfg.down_attention[i], i != len(dc) - 1, cfg) for i in range(len(dc))
        )
        self.mid_block = MidBlock(dc[-1], cfg.mid_attention, cfg)
        self.up_blocks = nn.ModuleList(
            UpBlock(uc[i - 1] if i else dc[-1], dc[max(-2 - i, -len(dc))], uc[i], cfg.up_attention[i],
                    i != len(uc) - 1, cfg)
            for i in range(len(uc))
        )
        self.norm_out = nn.GroupNorm(cfg.norm_groups, uc[-1], eps=1e-5)
        self.conv_out = nn.Conv2d(uc[-1], out_channels, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x)
            skips.extend(s)
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x, skips)  # pops the skips it consumes from the end
        return self.conv_out(F.silu(self.norm_out(x)))


def activate_gaussians(raw: torch.Tensor, legacy_rotation_norm: bool = False) -> torch.Tensor:
    """Apply the official activations to raw [B, N, 14] head outputs (docs/models.md, LGM)."""
    pos = raw[..., 0:3].clamp(-1, 1)
    opacity = torch.sigmoid(raw[..., 3:4])
    scale = 0.1 * F.softplus(raw[..., 4:7])
    rot_dim = 1 if legacy_rotation_norm else -1  # legacy: normalised across Gaussians (the old bug)
    rotation = F.normalize(raw[..., 7:11], dim=rot_dim)
    rgb = 0.5 * torch.tanh(raw[..., 11:14]) + 0.5
    return torch.cat([pos, opacity, scale, rotation, rgb], dim=-1)


class LGM(nn.Module):
    """``model(x)``: x [B, V, 9, H, W] -> activated Gaussians [B, V*S*S, 14]
    (xyz, opacity, scale xyz, rotation wxyz, rgb)."""

    def __init__(self, config: LGMConfig | None = None):
        super().__init__()
        self.config = config or LGMConfig.preset("big")
        self.unet = UNet(self.config)
        self.conv = nn.Conv2d(GAUSSIAN_CHANNELS, GAUSSIAN_CHANNELS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[2] != 9:
            raise ValueError(f"LGM expects [B, V, 9, H, W], got {tuple(x.shape)}")
        b, v = x.shape[:2]
        if v != self.config.num_views:
            raise ValueError(f"LGM built for {self.config.num_views} views, got {v}")
        feat = self.conv(self.unet(x.flatten(0, 1)))
        s = feat.shape[-1]
        raw = feat.reshape(b, v, GAUSSIAN_CHANNELS, s, s).permute(0, 1, 3, 4, 2)
        raw = raw.reshape(b, v * s * s, GAUSSIAN_CHANNELS)
        return activate_gaussians(raw, self.config.legacy_rotation_norm)

    # ---- input preparation ------------------------------------------------------------------
    def default_rays(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """Plucker rays (V,6,S,S) of the default input cameras (el 0, az 0/90/180/270 for V=4)."""
        v = self.config.num_views
        cams = lgm_input_cameras(self.config.input_size, azimuths=[360.0 * i / v for i in range(v)],
                                 fovy_deg=self.config.fovy)
        return plucker_rays(cams.c2w.double(), self.config.input_size, self.config.input_size,
                            self.config.fovy).to(device=device, dtype=dtype)

    def prepare_inputs(self, views: torch.Tensor, rays: torch.Tensor | None = None) -> torch.Tensor:
        """views: [B, V, 3, H, W] RGB in [0,1] on white -> [B, V, 9, S, S] network input."""
        b, v = views.shape[:2]
        size = self.config.input_size
        x = views.flatten(0, 1).float()
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        x = ((x - mean) / std).reshape(b, v, 3, size, size)
        if rays is None:
            rays = self.default_rays(device=x.device)
        rays = rays.to(x).expand(b, v, 6, size, size)
        return torch.cat([x, rays], dim=2)


# ---- the checkpoint format ---------------------------------------------------------------------------
def save_lgm(model, folder, filename: str = LGM_FILENAME, dtype: torch.dtype = torch.float16,
             with_config: bool = False) -> Path:
    """Write ``model`` in the official layout (one safetensors file with ``unet.…``/``conv.…`` keys);
    ``with_config`` also writes its :class:`LGMConfig` as ``lgm_config.json`` (needed to load a model whose
    shapes match no preset)."""
    import json

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    out = folder / filename
    save_file(state, str(out), metadata={"format": "pt"})
    if with_config:
        (folder / LGM_CONFIG_FILENAME).write_text(json.dumps(model.config.to_dict(), indent=1))
    return out
