"""The last stage: encode a finished item into its WebDataset members and stage it at the output.

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
``cameras.json``     the Era3D cameras (c2w OpenGL, K, ortho) used for renders and refinement
``gaussians.ply``    theta: LGM's Gaussians in the standard 3DGS PLY layout
``meta.json``        ids, seeds, model ids and revisions, strength, per-stage seconds
===================  ===========================================================================

Members appear only for the stages that ran (the pipeline is configurable).
Rejected items are staged as tombstones (key, stage, reason) so reruns skip them too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch

from ..io.shards import OutputStore
from ..pipeline.codec import decode_array, encode_png, tile_views
from ..pipeline.stage import REJECTED, STATUS, Resources, Stage

# column -> (member extension, encoder)
_VIEW_COLUMNS = {"views": "views.png", "normals": "normals.png", "renders": "renders.png",
                 "render_alpha": "render_alpha.png", "render_normals": "render_normals.png",
                 "refined": "refined.png", "refined_normals": "refined_normals.png"}


@dataclass
class WriteConfig:
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1.0, batch_size=8, retries=3))


def sample_fields(row: dict, job_meta: dict) -> dict[str, bytes]:
    fields: dict[str, bytes] = {"prompt.txt": str(row["prompt"]).encode()}
    if row.get("rgba") is not None:
        fields["input.png"] = encode_png(decode_array(row["rgba"]))
    elif row.get("image") is not None:
        fields["input.png"] = encode_png(decode_array(row["image"]))
    for col, ext in _VIEW_COLUMNS.items():
        if row.get(col) is not None:
            arr = decode_array(row[col])  # (V, H, W, C) uint8
            if arr.shape[-1] == 1:
                arr = arr[..., 0]
            fields[ext] = encode_png(tile_views(arr) if arr.ndim >= 3 else arr)
    if row.get("cameras") is not None:
        fields["cameras.json"] = row["cameras"].encode() if isinstance(row["cameras"], str) else bytes(row["cameras"])
    if row.get("gaussians") is not None:
        from ..gaussians import Gaussians

        g = Gaussians.from_lgm(torch.from_numpy(decode_array(row["gaussians"]))[None])
        fields["gaussians.ply"] = g.to_ply_bytes()
    meta = {
        "key": row["item_id"], "prompt_id": row.get("prompt_id"), "index": row.get("index"),
        "prompt": row["prompt"], "prompt_source": row.get("prompt_source"), "category": row.get("category"),
        "seed": row.get("seed"), "shard": row.get("shard"),
        "stage_seconds": {k[2:]: round(float(v), 4) for k, v in row.items() if k.startswith("t_") and v},
        **job_meta,
    }
    if row.get("pose_pred") is not None:
        meta["era3d_pose_pred"] = json.loads(row["pose_pred"])
    fields["meta.json"] = json.dumps(meta, indent=1, sort_keys=True, default=_json_default).encode()
    return fields


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


class WriteStage(Stage):
    name = "write"
    Config = WriteConfig
    inputs = ("item_id", "shard", "prompt")
    outputs = ("staged_bytes",)
    uses_actor = False

    def setup(self):
        self.store = OutputStore(self.job.output, self.job.storage_options)

    def __call__(self, batch):
        """Unlike other stages this one also handles rejected rows: it stages their tombstones."""
        self.ensure_setup()
        out = super().__call__(batch)
        for i, status in enumerate(out[STATUS]):
            if status == REJECTED:
                self.store.stage_reject(int(out["shard"][i]), out["item_id"][i], out["reject_stage"][i],
                                        out["reject_reason"][i])
        return out

    def process(self, rows):
        res = []
        for r in rows:
            n = self.store.stage_sample(int(r["shard"]), r["item_id"], sample_fields(r, self.job.meta))
            res.append({"staged_bytes": n})
        return res


__all__ = ["WriteStage", "WriteConfig", "sample_fields"]
