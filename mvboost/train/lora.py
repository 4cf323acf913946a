"""peft LoRA on LGM's cross-view self-attention (docs/models.md, LGM): the 16 ``attns.*.attn.qkv`` (+ ``proj``)."""
from __future__ import annotations

import torch

DEFAULT_TARGET = r".*attns\.\d+\.attn\.(qkv|proj)"


def add_lora(model: torch.nn.Module, rank: int = 32, alpha: float = 32.0, dropout: float = 0.0,
             target: str = DEFAULT_TARGET, base_model: str | None = None, revision: str | None = None):
    """Freeze ``model`` and wrap it with LoRA adapters (a peft ``PeftModel``). ``base_model``/``revision``: the
    model reference the adapter belongs to, written to ``adapter_config.json`` (``base_model_name_or_path``,
    ``revision``) as peft users expect."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise ImportError("LoRA training needs peft: pip install 'mvboost[train]'") from e
    for p in model.parameters():
        p.requires_grad_(False)
    if base_model:
        model.name_or_path = base_model  # peft takes base_model_name_or_path from here
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target, bias="none",
                     revision=revision)
    return get_peft_model(model, cfg)




def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_modules(peft_model) -> int:
    """How many modules of ``peft_model`` carry a LoRA adapter (whatever ``lora.target`` matched)."""
    from peft.tuners.lora import LoraLayer

    return sum(1 for _, m in peft_model.named_modules() if isinstance(m, LoraLayer))


def lora_state_dict(peft_model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(peft_model)


def verify_adapter(state: dict[str, torch.Tensor], expected_modules: int) -> None:
    """The ZeRO-3 trap: adapters saved without gathering come out with 0-element tensors."""
    lora = {k: v for k, v in state.items() if "lora_" in k}
    empty = [k for k, v in lora.items() if v.numel() == 0]
    if len(lora) != 2 * expected_modules or empty:
        raise RuntimeError(f"LoRA adapter is incomplete: {len(lora)} tensors for {expected_modules} modules, "
                           f"{len(empty)} empty (e.g. {empty[:2]}); under ZeRO-3 gather parameters before saving")
