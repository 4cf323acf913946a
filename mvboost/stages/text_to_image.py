"""Text-to-image stage: any diffusers text-to-image pipeline, batched, one seed per item."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..io.codec import encode_array
from .base import Reject, Resources, Stage
from .common import ModelStage, ModelStageConfig, pad_rows, pick_compile, pick_device, pick_dtype, require

#: Versioned prompt templates: a single centred object on a white background.
PROMPT_TEMPLATES = {
    "v1": "{prompt}. A single centered object, full view, isolated on a plain white background, "
          "soft studio lighting, high detail, 3D render",
}
NEGATIVE_PROMPT = "multiple objects, cropped, cut off, text, watermark, busy background, shadow on the floor"


@dataclass
class TextToImageConfig(ModelStageConfig):
    model: str = "stabilityai/sdxl-turbo"
    steps: int = 4
    guidance: float = 0.0
    size: int = 512
    template: str = "v1"
    negative_prompt: bool = False
    compile: str = "auto"  # torch.compile the denoiser: auto = on CUDA only
    resources: Resources = field(default_factory=lambda: Resources(num_gpus=1.0, batch_size=8))


class TextToImageStage(ModelStage, Stage):
    name = "text_to_image"
    Config = TextToImageConfig
    inputs = ("prompt", "seed")
    outputs = ("image",)

    def setup(self):
        if self.config.template not in PROMPT_TEMPLATES:
            raise ValueError(f"unknown prompt template {self.config.template!r}; have {sorted(PROMPT_TEMPLATES)}")
        diffusers = require("diffusers")
        import torch

        self.device = pick_device(self.config.device)
        dtype = pick_dtype(self.config.dtype, self.device)
        path = self.model_path()  # a local folder: the revision was applied when resolving
        if self.config.model.startswith(("tiny:", "random:")):  # byte-level tokenizer: silence truncation notices
            diffusers.utils.logging.set_verbosity_error()
            require("transformers").logging.set_verbosity_error()
        self.pipe = diffusers.AutoPipelineForText2Image.from_pretrained(str(path), dtype=dtype, local_files_only=True)
        self.pipe = self.pipe.to(self.device)
        denoiser = getattr(self.pipe, "unet", None) or getattr(self.pipe, "transformer", None)
        self.compiled = pick_compile(self.config.compile, self.device) and denoiser is not None
        if self.compiled:
            denoiser.compile()  # in place (diffusers' recommended torch.compile of the denoiser)
        self.pipe.set_progress_bar_config(disable=True)
        self._torch = torch

    def format_prompt(self, prompt: str) -> str:
        return PROMPT_TEMPLATES[self.config.template].format(prompt=prompt.strip())

    def process(self, rows):
        torch = self._torch
        n, rows = len(rows), pad_rows(rows, self.resources.batch_size, self.compiled)  # one compiled shape
        prompts = [self.format_prompt(r["prompt"]) for r in rows]
        gens = [torch.Generator(device="cpu").manual_seed(int(r["seed"])) for r in rows]
        kwargs = dict(prompt=prompts, generator=gens, num_inference_steps=self.config.steps,
                      guidance_scale=self.config.guidance, height=self.config.size, width=self.config.size,
                      output_type="np")
        if self.config.negative_prompt and self.config.guidance > 1:
            kwargs["negative_prompt"] = [NEGATIVE_PROMPT] * len(rows)
        images = self.pipe(**kwargs).images[:n]  # (B, H, W, 3) float in [0, 1]; padding dropped
        out = []
        for img in images:
            if not np.isfinite(img).all():
                out.append(Reject("NaN output from the text-to-image model"))
                continue
            out.append({"image": encode_array((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))})
        return out
