"""Training you can watch (rank 0): a console line every ``train.log_every`` steps, TensorBoard event files under
the run (tensorboardX, a maintained writer), and ``curves.png`` at the end.

The console line: ``step 12/100 | loss 0.1234 (mse_rgb …, mse_alpha …, lpips …) | psnr 20.1 dB | 3.2 samples/s |
data 12 % | ETA 4m32s``. Event files go to ``<run>/tensorboard/`` (``tensorboard --logdir <run>/tensorboard``); for
a run stored at a URL they are written locally and copied there at every checkpoint and at the end.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

PROGRESS_FILE = "progress.json"
LOSS_PARTS = ("mse_rgb", "mse_alpha", "lpips")
SCALARS = ("loss", *LOSS_PARTS, "psnr", "samples_per_s", "data_wait_share", "step_time")


def _is_url(path: str) -> bool:
    return "://" in str(path)


def format_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """Rank 0's view of a run: ``step(metrics)`` after each optimizer step, ``flush()`` at checkpoints,
    ``close()`` at the end (writes ``curves.png``). Other ranks get a no-op instance (``enabled=False``)."""

    def __init__(self, storage_dir: str, total_steps: int, samples_per_step: int, log_every: int,
                 start_step: int = 0, enabled: bool = True, storage_options: dict | None = None):
        self.enabled, self.total, self.per_step = enabled, total_steps, samples_per_step
        self.log_every, self.start = max(1, log_every), start_step
        self.storage_dir, self.opts = str(storage_dir), storage_options or {}
        self.history: list[dict] = []
        self.t0 = time.perf_counter()
        self.writer = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        if _is_url(self.storage_dir):
            self.local = Path(tempfile.mkdtemp(prefix="mvboost-tb-"))
        else:
            self.local = Path(self.storage_dir) / "tensorboard"
        self.writer = SummaryWriter(str(self.local), flush_secs=30)

    def step(self, metrics: dict) -> dict:
        """Adds samples/s, the data-wait share and the ETA to ``metrics`` (returned), logs and records them."""
        step = int(metrics["step"])
        dt = float(metrics.get("step_time") or 0.0)
        metrics["samples_per_s"] = self.per_step / dt if dt > 0 else 0.0
        metrics["data_wait_share"] = float(metrics.get("time_data", 0.0)) / dt if dt > 0 else 0.0
        done = step - self.start
        elapsed = time.perf_counter() - self.t0
        metrics["eta_s"] = elapsed / done * (self.total - step) if done > 0 else 0.0
        if not self.enabled:
            return metrics
        self.history.append({k: metrics[k] for k in ("step", *SCALARS) if k in metrics})
        for k in SCALARS:
            if k in metrics:
                self.writer.add_scalar(f"train/{k}", float(metrics[k]), step)
        if step % self.log_every == 0 or step == self.total:
            print(self.line(metrics), flush=True)
            self.write_state(metrics)
        return metrics

    def write_state(self, m: dict) -> None:
        """``<run>/progress.json`` (step, total, loss, samples/s, ETA): what the driver's progress bar reads."""
        import json

        import fsspec

        from ..io.files import write_atomic

        doc = {"step": int(m["step"]), "total": self.total, "loss": float(m.get("loss", float("nan"))),
               "samples_per_s": m["samples_per_s"], "eta_s": m["eta_s"], "time": time.time()}
        try:
            fs, root = fsspec.core.url_to_fs(self.storage_dir, **self.opts)
            write_atomic(fs, f"{root.rstrip('/')}/{PROGRESS_FILE}", json.dumps(doc).encode())
        except OSError as e:  # a progress file is a convenience: training goes on
            print(f"progress: cannot write {PROGRESS_FILE} ({e})", flush=True)

    def line(self, m: dict) -> str:
        parts = ", ".join(f"{k} {m[k]:.4f}" for k in LOSS_PARTS if k in m)
        psnr = f" | psnr {m['psnr']:.2f} dB" if "psnr" in m else ""
        return (f"step {int(m['step'])}/{self.total} | loss {m.get('loss', float('nan')):.4f} ({parts}){psnr} | "
                f"{m['samples_per_s']:.2f} samples/s | data {100 * m['data_wait_share']:.0f} % | "
                f"ETA {format_eta(m['eta_s'])}")

    def flush(self) -> None:
        """Event files to disk, and to the run's URL when it is one."""
        if not self.enabled:
            return
        self.writer.flush()
        if _is_url(self.storage_dir):
            import fsspec

            fs, root = fsspec.core.url_to_fs(self.storage_dir, **self.opts)
            for f in self.local.iterdir():
                fs.put(str(f), f"{root.rstrip('/')}/tensorboard/{f.name}")

    def close(self) -> None:
        if not self.enabled:
            return
        self.flush()
        self.writer.close()
        if self.history:
            png = write_curves(self.history, self.local / "curves.png")
            if _is_url(self.storage_dir):
                import fsspec

                fs, root = fsspec.core.url_to_fs(self.storage_dir, **self.opts)
                fs.put(str(png), f"{root.rstrip('/')}/curves.png")
                shutil.rmtree(self.local, ignore_errors=True)
            else:
                shutil.move(str(png), str(Path(self.storage_dir) / "curves.png"))


def write_curves(history: list[dict], path: Path) -> Path:
    """``curves.png``: the loss and its parts, PSNR and throughput against the step (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for k in ("loss", *LOSS_PARTS):
        if any(k in h for h in history):
            axes[0].plot(steps, [h.get(k, float("nan")) for h in history], label=k)
    axes[0].set_yscale("log")
    axes[0].set_title("loss")
    axes[0].legend(fontsize=8)
    axes[1].plot(steps, [h.get("psnr", float("nan")) for h in history])
    axes[1].set_title("PSNR (dB) on the training targets")
    axes[2].plot(steps, [h.get("samples_per_s", float("nan")) for h in history])
    axes[2].set_title("samples/s")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def read_state(storage_dir: str, storage_options: dict | None = None) -> dict | None:
    """The run's ``progress.json``, or None while there is none."""
    import json

    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(storage_dir, **(storage_options or {}))
        with fs.open(f"{root.rstrip('/')}/{PROGRESS_FILE}", "r") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


class ProgressBar:
    """The driver's progress bar (tqdm): follows ``progress.json`` that rank 0 writes every log step, in a thread,
    while ``fit()`` runs; ``with ProgressBar(run_dir, total):``."""

    def __init__(self, storage_dir: str, total: int, storage_options: dict | None = None, interval: float = 1.0,
                 enabled: bool = True):
        import threading

        self.dir, self.opts, self.total = storage_dir, storage_options, total
        self.interval, self.enabled = interval, enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="train-progress", daemon=True)
        self.start_time = time.time()

    def _update(self, bar) -> None:
        st = read_state(self.dir, self.opts)
        if st and st.get("time", 0) >= self.start_time - 1 and int(st["step"]) > bar.n:
            bar.update(int(st["step"]) - bar.n)
            bar.set_postfix(loss=f"{st['loss']:.4f}", samples_s=f"{st['samples_per_s']:.2f}", refresh=False)

    def _run(self) -> None:
        from tqdm.auto import tqdm

        with tqdm(total=self.total, desc="training steps", unit="step", dynamic_ncols=True) as bar:
            while not self._stop.wait(self.interval):
                self._update(bar)
            self._update(bar)

    def __enter__(self):
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.enabled:
            self._thread.join(timeout=10)
        return False
