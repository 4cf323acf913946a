"""Writing sharded WebDataset output at any fsspec URL, exactly once across crashes and reruns (the shard
format's names, tar bytes and manifest live here too; reading and verifying an output: :mod:`mvboost.io.reader`;
atomic writes of single files: :mod:`mvboost.io.files`).

Layout under the output URL::

    job.json                      the shard plan (n, shard_size, seed): a rerun must match it
    shard-000000.tar              samples, sorted by key, members ``<key>.<ext>``
    shard-000000.json             the shard's manifest, written LAST: it commits the shard
    rejects/shard-000000.jsonl    the shard's rejected items (key, stage, reason)
    _staging/shard-000000/<key>.tar          an accepted item waiting for its shard
    _staging/shard-000000/<key>.reject.json  a rejected item (tombstone) waiting for its shard
    rejects.jsonl, summary.json   written at the end of each run

Every file is written under a temporary name and renamed. An item is finished when its shard has a
manifest or it has a staged file or tombstone; a rerun skips finished items (accepted or rejected)
and re-merges shards whose manifest is missing. Staged files are removed only after the manifest.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .files import jsonl_bytes, write_atomic
from .sample import tar_members

SHARD_PATTERN = "shard-{:06d}"
MTIME = 0  # fixed member mtime: the same samples always give the same shard bytes


class OutputError(RuntimeError):
    """The output location cannot be used (unreachable, read-only, or holds a different job)."""


def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index)


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """A tar holding ``members`` (name -> bytes) in the given order, with fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = MTIME
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tar_body(data: bytes) -> bytes:
    """A tar's member blocks without its end-of-archive blocks and record padding."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        members = tf.getmembers()
    if not members:
        return b""
    last = members[-1]
    return data[: last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE]


def tar_end(body_size: int) -> bytes:
    """The end of a tar whose member blocks take ``body_size`` bytes: two zero blocks, then zeros up to a
    whole record (as tarfile writes it)."""
    size = body_size + 2 * tarfile.BLOCKSIZE
    return b"\0" * (2 * tarfile.BLOCKSIZE + (-size) % tarfile.RECORDSIZE)


@dataclass
class ShardManifest:
    shard: str
    samples: int
    keys: list[str]
    rejected: list[str]
    bytes: int
    sha256: str
    stage_seconds: dict[str, float] = field(default_factory=dict)
    created: float = 0.0

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, data: bytes | str) -> ShardManifest:
        """Parse a manifest; a ValueError names what is wrong (not JSON, a field missing or mistyped)."""
        try:
            raw = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"not JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"a JSON {type(raw).__name__}, not an object")
        try:
            m = cls(**raw)
        except TypeError as e:
            raise ValueError(str(e)) from None
        if not isinstance(m.bytes, int) or not isinstance(m.sha256, str) or not isinstance(m.samples, int):
            raise ValueError("bytes and samples must be integers and sha256 a string")
        return m


class OutputStore:
    """fsspec-backed output location (a local path, ``s3://…``, ``gs://…``, ``memory://…``)."""

    def __init__(self, url: str, storage_options: dict | None = None):
        import fsspec

        self.url = str(url)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        except ValueError as e:  # "Protocol not known: foo"
            raise OutputError(f"output {self.url}: {e}") from None
        except ImportError as e:  # e.g. gs:// without gcsfs
            raise OutputError(f"output {self.url}: {e} (the filesystem's fsspec package is not installed)") from None
        self.root = self.root.rstrip("/")

    # ---- paths ------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def staging_dir(self, shard: int) -> str:
        return self.path("_staging", shard_name(shard))

    # ---- primitives -------------------------------------------------------------------------
    def write_atomic(self, path: str, data: bytes) -> None:
        write_atomic(self.fs, path, data)

    def read(self, path: str) -> bytes:
        with self.fs.open(path, "rb") as f:
            return f.read()

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def check_writable(self) -> None:
        probe = self.path(f".probe-{uuid.uuid4().hex[:8]}")
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            with self.fs.open(probe, "wb") as f:
                f.write(b"ok")
            self.fs.rm(probe)
        except Exception as e:  # noqa: BLE001 - one clear message at start
            raise OutputError(f"output {self.url} is not writable: {type(e).__name__}: {e}") from e

    # ---- job plan ---------------------------------------------------------------------------
    def plan_mismatch(self, plan: dict) -> str | None:
        """How ``plan`` differs from the one this output's job.json pins ("n: 4 there, 8 now, …"), or None."""
        path = self.path("job.json")
        if not self.exists(path):
            return None
        old = json.loads(self.read(path))
        diff = {k: (old.get(k), v) for k, v in plan.items() if old.get(k) != v}
        return ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items()) or None

    def claim_job(self, plan: dict) -> None:
        """Record the shard plan, or check that an existing output was made with the same plan."""
        mismatch = self.plan_mismatch(plan)
        if mismatch:
            raise OutputError(f"output {self.url} holds a job with a different plan ({mismatch}); "
                              "rerun with the same settings to resume, or choose a new output")
        if not self.exists(self.path("job.json")):
            self.write_atomic(self.path("job.json"), json.dumps(plan, indent=1, sort_keys=True).encode())

    # ---- items ------------------------------------------------------------------------------
    def stage_sample(self, shard: int, key: str, fields: dict[str, bytes]) -> int:
        data = tar_bytes(tar_members(key, fields))
        self.write_atomic(f"{self.staging_dir(shard)}/{key}.tar", data)
        return len(data)

    def stage_reject(self, shard: int, key: str, stage: str, reason: str) -> None:
        rec = {"key": key, "stage": stage, "reason": reason}
        self.write_atomic(f"{self.staging_dir(shard)}/{key}.reject.json", json.dumps(rec).encode())

    def manifest_path(self, shard: int) -> str:
        return self.path(shard_name(shard) + ".json")

    def read_manifest(self, shard: int) -> ShardManifest | None:
        p = self.manifest_path(shard)
        if not self.exists(p):
            return None
        return ShardManifest.from_json(self.read(p))

    def finished(self, shards: list[int], repair: bool = True) -> tuple[set[int], set[str]]:
        """(committed shard indices, keys finished in shards that are not committed yet). ``repair``:
        finish a publication interrupted between the manifest and the rename (a run does; a dry run,
        which writes nothing, passes False and sees :meth:`unpublished`)."""
        committed = set()
        staged: set[str] = set()
        manifests = {p.rsplit("/", 1)[-1] for p in self._ls(self.root)}
        for s in shards:
            if shard_name(s) + ".json" in manifests:
                committed.add(s)
                if repair and shard_name(s) + ".tar" not in manifests:  # killed between manifest and rename
                    self._publish(s, self.read_manifest(s))
                continue
            for p in self._ls(self.staging_dir(s)):
                name = p.rsplit("/", 1)[-1]
                if ".tmp-" in name:
                    continue
                if name.endswith(".reject.json"):
                    staged.add(name[: -len(".reject.json")])
                elif name.endswith(".tar"):
                    staged.add(name[: -len(".tar")])
        return committed, staged

    def unpublished(self, shards: list[int]) -> list[int]:
        """Committed shards (manifest written) whose tar has not been renamed to its final name yet."""
        names = {p.rsplit("/", 1)[-1] for p in self._ls(self.root)}
        return [s for s in shards if shard_name(s) + ".json" in names and shard_name(s) + ".tar" not in names]

    def _ls(self, path: str) -> list[str]:
        try:
            return [p if isinstance(p, str) else p["name"] for p in self.fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []

    # ---- shards -----------------------------------------------------------------------------
    def _committing_path(self, shard: int) -> str:
        return f"{self.staging_dir(shard)}/{shard_name(shard)}.tar.committing"

    def _publish(self, shard: int, manifest: ShardManifest) -> None:
        """After the manifest: move the complete tar to its final name, drop the staging folder. Idempotent:
        a rerun after a kill between the manifest and the rename finishes the move."""
        final, part = self.path(manifest.shard), self._committing_path(shard)
        if self.exists(part):
            self.fs.mv(part, final)
        if not self.exists(final):
            raise OutputError(f"{manifest.shard} is committed (manifest) but its tar is missing")
        try:
            self.fs.rm(self.staging_dir(shard), recursive=True)
        except FileNotFoundError:
            pass

    def commit_shard(self, shard: int, keys: list[str], stage_seconds: dict[str, float] | None = None) -> ShardManifest:
        """Merge the staged items of ``shard`` (all of ``keys`` must be staged) into its tar, then
        write the rejects file, then the manifest (the commit point), then move the tar to its final
        name and remove the staging folder. A tar is therefore never visible under its final name
        before its manifest exists: a brace-pattern reader cannot pick up an uncommitted shard.

        The shard is the staged item tars concatenated without their end-of-archive blocks, streamed to a
        temporary name with a running sha256 (one item in memory at a time, nothing re-encoded): the
        same bytes as one tar written from all members, since the items were written with the same
        fixed header settings."""
        existing = self.read_manifest(shard)
        if existing is not None:
            if not self.exists(self.path(existing.shard)):
                self._publish(shard, existing)
            return existing
        sdir = self.staging_dir(shard)
        names = {p.rsplit("/", 1)[-1] for p in self._ls(sdir)}
        accepted, rejects = [], []
        for key in sorted(keys):
            if f"{key}.tar" in names:
                accepted.append(key)
            elif f"{key}.reject.json" in names:
                rejects.append(json.loads(self.read(f"{sdir}/{key}.reject.json")))
            else:
                raise OutputError(f"{shard_name(shard)}: item {key} is neither staged nor rejected")
        part = self._committing_path(shard)
        tmp = f"{part}.tmp-{uuid.uuid4().hex[:8]}"
        digest, size = hashlib.sha256(), 0
        # sha256 runs in a helper thread, item i overlapping the write of item i (hashlib releases the GIL;
        # prefetching reads in a second thread measured slower on 2 cores)
        with self.fs.open(tmp, "wb") as out, ThreadPoolExecutor(1, thread_name_prefix="shard-sha256") as hasher:
            pending = None
            for key in accepted:
                body = tar_body(self.read(f"{sdir}/{key}.tar"))
                if pending is not None:
                    pending.result()
                pending = hasher.submit(digest.update, body)
                out.write(body)
                size += len(body)
            if pending is not None:
                pending.result()
            tail = tar_end(size)
            out.write(tail)
            digest.update(tail)
            size += len(tail)
        self.fs.mv(tmp, part)  # complete, still under _staging/
        self.write_atomic(self.path("rejects", shard_name(shard) + ".jsonl"), jsonl_bytes(rejects))
        manifest = ShardManifest(shard=shard_name(shard) + ".tar", samples=len(accepted), keys=accepted,
                                 rejected=[r["key"] for r in rejects], bytes=size, sha256=digest.hexdigest(),
                                 stage_seconds={k: round(v, 4) for k, v in (stage_seconds or {}).items()},
                                 created=time.time())
        self.write_atomic(self.manifest_path(shard), manifest.to_json().encode())
        self._publish(shard, manifest)
        return manifest

    def remove_empty_staging(self) -> None:
        """Once every shard is committed: drop ``_staging/`` if nothing is left in it (no leftovers)."""
        staging = self.path("_staging")
        try:
            if not any(self._ls(p) for p in self._ls(staging)):
                self.fs.rm(staging, recursive=True)
        except FileNotFoundError:
            pass

    def all_rejects(self, shards: list[int]) -> list[dict]:
        out = []
        for s in shards:
            p = self.path("rejects", shard_name(s) + ".jsonl")
            if self.exists(p):
                out.extend(json.loads(line) for line in self.read(p).decode().splitlines() if line.strip())
        return out
