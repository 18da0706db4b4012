"""Detector heads shared by the detector family."""
from .roi_heads import FastRCNNPredictor, RoIHeads, TwoMLPHead
from .rpn import RegionProposalNetwork, RPNHead

__all__ = ["RPNHead", "RegionProposalNetwork", "TwoMLPHead", "FastRCNNPredictor", "RoIHeads"]
