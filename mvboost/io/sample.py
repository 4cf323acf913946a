"""The sample format: the one owner of member names and encodings, for the writer and every reader.

Sample layout (members of ``<key>.*`` in ``shard-NNNNNN.tar``; view sets are tiled side by side,
view 0 on the left, in Era3D's order front, front_right, right, back, left, front_left):

===================  ===========================================================================
``prompt.txt``       the prompt text
``input.png``        the RGBA input after matting/recentring (Era3D's condition image)
``views.png``        C^pi: the 6 Era3D colour views (6·W x H RGB)
``normals.png``      the 6 Era3D normal maps, (n + 1) / 2 in the front camera's frame
``renders.png``      the 6 renders of the LGM Gaussians at the Era3D orthographic cameras
``render_alpha.png`` their accumulated opacity (grey)
``render_normals.png`` normals of the Gaussians (shortest axis, facing the camera), (n + 1) / 2
``refined.png``      C-up^pi: the 6 refined views (Era3D SDEdit at strength s)
``refined_normals.png`` the normal half of the refinement
``alpha.png``        the targets' true alpha (grey), where it is known: samples rendered from 3D assets
``cameras.json``     the Era3D cameras (c2w OpenGL, K, ortho) used for renders and refinement
``gaussians.ply``    theta: LGM's Gaussians in the standard 3DGS PLY layout
``meta.json``        ids, seeds, model ids and revisions, strength, per-stage seconds; for a sample
                     rendered from a 3D asset, ``asset``: its folder, name, kind and the renderer
``payload.bin``      only from the synthetic load-test stage: its random bytes
===================  ===========================================================================

Members appear only for the stages that ran (the pipeline is configurable).
A sample's key is dot- and slash-free (WebDataset splits keys at the first dot); its members are
adjacent in the tar. The writer is :func:`encode_sample`; readers use :func:`iter_tar`,
:func:`decode_views`, :func:`decode_cameras`, :func:`decode_meta` and :func:`decode_prompt`; the
shards' manifests are written by :mod:`mvboost.io.shards` (``ShardManifest``) and listed by
:mod:`mvboost.io.reader` (``list_shards``).
"""
from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator

import numpy as np

from .codec import decode_array, decode_png, encode_png, tile_views, untile_views

NUM_VIEWS = 6
PROMPT, INPUT, CAMERAS, GAUSSIANS, META = "prompt.txt", "input.png", "cameras.json", "gaussians.ply", "meta.json"
PAYLOAD = "payload.bin"  # the synthetic load-test stage's bytes (no model output)
#: row column -> member name, for the view sets (V, H, W, C) uint8 arrays, tiled side by side
VIEW_MEMBERS = {"views": "views.png", "normals": "normals.png", "renders": "renders.png",
                "render_alpha": "render_alpha.png", "render_normals": "render_normals.png",
                "refined": "refined.png", "refined_normals": "refined_normals.png", "alpha": "alpha.png"}
#: every member a sample can have (the pipeline is configurable: only the stages that ran add theirs)
MEMBERS = (PROMPT, INPUT, *VIEW_MEMBERS.values(), CAMERAS, GAUSSIANS, META, PAYLOAD)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


def encode_sample(row: dict, job_meta: dict) -> dict[str, bytes]:
    """A finished item's row -> its members (name -> bytes)."""
    fields: dict[str, bytes] = {PROMPT: str(row["prompt"]).encode()}
    if row.get("rgba") is not None:
        fields[INPUT] = encode_png(decode_array(row["rgba"]))
    elif row.get("image") is not None:
        fields[INPUT] = encode_png(decode_array(row["image"]))
    for col, member in VIEW_MEMBERS.items():
        if row.get(col) is not None:
            arr = decode_array(row[col])  # (V, H, W, C) uint8
            if arr.shape[-1] == 1:
                arr = arr[..., 0]
            fields[member] = encode_png(tile_views(arr) if arr.ndim >= 3 else arr)
    if row.get("cameras") is not None:
        fields[CAMERAS] = row["cameras"].encode() if isinstance(row["cameras"], str) else bytes(row["cameras"])
    if row.get("gaussians") is not None:
        import torch

        from ..gaussians import Gaussians

        g = Gaussians.from_lgm(torch.from_numpy(decode_array(row["gaussians"]))[None])
        fields[GAUSSIANS] = g.to_ply_bytes()
    if row.get("payload") is not None:  # the synthetic load-test stage's bytes
        fields[PAYLOAD] = bytes(row["payload"])
    meta = {
        "key": row["item_id"], "prompt_id": row.get("prompt_id"), "index": row.get("index"),
        "prompt": row["prompt"], "prompt_source": row.get("prompt_source"), "category": row.get("category"),
        "seed": row.get("seed"), "shard": row.get("shard"),
        "stage_seconds": {k[2:]: round(float(v), 4) for k, v in row.items() if k.startswith("t_") and v},
        **job_meta,
    }
    if row.get("asset") is not None:  # a sample rendered from a 3D asset (the asset_render stage)
        meta["asset"] = {"root": row.get("asset_root"), "name": row["asset"], "kind": row.get("asset_kind"),
                         "renderer": row.get("renderer")}
    if row.get("pose_pred") is not None:
        meta["era3d_pose_pred"] = json.loads(row["pose_pred"])
    fields[META] = json.dumps(meta, indent=1, sort_keys=True, default=_json_default).encode()
    return fields


def tar_members(key: str, fields: dict[str, bytes]) -> dict[str, bytes]:
    """``{member: bytes}`` -> tar member names ``<key>.<member>``."""
    if not key or "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must be non-empty, without dots or slashes "
                         "(WebDataset splits keys at dots)")
    return {f"{key}.{name}": data for name, data in fields.items()}


def iter_tar(fileobj) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {member: bytes}) for every sample of a tar stream, in order (members are adjacent)."""
    with tarfile.open(fileobj=fileobj, mode="r|") as tf:
        key, cur = None, {}
        for m in tf:
            if not m.isfile():
                continue
            k, name = m.name.split(".", 1)
            if key is not None and k != key:
                yield key, cur
                cur = {}
            key = k
            cur[name] = tf.extractfile(m).read()
        if key is not None:
            yield key, cur


def decode_views(fields: dict[str, bytes], member: str = "views.png", num_views: int = NUM_VIEWS) -> np.ndarray:
    """A tiled view set -> (V, H, W, 3) float32 in [0, 1]."""
    return untile_views(decode_png(fields[member])[..., :3], num_views).astype(np.float32) / 255.0


def decode_alpha(fields: dict[str, bytes], member: str = "alpha.png", num_views: int = NUM_VIEWS) -> np.ndarray:
    """A tiled grey view set (``alpha.png``, ``render_alpha.png``) -> (V, H, W) float32 in [0, 1]."""
    img = decode_png(fields[member])
    if img.ndim == 3:
        img = img[..., 0]
    return untile_views(img[..., None], num_views)[..., 0].astype(np.float32) / 255.0


def decode_cameras(fields: dict[str, bytes]):
    from ..geometry.cameras import Cameras

    return Cameras.from_json(json.loads(fields[CAMERAS]))


def decode_meta(fields: dict[str, bytes]) -> dict:
    return json.loads(fields[META])


def decode_prompt(fields: dict[str, bytes]) -> str:
    return fields.get(PROMPT, b"").decode(errors="replace")
