"""The evaluation protocol (docs/evaluation.md), every choice a field so a table records what
produced it."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Protocol:
    resolution: int = 512  # every view, GT and prediction
    # render at resolution x supersample and area-downsample, GT and prediction alike: the GT rasteriser samples
    # hard edges, splats are soft, so without it silhouettes bias the 2D metrics (surface oracle, duck, 96^2:
    # PSNR 20.75 at 1, 25.19 at 2, 26.68 at 3, 27.25 at 4)
    supersample: int = 2
    # gt4 / gt_ortho: the side of the ground-truth input views given to LGM (it resizes them to its input size);
    # the asset shards a model was trained on have a size too: the same input statistics need the same size
    input_size: int = 256
    fov_deg: float = 49.1
    distance: float = 1.5
    views: str = "21"  # "21": elevations {30, 0, -30} x 7 azimuths; "crm24": {0, 15, 30} x 8
    lpips_nets: list[str] = field(default_factory=lambda: ["vgg", "alex"])
    mesh_resolution: int = 256  # voxels across the normalised object's cube ([-1, 1]^3 metric) for the predicted mesh
    mesh_level: float = 0.5  # iso-level of the opacity-weighted density
    points: int = 16000  # surface samples per mesh for CD / F
    taus: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])
    seed: int = 0
    align: bool = True  # yaw search (+ axis permutations) and ICP; "canonical" metrics are always kept
    yaw_step_deg: float = 15.0
    axis_permutations: bool = True  # the 24 rotations of the cube: catch frame-convention bugs
    align_points: int = 4096
    icp_points: int = 16384
    icp_iterations: int = 50

    def check(self) -> None:
        if self.views not in ("21", "crm24"):
            raise ValueError(f"protocol.views must be '21' or 'crm24', got {self.views!r}")
        bad = [n for n in self.lpips_nets if n not in ("vgg", "alex")]
        if bad or not self.lpips_nets:
            raise ValueError(f"protocol.lpips_nets: vgg and/or alex (real ImageNet backbones), got {self.lpips_nets}")
        if self.resolution < 16 or self.supersample < 1 or self.input_size < 16:
            raise ValueError("protocol.resolution and protocol.input_size must be >= 16 and supersample >= 1")

    def orbit(self) -> list[tuple[float, float]]:
        """(elevation, azimuth) in degrees, positive elevation = camera above the object."""
        if self.views == "21":
            return [(e, k * 360.0 / 7) for e in (30.0, 0.0, -30.0) for k in range(7)]
        return [(e, k * 45.0) for e in (0.0, 15.0, 30.0) for k in range(8)]

    def input_index(self) -> int:
        """Index of the input view (elevation 0, azimuth 0) among the orbit views."""
        return self.orbit().index((0.0, 0.0))
