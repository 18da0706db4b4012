"""Anchors (Faster R-CNN / RetinaNet), SSD default boxes, the YOLO grid, and R-CNN box coding.

Boxes are ``(x1, y1, x2, y2)`` in pixels; a box's width is ``x2 - x1`` (no "+1").

* ``grid_anchors`` (C++ op ``torch.ops.pydetops.grid_anchors``) shifts the base anchors of
  one feature map to each of its cells; ``AnchorGenerator`` builds the same anchors, in the
  same order and dtype, as ``torchvision.models.detection.anchor_utils.AnchorGenerator``.
  Anchors are constants: ``grid_anchors`` has no gradient (a backward through it raises).
* ``DefaultBoxGenerator``: SSD's default boxes, as torchvision's (same constructor and output).
* ``yolo_grid`` / ``yolo_decode``: YOLOv1's S x S cell offsets and cell-relative predictions
  turned into image boxes.
* ``encode_boxes`` / ``decode_boxes`` (C++ ops) and ``BoxCoder``: the R-CNN box parametrisation
  (targets t = (wx (Gx - Px) / Pw, wy (Gy - Py) / Ph, ww log(Gw / Pw), wh log(Gh / Ph)) with
  centres (x, y) and sizes (w, h)), as torchvision's ``_utils.encode_boxes`` / ``BoxCoder``.
  Both are differentiable (w.r.t. the boxes and codes; weights are constants).
"""
import math
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ._meta import accumulate_dtype
from ._utils import int_list

__all__ = [
    "ImageList",
    "grid_anchors",
    "AnchorGenerator",
    "DefaultBoxGenerator",
    "yolo_grid",
    "yolo_decode",
    "encode_boxes",
    "decode_boxes",
    "BoxCoder",
]

_DEFAULT_CLAMP = math.log(1000.0 / 16)


class ImageList:
    """A batch of images padded to one size, and the size of each before padding.

    ``tensors``: Tensor[B, C, H, W]; ``image_sizes``: one ``(height, width)`` per image.
    torchvision's ``ImageList`` (or any object with these two attributes) works wherever
    pydetops takes an ``image_list``.
    """

    def __init__(self, tensors: Tensor, image_sizes: List[Tuple[int, int]]) -> None:
        self.tensors = tensors
        self.image_sizes = image_sizes

    def to(self, device: torch.device) -> "ImageList":
        return ImageList(self.tensors.to(device), self.image_sizes)


# ---------------------------------------------------------------------------
# anchors
# ---------------------------------------------------------------------------


def grid_anchors(base_anchors: Tensor, feature_size: Tuple[int, int], stride: Tuple[int, int]) -> Tensor:
    """The anchors of one feature map: every base anchor shifted to every cell.

    Args:
        base_anchors: Tensor[A, 4] (x1, y1, x2, y2) centred on (0, 0), floating point.
        feature_size: (h, w) of the feature map, both >= 0.
        stride: (stride_y, stride_x) in pixels, both >= 1.

    Returns:
        Tensor[h * w * A, 4] in ``base_anchors``' dtype: row ``(y * w + x) * A + a`` is
        ``base_anchors[a] + (x * stride_x, y * stride_y, x * stride_x, y * stride_y)``
        (cells in row-major order, the A anchors of a cell together, as torchvision).
        Not differentiable.
    """
    if len(feature_size) != 2:
        raise ValueError(f"feature_size must be (height, width), got {feature_size}")
    if len(stride) != 2:
        raise ValueError(f"stride must be (stride_y, stride_x), got {stride}")
    if not torch.jit.is_scripting():
        fs = int_list(feature_size, "feature_size")
        st = int_list(stride, "stride")
        return torch.ops.pydetops.grid_anchors(base_anchors, fs, st)
    return torch.ops.pydetops.grid_anchors(
        base_anchors, [int(feature_size[0]), int(feature_size[1])], [int(stride[0]), int(stride[1])]
    )


class AnchorGenerator(nn.Module):
    """Anchors for a set of feature maps (Faster R-CNN's RPN, RetinaNet), as torchvision's.

    ``sizes[i]`` and ``aspect_ratios[i]`` (ratio = height / width) give the
    ``len(sizes[i]) * len(aspect_ratios[i])`` anchors at each cell of feature map i
    (ratios outer, sizes inner). A flat ``sizes`` tuple means one size per feature map,
    and a flat ``aspect_ratios`` tuple is used for every feature map.

    ``forward(image_list, feature_maps)`` returns, for each image of ``image_list``, a
    Tensor[sum_i H_i * W_i * A_i, 4] (x1, y1, x2, y2) in pixels of the padded batch, in
    ``feature_maps[0]``'s dtype and device: feature map by feature map, then cell by cell
    (row-major), then anchor by anchor. The stride of map i is
    ``(image_H // H_i, image_W // W_i)``, from the padded batch ``image_list.tensors``.
    """

    __annotations__ = {"cell_anchors": List[torch.Tensor]}

    def __init__(self, sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),)):
        super().__init__()
        if not isinstance(sizes[0], (list, tuple)):
            sizes = tuple((s,) for s in sizes)
        if not isinstance(aspect_ratios[0], (list, tuple)):
            aspect_ratios = (aspect_ratios,) * len(sizes)
        if len(sizes) != len(aspect_ratios):
            raise ValueError(
                f"sizes and aspect_ratios must have one entry per feature map, got {len(sizes)} and "
                f"{len(aspect_ratios)}"
            )
        self.sizes = sizes
        self.aspect_ratios = aspect_ratios
        self.cell_anchors = [self.generate_anchors(s, a) for s, a in zip(sizes, aspect_ratios)]

    def generate_anchors(
        self,
        scales: List[int],
        aspect_ratios: List[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),
    ) -> Tensor:
        """Zero-centred anchors Tensor[len(aspect_ratios) * len(scales), 4], rounded to integers
        (half to even), computed in ``dtype`` as torchvision does (so the rounding agrees)."""
        s = torch.as_tensor(scales, dtype=dtype, device=device)
        r = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h_ratio = torch.sqrt(r)
        w_ratio = 1 / h_ratio
        half_w = (w_ratio[:, None] * s[None, :]).reshape(-1)
        half_h = (h_ratio[:, None] * s[None, :]).reshape(-1)
        return (torch.stack([-half_w, -half_h, half_w, half_h], dim=1) / 2).round()

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device) -> None:
        self.cell_anchors = [a.to(dtype=dtype, device=device) for a in self.cell_anchors]

    def num_anchors_per_location(self) -> List[int]:
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

    def grid_anchors(self, grid_sizes: List[List[int]], strides: List[List[int]]) -> List[Tensor]:
        """One Tensor[H_i * W_i * A_i, 4] per feature map (``strides`` as (stride_y, stride_x) ints)."""
        if not (len(grid_sizes) == len(strides) == len(self.cell_anchors)):
            raise ValueError(
                f"feature_maps: got {len(grid_sizes)} feature maps, but the generator has sizes and "
                f"aspect_ratios for {len(self.cell_anchors)}"
            )
        out: List[Tensor] = []
        for size, stride, base in zip(grid_sizes, strides, self.cell_anchors):
            out.append(torch.ops.pydetops.grid_anchors(base, [size[0], size[1]], [stride[0], stride[1]]))
        return out

    def forward(self, image_list: ImageList, feature_maps: List[Tensor]) -> List[Tensor]:
        if len(feature_maps) == 0:
            raise ValueError("feature_maps must hold at least one Tensor[..., H, W]")
        image_h, image_w = int(image_list.tensors.shape[-2]), int(image_list.tensors.shape[-1])
        grid_sizes: List[List[int]] = []
        strides: List[List[int]] = []
        for fm in feature_maps:
            if fm.dim() < 2:
                raise ValueError(f"feature_maps must be Tensor[..., H, W], got shape {list(fm.shape)}")
            gh, gw = int(fm.shape[-2]), int(fm.shape[-1])
            if gh <= 0 or gw <= 0 or gh > image_h or gw > image_w:
                raise ValueError(
                    f"feature_maps: a feature map of size {(gh, gw)} does not fit the image size "
                    f"{(image_h, image_w)} (its stride would be < 1)"
                )
            grid_sizes.append([gh, gw])
            strides.append([image_h // gh, image_w // gw])
        self.set_cell_anchors(feature_maps[0].dtype, feature_maps[0].device)
        levels = self.grid_anchors(grid_sizes, strides)
        anchors = levels[0] if len(levels) == 1 else torch.cat(levels)
        num_images = len(image_list.image_sizes)
        # One tensor per image, none aliasing another (as torchvision).
        result: List[Tensor] = []
        for i in range(num_images):
            result.append(anchors if i == 0 else anchors.clone())
        return result


class DefaultBoxGenerator(nn.Module):
    """SSD's default boxes for a set of feature maps, as torchvision's ``DefaultBoxGenerator``.

    Args:
        aspect_ratios: for each feature map k, the extra aspect ratios ar; each gives two
            boxes (s_k sqrt(ar), s_k / sqrt(ar)) and its transpose, after the two square boxes
            s_k and sqrt(s_k s_{k+1}).
        min_ratio, max_ratio: the scales s_k are spread linearly from min_ratio to max_ratio
            (then 1.0) when ``scales`` is not given.
        scales: the scales s_k (one per feature map plus one).
        steps: for each feature map, the step in pixels between cell centres; by default
            the feature map tiles the image.
        clip: clamp the (w, h) of each box to [0, 1] (relative to the image) before use.

    ``forward(image_list, feature_maps)`` returns for each image a Tensor[sum_k H_k W_k
    (2 + 2 len(aspect_ratios[k])), 4] (x1, y1, x2, y2) in pixels, cell by cell (row-major),
    box by box. dtype: float64 for float64 feature maps, otherwise float32 (as torchvision).
    """

    def __init__(
        self,
        aspect_ratios: List[List[int]],
        min_ratio: float = 0.15,
        max_ratio: float = 0.9,
        scales: Optional[List[float]] = None,
        steps: Optional[List[int]] = None,
        clip: bool = True,
    ):
        super().__init__()
        if steps is not None and len(aspect_ratios) != len(steps):
            raise ValueError("aspect_ratios and steps should have the same length")
        for ratios in aspect_ratios:
            for ar in ratios:
                if not (isinstance(ar, (int, float)) and math.isfinite(ar) and ar > 0):
                    raise ValueError(f"aspect_ratios must hold finite numbers > 0, got {ar!r} in {list(ratios)}")
        self.aspect_ratios = aspect_ratios
        self.steps = steps
        self.clip = clip
        k = len(aspect_ratios)
        if scales is None:
            if k > 1:
                span = max_ratio - min_ratio
                self.scales = [min_ratio + span * i / (k - 1.0) for i in range(k)] + [1.0]
            else:
                self.scales = [min_ratio, max_ratio]
        else:
            if len(scales) < k + 1:
                raise ValueError(f"scales must hold len(aspect_ratios) + 1 = {k + 1} values, got {len(scales)}")
            self.scales = scales
        for s in self.scales:
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"scales (min_ratio, max_ratio) must be finite numbers > 0, got {list(self.scales)}")
        self._wh_pairs = self._generate_wh_pairs(k)

    def _generate_wh_pairs(
        self, num_outputs: int, dtype: torch.dtype = torch.float32, device: torch.device = torch.device("cpu")
    ) -> List[Tensor]:
        pairs: List[Tensor] = []
        for k in range(num_outputs):
            s = self.scales[k]
            s_prime = math.sqrt(self.scales[k] * self.scales[k + 1])
            wh = [[s, s], [s_prime, s_prime]]
            for ar in self.aspect_ratios[k]:
                r = math.sqrt(ar)
                wh.append([s * r, s / r])
                wh.append([s / r, s * r])
            pairs.append(torch.as_tensor(wh, dtype=dtype, device=device))
        return pairs

    def num_anchors_per_location(self) -> List[int]:
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(aspect_ratios={self.aspect_ratios}, clip={self.clip}, "
            f"scales={self.scales}, steps={self.steps})"
        )

    def _default_boxes_cxcywh(self, grid_sizes: List[List[int]], image_size: List[int], dtype: torch.dtype) -> Tensor:
        per_level: List[Tensor] = []
        for k, (fh, fw) in enumerate(grid_sizes):
            if self.steps is not None:
                x_div = image_size[1] / self.steps[k]
                y_div = image_size[0] / self.steps[k]
            else:
                x_div, y_div = fw, fh
            # Cell centres relative to the image, computed in float32 then cast (as torchvision).
            cx = ((torch.arange(0, fw) + 0.5) / x_div).to(dtype=dtype)
            cy = ((torch.arange(0, fh) + 0.5) / y_div).to(dtype=dtype)
            wh = self._wh_pairs[k].clamp(min=0, max=1) if self.clip else self._wh_pairs[k]
            out_dtype = torch.promote_types(dtype, wh.dtype)
            p = wh.shape[0]
            centres = torch.stack(
                [cx[None, :].expand(fh, fw), cy[:, None].expand(fh, fw)], dim=-1
            ).reshape(fh * fw, 1, 2).to(out_dtype)
            boxes = torch.cat([centres.expand(fh * fw, p, 2), wh.to(out_dtype)[None].expand(fh * fw, p, 2)], dim=-1)
            per_level.append(boxes.reshape(-1, 4))
        return torch.cat(per_level, dim=0)

    def forward(self, image_list: ImageList, feature_maps: List[Tensor]) -> List[Tensor]:
        if len(feature_maps) != len(self.aspect_ratios):
            raise ValueError(
                f"feature_maps: got {len(feature_maps)} feature maps for {len(self.aspect_ratios)} aspect_ratios"
            )
        grid_sizes = [[int(f.shape[-2]), int(f.shape[-1])] for f in feature_maps]
        image_size = [int(image_list.tensors.shape[-2]), int(image_list.tensors.shape[-1])]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        boxes = self._default_boxes_cxcywh(grid_sizes, image_size, dtype).to(device)
        scale = torch.tensor([image_size[1], image_size[0]], dtype=boxes.dtype, device=device)
        xyxy = torch.cat([(boxes[:, :2] - 0.5 * boxes[:, 2:]) * scale, (boxes[:, :2] + 0.5 * boxes[:, 2:]) * scale], -1)
        return [xyxy if i == 0 else xyxy.clone() for i in range(len(image_list.image_sizes))]


# ---------------------------------------------------------------------------
# YOLO (v1) grid
# ---------------------------------------------------------------------------


def yolo_grid(
    size: Union[int, Tuple[int, int], List[int]], dtype: torch.dtype = torch.float32, device: Optional[torch.device] = None
) -> Tensor:
    """Cell offsets of a YOLO grid: Tensor[Sy, Sx, 2] whose [i, j] is (x, y) = (j, i).

    ``size``: S (an int, S x S cells, YOLOv1 uses 7) or (Sy, Sx).
    """
    if isinstance(size, int):
        sy, sx = size, size
    else:
        if len(size) != 2:
            raise ValueError(f"size must be S or (Sy, Sx), got {size}")
        sy, sx = int(size[0]), int(size[1])
    if sy < 0 or sx < 0:
        raise ValueError(f"size must be >= 0, got {(sy, sx)}")
    ys = torch.arange(sy, dtype=dtype, device=device)
    xs = torch.arange(sx, dtype=dtype, device=device)
    return torch.stack([xs[None, :].expand(sy, sx), ys[:, None].expand(sy, sx)], dim=-1)


def yolo_decode(boxes: Tensor, image_size: Tuple[int, int], sqrt_wh: bool = True) -> Tensor:
    """YOLOv1 box predictions -> (x1, y1, x2, y2) boxes in pixels (differentiable plain torch).

    Args:
        boxes: Tensor[..., Sy, Sx, B, 4]: for cell (i, j) (row i, column j) and box b,
            (x, y, w, h) where (x, y) is the box centre relative to the cell's top-left corner
            in cell units (in [0, 1] inside the cell) and (w, h) is the size relative to the
            whole image. With ``sqrt_wh`` (the default, as in the YOLOv1 paper, whose network
            predicts the square roots of the width and height) the last two values are
            sqrt(w), sqrt(h) and are squared here.
        image_size: (height, width) of the image in pixels.

    Returns:
        Tensor[..., Sy, Sx, B, 4]: centre ((j + x) W / Sx, (i + y) H / Sy), size (w W, h H).
    """
    if boxes.dim() < 4 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be a Tensor[..., Sy, Sx, B, 4], got shape {list(boxes.shape)}")
    if len(image_size) != 2:
        raise ValueError(f"image_size must be (height, width), got {image_size}")
    if not boxes.is_floating_point():
        raise TypeError(f"boxes must be a floating-point tensor, got {boxes.dtype}")
    sy, sx = int(boxes.shape[-4]), int(boxes.shape[-3])
    img_h, img_w = float(image_size[0]), float(image_size[1])
    grid = yolo_grid([sy, sx], dtype=boxes.dtype, device=boxes.device)[:, :, None, :]  # [Sy, Sx, 1, 2]
    cx = (grid[..., 0] + boxes[..., 0]) * (img_w / sx)
    cy = (grid[..., 1] + boxes[..., 1]) * (img_h / sy)
    w = boxes[..., 2] * boxes[..., 2] if sqrt_wh else boxes[..., 2]
    h = boxes[..., 3] * boxes[..., 3] if sqrt_wh else boxes[..., 3]
    w = w * img_w
    h = h * img_h
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


# ---------------------------------------------------------------------------
# box coding
# ---------------------------------------------------------------------------


def encode_boxes(reference_boxes: Tensor, proposals: Tensor, weights: Tensor) -> Tensor:
    """Regression targets of ``reference_boxes`` (ground truth) relative to ``proposals``.

    Args:
        reference_boxes: Tensor[N, 4] (x1, y1, x2, y2).
        proposals: Tensor[N, 4] (x1, y1, x2, y2), the boxes the targets are relative to.
        weights: Tensor of 4 values (wx, wy, ww, wh).

    Returns:
        Tensor[N, 4] (dx, dy, dw, dh) = (wx (Gx - Px) / Pw, wy (Gy - Py) / Ph, ww log(Gw / Pw),
        wh log(Gh / Ph)) with centres (x, y) and widths/heights (w, h) of reference G and
        proposal P; dtype: the promoted box dtype (float32 for integer boxes); float16/bfloat16
        are computed in float32. Zero-width proposals give inf/NaN, as torchvision.
        Differentiable w.r.t. both box sets (not the weights).
    """
    return torch.ops.pydetops.encode_boxes(reference_boxes, proposals, weights)


def decode_boxes(
    rel_codes: Tensor,
    boxes: Tensor,
    weights: Tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    clamp: float = _DEFAULT_CLAMP,
    image_size: Optional[Tuple[int, int]] = None,
) -> Tensor:
    """Apply R-CNN box regression codes to boxes (torchvision's ``BoxCoder.decode_single``) in one pass.

    Args:
        rel_codes: Tensor[N, K * 4], K sets of codes (dx, dy, dw, dh) per box (per class).
        boxes: Tensor[N, 4] (x1, y1, x2, y2), cast to ``rel_codes``' dtype as torchvision does.
        weights: (wx, wy, ww, wh), finite and non-zero; the codes are divided by them.
        clamp: dw / ww and dh / wh are clamped to at most this before exp (default log(1000 / 16)).
        image_size: optional (height, width): the decoded boxes are clipped to [0, width] x
            [0, height] in the same pass.

    Returns:
        Tensor[N, K * 4] (x1, y1, x2, y2) per class, in ``rel_codes``' dtype (float16/bfloat16
        computed in float32). Differentiable w.r.t. ``rel_codes`` and ``boxes``; where the
        clamp or the clip is active the gradient is zero, as torch.clamp's.
        A zero-width box gives a zero-width box at its centre for any finite code.
    """
    if len(weights) != 4:
        raise ValueError(f"weights must be 4 numbers (wx, wy, ww, wh), got {len(weights)}")
    w = [float(weights[0]), float(weights[1]), float(weights[2]), float(weights[3])]
    size: Optional[List[int]] = None
    if image_size is not None:
        if len(image_size) != 2:
            raise ValueError(f"image_size must be (height, width), got {image_size}")
        size = [int(image_size[0]), int(image_size[1])]
    return torch.ops.pydetops.decode_boxes(rel_codes, boxes, w, float(clamp), size)


class BoxCoder:
    """Encodes boxes as R-CNN regression targets and decodes them, as torchvision's ``BoxCoder``.

    ``weights``: (wx, wy, ww, wh); ``bbox_xform_clip``: the clamp of dw, dh before exp.
    """

    def __init__(
        self, weights: Tuple[float, float, float, float], bbox_xform_clip: float = math.log(1000.0 / 16)
    ) -> None:
        self.weights = weights
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, reference_boxes: List[Tensor], proposals: List[Tensor]) -> List[Tensor]:
        """Per-image lists of Tensor[N_i, 4] -> targets split per image (a tuple, as torchvision)."""
        boxes_per_image = [len(b) for b in reference_boxes]
        targets = self.encode_single(torch.cat(reference_boxes, dim=0), torch.cat(proposals, dim=0))
        return targets.split(boxes_per_image, 0)

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """Tensor[N, 4], Tensor[N, 4] -> Tensor[N, 4] targets (weights in the reference boxes' dtype)."""
        dtype = reference_boxes.dtype if reference_boxes.is_floating_point() else torch.float32
        # The weights tensor is cached per (values, dtype, device): building it cost ~5 us a call.
        key = (tuple(self.weights), dtype, reference_boxes.device)
        cache = self.__dict__.setdefault("_weights_cache", {})
        weights = cache.get(key)
        if weights is None:
            weights = torch.as_tensor(self.weights, dtype=dtype, device=reference_boxes.device)
            if len(cache) >= 8:
                cache.clear()
            cache[key] = weights
        return torch.ops.pydetops.encode_boxes(reference_boxes, proposals, weights)

    def decode(self, rel_codes: Tensor, boxes: List[Tensor]) -> Tensor:
        """Codes for the concatenated boxes of all images -> Tensor[N, K, 4] (x1, y1, x2, y2)."""
        if not isinstance(boxes, (list, tuple)):
            raise TypeError(f"boxes must be a list of Tensor[N_i, 4], got {type(boxes)}")
        if not isinstance(rel_codes, Tensor):
            raise TypeError(f"rel_codes must be a Tensor, got {type(rel_codes)}")
        if len(boxes) == 0:
            raise ValueError("boxes must hold one Tensor[N_i, 4] per image, got an empty list")
        box_sum = sum(int(b.size(0)) for b in boxes)
        concat = torch.cat(boxes, dim=0)
        if box_sum > 0:
            if rel_codes.numel() % (box_sum * 4) != 0:
                raise ValueError(
                    f"rel_codes must hold 4 * K codes for each of the {box_sum} boxes, got shape "
                    f"{list(rel_codes.shape)} ({rel_codes.numel()} values)"
                )
            rel_codes = rel_codes.reshape(box_sum, -1)
        pred = self.decode_single(rel_codes, concat)
        if box_sum > 0:
            pred = pred.reshape(box_sum, -1, 4)
        return pred

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """Tensor[N, K * 4] codes, Tensor[N, 4] boxes -> Tensor[N, K * 4] boxes (see ``decode_boxes``)."""
        return decode_boxes(rel_codes, boxes, self.weights, self.bbox_xform_clip)


# ---- fake kernels (shapes and dtypes only), for torch.compile / FakeTensor ----


@torch.library.register_fake("pydetops::grid_anchors")
def _grid_anchors_fake(base_anchors, feature_size, stride):
    torch._check(base_anchors.dim() == 2 and base_anchors.shape[1] == 4, lambda: "base_anchors must be Tensor[A, 4]")
    torch._check(len(feature_size) == 2 and feature_size[0] >= 0 and feature_size[1] >= 0, lambda: "feature_size")
    torch._check(len(stride) == 2 and stride[0] >= 1 and stride[1] >= 1, lambda: "stride must be >= 1")
    n = feature_size[0] * feature_size[1] * base_anchors.shape[0]
    return base_anchors.new_empty((n, 4))


@torch.library.register_fake("pydetops::decode_boxes")
def _decode_boxes_fake(rel_codes, boxes, weights=(1.0, 1.0, 1.0, 1.0), clamp=_DEFAULT_CLAMP, image_size=None):
    torch._check(rel_codes.dim() == 2 and rel_codes.shape[1] % 4 == 0, lambda: "rel_codes must be Tensor[N, K*4]")
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "boxes must be Tensor[N, 4]")
    torch._check(rel_codes.shape[0] == boxes.shape[0], lambda: "rel_codes and boxes must have as many rows")
    return rel_codes.new_empty(rel_codes.shape)


@torch.library.register_fake("pydetops::_decode_boxes_backward")
def _decode_boxes_backward_fake(grad, rel_codes, boxes, weights, clamp, image_size):
    boxes_dtype = boxes.dtype if boxes.is_floating_point() else accumulate_dtype(rel_codes.dtype)
    return (
        rel_codes.new_empty(rel_codes.shape),
        boxes.new_empty(boxes.shape, dtype=boxes_dtype),
    )


def _encode_result_dtype(reference_boxes, proposals):
    t = torch.promote_types(reference_boxes.dtype, proposals.dtype)
    return t if t.is_floating_point else torch.float32


@torch.library.register_fake("pydetops::encode_boxes")
def _encode_boxes_fake(reference_boxes, proposals, weights):
    torch._check(reference_boxes.dim() == 2 and reference_boxes.shape[1] == 4, lambda: "reference_boxes: Tensor[N, 4]")
    torch._check(proposals.dim() == 2 and proposals.shape[1] == 4, lambda: "proposals: Tensor[N, 4]")
    torch._check(reference_boxes.shape[0] == proposals.shape[0], lambda: "as many reference_boxes as proposals")
    torch._check(weights.numel() == 4, lambda: "weights must hold 4 values")
    return reference_boxes.new_empty(reference_boxes.shape, dtype=_encode_result_dtype(reference_boxes, proposals))


@torch.library.register_fake("pydetops::_encode_boxes_backward")
def _encode_boxes_backward_fake(grad, reference_boxes, proposals, weights):
    acc = accumulate_dtype(_encode_result_dtype(reference_boxes, proposals))

    def grad_of(t):
        return t.new_empty(t.shape, dtype=t.dtype if t.is_floating_point() else acc)

    return grad_of(reference_boxes), grad_of(proposals)
