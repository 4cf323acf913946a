"""The pipeline stages, in their usual order. ``STAGES`` maps config names to stage classes."""
from .matting import MattingStage
from .text_to_image import TextToImageStage
from .write import WriteStage

STAGES = {
    "text_to_image": TextToImageStage,
    "matting": MattingStage,
    "write": WriteStage,
}

__all__ = ["STAGES", "MattingStage", "TextToImageStage", "WriteStage"]
