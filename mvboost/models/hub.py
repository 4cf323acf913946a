"""Model resolution: a model id + revision -> a local folder or file. The one place that does it.

Every stage, the trainer, the merge tool, the benchmarks and the tests resolve models here.

=====================  =============================================================================
``tiny:<kind>``        a tiny random-weight instance of the real classes (``sd``, ``lgm``, ``era3d``, ``openlrm``,
                       ``era3d-ortho``), built on first use into the cache, in the official layout
``random:<kind>``      the same at the real architecture size (``sd-turbo``, ``lgm``, ``era3d``, ``openlrm``,
                       ``era3d-ortho``): full-size random weights for GPU benchmarks without downloads
a local path           a file or folder (``~`` expanded); the revision is not used
``owner/name``         a Hugging Face repo at ``revision`` (a branch, tag or commit; default ``main``),
                       from the local Hugging Face cache only (``HF_HOME``/``HF_HUB_CACHE``), unless
                       ``allow_download`` is passed and ``HF_HUB_OFFLINE`` is not set
=====================  =============================================================================

Built models live under ``$MVBOOST_CACHE`` (default ``~/.cache/mvboost``) in a folder named by the
builder version, so a change of a builder never reuses a stale folder. Concurrent resolvers on one
machine (several actors of a node) build once: the first takes a file lock, the others wait for it.
"""
from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

TINY_PREFIX = "tiny:"
RANDOM_PREFIX = "random:"
DEFAULT_REVISION = "main"
#: bump when a builder's output changes (the folder name carries it, so old caches are not reused)
BUILDER_VERSION = "v2"


#: the reconstruction backends a model reference can name (``<backend>:<source>``)
BACKENDS = ("lgm", "openlrm")


def model_ref(text: str, default: str = "lgm") -> tuple[str, str]:
    """``lgm:<source>`` / ``openlrm:<source>`` -> (backend, source); a reference without a backend prefix is
    ``default``'s (``tiny:lgm`` is an LGM source). For OpenLRM, ``tiny`` and ``random`` stand for ``tiny:openlrm``
    and ``random:openlrm``. The one parser of the model references of inference, evaluation, training and merge."""
    backend, sep, source = text.partition(":")
    if not sep or backend not in BACKENDS:
        backend, source = default, text
    if not source:
        raise ValueError(f"model reference {text!r}: expected <backend>:<source> with backend one of {BACKENDS}")
    if backend == "openlrm":
        source = {"tiny": "tiny:openlrm", "random": "random:openlrm"}.get(source, source)
    return backend, source


class ModelNotFound(FileNotFoundError):
    """A model reference that cannot be resolved locally; the message says how to get it."""


def cache_root() -> Path:
    return Path(os.environ.get("MVBOOST_CACHE", Path.home() / ".cache" / "mvboost"))


def _builders() -> dict[str, Callable[[Path], None]]:
    from . import fullsize, tiny

    return {
        "tiny:sd": tiny.build_tiny_sd,
        "tiny:lgm": tiny.build_tiny_lgm,
        "tiny:era3d": tiny.build_tiny_era3d,
        "tiny:era3d-ortho": lambda folder: tiny.build_tiny_era3d(folder, ortho=True),
        "tiny:openlrm": tiny.build_tiny_openlrm,
        "random:sd-turbo": fullsize.build_random_sd_turbo,
        "random:lgm": fullsize.build_random_lgm,
        "random:era3d": fullsize.build_random_era3d,
        "random:era3d-ortho": lambda folder: fullsize.build_random_era3d(folder, ortho=True),
        "random:openlrm": fullsize.build_random_openlrm,
    }


def is_built(model: str) -> bool:
    """``tiny:…`` or ``random:…`` (a model this package builds instead of loading)."""
    return isinstance(model, str) and model.startswith((TINY_PREFIX, RANDOM_PREFIX))


def looks_like_hub_id(model: str) -> bool:
    return (isinstance(model, str) and model.count("/") == 1 and not model.startswith(("/", ".", "~"))
            and not Path(os.path.expanduser(model)).exists())


def built_kinds() -> list[str]:
    return sorted(_builders())


def _check_built(model: str, what: str) -> None:
    if model not in _builders():
        raise ModelNotFound(f"{what}: unknown built model {model!r}; choose one of {built_kinds()}")


def built_folder(model: str) -> Path:
    prefix, kind = model.split(":", 1)
    sub = "tiny-models" if prefix + ":" == TINY_PREFIX else "random-models"
    return cache_root() / sub / BUILDER_VERSION / kind


def _build(model: str) -> Path:
    folder = built_folder(model)
    if (folder / ".complete").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per machine; the others wait, then reuse
        if (folder / ".complete").is_file():
            return folder
        tmp = folder.with_name(f"{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            _builders()[model](tmp)
            (tmp / ".complete").write_text(f"{model} {BUILDER_VERSION}\n")
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _offline(allow_download: bool) -> bool:
    return not allow_download or os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


def download_hint(model: str, revision: str | None) -> str:
    rev = revision or DEFAULT_REVISION
    return f"hf download {model}" + ("" if rev == DEFAULT_REVISION else f" --revision {rev}")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (huggingface_hub reads it once,
    at import: a worker's runtime env or a test that sets HF_HOME/HF_HUB_CACHE later would be missed)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _hub_snapshot(model: str, revision: str | None, what: str, allow_download: bool) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with diffusers/transformers
        raise ModelNotFound(f"{what}: resolving Hugging Face ids needs huggingface_hub "
                            "(pip install 'mvboost[diffusion]')") from e
    rev = revision or DEFAULT_REVISION
    offline = _offline(allow_download)
    cache = hf_cache_dir()
    try:
        return Path(snapshot_download(model, revision=rev, local_files_only=offline, cache_dir=str(cache)))
    except Exception as e:  # noqa: BLE001 - one message that says what to do
        where = cache
        how = (f"download it on every node first (`{download_hint(model, revision)}`), or point HF_HOME at a "
               "cache that has it" if offline else f"the download failed ({type(e).__name__}: {e})")
        raise ModelNotFound(f"{what}: model {model!r} at revision {rev!r} is not in the local Hugging Face cache "
                            f"({where}); {how}") from e


def resolve(model: str, revision: str | None = None, *, what: str = "model", allow_download: bool = False) -> Path:
    """The local folder (or file) of ``model`` at ``revision``; builds ``tiny:``/``random:`` models once."""
    if not isinstance(model, str) or not model.strip():
        raise ModelNotFound(f"{what}: no model given (got {model!r})")
    if is_built(model):
        _check_built(model, what)
        return _build(model)
    path = Path(os.path.expanduser(model))
    if path.exists():
        return path
    if looks_like_hub_id(model):
        return _hub_snapshot(model, revision, what, allow_download)
    raise ModelNotFound(f"{what}: model {model!r} is neither a local file or folder, a Hugging Face id "
                        f"(owner/name) nor one of {built_kinds()}")


def check(model: str, revision: str | None = None, *, what: str = "model") -> str:
    """Cheap driver-side check that ``resolve`` will succeed on a worker; builds nothing.

    Returns a short description for logs (``built``, a path, or ``hub <id>@<commit>``)."""
    if not isinstance(model, str) or not model.strip():
        raise ModelNotFound(f"{what}: no model given (got {model!r})")
    if is_built(model):
        _check_built(model, what)
        return f"built {model} ({'cached' if (built_folder(model) / '.complete').is_file() else 'built on first use'})"
    path = resolve(model, revision, what=what)
    commit = resolved_commit(path) if looks_like_hub_id(model) else None
    return f"hub {model}@{commit[:12]}" if commit else str(path)


def model_record(model: str, revision: str | None = None, *, what: str = "model", adapter: str | None = None) -> dict:
    """The one record of a model that produced an output (samples' meta.json, evaluation tables, inference
    meta): ``id``, ``revision`` (None for a local folder or a built model), ``commit`` (the Hugging Face cache
    snapshot the revision resolves to; None if not a Hub id or not downloaded) and ``adapter`` (a LoRA folder)."""
    rec = {"id": model, "revision": None if is_built(model) or not looks_like_hub_id(model) else revision,
           "commit": None, "adapter": adapter or None}
    if looks_like_hub_id(model):
        try:  # the commit the revision points at in the local cache (what the workers load)
            rec["commit"] = resolved_commit(resolve(model, revision, what=what))
        except ModelNotFound:
            pass  # the preflight reports it
    return rec


def resolved_commit(path: Path) -> str | None:
    """The commit hash of a Hugging Face cache snapshot folder (``…/snapshots/<commit>``), else None."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.parent.name == "snapshots":
            return p.name
    return None
