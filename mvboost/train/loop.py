"""The LoRA boosting loop (MVBoost §3.3, Algorithm 2), launcher-agnostic.

``train_loop(cfg, ctx)`` runs on every worker. ``ctx`` supplies rank/world/device, the checkpoint to
resume from and a ``report(metrics, checkpoint_dir)`` callback: Ray Train's in ``train/launch.py``,
a local one in :class:`LocalContext`. DeepSpeed runs inside the loop (ZeRO stage, precision and
micro-batch from config; bf16 on GPU, fp32 on CPU; gloo on CPU).

Per step (LGM): LGM+LoRA on C^pi (Era3D views 0,2,3,4 + default rays) -> Gaussians -> render at the sample's
6 orthographic cameras on white -> loss = MSE(rgb) + MSE(alpha) + lambda * LPIPS-VGG against C-up^pi. OpenLRM
(``model.checkpoint: openlrm:<source>``) takes the sample's input view instead and ray-marches its triplanes at the
same cameras (:mod:`mvboost.train.backends`). Checkpoints hold the DeepSpeed state (model, optimizer, step) and the
LoRA adapter in peft format (or the whole model, ``lora.mode: full``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .backends import OpenLRMSection, backend_for

log = logging.getLogger(__name__)
ADAPTER_DIR = "adapter"  # LoRA checkpoints: the peft adapter (train.merge folds it into the base)
MODEL_DIR = "model"  # full-parameter checkpoints: the whole model in its official layout (its loader reads it)
STATE_FILE = "train_state.json"
MODES = ("lora", "full")


@dataclass
class ModelSection:
    # LGM: a path, a Hugging Face id (at revision) or tiny:lgm / random:lgm; OpenLRM: openlrm:<the same | tiny>
    checkpoint: str = "ashawkey/LGM"
    revision: str = "main"
    preset: str = ""  # LGM's preset; "": inferred from the checkpoint


@dataclass
class LoraSection:
    # lora: freeze the model, train adapters on lora.target (the paper's boosting); full: train every parameter
    # (LGM's own recipe; checkpoints hold the whole model)
    mode: str = "lora"
    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0
    target: str = ""  # a regex of module names; "": the backend's (LGM: attns.*.attn.qkv|proj; OpenLRM: attention)


@dataclass
class OptimSection:
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0


@dataclass
class DeepSpeedSection:
    zero_stage: int = 2
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU; or bf16 / fp16 / fp32
    micro_batch: int = 1
    grad_accum: int = 1
    torch_adam: bool = True  # skip DeepSpeed's JIT-compiled cpu_adam


@dataclass
class TrainSection:
    steps: int = 1000
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    lambda_lpips: float = 1.0
    lambda_alpha: float = 1.0  # weight of MSE(alpha) against the target alpha (LGM: 1)
    lpips_net: str = "vgg"
    lpips_size: int = 256


@dataclass
class DataSection:
    source: str = "outputs/smoke"  # the generation job's output (manifests verified) or a brace pattern
    storage_options: dict = field(default_factory=dict)
    verify: bool = True
    # several sources mixed by weight instead of ``source``: [{source: URL, weight: 0.7, storage_options: {}}, …]
    # (e.g. MVBoost shards 0.7 + asset shards 0.3); the mix is reproducible (train.seed) and reported per step
    sources: list = field(default_factory=list)
    # seeded shuffling (train.seed): the shard order anew each epoch and a sample shuffle buffer; reproducible on a
    # rerun and continued exactly after a resume
    shuffle: bool = True
    shuffle_buffer: int = 64


def data_sources(data: DataSection) -> list[tuple[str, float, dict]]:
    """(url, weight, storage options) of every source: ``data.sources`` if given, else ``data.source``."""
    if not data.sources:
        return [(data.source, 1.0, dict(data.storage_options))]
    out = []
    for i, src in enumerate(data.sources):
        if isinstance(src, str):
            src = {"source": src}
        if not isinstance(src, dict) or not src.get("source"):
            raise ValueError(f"data.sources[{i}] must be a URL or {{source: URL, weight: w}}, got {src!r}")
        unknown = sorted(set(src) - {"source", "weight", "storage_options"})
        if unknown:
            raise ValueError(f"data.sources[{i}]: unknown keys {unknown}")
        weight = float(src.get("weight", 1.0))
        if weight < 0:
            raise ValueError(f"data.sources[{i}].weight must be >= 0, got {weight}")
        out.append((str(src["source"]), weight, dict(src.get("storage_options") or data.storage_options)))
    if sum(w for _, w, _ in out) <= 0:
        raise ValueError("data.sources: the weights sum to 0")
    return out


@dataclass
class RunSection:
    name: str = "mvboost-lora"
    # checkpoints: a folder, or a URL every node reaches (s3://bucket/runs: nodes do not share a disk)
    storage_path: str = "outputs/train"
    # fsspec options for a URL storage_path (e.g. {client_kwargs: {endpoint_url: ...}} for an S3-compatible store);
    # {}: the filesystem from the URL and the environment, as Ray Train resolves it
    storage_options: dict = field(default_factory=dict)
    num_workers: int = 2
    use_gpu: bool = False
    max_failures: int = 2
    num_to_keep: int = 2
    # how Ray Train uploads a checkpoint to storage_path: "async" (training goes on while it uploads; where the
    # installed Ray has CheckpointUploadMode) or "sync" (the step waits for the upload)
    checkpoint_upload: str = "async"
    progress_bar: bool = True  # a progress bar on the driver (train.launch), following <run>/progress.json
    # where the workers go: Ray Train's placement strategy (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD: one worker
    # per node) and custom resources each worker needs besides its CPU/GPU (e.g. {mvboost_train: 1} pins the
    # workers to the node group that declares it, cluster/aws.yaml)
    placement_strategy: str = "PACK"
    resources_per_worker: dict = field(default_factory=dict)
    # "module:function" called as function(step, ctx, metrics) on every worker after each optimizer step, before
    # the step's checkpoint (profilers, progress hooks; the tests inject worker failures with it). "": none
    step_hook: str = ""


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimSection = field(default_factory=OptimSection)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    train: TrainSection = field(default_factory=TrainSection)
    data: DataSection = field(default_factory=DataSection)
    run: RunSection = field(default_factory=RunSection)
    openlrm: OpenLRMSection = field(default_factory=OpenLRMSection)  # used when model.checkpoint is openlrm:…


@dataclass
class LoopContext:
    rank: int
    world: int
    device: torch.device
    checkpoint_dir: str | None  # resume from here (None: fresh)
    report: object  # callable(metrics: dict, checkpoint_dir: str | None); it owns checkpoint_dir (removes it)
    storage_dir: str  # the run's folder: a local path or a URL (see RunSection.storage_path)
    on_step: Callable[[int, LoopContext, dict], None] | None = None  # see RunSection.step_hook
    storage_options: dict = field(default_factory=dict)  # fsspec options for a URL storage_dir


def load_step_hook(spec: str) -> Callable[[int, LoopContext, dict], None] | None:
    """``run.step_hook`` ("module:function") -> the callable, imported where the loop runs (None for "")."""
    if not spec:
        return None
    import importlib

    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"run.step_hook must be 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module), name)


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


def build_model(cfg: TrainConfig, device):
    """The model to train: the base model with LoRA adapters (``lora.mode: lora``) or itself (``full``)."""
    from .lora import add_lora

    if cfg.lora.mode not in MODES:
        raise ValueError(f"lora.mode must be one of {', '.join(MODES)}, got {cfg.lora.mode!r}")
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


def train_loop(cfg: TrainConfig, ctx: LoopContext) -> dict:
    import deepspeed

    from ..metrics.lpips import load_lpips
    from .data import MixedStream, ShardStream, list_shards
    from .lora import trainable_parameters
    from .loss import view_loss

    torch.manual_seed(cfg.train.seed)
    backend, _ = backend_for(cfg)
    model = build_model(cfg, ctx.device)
    if ctx.rank == 0:
        what = "full-parameter" if cfg.lora.mode == "full" else \
            f"LoRA r={cfg.lora.rank} on {cfg.lora.target or backend.lora_target(base_of(model))}"
        print(f"{backend.name} {what}: {trainable_parameters(model):,} trainable parameters", flush=True)
    lpips = load_lpips(cfg.train.lpips_net, ctx.device) if cfg.train.lambda_lpips > 0 else None
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                                      config=ds_config(cfg, ctx.device))
    step = 0
    if ctx.checkpoint_dir:
        _, client = engine.load_checkpoint(ctx.checkpoint_dir, load_module_strict=False)
        step = int((client or {}).get("step", 0))
        if ctx.rank == 0:
            print(f"resumed from step {step}", flush=True)
    sources = data_sources(cfg.data)
    listings = [list_shards(url, opts) for url, _, opts in sources]
    streams = [ShardStream(ls.urls, ctx.rank, ctx.world, opts, manifests=ls.manifests if cfg.data.verify else None,
                           **({"seed": cfg.train.seed + k, "shuffle_buffer": cfg.data.shuffle_buffer}
                              if cfg.data.shuffle else {}))
               for k, (ls, (_, _, opts)) in enumerate(zip(listings, sources))]
    mixed = MixedStream(streams, [w for _, w, _ in sources], seed=cfg.train.seed * 1000 + ctx.rank)
    if ctx.rank == 0 and len(sources) > 1:
        print("data mix: " + ", ".join(f"{url} weight {w / sum(x for _, x, _ in sources):.2f} ({len(ls.urls)} shards)"
                                       for (url, w, _), ls in zip(sources, listings)), flush=True)
    batches = mixed.batches(cfg.deepspeed.micro_batch, skip_batches=step * cfg.deepspeed.grad_accum)
    skipped = [s for ls in listings for s in ls.skipped]
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


class LocalContext:
    """Single-process runs without Ray (notebooks, tests): checkpoints under storage_path/name/."""

    def __init__(self, cfg: TrainConfig, device="cpu"):
        self.root = Path(cfg.run.storage_path).expanduser() / cfg.run.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.history: list[dict] = []
        ckpts = sorted(self.root.glob("checkpoint_*"))
        for var, val in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                         ("MASTER_PORT", str(29500 + os.getpid() % 1000))):
            os.environ.setdefault(var, val)
        self.ctx = LoopContext(0, 1, torch.device(device), str(ckpts[-1]) if ckpts else None, self.report,
                               str(self.root))

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.history.append(dict(metrics))
        if checkpoint_dir:
            dst = self.root / f"checkpoint_{metrics['step']:08d}"
            shutil.copytree(checkpoint_dir, dst, dirs_exist_ok=True)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)


def _latest(run_dir: str | Path, folder: str, files: tuple[str, ...], what: str) -> Path:
    """``checkpoint_*/<folder>`` of the newest checkpoint that holds one of ``<folder>/<files>``."""
    for c in reversed(sorted(Path(run_dir).glob("checkpoint_*"))):
        if any((c / folder / f).is_file() for f in files):
            return c / folder
    raise FileNotFoundError(f"no checkpoint with {what} under {run_dir}")


def latest_model(run_dir: str | Path) -> Path:
    """The newest full-parameter checkpoint's model folder (LGM's or OpenLRM's layout: its loader reads it)."""
    from ..models.checkpoint import LGM_FILENAME
    from ..models.openlrm import WEIGHTS_FILENAME

    return _latest(run_dir, MODEL_DIR, (LGM_FILENAME, WEIGHTS_FILENAME), "a full model")


def latest_adapter(run_dir: str | Path) -> Path:
    return _latest(run_dir, ADAPTER_DIR, ("adapter_model.safetensors",), "an adapter")
