"""Where the loop runs: :class:`LoopContext` (rank, world, device, the checkpoint to resume from, the report
callback: Ray Train's in ``train/launch.py``), :class:`LocalContext` for single-process runs, the step hook, and
the layout of a run's checkpoints (``checkpoint_*/adapter`` or ``checkpoint_*/model``, ``train_state.json``)."""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import TrainConfig

ADAPTER_DIR = "adapter"  # LoRA checkpoints: the peft adapter (train.merge folds it into the base)
MODEL_DIR = "model"  # full-parameter checkpoints: the whole model in its official layout (its loader reads it)
STATE_FILE = "train_state.json"


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


def single_process_group(device: torch.device) -> None:
    """The one-rank process group DeepSpeed wants, through a file rendezvous: no TCP port to pick, so two local
    runs on one machine (or a port another process holds) cannot collide (``EADDRINUSE``)."""
    import atexit
    import tempfile

    import torch.distributed as dist

    if dist.is_available() and not dist.is_initialized():
        fd, path = tempfile.mkstemp(prefix="mvboost-pg-")
        os.close(fd)
        os.unlink(path)  # the rendezvous file must not exist yet
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{path}",
                                rank=0, world_size=1)
        atexit.register(lambda: os.path.exists(path) and os.unlink(path))


class LocalContext:
    """Single-process runs without Ray (notebooks, tests): checkpoints under storage_path/name/, the newest
    ``run.num_to_keep`` of them kept."""

    def __init__(self, cfg: TrainConfig, device="cpu"):
        self.root = Path(cfg.run.storage_path).expanduser() / cfg.run.name
        self.num_to_keep = cfg.run.num_to_keep
        self.root.mkdir(parents=True, exist_ok=True)
        self.history: list[dict] = []
        ckpts = sorted(self.root.glob("checkpoint_*"))
        for var, val in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(var, val)
        single_process_group(torch.device(device))
        self.ctx = LoopContext(0, 1, torch.device(device), str(ckpts[-1]) if ckpts else None, self.report,
                               str(self.root))

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.history.append(dict(metrics))
        if checkpoint_dir:
            dst = self.root / f"checkpoint_{metrics['step']:08d}"
            shutil.copytree(checkpoint_dir, dst, dirs_exist_ok=True)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            if self.num_to_keep and self.num_to_keep > 0:  # run.num_to_keep, as Ray Train's CheckpointConfig keeps
                for old in sorted(self.root.glob("checkpoint_*"))[:-self.num_to_keep]:
                    shutil.rmtree(old, ignore_errors=True)


def _latest(run_dir: str | Path, folder: str, files: tuple[str, ...], what: str) -> Path:
    """``checkpoint_*/<folder>`` of the newest checkpoint that holds one of ``<folder>/<files>``."""
    for c in reversed(sorted(Path(run_dir).glob("checkpoint_*"))):
        if any((c / folder / f).is_file() for f in files):
            return c / folder
    raise FileNotFoundError(f"no checkpoint with {what} under {run_dir}")


def latest_model(run_dir: str | Path) -> Path:
    """The newest full-parameter checkpoint's model folder (LGM's or OpenLRM's layout: its loader reads it)."""
    from ..models.lgm import LGM_FILENAME
    from ..models.openlrm import WEIGHTS_FILENAME

    return _latest(run_dir, MODEL_DIR, (LGM_FILENAME, WEIGHTS_FILENAME), "a full model")


def latest_adapter(run_dir: str | Path) -> Path:
    return _latest(run_dir, ADAPTER_DIR, ("adapter_model.safetensors",), "an adapter")
