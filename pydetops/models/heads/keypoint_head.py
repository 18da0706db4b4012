"""The keypoint branch of Keypoint R-CNN (Mask R-CNN paper, section 5), torchvision's names.

Per RoI: RoIAlign to 14x14, ``KeypointRCNNHeads`` (eight 3x3 convolutions + ReLU, 512 channels),
then ``KeypointRCNNPredictor``: a 4x4 stride-2 transposed convolution (pydetops'
``conv_transpose2d`` kernel) to K maps of 28x28 and a 2x bilinear up-sampling to 56x56. Each
keypoint is a one-hot "mask": its map is a softmax over the 56 x 56 positions.

Training target: the index of the heatmap cell holding each visible ground-truth keypoint of the
RoI's matched object (cross-entropy over the positions, keypoints outside the RoI ignored).
Inference: ``pydetops.ops.heatmaps_to_keypoints`` (bicubic resize to the RoI's size, argmax):
Tensor[D, K, 3] (x, y, 1) and Tensor[D, K] scores per image.
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import ops
from ...ops import ConvTranspose2d

__all__ = ["KeypointRCNNHeads", "KeypointRCNNPredictor", "keypoints_to_heatmap", "keypointrcnn_loss",
           "keypointrcnn_inference"]


class KeypointRCNNHeads(nn.Sequential):
    """(Conv2d 3x3, ReLU) x ``len(layers)``, keys ``{2i}.weight`` / ``{2i}.bias`` as torchvision's.
    Tensor[R, in_channels, S, S] -> Tensor[R, layers[-1], S, S]."""

    def __init__(self, in_channels: int, layers=(512,) * 8):
        mods = []
        c = in_channels
        for width in layers:
            conv = nn.Conv2d(c, width, 3, stride=1, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            mods += [conv, nn.ReLU(inplace=True)]
            c = width
        super().__init__(*mods)


class KeypointRCNNPredictor(nn.Module):
    """``kps_score_lowres`` (ConvTranspose2d 4x4, stride 2, padding 1: S -> 2S) then bilinear 2x
    (align_corners False): Tensor[R, in_channels, S, S] -> Tensor[R, num_keypoints, 4S, 4S] logits."""

    def __init__(self, in_channels: int, num_keypoints: int):
        super().__init__()
        self.kps_score_lowres = ConvTranspose2d(in_channels, num_keypoints, 4, stride=2, padding=1)
        nn.init.kaiming_normal_(self.kps_score_lowres.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.kps_score_lowres.bias)
        self.up_scale = 2
        self.out_channels = num_keypoints

    def forward(self, x: Tensor) -> Tensor:
        x = self.kps_score_lowres(x)
        return F.interpolate(x, scale_factor=float(self.up_scale), mode="bilinear", align_corners=False,
                             recompute_scale_factor=False)


def keypoints_to_heatmap(keypoints: Tensor, rois: Tensor, size: int) -> Tuple[Tensor, Tensor]:
    """The heatmap cell of each keypoint in its RoI's ``size`` x ``size`` grid.

    keypoints Tensor[R, K, 3] (x, y, visibility; image pixels), rois Tensor[R, 4] (x1, y1, x2, y2) ->
    (Tensor[R, K] int64 linear index y * size + x (0 where invalid), Tensor[R, K] bool valid: visible
    and inside the RoI). Cell = floor((p - x1) * size / width); a keypoint exactly on the RoI's right
    / bottom edge goes to the last cell (torchvision's convention).
    """
    x1, y1 = rois[:, 0:1], rois[:, 1:2]
    scale_x = size / (rois[:, 2:3] - x1)
    scale_y = size / (rois[:, 3:4] - y1)
    x, y = keypoints[..., 0], keypoints[..., 1]
    on_right = x == rois[:, 2:3]
    on_bottom = y == rois[:, 3:4]
    cx = ((x - x1) * scale_x).floor().long()
    cy = ((y - y1) * scale_y).floor().long()
    cx = torch.where(on_right, torch.full_like(cx, size - 1), cx)
    cy = torch.where(on_bottom, torch.full_like(cy, size - 1), cy)
    valid = (cx >= 0) & (cy >= 0) & (cx < size) & (cy < size) & (keypoints[..., 2] > 0)
    index = torch.where(valid, cy * size + cx, torch.zeros_like(cx))
    return index, valid


def keypointrcnn_loss(keypoint_logits: Tensor, proposals: List[Tensor], gt_keypoints: List[Tensor],
                      matched_idxs: List[Tensor]) -> Tensor:
    """Cross-entropy over the S x S positions of every valid keypoint of the positive RoIs (mean).

    keypoint_logits Tensor[R, K, S, S] for the positives of all images in order; per image
    proposals Tensor[R_i, 4], gt_keypoints Tensor[G_i, K, 3], matched_idxs Tensor[R_i].
    No valid keypoint: a zero that keeps the graph.
    """
    n, k, h, w = keypoint_logits.shape
    if h != w:
        raise ValueError(f"keypoint_logits: heatmaps must be square, got {h}x{w}")
    index, valid = [], []
    for props, kps, idx in zip(proposals, gt_keypoints, matched_idxs):
        if idx.numel() == 0:
            continue
        i, v = keypoints_to_heatmap(kps[idx], props, h)
        index.append(i.reshape(-1))
        valid.append(v.reshape(-1))
    if not index:
        return keypoint_logits.sum() * 0
    index_all = torch.cat(index)
    rows = torch.where(torch.cat(valid))[0]
    if rows.numel() == 0:
        return keypoint_logits.sum() * 0
    return F.cross_entropy(keypoint_logits.reshape(n * k, h * w)[rows], index_all[rows])


def keypointrcnn_inference(keypoint_logits: Tensor, boxes: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
    """Heatmaps -> keypoints for all images in one ``pydetops.ops.heatmaps_to_keypoints`` call.

    keypoint_logits Tensor[R, K, S, S], boxes per image Tensor[D_i, 4] (sum D_i = R) ->
    (per image Tensor[D_i, K, 3] (x, y, 1) in the boxes' pixels, per image Tensor[D_i, K] scores).
    """
    counts = [int(b.shape[0]) for b in boxes]
    rois = torch.cat(boxes) if boxes else keypoint_logits.new_zeros((0, 4))
    xy, scores = ops.heatmaps_to_keypoints(keypoint_logits, rois)
    return list(xy.split(counts, dim=0)), list(scores.split(counts, dim=0))
