"""The deterministic item plan: prompts -> items (key, shard, seed)."""
from __future__ import annotations

import hashlib
import json

from ..config import ConfigError
from ..stages.base import OK, REJECTED, STATUS


def item_seed(job_seed: int, prompt_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{job_seed}:{prompt_id}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def _read_bank(url: str) -> list[bytes]:
    import fsspec

    try:
        with fsspec.open(url, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise ConfigError(f"prompts.bank {url} is a directory, not a JSONL file") from None
    except FileNotFoundError:
        raise ConfigError(f"prompts.bank not found: {url}") from None
    except (OSError, ValueError, ImportError) as e:
        raise ConfigError(f"prompts.bank {url}: {type(e).__name__}: {e}") from None
    return [line for line in data.split(b"\n") if line.strip()]


def parse_bank_row(line: bytes) -> tuple[dict | None, str | None]:
    """One JSONL line -> (row, None) or (None, the reason it is rejected)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None, "bank row: not UTF-8"
    try:
        row = json.loads(text)
    except ValueError as e:
        return None, f"bank row: invalid JSON ({str(e)[:80]})"
    if not isinstance(row, dict):
        return None, f"bank row: a JSON {type(row).__name__}, not an object"
    missing = [k for k in ("prompt_id", "prompt") if k not in row]
    if missing:
        return None, f"bank row: missing {', '.join(missing)}"
    return row, None


def near_duplicates(texts: list[str], threshold: float, cache_key: str | None = None, embed=None,
                    batch: int = 1024, cached_only: bool = False) -> dict[int, tuple[int, str]] | None:
    """Index -> (index of the earlier text it repeats, reason) for each text that is a near-duplicate of an
    earlier one (MiniLM cosine >= threshold: the LLM banks' check, :class:`mvboost.prompts.dedupe.Deduper`;
    exact repeats are assumed removed before). With ``cache_key`` the verdicts are
    kept under ``$MVBOOST_CACHE/prompt-banks``: a rerun on the same bank neither embeds again nor can
    reach a different verdict. ``cached_only`` (the dry run): the cached verdicts or None, never a model
    load or a write."""
    import fsspec

    from ..io.files import write_atomic
    from ..models.hub import cache_root
    from ..prompts.dedupe import Deduper, load_embedder

    path = cache_root() / "prompt-banks" / f"{cache_key}.json" if cache_key else None
    if path is not None and path.is_file():
        try:
            return {int(k): (int(j), str(why)) for k, (j, why) in json.loads(path.read_text()).items()}
        except (OSError, ValueError):
            pass  # unreadable cache: compute again
    if cached_only:
        return None
    if embed is None:
        try:
            embed = load_embedder()
        except ImportError as e:
            raise ConfigError(f"{e} (or set prompts.near_duplicates=false)") from None
    dedupe, out, indexed = Deduper(threshold, embed), {}, []  # indexed: text index of each Deduper row
    for s in range(0, len(texts), batch):
        for i, reason in enumerate(dedupe.add(texts[s:s + batch]), s):
            if reason is None:
                indexed.append(i)
            elif dedupe.matched[i - s] is not None:  # its match is indexed already (earlier in order)
                out[i] = (indexed[dedupe.matched[i - s]], reason)
    if path is not None:
        write_atomic(fsspec.filesystem("file"), str(path), json.dumps(out).encode())
    return out


def load_prompts(cfg, dry_run: bool = False) -> list[dict]:
    """The first ``job.n`` prompts. File banks go through the same checks as LLM banks: a bad row does
    not stop the job, it becomes a rejected item with the reason (stage ``prompts``). ``dry_run``: the
    near-duplicate verdicts only from the cache (no MiniLM, nothing written); rows whose verdict is not
    cached are marked ``near_duplicates_unchecked``."""
    if cfg.prompts.source == "offline":
        from ..prompts.offline import offline_prompts

        return offline_prompts(cfg.job.n, cfg.prompts.seed)
    from ..prompts.filters import check_prompt, check_prompt_id, normalise

    lines = _read_bank(cfg.prompts.bank)
    if len(lines) < cfg.job.n:
        raise ConfigError(f"prompt bank {cfg.prompts.bank} has {len(lines)} rows, job.n is {cfg.job.n}")
    out, ids, texts = [], {}, {}
    for i, line in enumerate(lines[: cfg.job.n]):
        row, reason = parse_bank_row(line)
        if row is not None:
            reason = check_prompt_id(row["prompt_id"]) or check_prompt(row["prompt"])
        if reason is None:
            pid, norm = str(row["prompt_id"]), normalise(row["prompt"])
            if pid in ids:
                reason = f"duplicate prompt_id {pid!r} (row {ids[pid] + 1})"
            elif norm in texts:
                reason = f"duplicate prompt: same text as prompt_id {texts[norm]!r}"
            else:
                ids[pid], texts[norm] = i, pid
        if reason is not None:
            out.append(_rejected_row(i, line, reason))
        else:
            out.append(row)
    if cfg.prompts.near_duplicates:
        valid = [i for i, row in enumerate(out) if "reject" not in row]
        digest = hashlib.sha256(b"\n".join(lines[: cfg.job.n]))
        digest.update(f"|{cfg.prompts.near_duplicate_threshold}|all-MiniLM-L6-v2".encode())
        near = near_duplicates([str(out[i]["prompt"]) for i in valid], cfg.prompts.near_duplicate_threshold,
                               digest.hexdigest(), cached_only=dry_run)
        if near is None:
            for i in valid:
                out[i] = dict(out[i], near_duplicates_unchecked=True)
            near = {}
        for k, (j, reason) in near.items():  # a valid row: it keeps its id (key p<id>) and text
            out[valid[k]] = dict(out[valid[k]], reject=f"{reason} of prompt_id {out[valid[j]]['prompt_id']!r}")
    return out


def _rejected_row(i: int, line: bytes, reason: str) -> dict:
    # a key that cannot collide with a valid one (valid keys start with "p")
    return {"prompt_id": "", "prompt": "", "reject": reason,
            "key": "x" + hashlib.sha256(b"%d:" % i + line).hexdigest()[:16]}


def _read_asset_list(url: str) -> list[str]:
    import fsspec

    try:
        with fsspec.open(url, "rt") as f:
            text = f.read()
    except (OSError, ValueError) as e:
        raise ConfigError(f"prompts.asset_list {url}: {type(e).__name__}: {e}") from None
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if len(set(names)) != len(names):
        raise ConfigError(f"prompts.asset_list {url} names an asset more than once")
    return names


def plan_assets(cfg) -> list[dict]:
    """Every asset under ``prompts.assets`` (or those ``prompts.asset_list`` names), sorted by name, is one item:
    key from the asset name, shard i // shard_size, seed from the name."""
    from ..assets.gso import MESH_SUFFIXES, asset_key, list_assets

    root = cfg.prompts.assets.rstrip("/")
    if root == "fixtures":  # the GSO-layout fixture objects (built once per machine), as the evaluation's
        from ..eval.fixtures import fixtures_root

        root = str(fixtures_root())
    try:
        found = list_assets(root)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    except (OSError, ValueError, ImportError) as e:
        raise ConfigError(f"prompts.assets {root}: {type(e).__name__}: {e}") from None
    if cfg.prompts.asset_list:
        kinds = dict(found)
        names = _read_asset_list(cfg.prompts.asset_list)
        missing = [n for n in names if n not in kinds]
        if missing:
            raise ConfigError(f"prompts.asset_list names {len(missing)} asset(s) not found under {root}: "
                              f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
        found = [(n, kinds[n]) for n in sorted(names)]
    if not found:
        raise ConfigError(f"no assets under {root} (GSO-layout folders with meshes/model.obj, or "
                          f"{'/'.join(s.lstrip('.').upper() for s in MESH_SUFFIXES)} files)")
    return [{"item_id": asset_key(name), "prompt_id": name, "index": i, "shard": i // cfg.job.shard_size,
             "prompt": name, "category": kind, "prompt_source": "assets", "seed": item_seed(cfg.job.seed, name),
             STATUS: OK, "reject_stage": "", "reject_reason": "", "asset_root": root, "asset": name,
             "asset_kind": kind} for i, (name, kind) in enumerate(found)]


def image_source_root(url: str) -> str:
    """``prompts.images``; ``fixtures``: a small image dataset built once under ``$MVBOOST_CACHE`` (smoke runs)."""
    if url.rstrip("/") != "fixtures":
        return url.rstrip("/")
    from ..io.images import FIXTURES_VERSION, fixture_images
    from ..models.hub import cache_root

    return fixture_images(cache_root() / f"image-fixtures-{FIXTURES_VERSION}")


def plan_images(cfg) -> list[dict]:
    """Every image under ``prompts.images`` (a folder or URL of images and/or img2dataset shards), sorted by name,
    is one item: key and seed from its name, shard i // shard_size, the caption (if a shard has one) as prompt."""
    from ..io.images import ImageSourceError, list_images

    root = image_source_root(cfg.prompts.images)
    try:
        refs = list_images(root, cfg.prompts.storage_options)
    except ImageSourceError as e:
        raise ConfigError(str(e)) from None
    except (OSError, ImportError) as e:
        raise ConfigError(f"prompts.images {root}: {type(e).__name__}: {e}") from None
    if not refs:
        raise ConfigError(f"no images under {root} (.png/.jpg/.jpeg/.webp files, or .tar shards holding them)")
    return [{"item_id": "i" + hashlib.sha256(r.name.encode()).hexdigest()[:16], "prompt_id": r.name, "index": i,
             "shard": i // cfg.job.shard_size, "prompt": r.caption or r.name, "category": "",
             "prompt_source": "images", "seed": item_seed(cfg.job.seed, r.name), STATUS: OK, "reject_stage": "",
             "reject_reason": "", "image_root": root, "image_url": r.url, "image_member": r.member,
             "image_name": r.name} for i, r in enumerate(refs)]


def plan_items(cfg, dry_run: bool = False) -> list[dict]:
    """The deterministic item plan: item i -> key (from the prompt id), shard i // shard_size, seed.
    ``dry_run``: see :func:`load_prompts` (the keys, shards and seeds are the same either way)."""
    if cfg.prompts.source == "assets":
        return plan_assets(cfg)
    if cfg.prompts.source == "images":
        return plan_images(cfg)
    prompts = load_prompts(cfg, dry_run)
    items, seen = [], set()
    for i, p in enumerate(prompts):
        key = p.get("key") or "p" + str(p["prompt_id"])
        if key in seen:  # offline/LLM ids are unique hex; file banks were checked above
            raise ConfigError(f"prompt bank has a duplicate prompt id {p['prompt_id']!r}")
        seen.add(key)
        rejected = "reject" in p
        items.append({"item_id": key, "prompt_id": str(p["prompt_id"]), "index": i, "shard": i // cfg.job.shard_size,
                      "prompt": p["prompt"], "category": str(p.get("category", ""))[:80],
                      "prompt_source": p.get("source", cfg.prompts.source),
                      "seed": item_seed(cfg.job.seed, key if rejected else str(p["prompt_id"])),
                      STATUS: REJECTED if rejected else OK, "reject_stage": "prompts" if rejected else "",
                      "reject_reason": p.get("reject", ""),
                      **({"near_duplicates_unchecked": True} if p.get("near_duplicates_unchecked") else {})})
    return items


def job_plan(cfg, items: list[dict]) -> dict:
    """What job.json pins: a rerun on the same output must have the same plan."""
    plan = {"n": len(items) if cfg.prompts.source in ("assets", "images") else cfg.job.n,
            "shard_size": cfg.job.shard_size,
            "seed": cfg.job.seed, "prompts_source": cfg.prompts.source, "prompts_seed": cfg.prompts.seed,
            "first_key": items[0]["item_id"], "last_key": items[-1]["item_id"]}
    if cfg.prompts.source == "assets":
        plan["assets"] = items[0]["asset_root"]
    if cfg.prompts.source == "images":
        plan["images"] = items[0]["image_root"]
    return plan
