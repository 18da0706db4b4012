"""Detector heads shared by the detector family."""
from .keypoint_head import KeypointRCNNHeads, KeypointRCNNPredictor
from .mask_head import MaskRCNNHeads, MaskRCNNPredictor
from .roi_heads import FastRCNNPredictor, RoIHeads, TwoMLPHead
from .rpn import RegionProposalNetwork, RPNHead

__all__ = ["RPNHead", "RegionProposalNetwork", "TwoMLPHead", "FastRCNNPredictor", "RoIHeads", "MaskRCNNHeads", "MaskRCNNPredictor",
           "KeypointRCNNHeads", "KeypointRCNNPredictor"]
