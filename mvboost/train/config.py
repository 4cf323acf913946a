"""The training job's configuration: one dataclass per section, and the checks made once at launch (on the
driver, before Ray starts), not on every worker."""
from __future__ import annotations

from dataclasses import dataclass, field

from .backends import OpenLRMSection

MODES = ("lora", "full")
CHECKPOINT_UPLOADS = ("async", "sync")


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
    # what the model learns to render: "refined" (the pseudo ground truth C-up^pi, MVBoost) or "views" (the raw
    # Era3D views C^pi, the no-refinement ablation)
    target: str = "refined"


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


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"lora.mode must be one of {', '.join(MODES)}, got {mode!r}")


def check_config(cfg: TrainConfig) -> None:
    """What a worker would find too late: a wrong mode or upload, malformed data sources. Raises ``ValueError``
    with the key. (The launcher also imports ``run.step_hook`` before Ray starts.)"""
    check_mode(cfg.lora.mode)
    if cfg.run.checkpoint_upload not in CHECKPOINT_UPLOADS:
        raise ValueError(f"run.checkpoint_upload: 'async' or 'sync', got {cfg.run.checkpoint_upload!r}")
    if cfg.data.target not in ("refined", "views"):
        raise ValueError(f"data.target: 'refined' or 'views', got {cfg.data.target!r}")
    data_sources(cfg.data)
