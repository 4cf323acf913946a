from .rasterizer import RenderOutput, gaussian_normals, project_gaussians, rasterize_torch, render, render_normals

__all__ = ["RenderOutput", "gaussian_normals", "project_gaussians", "rasterize_torch", "render", "render_normals"]
