"""3D assets below the stages: GSO-layout objects (loader, frames, normalisation) and the CPU mesh renderer
that makes both the evaluation's ground truth and views of assets."""
