"""MVBoost's LoRA loss (paper Eq. 6, LGM's recipe §1.6), for every backend: MSE(rgb) + MSE(alpha) + lambda *
LPIPS-VGG."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..gaussians import Gaussians
from ..render import render


def render_prediction(gaussians: torch.Tensor, cameras, background=(1.0, 1.0, 1.0)):
    """LGM output [B,N,14] -> rgb (B,C,3,H,W), alpha (B,C,1,H,W) at each sample's cameras (white bg)."""
    out = render(Gaussians.from_lgm(gaussians), list(cameras), background=background)
    return out.rgb, out.alpha


def view_loss(pred_rgb, pred_alpha, target, mask, lpips_model=None, lambda_lpips: float = 1.0,
              lpips_size: int = 256, lambda_alpha: float = 1.0):
    """Returns (loss, parts). Targets are re-composited on white with their alpha target, as in LGM."""
    target = target * mask + (1 - mask)
    mse_rgb = F.mse_loss(pred_rgb, target)
    mse_alpha = F.mse_loss(pred_alpha, mask)
    loss = mse_rgb + lambda_alpha * mse_alpha
    parts = {"mse_rgb": mse_rgb.detach(), "mse_alpha": mse_alpha.detach()}
    if lpips_model is not None and lambda_lpips > 0:
        def prep(x):
            x = x.flatten(0, 1)
            if x.shape[-1] != lpips_size:
                x = F.interpolate(x, size=(lpips_size, lpips_size), mode="bilinear", align_corners=False)
            return x * 2 - 1

        lp = lpips_model(prep(target), prep(pred_rgb)).mean()
        loss = loss + lambda_lpips * lp
        parts["lpips"] = lp.detach()
    parts["psnr"] = (-10 * torch.log10(mse_rgb.detach().clamp_min(1e-10)))
    parts["loss"] = loss.detach()
    return loss, parts
