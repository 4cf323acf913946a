from .rasterizer import RenderOutput, project_gaussians, rasterize_torch, render

__all__ = ["RenderOutput", "project_gaussians", "rasterize_torch", "render"]
