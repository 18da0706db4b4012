"""HOG + linear SVM sliding-window detection (Dalal and Triggs 2005), the pre-CNN baseline.

Read top-down, as the paper:

1. gradients      centred [-1, 0, 1] differences in x and y (zero on the image's border rows /
                  columns); in a colour image each pixel keeps the channel of largest magnitude;
2. cells          each pixel votes its gradient magnitude into ``orientations`` unsigned
                  orientation bins (0-180 degrees) of its ``cell_size`` x ``cell_size`` cell; the vote
                  is split linearly between the two nearest bin centres (``binning="linear"``, the
                  paper's interpolation in orientation) or goes whole to the bin containing the
                  angle (``binning="hard"``, scikit-image's ``hog`` convention; spatial
                  interpolation between cells is not done in either). A cell holds the mean vote;
3. blocks         2 x 2 cells (stride one cell), L2-Hys normalised (L2, clip at 0.2, L2 again,
                  eps 1e-5): a grid of 36-dim block descriptors;
4. windows        a detection window of ``window_cells`` cells is a slice of the block grid (the
                  features are computed ONCE per image and scale, never per window), so scoring every
                  window with a linear SVM is one correlation of the block grid with the weights
                  (``F.conv2d``); a scale pyramid (``scales``) covers the object sizes, one shared
                  window; the object is the window less a margin of ``margin_cells`` cells;
5. linear SVM     one-vs-rest per class: ``score = w_c . x + b_c``, hinge loss (positives and
                  negatives weighted equally) + ``reg / 2 * |w|^2`` (Pegasos' form: ``reg = 1 / (C n)``
                  for the usual ``C``); trained by the training command's SGD loop on the losses
                  the train-mode forward returns;
6. hard negatives every ``mining_every`` training steps (from step ``mining_start`` on) the exhaustive
                  scan of the batch's images adds its highest-scoring negative windows that violate the
                  margin (false positives) to a bank (``bank_size``, oldest out first) whose windows
                  join every later loss: the paper's retraining on hard examples, as rounds inside
                  training;
7. detection      windows scoring above ``score_thresh`` at every scale, boxes back to the image's
                  pixels, per-class NMS (``pydetops.ops.batched_nms``), the best ``detections_per_img``;
                  ``scores`` are ``sigmoid(w . x + b)`` (monotone in the SVM margin, in [0, 1]).

Model contract (``pydetops/MODELS.md``): ``model.train(); model(images, targets)`` ->
``{"loss_hinge", "loss_reg"}``; ``model.eval(); model(images)`` -> per image ``boxes``
Tensor[D, 4] (x1, y1, x2, y2, pixels), ``labels`` Tensor[D] int64, ``scores`` Tensor[D].
An image smaller than the window at every scale gives no detection (and no training window).
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import batched_nms, box_iou
from .faster_rcnn import validate_targets

__all__ = ["HOGSVM", "hog_svm", "hog", "hog_cells", "hog_blocks"]

BINNINGS = ("linear", "hard")


# ---------------------------------------------------------------------------
# 1.-3. HOG, vectorised over the whole image
# ---------------------------------------------------------------------------


def _gradients(x: Tensor) -> Tuple[Tensor, Tensor]:
    """[B, C, H, W] -> (g_row, g_col) [B, H, W] of the channel with the largest gradient magnitude
    (the first of equal ones): the [-1, 0, 1] filter along rows and along columns (as differences
    of shifted slices), zero on the border rows / columns."""
    g_row = torch.zeros_like(x)
    g_col = torch.zeros_like(x)
    if x.shape[-2] >= 3:
        torch.sub(x[..., 2:, :], x[..., :-2, :], out=g_row[..., 1:-1, :])
    if x.shape[-1] >= 3:
        torch.sub(x[..., :, 2:], x[..., :, :-2], out=g_col[..., :, 1:-1])
    if x.shape[1] == 1:
        return g_row[:, 0], g_col[:, 0]
    mag2 = g_row * g_row + g_col * g_col
    best, gr, gc = mag2[:, 0], g_row[:, 0], g_col[:, 0]
    for c in range(1, x.shape[1]):  # a strict > keeps the first of equal channels (argmax's rule; faster)
        take = mag2[:, c] > best
        best = torch.where(take, mag2[:, c], best)
        gr = torch.where(take, g_row[:, c], gr)
        gc = torch.where(take, g_col[:, c], gc)
    return gr, gc


def hog_cells(image: Tensor, cell_size: int = 8, orientations: int = 9, binning: str = "linear") -> Tensor:
    """Per-cell orientation histograms.

    Args:
        image: Tensor[B, C, H, W], Tensor[C, H, W] or Tensor[H, W], floating point.
        cell_size: pixels per cell side; the cells start at the top-left pixel and the pixels
            past the last whole cell are not used.
        orientations: unsigned bins over [0, 180) degrees.
        binning: "linear" (the vote split between the two nearest bin centres, wrapping at 180)
            or "hard" (the whole vote to the bin [i, i + 1) * 180 / orientations holding the angle).

    Returns Tensor[B, orientations, H // cell_size, W // cell_size]: each cell's mean vote
    (sum of magnitudes / cell_size ** 2), the angle ``atan2(g_row, g_col)`` with rows downwards.
    """
    if binning not in BINNINGS:
        raise ValueError(f"binning: must be one of {BINNINGS}, got {binning!r}")
    if not isinstance(cell_size, int) or cell_size < 1:
        raise ValueError(f"cell_size: must be a positive int, got {cell_size!r}")
    if not isinstance(orientations, int) or orientations < 1:
        raise ValueError(f"orientations: must be a positive int, got {orientations!r}")
    if not isinstance(image, Tensor) or not image.is_floating_point() or image.dim() not in (2, 3, 4):
        raise ValueError("image: expected a floating point Tensor[B, C, H, W], [C, H, W] or [H, W]")
    x = image
    while x.dim() < 4:
        x = x.unsqueeze(0)
    B, _, H, W = x.shape
    hc, wc = H // cell_size, W // cell_size
    if hc == 0 or wc == 0:
        return x.new_zeros((B, orientations, hc, wc))
    # the gradients of the cells' pixels need one row / column past the last cell (where there is one)
    x = x[..., : min(H, hc * cell_size + 1), : min(W, wc * cell_size + 1)]
    g_row, g_col = _gradients(x)
    g_row, g_col = g_row[:, : hc * cell_size, : wc * cell_size], g_col[:, : hc * cell_size, : wc * cell_size]
    mag = torch.hypot(g_row, g_col)
    theta = torch.remainder(torch.rad2deg(torch.atan2(g_row, g_col)), 180.0)
    width = 180.0 / orientations
    votes = mag.new_zeros((B, orientations) + mag.shape[1:])
    if binning == "hard":
        b = torch.floor(theta / width)
        # the bin of [i, i + 1) * width exactly as the comparisons (no rounding of theta / width)
        b = torch.where(theta < b * width, b - 1, b)
        b = torch.where(theta >= (b + 1) * width, b + 1, b)
        ok = (b >= 0) & (b < orientations)  # a remainder rounded up to 180.0 falls in no bin (as skimage)
        votes.scatter_add_(1, b.clamp(0, orientations - 1).long()[:, None], (mag * ok)[:, None])
    else:
        pos = theta / width - 0.5
        b0 = torch.floor(pos)
        frac = pos - b0
        b0 = torch.remainder(b0, orientations).long()
        votes.scatter_add_(1, b0[:, None], (mag * (1 - frac))[:, None])
        votes.scatter_add_(1, torch.remainder(b0 + 1, orientations)[:, None], (mag * frac)[:, None])
    return F.avg_pool2d(votes, cell_size)


def hog_blocks(cells: Tensor, cells_per_block: int = 2, eps: float = 1e-5, clip: float = 0.2) -> Tensor:
    """L2-Hys normalised blocks of ``cells_per_block`` x ``cells_per_block`` cells (stride 1 cell).

    ``cells``: Tensor[B, O, Hc, Wc] (:func:`hog_cells`). Returns Tensor[B, b * b * O, Hb, Wb]
    (Hb = Hc - b + 1) whose channel order is (block row, block column, orientation):
    ``blocks.permute(0, 2, 3, 1).reshape(B, -1)`` is scikit-image's ``hog(..., feature_vector=True)``.
    """
    b = cells_per_block
    B, O, Hc, Wc = cells.shape
    if Hc < b or Wc < b:
        return cells.new_zeros((B, b * b * O, max(0, Hc - b + 1), max(0, Wc - b + 1)))
    blk = cells.unfold(2, b, 1).unfold(3, b, 1)              # [B, O, Hb, Wb, b, b]
    blk = blk.permute(0, 2, 3, 4, 5, 1).reshape(B, Hc - b + 1, Wc - b + 1, b * b * O)
    blk = blk / torch.sqrt((blk * blk).sum(-1, keepdim=True) + eps * eps)
    blk = blk.clamp(max=clip)
    blk = blk / torch.sqrt((blk * blk).sum(-1, keepdim=True) + eps * eps)
    return blk.permute(0, 3, 1, 2).contiguous()


def hog(image: Tensor, orientations: int = 9, pixels_per_cell: int = 8, cells_per_block: int = 2,
        binning: str = "linear") -> Tensor:
    """The HOG feature vector of one image (Tensor[C, H, W] or [H, W]), in scikit-image's order:
    Tensor[Hb * Wb * b * b * orientations]. With ``binning="hard"`` it equals
    ``skimage.feature.hog(image, orientations, (p, p), (b, b), block_norm="L2-Hys")``
    (``channel_axis`` last for a colour image) up to rounding (~3e-8 for float64 input: scikit-image's
    Cython histogram rounds to single precision). ``binning="linear"`` (Dalal-Triggs' vote
    interpolation, this module's default) has no scikit-image counterpart."""
    blocks = hog_blocks(hog_cells(image, pixels_per_cell, orientations, binning), cells_per_block)
    return blocks[0].permute(1, 2, 0).reshape(-1)


# ---------------------------------------------------------------------------
# the detector
# ---------------------------------------------------------------------------


class HOGSVM(nn.Module):
    """HOG + one-vs-rest linear SVMs over a sliding window and a scale pyramid.

    Args:
        num_classes: classes including background (labels 1..num_classes-1).
        cell_size, cells_per_block, orientations, binning: the HOG (see :func:`hog_cells`).
        window_cells: (rows, columns) of cells of the detection window.
        margin_cells: cells of context on each side of the object inside the window (the
            detection box is the window less this margin).
        scales: the pyramid's image scale factors (the object sizes found are about
            ``(window_cells - 2 * margin_cells) * cell_size / scale`` pixels).
        pos_iou, neg_iou: a window whose object box has IoU >= pos_iou with a box of class c is a
            positive of class c's SVM, < neg_iou with all of them a negative; between: ignored.
        positives_per_image, negatives_per_image: windows sampled per training image (random).
        hard_per_image: highest-scoring margin-violating negatives per class and image, added to
            the loss and (on mining steps) to the bank.
        bank_size, mining_start, mining_every: the hard-negative bank and its rounds.
        reg: the L2 regularisation weight lambda of the SVM objective.
        score_thresh, nms_thresh, detections_per_img, pre_nms_top_n: inference.
    """

    def __init__(self, num_classes: int, cell_size: int = 8, cells_per_block: int = 2, orientations: int = 9,
                 binning: str = "linear", window_cells: Sequence[int] = (6, 6), margin_cells: int = 1,
                 scales: Sequence[float] = (2.4, 2.0, 1.7, 1.4, 1.2, 1.0, 0.84, 0.7, 0.6, 0.5),
                 pos_iou: float = 0.6, neg_iou: float = 0.3, positives_per_image: int = 32,
                 negatives_per_image: int = 64, hard_per_image: int = 8, bank_size: int = 2048,
                 mining_start: int = 50, mining_every: int = 1, reg: float = 1e-3,
                 score_thresh: float = -1.0, nms_thresh: float = 0.3, detections_per_img: int = 100,
                 pre_nms_top_n: int = 1000):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: must be an int >= 2 (background + at least one class), got {num_classes!r}")
        if binning not in BINNINGS:
            raise ValueError(f"binning: must be one of {BINNINGS}, got {binning!r}")
        for name, v in (("cell_size", cell_size), ("cells_per_block", cells_per_block),
                        ("orientations", orientations)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be a positive int, got {v!r}")
        window_cells = tuple(int(v) for v in window_cells)
        if len(window_cells) != 2 or min(window_cells) < cells_per_block:
            raise ValueError(f"window_cells: expected (rows, columns) of at least cells_per_block ({cells_per_block}) "
                             f"cells, got {window_cells}")
        if not 0 <= margin_cells or 2 * margin_cells >= min(window_cells):
            raise ValueError(f"margin_cells: must be >= 0 and leave at least one cell of object, got {margin_cells}")
        scales = [float(s) for s in scales]
        if not scales or min(scales) <= 0 or not all(math.isfinite(s) for s in scales):
            raise ValueError(f"scales: expected positive finite factors, got {scales}")
        if not 0 <= neg_iou <= pos_iou <= 1:
            raise ValueError(f"pos_iou, neg_iou: need 0 <= neg_iou <= pos_iou <= 1, got {pos_iou}, {neg_iou}")
        if reg < 0:
            raise ValueError(f"reg: must be >= 0, got {reg}")
        for name, v in (("positives_per_image", positives_per_image), ("negatives_per_image", negatives_per_image),
                        ("hard_per_image", hard_per_image), ("bank_size", bank_size),
                        ("detections_per_img", detections_per_img), ("pre_nms_top_n", pre_nms_top_n)):
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: must be an int >= 0, got {v!r}")
        if not isinstance(mining_every, int) or mining_every < 1:
            raise ValueError(f"mining_every: must be an int >= 1, got {mining_every!r}")
        self.num_classes = num_classes
        self.cell_size, self.cells_per_block, self.orientations, self.binning = (cell_size, cells_per_block,
                                                                                orientations, binning)
        self.window_cells, self.margin_cells, self.scales = window_cells, margin_cells, scales
        self.pos_iou, self.neg_iou, self.reg = pos_iou, neg_iou, reg
        self.positives_per_image, self.negatives_per_image = positives_per_image, negatives_per_image
        self.hard_per_image, self.bank_size = hard_per_image, bank_size
        self.mining_start, self.mining_every = mining_start, mining_every
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.pre_nms_top_n = detections_per_img, pre_nms_top_n
        # the window's block grid and its descriptor length
        self.window_blocks = (window_cells[0] - cells_per_block + 1, window_cells[1] - cells_per_block + 1)
        self.block_dim = cells_per_block * cells_per_block * orientations
        dim = self.window_blocks[0] * self.window_blocks[1] * self.block_dim
        # 5. the SVMs: weight [K, rows, cols, block_dim] (a window's features in scikit-image's order)
        K = num_classes - 1
        self.weight = nn.Parameter(torch.zeros(K, self.window_blocks[0], self.window_blocks[1], self.block_dim))
        self.bias = nn.Parameter(torch.zeros(K))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        # 6. hard-negative bank (training state, not saved: a resumed run mines it again)
        self.register_buffer("bank_features", torch.zeros(bank_size, dim), persistent=False)
        self.register_buffer("bank_targets", torch.zeros(bank_size, K, dtype=torch.int8), persistent=False)
        self.register_buffer("bank_count", torch.zeros((), dtype=torch.int64), persistent=False)
        self.register_buffer("bank_next", torch.zeros((), dtype=torch.int64), persistent=False)

    # -- 1.-4. features and windows of one image ----------------------------------------------------
    def pyramid(self, image: Tensor) -> List[Tuple[Tensor, float, float]]:
        """The HOG block grid of ``image`` (Tensor[3, H, W]) at each scale: a list of
        (blocks Tensor[block_dim, Hb, Wb], scale_y, scale_x) for the scales where the window fits."""
        H, W = int(image.shape[-2]), int(image.shape[-1])
        out = []
        for s in self.scales:
            h, w = max(1, int(round(H * s))), max(1, int(round(W * s)))
            if h < self.window_cells[0] * self.cell_size or w < self.window_cells[1] * self.cell_size:
                continue  # the window is larger than the image at this scale
            x = image[None] if (h, w) == (H, W) else F.interpolate(
                image[None], size=(h, w), mode="bilinear", align_corners=False, antialias=s < 1)
            cells = hog_cells(x, self.cell_size, self.orientations, self.binning)
            out.append((hog_blocks(cells, self.cells_per_block)[0], h / H, w / W))
        return out

    def window_boxes(self, rows: int, cols: int, scale_y: float, scale_x: float, device) -> Tensor:
        """Object boxes (window less margin) of the rows x cols window positions, in the original
        image's pixels: Tensor[rows * cols, 4] (x1, y1, x2, y2), row-major."""
        cs, m = self.cell_size, self.margin_cells
        ys = torch.arange(rows, device=device, dtype=torch.float32) * cs
        xs = torch.arange(cols, device=device, dtype=torch.float32) * cs
        y1 = (ys + m * cs)[:, None].expand(rows, cols)
        x1 = (xs + m * cs)[None, :].expand(rows, cols)
        hh = (self.window_cells[0] - 2 * m) * cs
        ww = (self.window_cells[1] - 2 * m) * cs
        b = torch.stack([x1 / scale_x, y1 / scale_y, (x1 + ww) / scale_x, (y1 + hh) / scale_y], -1)
        return b.reshape(-1, 4)

    def _windows(self, image: Tensor):
        """All windows of one image over the pyramid: (scores Tensor[Nw, K] (no grad), boxes
        Tensor[Nw, 4], a feature getter idx -> Tensor[n, D])."""
        levels = self.pyramid(image)
        w = self.weight.detach().permute(0, 3, 1, 2)  # [K, block_dim, rows, cols]
        scores, boxes, views, offsets, n = [], [], [], [], 0
        rb, cb = self.window_blocks
        for blocks, sy, sx in levels:
            s = F.conv2d(blocks[None], w.to(blocks.dtype), self.bias.detach().to(blocks.dtype))[0]  # [K, R, C]
            R, C = s.shape[-2:]
            scores.append(s.reshape(s.shape[0], -1).t())
            boxes.append(self.window_boxes(R, C, sy, sx, image.device))
            views.append(blocks.unfold(1, rb, 1).unfold(2, cb, 1).permute(1, 2, 3, 4, 0))  # [R, C, rb, cb, D_b]
            offsets.append(n)
            n += R * C
        K = self.num_classes - 1
        if not levels:
            dim = self.weight[0].numel()
            return image.new_zeros((0, K)), image.new_zeros((0, 4)), lambda idx: image.new_zeros((0, dim))

        def features(idx: Tensor) -> Tensor:
            out = image.new_zeros((idx.numel(), self.weight[0].numel()))
            for lv, (v, off) in enumerate(zip(views, offsets)):
                R, C = v.shape[:2]
                sel = (idx >= off) & (idx < off + R * C)
                if bool(sel.any()):
                    j = idx[sel] - off
                    out[sel] = v[j // C, j % C].reshape(int(sel.sum()), -1)
            return out

        return torch.cat(scores), torch.cat(boxes), features

    # -- 5.-6. training ---------------------------------------------------------------------------
    def _window_targets(self, boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> Tensor:
        """Tensor[Nw, K] int8: +1 positive, -1 negative, 0 ignored, per class's SVM."""
        K = self.num_classes - 1
        if gt_boxes.numel() == 0:
            return torch.full((boxes.shape[0], K), -1, dtype=torch.int8, device=boxes.device)
        iou = box_iou(boxes, gt_boxes.to(boxes.dtype))                                   # [Nw, G]
        onehot = F.one_hot(gt_labels - 1, K).to(iou.dtype)                               # [G, K]
        best = (iou[:, :, None] * onehot[None]).amax(1)                                  # [Nw, K]
        t = torch.zeros(best.shape, dtype=torch.int8, device=boxes.device)
        t[best >= self.pos_iou] = 1
        t[best < self.neg_iou] = -1
        return t

    def _select(self, scores: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
        """Training windows of one image: random positives and negatives, and the hardest
        (highest-scoring, margin-violating) negatives per class. Returns (indices, hard indices)."""
        pos = torch.where((t == 1).any(1))[0]
        neg = torch.where((t == -1).all(1))[0]
        pos = pos[torch.randperm(pos.numel(), device=pos.device)[: self.positives_per_image]]
        neg = neg[torch.randperm(neg.numel(), device=neg.device)[: self.negatives_per_image]]
        hard = []
        if self.hard_per_image:
            masked = torch.where(t == -1, scores, torch.full_like(scores, -float("inf")))
            k = min(self.hard_per_image, masked.shape[0])
            top, idx = masked.topk(k, dim=0)                                             # [k, K]
            hard.append(idx[top > -1.0])
        hard_idx = torch.unique(torch.cat(hard)) if hard else pos.new_zeros(0)
        return torch.unique(torch.cat([pos, neg, hard_idx])), hard_idx

    def _add_to_bank(self, feats: Tensor, targets: Tensor) -> None:
        n = min(feats.shape[0], self.bank_size)
        if n == 0:
            return
        feats, targets = feats[-n:], targets[-n:]
        at = (int(self.bank_next) + torch.arange(n, device=feats.device)) % self.bank_size
        self.bank_features[at] = feats.to(self.bank_features.dtype)
        self.bank_targets[at] = targets
        self.bank_next.fill_((int(self.bank_next) + n) % self.bank_size)
        self.bank_count.fill_(min(self.bank_size, int(self.bank_count) + n))

    def mining_round(self) -> bool:
        """Whether this training step adds hard negatives to the bank."""
        s = int(self.steps)
        return s >= self.mining_start and (s - self.mining_start) % self.mining_every == 0

    def svm_loss(self, feats: Tensor, targets: Tensor) -> Dict[str, Tensor]:
        """Hinge loss of windows ``feats`` Tensor[n, D] with ``targets`` Tensor[n, K] (+1 / -1 / 0):
        per class, mean over its positives + mean over its negatives, summed over classes / K; and
        ``reg / 2 * |w|^2``."""
        W = self.weight.reshape(self.weight.shape[0], -1)
        margin = feats @ W.t() + self.bias                                               # [n, K]
        y = targets.to(margin.dtype)
        h = F.relu(1.0 - y * margin)
        pos, neg = (targets == 1).to(h.dtype), (targets == -1).to(h.dtype)
        per_class = (h * pos).sum(0) / pos.sum(0).clamp(min=1) + (h * neg).sum(0) / neg.sum(0).clamp(min=1)
        return {"loss_hinge": per_class.mean(), "loss_reg": 0.5 * self.reg * (W * W).sum()}

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError("images: expected a non-empty list of Tensor[3, H, W]")
        for i, im in enumerate(images):
            if not isinstance(im, Tensor) or im.dim() != 3 or im.shape[0] not in (1, 3):
                raise ValueError(f"images[{i}]: expected Tensor[3, H, W], got "
                                 f"{list(im.shape) if isinstance(im, Tensor) else type(im).__name__}")
            if not im.is_floating_point():
                raise TypeError(f"images[{i}]: expected a floating point tensor (values in [0, 1]), got {im.dtype}")
        if self.training:
            validate_targets(targets, len(images), self.num_classes)
            return self._train_step(images, targets)
        return [self._detect(im.float()) for im in images]

    def _train_step(self, images: List[Tensor], targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        feats, tgts, hard_f, hard_t = [], [], [], []
        with torch.no_grad():
            for im, t in zip(images, targets):
                scores, boxes, features = self._windows(im.float())
                if scores.shape[0] == 0:
                    continue
                wt = self._window_targets(boxes, t["boxes"], t["labels"])
                idx, hard = self._select(scores, wt)
                feats.append(features(idx))
                tgts.append(wt[idx])
                if hard.numel():
                    hard_f.append(features(hard))
                    hard_t.append(torch.where(wt[hard] == 1, torch.zeros_like(wt[hard]), wt[hard]))
            mine = self.mining_round()
            if int(self.bank_count):
                n = int(self.bank_count)
                feats.append(self.bank_features[:n])
                tgts.append(self.bank_targets[:n])
        if feats:
            losses = self.svm_loss(torch.cat(feats), torch.cat(tgts))
        else:  # no window fits any image: nothing to learn, a zero with a gradient
            losses = {"loss_hinge": (self.weight.sum() + self.bias.sum()) * 0.0,
                      "loss_reg": 0.5 * self.reg * (self.weight ** 2).sum()}
        with torch.no_grad():
            if mine and hard_f:
                self._add_to_bank(torch.cat(hard_f), torch.cat(hard_t))
            self.steps += 1
        return losses

    # -- 7. detection -------------------------------------------------------------------------------
    @torch.no_grad()
    def _detect(self, image: Tensor) -> Dict[str, Tensor]:
        scores, boxes, _ = self._windows(image)
        K = self.num_classes - 1
        H, W = int(image.shape[-2]), int(image.shape[-1])
        s = scores.reshape(-1)
        labels = torch.arange(1, K + 1, device=image.device).repeat(scores.shape[0])
        b = boxes.repeat_interleave(K, 0) if K > 1 else boxes
        keep = torch.where(s > self.score_thresh)[0]
        if keep.numel() > self.pre_nms_top_n:
            keep = keep[s[keep].topk(self.pre_nms_top_n).indices]
        s, labels, b = s[keep], labels[keep], b[keep]
        b = torch.stack([b[:, 0].clamp(0, W), b[:, 1].clamp(0, H), b[:, 2].clamp(0, W), b[:, 3].clamp(0, H)], 1)
        keep = batched_nms(b, s, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": b[keep].float(), "labels": labels[keep], "scores": torch.sigmoid(s[keep].float())}


def hog_svm(num_classes: int, backbone: Optional[str] = None, image_size: Optional[int] = None, **kwargs) -> HOGSVM:
    """The CLI's ``hog_svm``: Dalal-Triggs' HOG (8x8 cells, 2x2 blocks, 9 unsigned bins, L2-Hys), a
    6x6-cell window (a 32 px object with one cell of context) over a pyramid of 10 scales (objects
    of about 13-64 px). ``backbone`` must be None or "hog" (there is no CNN); ``image_size`` is not
    used (the pyramid is the scale handling) and must be None. Other keywords: :class:`HOGSVM`."""
    if backbone not in (None, "hog"):
        raise ValueError(f"backbone: hog_svm has no CNN backbone (None or 'hog'), got {backbone!r}")
    if image_size is not None:
        raise ValueError(f"image_size: hog_svm scans a scale pyramid instead (pass scales=...), got {image_size!r}")
    return HOGSVM(num_classes, **kwargs)
