"""Image -> 3D inference with (boosted) LGM and the paper's input-view optimisation (§3.4)."""
from .view_opt import Pose, ViewOptConfig, ViewOptResult, optimize_input_view, pose_cameras, search_pose

__all__ = ["Pose", "ViewOptConfig", "ViewOptResult", "optimize_input_view", "pose_cameras", "search_pose"]
