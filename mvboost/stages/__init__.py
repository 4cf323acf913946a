"""The pipeline stages, in their usual order. ``STAGES`` maps config names to stage classes."""
from .asset_render import AssetRenderStage
from .era3d import Era3DStage, RefineStage
from .image_read import ImageReadStage
from .lgm import LGMStage, RenderStage
from .matting import MattingStage
from .synthetic import SyntheticStage
from .text_to_image import TextToImageStage
from .write import WriteStage

STAGES = {
    "text_to_image": TextToImageStage,
    "matting": MattingStage,
    "era3d": Era3DStage,
    "lgm": LGMStage,
    "render": RenderStage,
    "refine": RefineStage,
    "write": WriteStage,
    "asset_render": AssetRenderStage,  # shards from 3D assets (prompts.source: assets)
    "image_read": ImageReadStage,  # single-view image datasets (prompts.source: images)
    "synthetic": SyntheticStage,  # load tests: payload and latency without a model
}

__all__ = ["STAGES", "AssetRenderStage", "Era3DStage", "ImageReadStage", "LGMStage", "MattingStage", "RefineStage",
           "RenderStage", "SyntheticStage", "TextToImageStage", "WriteStage"]
