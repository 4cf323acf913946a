"""Era3D multi-view UNet, our implementation on diffusers building blocks (docs/models.md, Era3D).

What differs from diffusers' ``UNet2DConditionModel`` (everything else is the stock SD2.1 UNet, built
by diffusers itself so the stock key names apply):

* every transformer block is a :class:`MVTransformerBlock`: ``attn1`` is *joint cross-domain*
  self-attention (the normal and colour versions of one image attend as one sequence), a new
  ``norm_mv``/``attn_mv`` pair does *row-wise multi-view* attention (row r of each of the 6 views of
  one object and domain attends to row r of all 6), then text cross-attention ``attn2`` and the
  feed-forward;
* pose regression heads (standard checkpoint only): the mid-block features, pooled per image, give
  elevation and focal predictions whose sin/cos embedding is added to the time embedding seen by the
  up blocks only.

All attention runs on ``torch.nn.functional.scaled_dot_product_attention`` (no xformers, CPU works), in
the model's dtype. The checkpoint's ``upcast_attention: true`` exists for the naive ``baddbmm`` +
softmax path, where QK^T and the softmax of fp16 scores can overflow; SDPA's fused kernels (flash,
memory-efficient, and the CPU flash kernel) already compute QK^T, the running max/softmax and the
PV accumulation in fp32 and only round the output to the input dtype, so casting q/k/v to fp32
first changes nothing numerically except the rounding of q/k/v themselves, while it rules the
fused kernels out (fp32 falls back to the math kernel: 3.1x slower on an H100, spec gpu_notes).
``set_attention_upcast(module, True)`` restores the up-cast path (kept for A/B checks; tests compare
the two against an fp64 reference).

Batch layout contract (see :func:`cfg_layout`): domain-major, then object (and guidance branch),
then view: ``[normal: obj0 v0..v5, obj1 v0..v5, … ; colour: obj0 v0..v5, …]``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ERA3D_UNET_CLASS = "UNetMV2DConditionModel"
#: config keys of the official unet/config.json that only describe training (EMA) or unused options
IGNORED_CONFIG_KEYS = {"decay", "inv_gamma", "min_decay", "optimization_step", "power", "update_after_step",
                       "use_ema_warmup", "_class_name", "_diffusers_version", "_name_or_path",
                       "sparse_mv_attention", "addition_channels", "addition_downsample", "use_dino",
                       "center_input_sample", "only_cross_attention", "dual_cross_attention", "num_class_embeds"}
#: the official ``unet/config.json`` of pengHTYX/MacLab-Era3D-512-6view minus EMA bookkeeping (docs/models.md);
#: the -ortho checkpoint differs only in ``regress_elevation = regress_focal_length = False``
OFFICIAL_UNET_CONFIG = {
    "_class_name": ERA3D_UNET_CLASS, "sample_size": 64, "in_channels": 8, "out_channels": 4,
    "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlockMV2D", "CrossAttnDownBlockMV2D", "CrossAttnDownBlockMV2D", "DownBlock2D"],
    "mid_block_type": "UNetMidBlockMV2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlockMV2D", "CrossAttnUpBlockMV2D", "CrossAttnUpBlockMV2D"],
    "only_cross_attention": False, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-05,
    "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20], "dual_cross_attention": False,
    "use_linear_projection": True, "class_embed_type": "projection", "projection_class_embeddings_input_dim": 2048,
    "num_class_embeds": None, "upcast_attention": True, "resnet_time_scale_shift": "default", "num_views": 6,
    "cd_attention_last": False, "cd_attention_mid": False, "multiview_attention": True, "sparse_mv_attention": True,
    "selfattn_block": "self_rowwise", "mvcd_attention": True, "regress_elevation": True, "regress_focal_length": True,
    "num_regress_blocks": 3, "projection_camera_embeddings_input_dim": 4, "use_dino": False,
    "addition_downsample": False,
}
_BLOCK_MAP = {"CrossAttnDownBlockMV2D": "CrossAttnDownBlock2D", "CrossAttnUpBlockMV2D": "CrossAttnUpBlock2D",
              "UNetMidBlockMV2DCrossAttn": "UNetMidBlock2DCrossAttn", "DownBlock2D": "DownBlock2D",
              "UpBlock2D": "UpBlock2D"}
_SUPPORTED = {"selfattn_block": "self_rowwise", "mvcd_attention": True, "multiview_attention": True,
              "cd_attention_mid": False, "cd_attention_last": False}


# ---- attention on SDPA --------------------------------------------------------------------------
def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def sdpa_attention(attn, hidden_states: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """A diffusers ``Attention`` module's projections + SDPA (same 1/sqrt(d) scale as the reference).

    q/k/v stay in the model's dtype (fused kernels accumulate in fp32) unless the module was switched
    to the legacy up-cast path with :func:`set_attention_upcast`."""
    context = hidden_states if context is None else context
    q = _heads(attn.to_q(hidden_states), attn.heads)
    k = _heads(attn.to_k(context), attn.heads)
    v = _heads(attn.to_v(context), attn.heads)
    dtype = q.dtype
    if getattr(attn, "mvboost_sdpa_upcast", False) and dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    out = F.scaled_dot_product_attention(q, k, v).to(dtype)
    b, h, n, d = out.shape
    out = out.transpose(1, 2).reshape(b, n, h * d)
    return attn.to_out[1](attn.to_out[0](out))


def set_attention_upcast(module: nn.Module, upcast: bool) -> int:
    """Switch every attention module under ``module`` to (True) or from (False) casting q/k/v to fp32
    before SDPA. Returns how many modules were switched."""
    from diffusers.models.attention_processor import Attention

    n = 0
    for m in module.modules():
        if isinstance(m, Attention):
            m.mvboost_sdpa_upcast = bool(upcast)
            n += 1
    return n


def joint_domain_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """x: (2N, L, C) = [normal images ; colour images]. Image i's normal and colour tokens attend jointly."""
    n2, length, c = x.shape
    if n2 % 2:
        raise ValueError(f"joint attention needs [normal ; colour] halves, got a batch of {n2}")
    n = n2 // 2
    pair = torch.cat([x[:n], x[n:]], dim=1)  # (N, 2L, C)
    out = sdpa_attention(attn, pair)
    return torch.cat([out[:, :length], out[:, length:]], dim=0)


def rowwise_view_attention(attn, x: torch.Tensor, num_views: int) -> torch.Tensor:
    """x: (G*V, H*W, C), groups of V consecutive images = one object and domain. Row r attends to row r
    of the V views: sequences of length V*W."""
    bv, length, c = x.shape
    if bv % num_views:
        raise ValueError(f"batch of {bv} images is not a multiple of num_views={num_views}")
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"row-wise attention needs square latents, got {length} tokens")
    g = bv // num_views
    rows = x.reshape(g, num_views, side, side, c).permute(0, 2, 1, 3, 4).reshape(g * side, num_views * side, c)
    out = sdpa_attention(attn, rows)
    return out.reshape(g, side, num_views, side, c).permute(0, 2, 1, 3, 4).reshape(bv, length, c)


class MVTransformerBlock(nn.Module):
    """Era3D's transformer block, built around a stock diffusers ``BasicTransformerBlock``'s modules."""

    def __init__(self, base, num_views: int):
        super().__init__()
        dim = base.norm1.normalized_shape[0]
        from diffusers.models.attention_processor import Attention

        self.num_views = num_views
        self.norm1, self.attn1 = base.norm1, base.attn1
        self.norm_mv = nn.LayerNorm(dim, eps=base.norm1.eps, elementwise_affine=True)
        self.attn_mv = Attention(query_dim=dim, heads=base.attn1.heads, dim_head=dim // base.attn1.heads,
                                 bias=False, upcast_attention=base.attn1.upcast_attention, out_bias=True)
        self.norm2, self.attn2 = base.norm2, base.attn2
        self.norm3, self.ff = base.norm3, base.ff

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, **_):
        x = hidden_states
        x = joint_domain_attention(self.attn1, self.norm1(x)) + x
        x = rowwise_view_attention(self.attn_mv, self.norm_mv(x), self.num_views) + x
        x = sdpa_attention(self.attn2, self.norm2(x), encoder_hidden_states) + x
        return self.ff(self.norm3(x)) + x


REGRESSOR_WIDTH = 1280


class Regressor(nn.Module):
    """Pose head: Linear(in, w) + SiLU, residual blocks [Linear, SiLU, Linear, +skip, SiLU], Linear(w, 1).

    The official heads are always :data:`REGRESSOR_WIDTH` wide whatever the UNet's channel widths
    (their input is normal ‖ colour mid-block features, 2 x block_out_channels[-1])."""

    def __init__(self, cin: int, width: int, num_blocks: int):
        super().__init__()
        self.linear_in = nn.Sequential(nn.Linear(cin, width), nn.SiLU())
        self.blocks = nn.ModuleList(_ResBlock(width) for _ in range(num_blocks))
        self.linear_out = nn.Linear(width, 1)

    def forward(self, x):
        x = self.linear_in(x)
        for b in self.blocks:
            x = b(x)
        return self.linear_out(x)


class _ResBlock(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.linear1 = nn.Linear(width, width)
        self.linear2 = nn.Linear(width, width)

    def forward(self, x):
        return F.silu(self.linear2(F.silu(self.linear1(x))) + x)


def clean_config(config: dict) -> dict:
    """The official unet/config.json minus training bookkeeping; refuses options we do not implement."""
    cfg = {k: v for k, v in config.items() if k not in IGNORED_CONFIG_KEYS}
    for k, want in _SUPPORTED.items():
        if k in cfg and cfg[k] != want:
            raise ValueError(f"Era3D UNet option {k}={cfg[k]!r} is not supported (only {want!r})")
    return cfg


class Era3DUNet(nn.Module):
    """``forward(sample, timestep, encoder_hidden_states, class_labels)`` -> ``(prediction, pose_pred)``."""

    def __init__(self, config: dict):
        super().__init__()
        from diffusers import UNet2DConditionModel
        from diffusers.models.embeddings import TimestepEmbedding

        cfg = clean_config(config)
        self.config = dict(cfg)
        self.num_views = int(cfg.pop("num_views", 6))
        self.regress_elevation = bool(cfg.pop("regress_elevation", False))
        self.regress_focal_length = bool(cfg.pop("regress_focal_length", False))
        num_regress_blocks = int(cfg.pop("num_regress_blocks", 3))
        cam_dim = int(cfg.pop("projection_camera_embeddings_input_dim", 4))
        for k in _SUPPORTED:
            cfg.pop(k, None)
        cfg["down_block_types"] = [_BLOCK_MAP[b] for b in cfg["down_block_types"]]
        cfg["up_block_types"] = [_BLOCK_MAP[b] for b in cfg["up_block_types"]]
        cfg["mid_block_type"] = _BLOCK_MAP[cfg.get("mid_block_type", "UNetMidBlockMV2DCrossAttn")]
        base = UNet2DConditionModel(**cfg)
        for name, child in base.named_children():
            self.add_module(name, child)
        self._base_config = base.config
        for tr in self._transformers():
            for i, blk in enumerate(tr.transformer_blocks):
                tr.transformer_blocks[i] = MVTransformerBlock(blk, self.num_views)
        temb = base.time_embedding.linear_2.out_features
        mid = base.config.block_out_channels[-1]
        if self.regress_elevation != self.regress_focal_length:
            raise ValueError("regress_elevation and regress_focal_length must be both on or both off")
        if self.regress_elevation:
            self.camera_embedding = TimestepEmbedding(cam_dim, temb)
            self.elevation_regressor = Regressor(2 * mid, REGRESSOR_WIDTH, num_regress_blocks)
            self.focal_regressor = Regressor(2 * mid, REGRESSOR_WIDTH, num_regress_blocks)

    @classmethod
    def from_config(cls, config: dict) -> "Era3DUNet":
        return cls(config)

    def _transformers(self):
        from diffusers.models.transformers.transformer_2d import Transformer2DModel

        return [m for m in self.modules() if isinstance(m, Transformer2DModel)]

    @property
    def dtype(self):
        return self.conv_in.weight.dtype

    @property
    def in_channels(self) -> int:
        return self.conv_in.in_channels

    def forward(self, sample, timestep, encoder_hidden_states, class_labels, return_dict: bool = False, **_):
        dtype = self.dtype
        t = torch.as_tensor(timestep, device=sample.device)
        if t.ndim == 0:
            t = t[None]
        t = t.expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(t).to(dtype))
        emb = emb + self.class_embedding(class_labels.to(dtype)).to(dtype)
        x = self.conv_in(sample)
        skips = (x,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                x, res = block(hidden_states=x, temb=emb, encoder_hidden_states=encoder_hidden_states)
            else:
                x, res = block(hidden_states=x, temb=emb)
            skips += res
        x = self.mid_block(x, emb, encoder_hidden_states=encoder_hidden_states)
        pose_pred = None
        emb_up = emb
        if self.regress_elevation:
            feat = x.mean(dim=(2, 3)).detach()  # (2·G·V, C)
            half = feat.shape[0] // 2
            both = torch.cat([feat[:half], feat[half:]], dim=1)  # normal ‖ colour of the same image
            ele = self.elevation_regressor(both).reshape(-1, self.num_views).mean(1)
            foc = self.focal_regressor(both).reshape(-1, self.num_views).mean(1)
            pose_pred = torch.stack([ele, foc], dim=1)  # (G, 2)
            cam = torch.cat([torch.sin(pose_pred), torch.cos(pose_pred)], dim=1).to(dtype)
            cam_emb = self.camera_embedding(cam).repeat_interleave(self.num_views, dim=0)
            emb_up = emb + torch.cat([cam_emb, cam_emb], dim=0)
        for block in self.up_blocks:
            res = skips[-len(block.resnets):]
            skips = skips[: -len(block.resnets)]
            size = skips[-1].shape[2:] if skips else None
            if getattr(block, "has_cross_attention", False):
                x = block(hidden_states=x, temb=emb_up, res_hidden_states_tuple=res,
                          encoder_hidden_states=encoder_hidden_states, upsample_size=size)
            else:
                x = block(hidden_states=x, temb=emb_up, res_hidden_states_tuple=res, upsample_size=size)
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return x, pose_pred


# ---- batch layout -------------------------------------------------------------------------------
def cfg_layout(normal_uncond, normal_cond, colour_uncond, colour_cond):
    """Concatenate four (G·V, …) blocks in Era3D's CFG order [n_uncond, n_cond, c_uncond, c_cond]."""
    return torch.cat([normal_uncond, normal_cond, colour_uncond, colour_cond], dim=0)


def split_cfg(x):
    """Inverse of :func:`cfg_layout`: returns (n_uncond, n_cond, c_uncond, c_cond)."""
    return x.chunk(4, dim=0)


def apply_guidance(pred, scale: float):
    """pred in CFG layout -> guided prediction in [normal ; colour] layout."""
    nu, nc, cu, cc = split_cfg(pred)
    return torch.cat([nu + scale * (nc - nu), cu + scale * (cc - cu)], dim=0)
