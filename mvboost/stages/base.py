"""The stage contract shared by the in-process runner and the Ray job.

A stage is one small class:

* ``Config``: a dataclass of its options (part of the job config under the stage's name);
* ``inputs`` / ``outputs``: the row columns it reads and writes;
* ``resources``: what one worker needs (GPUs, CPUs, batch size, actor-pool size);
* ``setup()``: loads weights, once per actor (or once per process in-process);
* ``process(rows)``: does the work on the rows that are still ``ok``.

``stage(batch)`` (``__call__``) takes a column batch (dict of equal-length sequences), keeps the row
count, runs ``process`` on the ok rows with bounded retries, and records per-item failures with
``reject_stage`` and ``reject_reason`` (img2dataset's worker style): nothing is dropped silently.
Rows carry only scalars and ``bytes`` (arrays travel as ``.npy`` bytes, see :mod:`mvboost.io.codec`)
so the same batches move through Arrow/Ray unchanged.

Two classes of failure (:func:`is_infrastructure`):

* **content** (``Reject``: a bad prompt, no object, an unreadable asset; or an unexpected error that
  survived the retries) -> ``status = "rejected"``: final, recorded in the shard, skipped by reruns;
* **infrastructure** (a CUDA error, out of memory, a timeout, :class:`InfraError`, a storage error in a
  stage that declares it) -> ``status = "failed"``: never recorded; the driver sends the item through
  again, and the stage marks itself ``unhealthy`` so that the executor can retire its worker.
"""
from __future__ import annotations

import logging
import re
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, ClassVar

log = logging.getLogger(__name__)

STATUS = "status"
OK = "ok"
REJECTED = "rejected"
FAILED = "failed"  # an infrastructure failure: the item is not finished and goes through again
#: the columns that return to the driver (plus the ``t_<stage>`` timings); payloads never do
RESULT_COLUMNS = ("item_id", "shard", STATUS, "reject_stage", "reject_reason", "staged_bytes")


def status_columns(batch: dict) -> dict:
    """Only the result columns and ``t_*`` timings of a column batch."""
    return {k: v for k, v in batch.items() if k in RESULT_COLUMNS or k.startswith("t_")}


class Reject(Exception):
    """A permanent, per-item failure: the item is recorded as rejected with this reason (no retry)."""


class StageTimeout(Exception):
    """``process`` ran past ``resources.timeout_s`` (an infrastructure failure: a hung device or service)."""


class InfraError(Exception):
    """Raised by a stage for a failure of the machine or a service, not of the item: retried, never recorded."""


#: messages of errors that come from the accelerator, its driver or its memory, not from the item
_INFRA_MESSAGE = re.compile(r"CUDA error|CUDA driver|CUDA out of memory|cuDNN error|CUBLAS_STATUS|NCCL error|"
                            r"device-side assert|out of memory|ECC error|illegal memory access|"
                            r"no CUDA-capable device", re.IGNORECASE)


def is_infrastructure(e: BaseException, extra: tuple[type, ...] = ()) -> bool:
    """True for a failure of the machine rather than of the item: :class:`InfraError`, a stage timeout,
    ``MemoryError``, torch's out-of-memory errors, an accelerator/driver error by its message, or one of the
    stage's ``extra`` types (the write stage: ``OSError``, a storage outage)."""
    if isinstance(e, Reject):
        return False
    if isinstance(e, (InfraError, StageTimeout, MemoryError, *extra)):
        return True
    if type(e).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError / torch.cuda.OutOfMemoryError
        return True
    return bool(_INFRA_MESSAGE.search(str(e)))


@dataclass
class Resources:
    """What one worker of a stage needs. GPU stages run as actor pools, CPU stages as tasks."""

    num_gpus: float = 0.0
    num_cpus: float = 1.0
    batch_size: int = 4
    min_actors: int = 1
    max_actors: int = 1  # 0: no upper bound (Ray Data scales the pool to what the cluster has free)
    memory: float = 0.0  # bytes of RAM one worker reserves (Ray's "memory" resource; 0: none)
    accelerator_type: str = ""  # e.g. "H100", "A10G": only nodes with that accelerator (Ray's accelerator_type)
    custom: dict = field(default_factory=dict)  # custom resources, e.g. {"gpu_pool_a": 1}: pin to a node group
    retries: int = 2  # bounded retries per item for unexpected (non-Reject) errors
    timeout_s: float = 0.0  # per batch; 0 = none. Items of a batch that times out are rejected ("timeout")


@dataclass
class StageConfig:
    resources: Resources = field(default_factory=Resources)


Row = dict[str, Any]


@dataclass
class JobInfo:
    """What stages may read about the job (plain data, picklable)."""

    output: str
    storage_options: dict
    meta: dict


@dataclass(frozen=True)
class ModelRef:
    """A stage's model reference, as its config names it (resolved by :mod:`mvboost.models.hub`)."""

    stage: str
    id: str
    revision: str | None


class Stage:
    name: ClassVar[str] = "stage"
    Config: ClassVar[type] = StageConfig
    inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    uses_actor: ClassVar[bool] = True  # loads weights in setup(): run as an actor pool on Ray
    #: error types this stage counts as infrastructure besides the common ones (see :func:`is_infrastructure`)
    infra_errors: ClassVar[tuple[type, ...]] = ()

    def __init__(self, config=None, job=None):
        self.config = config if config is not None else self.Config()
        self.job = job  # JobInfo: output URL, model ids, seeds (read-only)
        self._ready = False
        self.unhealthy = ""  # the first infrastructure error this worker saw: the executor may retire it

    @property
    def resources(self) -> Resources:
        return self.config.resources

    # ---- what a built unit says about itself (a stage is a unit of one) --------------------------
    def bind(self, job: JobInfo) -> Stage:
        """Give the built unit the job it runs in (the driver knows it only after the units are checked)."""
        for s in self.members:
            s.job = job
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)

    @property
    def members(self) -> list[Stage]:
        return [self]

    @property
    def gpu_share(self) -> float:
        """The GPUs this unit's worker holds (a fused group's members share their group's)."""
        return float(self.resources.num_gpus)

    @property
    def model_refs(self) -> list[ModelRef]:
        """The models the unit's stages load: every stage whose config has a ``model``."""
        return [ModelRef(s.name, s.config.model, getattr(s.config, "revision", None))
                for s in self.members if hasattr(s.config, "model")]

    # ---- to override ------------------------------------------------------------------------
    def preflight(self) -> None:
        """Cheap checks run once on the driver before any work (e.g. the model exists locally)."""

    def setup(self) -> None:
        """Load weights. Called once per actor/process before the first batch."""

    def process(self, rows: list[Row]) -> list[Row | Exception]:
        """Return, for each input row, a dict of new column values or an exception for that item."""
        raise NotImplementedError

    # ---- the contract -----------------------------------------------------------------------
    def ensure_setup(self) -> None:
        if not self._ready:
            self.setup()
            self._ready = True

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        self.ensure_setup()
        rows = batch_to_rows(batch)
        for r in rows:
            r.setdefault(STATUS, OK)
            r.setdefault("reject_stage", "")
            r.setdefault("reject_reason", "")
        ok_idx = [i for i, r in enumerate(rows) if r[STATUS] == OK]
        missing = [c for c in self.inputs if ok_idx and c not in rows[ok_idx[0]]]
        if missing:
            raise KeyError(f"stage {self.name} needs columns {missing}; it must run after the stages producing them")
        t0 = time.perf_counter()
        results = self._process_with_retries([rows[i] for i in ok_idx]) if ok_idx else []
        per_item = (time.perf_counter() - t0) / max(1, len(ok_idx))
        for i, res in zip(ok_idx, results):
            row = rows[i]
            if not isinstance(res, Exception):
                absent = [c for c in self.outputs if c not in res]
                res = Reject(f"stage produced no {absent}") if absent else res
            if isinstance(res, Exception):
                infra = is_infrastructure(res, self.infra_errors)
                if infra and not self.unhealthy:
                    self.unhealthy = _reason(res)
                row.update({STATUS: FAILED if infra else REJECTED, "reject_stage": self.name,
                            "reject_reason": _reason(res)})
            else:
                row.update(res)
            row[f"t_{self.name}"] = per_item
        for r in rows:  # keep the schema uniform across rows
            r.setdefault(f"t_{self.name}", 0.0)
            for c in self.outputs:
                r.setdefault(c, None)
        return rows_to_batch(rows)

    def run(self, batch: dict[str, Any], observer=None) -> dict[str, list]:
        """``self(batch)``, telling ``observer`` (if any) how many ok items entered and left each stage:
        ``observer.entered(stage, n)`` / ``observer.left(stage, n)`` (the Ray job's live metrics)."""
        n_ok = sum(1 for s in batch.get(STATUS, [OK] * len(batch["item_id"])) if s == OK)
        if observer is not None:
            observer.entered(self.name, n_ok)
        out = self(batch)
        if observer is not None:
            observer.left(self.name, n_ok)
        return out

    def _run(self, rows: list[Row]) -> list[Row | Exception]:
        """``process`` under the configured timeout. Python cannot stop a running computation: a batch
        that times out is abandoned in its thread (its items rejected) and the next batch gets a fresh one."""
        if not self.resources.timeout_s:
            return self.process(rows)
        import concurrent.futures as cf

        pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stage-{self.name}")
        fut = pool.submit(self.process, rows)
        try:
            return fut.result(timeout=self.resources.timeout_s)
        except cf.TimeoutError:
            raise StageTimeout(f"timeout: stage {self.name} took more than {self.resources.timeout_s:g} s") from None
        finally:
            pool.shutdown(wait=False)

    def _process_with_retries(self, rows: list[Row]) -> list[Row | Exception]:
        try:
            out = self._run(rows)
            if len(out) != len(rows):
                raise RuntimeError(f"stage {self.name} returned {len(out)} results for {len(rows)} rows")
            return out
        except Reject as e:
            return [e] * len(rows)
        except StageTimeout as e:
            if len(rows) == 1:
                return [e]
            log.warning("stage %s: %s for a batch of %d; trying items one by one", self.name, e, len(rows))
            return self._one_by_one(rows, e)
        except Exception as e:  # the batch failed as a whole: retry item by item, bounded
            if len(rows) > 1:
                log.warning("stage %s: batch of %d failed (%s); retrying items one by one", self.name, len(rows), e)
            else:
                log.warning("stage %s: item failed (%s)", self.name, e)
            return self._one_by_one(rows, e)

    def _one_by_one(self, rows: list[Row], first_error: Exception) -> list[Row | Exception]:
        """Each row alone, with bounded retries (a single row already had its first attempt)."""
        attempts = self.resources.retries if len(rows) == 1 else self.resources.retries + 1
        results: list[Row | Exception] = []
        for row in rows:
            res: Row | Exception = first_error
            for _ in range(attempts):
                try:
                    res = self._run([row])[0]
                    break
                except Reject as r:
                    res = r
                    break
                except StageTimeout as t:  # not retried here: the driver sends the item through again
                    res = t
                    break
                except Exception as ex:  # noqa: BLE001 - recorded as the item's reason
                    res = ex
                    log.debug("stage %s retry failed: %s", self.name, traceback.format_exc())
            results.append(res)
        return results


class FusedStage:
    """Stages that run one after the other in one worker: one actor, one set of resources, shared
    loaded models (``job.stages`` entry ``[era3d, lgm, render, refine]``).

    The group runs with the ``resources`` of its first member (GPUs, CPUs, batch size, pool size);
    each member keeps its own retries and timeout. Rows pass from member to member inside the worker,
    so intermediate columns never travel between workers.
    """

    def __init__(self, stages: list[Stage]):
        if not stages:
            raise ValueError("a fused stage group needs at least one stage")
        self.stages = list(stages)
        self.name = "+".join(s.name for s in stages)
        self.uses_actor = any(s.uses_actor for s in stages)
        self.inputs = tuple(dict.fromkeys(c for s in stages for c in s.inputs))
        self.outputs = tuple(dict.fromkeys(c for s in stages for c in s.outputs))

    @property
    def resources(self) -> Resources:
        return self.stages[0].resources

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    @property
    def members(self) -> list[Stage]:
        return self.stages

    gpu_share = Stage.gpu_share
    model_refs = Stage.model_refs
    bind = Stage.bind

    @property
    def unhealthy(self) -> str:
        return next((s.unhealthy for s in self.stages if s.unhealthy), "")

    def preflight(self) -> None:
        for s in self.stages:
            s.preflight()

    def ensure_setup(self) -> None:
        for s in self.stages:
            s.ensure_setup()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        return self.run(batch)

    def run(self, batch: dict[str, Any], observer=None) -> dict[str, list]:
        """Each member on the batch in turn (see :meth:`Stage.run`)."""
        for s in self.stages:
            batch = s.run(batch, observer)
        return batch


def _reason(e: Exception) -> str:
    if isinstance(e, (Reject, StageTimeout)):
        return str(e)
    return f"{type(e).__name__}: {e}"[:500]


def batch_to_rows(batch: dict[str, Any]) -> list[Row]:
    cols = list(batch)
    if not cols:
        return []
    n = len(batch[cols[0]])
    for c in cols:
        if len(batch[c]) != n:
            raise ValueError(f"column {c} has {len(batch[c])} rows, expected {n}")
    return [{c: to_python(batch[c][i]) for c in cols} for i in range(n)]


def rows_to_batch(rows: list[Row]) -> dict[str, list]:
    cols: dict[str, None] = {}
    for r in rows:
        for c in r:
            cols.setdefault(c, None)
    return {c: [r.get(c) for r in rows] for c in cols}


def to_python(v):
    """numpy scalars -> Python scalars (Ray hands batches over as numpy arrays)."""
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return v.item()
    return v
