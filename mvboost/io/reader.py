"""Reading a generation output: the committed shards, listed from their manifests, and a shard's bytes verified
against its manifest (size, sha256, keys) in one streaming pass. The writer is :mod:`mvboost.io.shards`."""
from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass, field

from .sample import iter_tar
from .shards import ShardManifest


class ShardDataError(FileNotFoundError):
    """No usable shard to read (every reason listed): deterministic, so not worth retrying."""


class _HashingReader:
    """A file wrapper that counts and hashes every byte read through it."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        block = self.f.read(size)
        self.sha.update(block)
        self.size += len(block)
        return block


def verify_shard(f, manifest: ShardManifest, chunk: int = 8 << 20) -> str | None:
    """None if the tar read from the binary file ``f`` is the one ``manifest`` describes (size, sha256 and
    sample keys, checked in one streaming pass), else the reason it is not."""
    reader = _HashingReader(f)
    try:
        keys = sorted(key for key, _ in iter_tar(reader))
    except (tarfile.TarError, ValueError, EOFError) as e:
        return f"not a readable tar ({type(e).__name__}: {e})"[:300]
    while reader.read(chunk):  # the end-of-archive blocks after the last member
        pass
    if (reader.size, reader.sha.hexdigest()) != (manifest.bytes, manifest.sha256):
        return "does not match its manifest (size or sha256)"
    if keys != sorted(manifest.keys):
        return "its sample keys differ from the manifest's"
    return None


@dataclass
class ShardList:
    urls: list[str]
    skipped: list[tuple[str, str]]  # (url, reason)
    manifests: dict[str, ShardManifest] = field(default_factory=dict)  # url -> its manifest (folder sources)


def list_shards(source: str, storage_options: dict | None = None) -> ShardList:
    """The committed shards of a generation output (listed from their manifests alone), or the tars of
    a brace pattern / a single ``.tar`` URL (no manifests: nothing to verify against). A tar without a
    manifest (not committed), an unreadable or invalid manifest and a shard with no accepted sample are
    skipped with the reason, never silently; no usable shard at all is a :class:`ShardDataError`."""
    import logging

    import fsspec
    from braceexpand import braceexpand

    if "{" in source:
        return ShardList(sorted(braceexpand(source)), [])
    fs, root = fsspec.core.url_to_fs(source, **(storage_options or {}))
    if root.endswith(".tar"):
        return ShardList([source], [])
    proto = source.split("://", 1)[0] + "://" if "://" in source else ""
    base = root.rstrip("/")
    manifests = sorted(fs.glob(base + "/shard-*.json"))
    tars = sorted(fs.glob(base + "/shard-*.tar"))
    urls, skipped, found = [], [], {}
    with_manifest = {m[: -len(".json")] for m in manifests}
    for t in tars:
        if t[: -len(".tar")] not in with_manifest:
            skipped.append((proto + t if proto else t, "no manifest: the shard is not committed"))
    for m in manifests:
        tar = m[: -len(".json")] + ".tar"
        url = proto + tar if proto else tar
        try:
            man = ShardManifest.from_json(fs.cat(m))
        except Exception as e:  # noqa: BLE001 - reported with the reason, the other shards go on
            why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            skipped.append((url, f"invalid manifest {m.rsplit('/', 1)[-1]}: {why}"[:300]))
            continue
        if man.samples == 0:
            skipped.append((url, "no accepted samples"))
            continue
        urls.append(url)
        found[url] = man
    for url, why in skipped:
        logging.getLogger(__name__).warning("skipping shard %s: %s", url, why)
    if not urls:
        reasons = "; ".join(f"{u.rsplit('/', 1)[-1]}: {w}" for u, w in skipped[:5]) or "no shard-*.json manifests"
        raise ShardDataError(f"no usable shards under {source} ({len(skipped)} skipped: {reasons})")
    return ShardList(urls, skipped, found)


def verify_shard_url(url: str, manifest: ShardManifest, storage_options: dict | None = None) -> str | None:
    """:func:`verify_shard` of the tar at an fsspec URL (``"tar missing"`` when there is none)."""
    import fsspec

    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            return verify_shard(f, manifest)
    except FileNotFoundError:
        return "tar missing"


def iter_samples(url: str, storage_options: dict | None = None):
    """(key, {member: bytes}) for every sample of one shard tar (any fsspec URL), in order: THE reader of samples
    (training, the gallery, the experiments); members are decoded with :mod:`mvboost.io.sample`."""
    import fsspec

    with fsspec.open(url, "rb", **(storage_options or {})) as f:
        yield from iter_tar(f)


def iter_output(source: str, storage_options: dict | None = None):
    """(shard url, key, members) of every sample of every committed shard of an output (see :func:`list_shards`)."""
    for url in list_shards(source, storage_options).urls:
        for key, fields in iter_samples(url, storage_options):
            yield url, key, fields
