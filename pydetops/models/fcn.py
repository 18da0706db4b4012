"""Fully convolutional semantic segmentation (Long, Shelhamer, Darrell 2015; the decoder of
Noh et al. / the seeds' "downsample then upsample" network).

No fully connected layer anywhere: a C x H x W score map for an image of any size, one
class (C = categories + background) per pixel. Read top-down, as the seeds:

1. ``normalize`` / pad  mean/std; pad the batch to a multiple of the encoder's stride (so any
                        image, even one smaller than the stride, gives a score map of its own size);
2. ``encoder``          ``depth`` stages of two 3x3 conv-norm-ReLU layers and a 2x2 max pool
                        (stride 2 each: the network's stride is ``2 ** depth``); the pools keep
                        their argmax indices for max unpooling;
3. ``decoder``          ``depth`` stages of one up-sampler (x2) and a 3x3 conv-norm-ReLU, one of
                        the seeds' four up-samplers, all pydetops ops:
                        ``"nearest"``       nearest-neighbour unpooling (each value fills its 2x2 block),
                        ``"bed_of_nails"``  the value at the block's top-left corner, zeros elsewhere,
                        ``"max_unpool"``    back to where the matching encoder pool found its max
                                            (``max_unpool2d`` with that pool's indices),
                        ``"transpose"``     a learned 4x4 stride-2 transpose convolution
                                            (``ConvTranspose2d``, initialised to bilinear up-sampling);
4. ``classifier``       a 1x1 conv to C scores per pixel;
5. loss                 per-pixel cross-entropy, averaged over the images' own pixels (the padding
                        is ignored);
6. regions (inference)  optionally (``region_detections``, on by default) each 8-connected region of
                        pixels of one class becomes a detection: its box, its class, its mean class
                        probability as score (:func:`regions_to_detections`), so box AP can be
                        measured too.

Targets (model contract, ``pydetops/MODELS.md``): ``masks`` Tensor[N, H, W] and ``labels``
Tensor[N] per image (the instance masks the COCO reader gives with ``masks=True``). The
semantic target is built here from them (:func:`pydetops.evaluation.segmentation.semantic_target`):
each pixel takes the label of the LAST instance covering it (the highest index wins where
instances overlap), background (0) elsewhere.

``model.train(); model(images, targets)`` -> ``{"loss_sem_seg": Tensor[]}``;
``model.eval(); model(images)`` -> per image ``{"sem_seg": Tensor[C, H, W]}`` (class
probabilities, softmax over C) in the input image's size, + ``boxes`` Tensor[D, 4] (x1, y1, x2,
y2, pixels), ``labels`` Tensor[D], ``scores`` Tensor[D] of its connected regions when
``region_detections``. ``python -m pydetops.evaluate`` reports pixel accuracy and mean IoU (and
the regions' COCO box AP); ``best.pt`` is picked by mIoU.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..evaluation.segmentation import IGNORE_INDEX, semantic_target
from ..ops import BedOfNailsUnpool2d, ConvTranspose2d, MaxUnpool2d, NearestUnpool2d
from .backbones import ConvNormAct, norm_layer_by_name

__all__ = ["FCN", "fcn", "DECODERS", "validate_seg_targets", "regions_to_detections"]

DECODERS = ("nearest", "bed_of_nails", "max_unpool", "transpose")


def validate_seg_targets(targets, images: Sequence[Tensor], num_classes: int) -> None:
    """Raise ValueError naming the bad target: missing, wrong count, ``labels`` not Tensor[N]
    integer in [1, num_classes - 1], ``masks`` not Tensor[N, H, W] of its image's size."""
    if targets is None:
        raise ValueError("targets: required in training mode")
    if not isinstance(targets, (list, tuple)) or len(targets) != len(images):
        raise ValueError(f"targets: expected a list of {len(images)} dicts (one per image), got "
                         f"{len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__}")
    for i, (t, im) in enumerate(zip(targets, images)):
        if not isinstance(t, dict) or "masks" not in t or "labels" not in t:
            raise ValueError(f"targets[{i}]: must be a dict with 'masks' and 'labels' (the instance masks)")
        masks, labels = t["masks"], t["labels"]
        if not isinstance(labels, Tensor) or labels.dim() != 1:
            raise ValueError(f"targets[{i}]['labels']: expected Tensor[N], got "
                             f"{list(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"targets[{i}]['labels']: expected an integer tensor, got {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) >= num_classes):
            raise ValueError(f"targets[{i}]['labels']: labels must be in [1, {num_classes - 1}] (0 is background), "
                             f"got values in [{int(labels.min())}, {int(labels.max())}]")
        want = [labels.shape[0], int(im.shape[-2]), int(im.shape[-1])]
        if not isinstance(masks, Tensor) or list(masks.shape) != want:
            raise ValueError(f"targets[{i}]['masks']: expected Tensor{want} (one mask per label, the image's size), "
                             f"got {list(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__}")


def _max3x3(x: Tensor) -> Tensor:
    """The maximum over each pixel's 3 x 3 neighbourhood of Tensor[K, H, W] (values >= 0; zero
    padding), as two separable passes of shifted slices (cheaper than max_pool2d here)."""
    p = F.pad(x, (1, 1, 1, 1))
    r = torch.maximum(torch.maximum(p[:, :, :-2], p[:, :, 1:-1]), p[:, :, 2:])
    return torch.maximum(torch.maximum(r[:, :-2], r[:, 1:-1]), r[:, 2:])


def regions_to_detections(probs: Tensor, min_area: int = 16, max_detections: int = 100) -> Dict[str, Tensor]:
    """Detections from a class-probability map Tensor[C, H, W]: every 8-connected region of pixels
    whose most likely class is the same c >= 1 and that has at least ``min_area`` pixels gives one
    detection: ``boxes`` Tensor[D, 4] its extent (x1, y1, x2, y2; pixel i covers [i, i + 1)),
    ``labels`` Tensor[D] int64 c, ``scores`` Tensor[D] the mean probability of c over the region;
    sorted by score, at most ``max_detections``.

    The regions are found for all classes at once by label propagation: each pixel starts with its
    own index and takes the largest index of its 3 x 3 neighbours of the same class until nothing
    changes (a region ends with the index of its last pixel), then one ``unique`` groups them."""
    if probs.dim() != 3 or probs.shape[0] < 2:
        raise ValueError(f"probs: expected Tensor[C, H, W] with C >= 2, got shape {list(probs.shape)}")
    C, H, W = probs.shape
    dev = probs.device
    empty = {"boxes": probs.new_zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64, device=dev),
             "scores": probs.new_zeros(0)}
    cls = probs.argmax(0)
    fg = cls[None] == torch.arange(1, C, device=dev)[:, None, None]                     # [K, H, W]
    if not bool(fg.any()):
        return empty
    dtype = torch.float32 if H * W < 2 ** 24 else torch.float64                        # exact indices
    idx = torch.arange(1, H * W + 1, device=dev, dtype=dtype).view(1, H, W)
    zero = torch.zeros((), device=dev, dtype=dtype)
    lab = torch.where(fg, idx, zero)
    K = C - 1
    while True:
        prev = lab
        for _ in range(4):
            lab = torch.where(fg, _max3x3(lab), zero)
            # pointer jumping: take the label that the pixel named by ours holds (same region, never
            # smaller), so long regions converge in far fewer steps
            flat = lab.view(K, -1)
            jump = flat.gather(1, (flat.long() - 1).clamp(min=0)).view(K, H, W)
            lab = torch.where(fg, torch.maximum(lab, jump), zero)
        if torch.equal(lab, prev):
            break
    k, y, x = torch.nonzero(fg, as_tuple=True)
    key = k * (H * W + 1) + lab[k, y, x].long()
    uniq, comp = torch.unique(key, return_inverse=True)
    n = uniq.numel()
    area = torch.bincount(comp, minlength=n)
    xy = torch.stack([x, y], 1).to(probs.dtype)
    lo = torch.full((n, 2), float("inf"), dtype=probs.dtype, device=dev).scatter_reduce(
        0, comp[:, None].expand(-1, 2), xy, "amin")
    hi = torch.full((n, 2), -float("inf"), dtype=probs.dtype, device=dev).scatter_reduce(
        0, comp[:, None].expand(-1, 2), xy, "amax")
    score = torch.zeros(n, dtype=probs.dtype, device=dev).index_add_(0, comp, probs[k + 1, y, x]) / area
    label = torch.zeros(n, dtype=torch.int64, device=dev).scatter_(0, comp, k + 1)
    keep = torch.where(area >= min_area)[0]
    keep = keep[score[keep].argsort(descending=True)][:max_detections]
    return {"boxes": torch.cat([lo, hi + 1], 1)[keep], "labels": label[keep], "scores": score[keep]}


class _Up(nn.Module):
    """One decoder stage: x2 up-sampling by ``kind``, then a 3x3 conv-norm-ReLU."""

    def __init__(self, kind: str, cin: int, cout: int, norm_layer):
        super().__init__()
        self.kind = kind
        if kind == "nearest":
            self.up = NearestUnpool2d(2)
        elif kind == "bed_of_nails":
            self.up = BedOfNailsUnpool2d(2)
        elif kind == "max_unpool":
            self.up = MaxUnpool2d(2, 2)
        else:  # "transpose": learned, starts as bilinear up-sampling of each channel
            self.up = ConvTranspose2d(cin, cin, 4, stride=2, padding=1, bias=False).init_bilinear_()
        self.conv = ConvNormAct(cin, cout, 3, norm_layer=norm_layer)

    def forward(self, x: Tensor, indices: Tensor, size: List[int]) -> Tensor:
        if self.kind == "max_unpool":
            x = self.up(x, indices, size)
        elif self.kind == "transpose":
            # pydetops' conv_transpose2d has no autocast rule: under --amp run it in the weight's dtype
            x = self.up(x.to(self.up.weight.dtype))
        else:
            x = self.up(x)
        return self.conv(x)


class FCN(nn.Module):
    """Encoder-decoder FCN.

    Args:
        num_classes: C, background included (labels 0..C-1).
        decoder: one of :data:`DECODERS`.
        widths: the encoder stages' widths (the decoder mirrors them); ``len(widths)`` is the
            depth, the stride ``2 ** depth``.
        norm: "group" (default), "batch" or "frozen" (see ``backbones.norm_layer_by_name``).
        image_size: None (work at the input's resolution) or the short side to resize to (the
            scores are resized back to the input's size, bilinearly).
        image_mean, image_std: per-channel normalisation.
        region_detections: in eval mode also return the connected regions as detections
            (:func:`regions_to_detections`, regions of at least ``min_region_area`` pixels, at most
            ``detections_per_img``).
    """

    def __init__(self, num_classes: int, decoder: str = "transpose", widths: Sequence[int] = (16, 32, 64, 128),
                 norm: str = "group", image_size: Optional[int] = None,
                 image_mean: Sequence[float] = (0.485, 0.456, 0.406),
                 image_std: Sequence[float] = (0.229, 0.224, 0.225),
                 region_detections: bool = True, min_region_area: int = 16, detections_per_img: int = 100):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: must be an int >= 2 (background + at least one class), got {num_classes!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder: must be one of {DECODERS}, got {decoder!r}")
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ValueError(f"widths: expected a non-empty list of positive widths, got {widths}")
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise ValueError(f"image_size: must be None or a positive int, got {image_size!r}")
        if not isinstance(min_region_area, int) or min_region_area < 1:
            raise ValueError(f"min_region_area: must be a positive int, got {min_region_area!r}")
        if not isinstance(detections_per_img, int) or detections_per_img < 0:
            raise ValueError(f"detections_per_img: must be an int >= 0, got {detections_per_img!r}")
        norm_layer = norm_layer_by_name(norm)
        self.num_classes = num_classes
        self.region_detections = bool(region_detections)
        self.min_region_area, self.detections_per_img = min_region_area, detections_per_img
        self.decoder_kind = decoder
        self.image_size = image_size
        self.stride = 2 ** len(widths)
        self.register_buffer("image_mean", torch.tensor(list(image_mean), dtype=torch.float32), persistent=False)
        self.register_buffer("image_std", torch.tensor(list(image_std), dtype=torch.float32), persistent=False)
        # 2. encoder: conv-conv-pool per stage
        enc, cin = [], 3
        for w in widths:
            enc.append(nn.Sequential(ConvNormAct(cin, w, 3, norm_layer=norm_layer),
                                     ConvNormAct(w, w, 3, norm_layer=norm_layer)))
            cin = w
        self.encoder = nn.ModuleList(enc)
        # 3. decoder: mirror image, up-sample then conv
        outs = list(reversed([widths[0]] + widths[:-1]))
        self.decoder = nn.ModuleList(_Up(decoder, c_in, c_out, norm_layer)
                                     for c_in, c_out in zip(reversed(widths), outs))
        # 4. per-pixel classifier
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    # -- 1. input -------------------------------------------------------------------------------
    def _prepare(self, images: List[Tensor]) -> Tuple[Tensor, List[Tuple[int, int]]]:
        """Normalised, (resized,) zero-padded batch Tensor[B, 3, H', W'] (H', W' multiples of the
        stride) and each image's size inside it."""
        xs, sizes = [], []
        for i, im in enumerate(images):
            if not isinstance(im, Tensor) or im.dim() != 3 or im.shape[0] != 3:
                raise ValueError(f"images[{i}]: expected Tensor[3, H, W], got "
                                 f"{list(im.shape) if isinstance(im, Tensor) else type(im).__name__}")
            if not im.is_floating_point():
                raise TypeError(f"images[{i}]: expected a floating point tensor (values in [0, 1]), got {im.dtype}")
            if im.shape[1] < 1 or im.shape[2] < 1:
                raise ValueError(f"images[{i}]: empty image of shape {list(im.shape)}")
            x = (im - self.image_mean.to(im)[:, None, None]) / self.image_std.to(im)[:, None, None]
            if self.image_size is not None:
                s = self.image_size / min(im.shape[1], im.shape[2])
                hw = (max(1, round(im.shape[1] * s)), max(1, round(im.shape[2] * s)))
                x = F.interpolate(x[None], size=hw, mode="bilinear", align_corners=False)[0]
            xs.append(x)
            sizes.append((int(x.shape[1]), int(x.shape[2])))
        H = int(math.ceil(max(h for h, _ in sizes) / self.stride) * self.stride)
        W = int(math.ceil(max(w for _, w in sizes) / self.stride) * self.stride)
        batch = xs[0].new_zeros((len(xs), 3, H, W))
        for b, x in enumerate(xs):
            batch[b, :, : x.shape[1], : x.shape[2]].copy_(x)
        return batch, sizes

    # -- 2.-4. the network ------------------------------------------------------------------------
    def scores(self, x: Tensor) -> Tensor:
        """Tensor[B, 3, H, W] (H, W multiples of the stride) -> class scores (logits) Tensor[B, C, H, W]."""
        pooled: List[Tuple[Tensor, List[int]]] = []
        for stage in self.encoder:
            x = stage(x)
            size = [int(x.shape[-2]), int(x.shape[-1])]
            x, idx = F.max_pool2d(x, 2, 2, return_indices=True)
            pooled.append((idx, size))
        for up, (idx, size) in zip(self.decoder, reversed(pooled)):
            x = up(x, idx, size)
        return self.classifier(x)

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError("images: expected a non-empty list of Tensor[3, H, W]")
        if self.training:
            validate_seg_targets(targets, images, self.num_classes)
        x, sizes = self._prepare(list(images))
        logits = self.scores(x)
        if self.training:
            # 5. per-pixel cross-entropy against the semantic map of the instance masks
            target = torch.full((x.shape[0], x.shape[2], x.shape[3]), IGNORE_INDEX, dtype=torch.int64,
                                device=x.device)
            for b, (t, (h, w)) in enumerate(zip(targets, sizes)):
                sem = semantic_target(t["masks"], t["labels"])
                if sem.shape != (h, w):
                    sem = F.interpolate(sem[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
                target[b, :h, :w] = sem
            return {"loss_sem_seg": F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)}
        out = []
        for b, (im, (h, w)) in enumerate(zip(images, sizes)):
            s = logits[b:b + 1, :, :h, :w]
            if (h, w) != (int(im.shape[1]), int(im.shape[2])):
                s = F.interpolate(s, size=(int(im.shape[1]), int(im.shape[2])), mode="bilinear", align_corners=False)
            probs = s[0].float().softmax(0)
            res = {"sem_seg": probs.to(im.dtype)}
            if self.region_detections:  # 6. connected regions as detections
                res.update(regions_to_detections(probs, self.min_region_area, self.detections_per_img))
            out.append(res)
        return out


def fcn(num_classes: int, backbone: Optional[str] = None, decoder: str = "transpose",
        widths: Sequence[int] = (16, 32, 64, 128), norm: str = "group", image_size: Optional[int] = None,
        **kwargs) -> FCN:
    """The CLI's ``fcn``: a small FCN that trains from scratch on a CPU (stride 16).

    ``backbone``: None or "tiny" (the default widths 16-32-64-128) or "small" (32-64-128-256),
    optionally followed by "-" and a decoder (so the command line picks it:
    ``--backbone tiny-max_unpool``, ``--backbone small-bed_of_nails``); the other arguments as
    :class:`FCN`.
    """
    if backbone is not None:
        size, _, dec = str(backbone).partition("-")
        if size not in ("tiny", "small") or (dec and dec not in DECODERS):
            raise ValueError(f"backbone: must be 'tiny' or 'small', optionally with '-DECODER' (DECODER one of "
                             f"{', '.join(DECODERS)}), got {backbone!r}")
        if size == "small":
            widths = (32, 64, 128, 256)
        if dec:
            decoder = dec
    return FCN(num_classes, decoder=decoder, widths=widths, norm=norm, image_size=image_size, **kwargs)


fcn.target_fields = ("masks",)
