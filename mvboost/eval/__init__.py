"""GSO evaluation (docs/evaluation.md): objects, ground truth, alignment, metrics. No Ray here."""
from .protocol import Protocol
from .score import GroundTruth, LPIPSSet, evaluate_object, prepare_gt

__all__ = ["GroundTruth", "LPIPSSet", "Protocol", "evaluate_object", "prepare_gt"]
