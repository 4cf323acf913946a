"""The LoRA boosting loop (MVBoost §3.3, Algorithm 2), launcher-agnostic.

``train_loop(cfg, ctx)`` runs on every worker. ``ctx`` supplies rank/world/device, the checkpoint to
resume from and a ``report(metrics, checkpoint_dir)`` callback: Ray Train's in ``train/launch.py``,
a local one in :class:`LocalContext`. DeepSpeed runs inside the loop (ZeRO stage, precision and
micro-batch from config; bf16 on GPU, fp32 on CPU; gloo on CPU).

Per step (LGM): LGM+LoRA on C^pi (Era3D views 0,2,3,4 + default rays) -> Gaussians -> render at the sample's
6 orthographic cameras on white -> loss = MSE(rgb) + MSE(alpha) + lambda * LPIPS-VGG against C-up^pi. OpenLRM
(``model.checkpoint: openlrm:<source>``) takes the sample's input view instead and ray-marches its triplanes at the
same cameras (:mod:`mvboost.train.backends`). Checkpoints hold the DeepSpeed state (model, optimizer, step) and the
LoRA adapter in peft format (or the whole model, ``lora.mode: full``). The configuration is
:mod:`mvboost.train.config`, the contexts :mod:`mvboost.train.context`, the data :mod:`mvboost.train.inputs`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .backends import backend_for
from .config import TrainConfig
from .context import ADAPTER_DIR, MODEL_DIR, STATE_FILE, LoopContext

log = logging.getLogger(__name__)


def ds_config(cfg: TrainConfig, device: torch.device) -> dict:
    prec = cfg.deepspeed.precision
    if prec == "auto":
        prec = "bf16" if device.type == "cuda" else "fp32"
    conf = {
        "train_micro_batch_size_per_gpu": cfg.deepspeed.micro_batch,
        "gradient_accumulation_steps": cfg.deepspeed.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "optimizer": {"type": "AdamW", "params": {"lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay,
                                                  "betas": list(cfg.optim.betas),
                                                  "torch_adam": cfg.deepspeed.torch_adam}},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if prec == "bf16":
        conf["bf16"] = {"enabled": True}
    elif prec == "fp16":
        conf["fp16"] = {"enabled": True}
    return conf


def build_model(cfg: TrainConfig, device, backend=None, source: str | None = None):
    """The model to train: the base model with LoRA adapters (``lora.mode: lora``) or itself (``full``); the
    backend as :func:`backend_for` finds it unless given."""
    from .config import check_mode
    from .lora import add_lora

    check_mode(cfg.lora.mode)
    if backend is None:
        backend, source = backend_for(cfg)
    base = backend.load(source, device)
    if cfg.lora.mode == "full":
        return base.train()
    target = cfg.lora.target or backend.lora_target(base)
    return add_lora(base, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, target, base_model=cfg.model.checkpoint,
                    revision=cfg.model.revision)


def base_of(model):
    """The model inside what ``build_model`` returned (a peft wrapper in LoRA mode)."""
    return model.base_model.model if hasattr(model, "base_model") else model


def save_full(engine, folder: Path, zero_stage: int, backend) -> int:
    """Write the whole trained model (fp32, its official layout: its loader and every consumer read it); returns
    the tensor count."""
    model = engine.module
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            backend.save(model, folder)
    else:
        backend.save(model, folder)
    return len(model.state_dict())


def save_adapter(engine, folder: Path, zero_stage: int) -> int:
    """Write the LoRA adapter (peft format, safetensors) and verify it; returns the tensor count."""
    from .lora import lora_modules, lora_state_dict, verify_adapter

    model = engine.module
    n_modules = lora_modules(model)  # the modules lora.target wrapped
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            state = {k: v.detach().cpu().clone() for k, v in lora_state_dict(model).items()}
    else:
        state = {k: v.detach().cpu().clone() for k, v in lora_state_dict(model).items()}
    verify_adapter(state, n_modules)
    model.save_pretrained(str(folder), state_dict=state, safe_serialization=True, save_embedding_layers=False)
    return len(state)


#: DeepSpeed's shared-memory all-reduce kernel for CPU processes (its name in ``deepspeed.ops.__compatible_ops__``)
SHM_COMM_OP = "deepspeed_shm_comm"


def skip_cpu_shm_comm_build(device: torch.device) -> bool:
    """On CPU, DeepSpeed's communication backend compiles its shared-memory all-reduce kernel (C++, JIT, ~35 s on 2
    cores, once per machine and extensions folder) as it starts. Only DeepSpeed-Inference's tensor-parallel
    all-reduce calls that kernel, never training (gradients are reduced through torch.distributed, gloo on CPU), so
    the op is marked unavailable and DeepSpeed skips the build. Returns whether it was marked."""
    if device.type != "cpu":
        return False
    import deepspeed.ops

    ops = getattr(deepspeed.ops, "__compatible_ops__", None)
    if not isinstance(ops, dict):  # a DeepSpeed without the table: it builds as before
        return False
    ops[SHM_COMM_OP] = False
    return True


def train_loop(cfg: TrainConfig, ctx: LoopContext) -> dict:
    import deepspeed

    from ..metrics.lpips import load_lpips
    from .inputs import training_batches
    from .lora import trainable_parameters
    from .loss import view_loss

    torch.manual_seed(cfg.train.seed)
    backend, source = backend_for(cfg)  # looked up once
    model = build_model(cfg, ctx.device, backend, source)
    if ctx.rank == 0:
        what = "full-parameter" if cfg.lora.mode == "full" else \
            f"LoRA r={cfg.lora.rank} on {cfg.lora.target or backend.lora_target(base_of(model))}"
        print(f"{backend.name} {what}: {trainable_parameters(model):,} trainable parameters", flush=True)
    lpips = load_lpips(cfg.train.lpips_net, ctx.device) if cfg.train.lambda_lpips > 0 else None
    skip_cpu_shm_comm_build(ctx.device)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                                      config=ds_config(cfg, ctx.device))
    step = 0
    if ctx.checkpoint_dir:
        _, client = engine.load_checkpoint(ctx.checkpoint_dir, load_module_strict=False)
        step = int((client or {}).get("step", 0))
        if ctx.rank == 0:
            print(f"resumed from step {step}", flush=True)
    batches, mixed, sources = training_batches(cfg, ctx.rank, ctx.world, step)
    if ctx.rank == 0 and len(sources) > 1:
        total = sum(w for _, w, _, _ in sources)
        print("data mix: " + ", ".join(f"{url} weight {w / total:.2f} ({len(ls.urls)} shards)"
                                       for url, w, _, ls in sources), flush=True)
    skipped = [s for _, _, _, ls in sources for s in ls.skipped]
    base = base_of(engine.module)
    dtype = next(p for p in engine.module.parameters()).dtype
    metrics: dict = {"skipped_shards": len(skipped)}
    from .progress import Progress

    per_step = cfg.deepspeed.micro_batch * cfg.deepspeed.grad_accum * ctx.world
    progress = Progress(ctx.storage_dir, cfg.train.steps, per_step, cfg.train.log_every, start_step=step,
                        enabled=ctx.rank == 0, storage_options=ctx.storage_options)
    while step < cfg.train.steps:
        t0 = time.perf_counter()
        timing = {"data": 0.0, "forward": 0.0, "render": 0.0, "loss": 0.0, "backward": 0.0}
        for _ in range(cfg.deepspeed.grad_accum):
            t = time.perf_counter()
            batch = next(batches)
            timing["data"] += time.perf_counter() - t
            t = time.perf_counter()
            output = backend.forward(base, engine, batch, ctx.device, dtype)
            timing["forward"] += time.perf_counter() - t
            t = time.perf_counter()
            rgb, alpha, target, mask = backend.render(base, output, batch, ctx.device)
            timing["render"] += time.perf_counter() - t
            t = time.perf_counter()
            loss, parts = view_loss(rgb, alpha, target, mask, lpips, cfg.train.lambda_lpips, cfg.train.lpips_size,
                                    lambda_alpha=cfg.train.lambda_alpha)
            timing["loss"] += time.perf_counter() - t
            t = time.perf_counter()
            engine.backward(loss)
            engine.step()
            timing["backward"] += time.perf_counter() - t
        step += 1
        metrics = {"step": step, **{k: float(v) for k, v in parts.items()},
                   **{f"time_{k}": v for k, v in timing.items()}, "step_time": time.perf_counter() - t0,
                   "skipped_shards": len(skipped)}
        if len(sources) > 1:
            metrics.update({f"samples_from_source_{k}": n for k, n in enumerate(mixed.counts)})
        metrics = progress.step(metrics)  # + samples/s, data-wait share, ETA; the console line, TensorBoard
        if ctx.on_step is not None:
            ctx.on_step(step, ctx, metrics)
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
            progress.flush()
            d = tempfile.mkdtemp(prefix="mvboost-ckpt-")  # handed to report, which removes it (after an async upload)
            try:
                # LoRA: only the trainable state (+ optimizer); the frozen base comes from model.checkpoint on resume
                engine.save_checkpoint(d, tag=f"step{step:08d}", client_state={"step": step},
                                       exclude_frozen_parameters=cfg.lora.mode != "full")
                if ctx.rank == 0:
                    if cfg.lora.mode == "full":
                        metrics["model_tensors"] = save_full(engine, Path(d) / MODEL_DIR, cfg.deepspeed.zero_stage,
                                                             backend)
                    else:
                        metrics["adapter_tensors"] = save_adapter(engine, Path(d) / ADAPTER_DIR,
                                                                  cfg.deepspeed.zero_stage)
                    (Path(d) / STATE_FILE).write_text(json.dumps({"step": step, "config": dataclasses.asdict(cfg)}))
            except BaseException:
                shutil.rmtree(d, ignore_errors=True)
                raise
            ctx.report(metrics, d)
        elif step % cfg.train.log_every == 0:
            ctx.report(metrics, None)
    progress.close()  # curves.png
    return metrics
