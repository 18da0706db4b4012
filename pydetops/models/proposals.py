"""Region proposals for the detectors that take them from outside (R-CNN, SPPNet, Fast R-CNN).

* :class:`SelectiveSearch`: Uijlings et al.'s selective search (OpenCV's ``ximgproc``, from the
  optional package ``opencv-contrib-python-headless``: ``pip install pydetops[rcnn]``), "fast"
  or "quality" mode, the first ``max_proposals`` boxes of its ranking.
* :class:`ProposalCache`: wraps any ``proposal_fn(image) -> Tensor[P, 4]`` and remembers its
  answer per image (key: a hash of the image's values, dtype and size), in memory and, after
  :meth:`ProposalCache.set_cache_dir`, on disk; so training does not recompute the proposals
  of an image it has seen (a flipped image is another image: it gets its own entry).
* :func:`image_proposals`: the proposals of a batch, checked (``Tensor[P, 4]``), clipped to the
  image, degenerate boxes dropped.

Boxes are (x1, y1, x2, y2) in the input image's pixels.
"""
import hashlib
import os
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from ..ops import clip_boxes_to_image, remove_small_boxes

__all__ = ["SelectiveSearch", "ProposalCache", "image_proposals", "selective_search_available", "check_images",
           "make_proposal_fn"]

_INSTALL_HINT = ("selective search needs OpenCV's contrib modules (cv2.ximgproc): "
                 "pip install opencv-contrib-python-headless  (or: pip install pydetops[rcnn]); "
                 "or pass proposal_fn=... / proposals=... to the model")


def _ximgproc():
    try:
        import cv2
    except ImportError:
        raise ImportError(_INSTALL_HINT) from None
    if not hasattr(cv2, "ximgproc") or not hasattr(cv2.ximgproc, "segmentation"):
        raise ImportError(_INSTALL_HINT + f" (the installed cv2 {getattr(cv2, '__version__', '?')} has no ximgproc: "
                          "opencv-python / opencv-python-headless lack the contrib modules)")
    return cv2


def selective_search_available() -> bool:
    """Whether ``cv2.ximgproc`` imports (the optional extra ``pydetops[rcnn]`` is installed)."""
    try:
        _ximgproc()
        return True
    except ImportError:
        return False


class SelectiveSearch:
    """``__call__(image: Tensor[3, H, W] float in [0, 1] (RGB)) -> Tensor[P, 4]`` float32 boxes.

    Args:
        mode: "fast" (the paper's fast mode: HSV + Lab colour spaces, two strategies) or "quality".
        max_proposals: the first this many of selective search's ranking (the papers: ~2000).
        min_size: boxes narrower or lower than this many pixels are dropped.
        scale: the image is resized by this factor before the search (more, smaller segments on
            small images); the boxes are scaled back.
        threads: OpenCV threads for the search (1: leave the cores to torch).
    """

    def __init__(self, mode: str = "fast", max_proposals: int = 2000, min_size: float = 2.0,
                 scale: float = 1.0, threads: int = 1):
        if mode not in ("fast", "quality"):
            raise ValueError(f"mode: must be 'fast' or 'quality', got {mode!r}")
        if not isinstance(max_proposals, int) or max_proposals < 1:
            raise ValueError(f"max_proposals: must be an int >= 1, got {max_proposals!r}")
        if not scale > 0:
            raise ValueError(f"scale: must be > 0, got {scale!r}")
        _ximgproc()  # fail at construction, with the install hint, not at the first image
        self.mode, self.max_proposals, self.min_size = mode, max_proposals, float(min_size)
        self.scale, self.threads = float(scale), int(threads)

    def __call__(self, image: Tensor) -> Tensor:
        cv2 = _ximgproc()
        import numpy as np
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image: expected Tensor[3, H, W], got "
                             f"{list(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
        # RGB [0, 1] -> BGR uint8, as OpenCV reads images
        arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).flip(0).permute(1, 2, 0)
        arr = np.ascontiguousarray(arr.cpu().numpy())
        if self.scale != 1.0:
            arr = cv2.resize(arr, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_LINEAR)
        threads = cv2.getNumThreads()
        cv2.setNumThreads(self.threads)
        try:
            ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
            ss.setBaseImage(arr)
            if self.mode == "fast":
                ss.switchToSelectiveSearchFast()
            else:
                ss.switchToSelectiveSearchQuality()
            rects = ss.process()  # (x, y, w, h), best ranked first
        finally:
            cv2.setNumThreads(threads)
        if rects is None or len(rects) == 0:
            return torch.zeros((0, 4), dtype=torch.float32)
        r = torch.as_tensor(np.asarray(rects, dtype=np.float32)) / self.scale
        boxes = torch.cat([r[:, :2], r[:, :2] + r[:, 2:]], dim=1)
        return boxes[remove_small_boxes(boxes, self.min_size)][: self.max_proposals]

    def __repr__(self) -> str:
        return (f"SelectiveSearch(mode={self.mode!r}, max_proposals={self.max_proposals}, "
                f"min_size={self.min_size}, scale={self.scale})")


def _image_key(image: Tensor) -> str:
    """A hash of the image's values, dtype and size (the same pixels give the same key)."""
    t = image.detach().contiguous().cpu()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class ProposalCache:
    """Calls ``proposal_fn`` once per distinct image and remembers its boxes.

    ``proposal_fn(image: Tensor[3, H, W]) -> Tensor[P, 4]`` (x1, y1, x2, y2, input pixels).
    Entries live in memory (``max_entries``, oldest dropped first) and, once :meth:`set_cache_dir`
    names a folder, also as ``DIR/<key>.pt`` files that a later run (or a resumed one) reads back.
    ``hits`` / ``misses`` count the lookups. Not part of the model's ``state_dict``.
    """

    def __init__(self, proposal_fn: Callable[[Tensor], Tensor], cache_dir: Optional[str] = None,
                 max_entries: int = 100_000):
        if not callable(proposal_fn):
            raise TypeError(f"proposal_fn: must be callable (image -> Tensor[P, 4]), got {type(proposal_fn).__name__}")
        self.proposal_fn = proposal_fn
        self.max_entries = int(max_entries)
        self.cache_dir: Optional[str] = None
        self._memory: Dict[str, Tensor] = {}
        self.hits = 0
        self.misses = 0
        if cache_dir is not None:
            self.set_cache_dir(cache_dir)

    def set_cache_dir(self, cache_dir: Optional[str]) -> None:
        """Also keep the proposals as files under ``cache_dir`` (created); None: memory only."""
        if cache_dir is not None:
            os.makedirs(cache_dir, exist_ok=True)
        self.cache_dir = cache_dir

    def __len__(self) -> int:
        return len(self._memory)

    def __call__(self, image: Tensor) -> Tensor:
        key = _image_key(image)
        boxes = self._memory.get(key)
        if boxes is None and self.cache_dir is not None:
            path = os.path.join(self.cache_dir, key + ".pt")
            if os.path.exists(path):
                try:
                    boxes = torch.load(path, map_location="cpu", weights_only=True)
                except Exception:  # a partial file of a killed run: recompute
                    boxes = None
                if boxes is not None:
                    self._remember(key, boxes)
        if boxes is not None:
            self.hits += 1
            return boxes.to(image.device)
        self.misses += 1
        boxes = _check_boxes(self.proposal_fn(image), "proposal_fn").detach().float().cpu()
        self._remember(key, boxes)
        if self.cache_dir is not None:
            path = os.path.join(self.cache_dir, key + ".pt")
            tmp = f"{path}.tmp-{os.getpid()}"
            torch.save(boxes, tmp)
            os.replace(tmp, path)
        return boxes.to(image.device)

    def _remember(self, key: str, boxes: Tensor) -> None:
        if len(self._memory) >= self.max_entries:
            self._memory.pop(next(iter(self._memory)))
        self._memory[key] = boxes

    def __repr__(self) -> str:
        return f"ProposalCache({self.proposal_fn!r}, entries={len(self)}, cache_dir={self.cache_dir!r})"


def _check_boxes(boxes, what: str) -> Tensor:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what}: expected Tensor[P, 4] boxes (x1, y1, x2, y2), got "
                         f"{list(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__}")
    if not boxes.is_floating_point():
        boxes = boxes.float()
    return boxes


def image_proposals(images: Sequence[Tensor], proposals: Optional[Sequence[Tensor]],
                    proposal_fn: Optional[Callable[[Tensor], Tensor]], min_size: float = 1.0) -> List[Tensor]:
    """The proposals of each image: ``proposals[i]`` where given, else ``proposal_fn(images[i])``;
    each checked to be Tensor[P_i, 4] (ValueError naming ``proposals[i]`` / ``proposal_fn``), non-finite
    rows dropped, clipped to the image, and boxes narrower or lower than ``min_size`` px dropped
    (so P_i may be 0). Returns float32 boxes on the image's device, input pixels."""
    if proposals is not None:
        if not isinstance(proposals, (list, tuple)) or len(proposals) != len(images):
            raise ValueError(f"proposals: expected a list of {len(images)} Tensor[P, 4] (one per image), got "
                             f"{len(proposals) if isinstance(proposals, (list, tuple)) else type(proposals).__name__}")
    elif proposal_fn is None:
        raise ValueError("proposals: none given and the model has no proposal_fn")
    out: List[Tensor] = []
    for i, image in enumerate(images):
        if proposals is not None:
            boxes = _check_boxes(proposals[i], f"proposals[{i}]")
        else:
            boxes = _check_boxes(proposal_fn(image), "proposal_fn")
        boxes = boxes.to(device=image.device, dtype=torch.float32)
        boxes = boxes[torch.isfinite(boxes).all(dim=1)]
        boxes = clip_boxes_to_image(boxes, (int(image.shape[-2]), int(image.shape[-1])))
        out.append(boxes[remove_small_boxes(boxes, min_size)])
    return out


def check_images(images) -> None:
    """``images`` must be a non-empty list of Tensor[3, H, W] floating point (ValueError / TypeError naming it)."""
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ValueError("images: expected a non-empty list of Tensor[3, H, W]")
    for i, image in enumerate(images):
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3 or image.numel() == 0:
            raise ValueError(f"images[{i}]: expected Tensor[3, H, W] with H, W > 0, got "
                             f"{list(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
        if not image.is_floating_point():
            raise TypeError(f"images[{i}]: expected a floating point tensor (values in [0, 1]), got {image.dtype}")


def make_proposal_fn(proposal_fn, max_proposals: int, cache: bool) -> Optional[Callable[[Tensor], Tensor]]:
    """``proposal_fn``: "selective_search" (fast mode, ``max_proposals``), a callable
    ``image -> Tensor[P, 4]``, or None (proposals then must come with each call); with ``cache``
    wrapped in a :class:`ProposalCache`."""
    if proposal_fn is None:
        return None
    if isinstance(proposal_fn, str):
        if proposal_fn != "selective_search":
            raise ValueError(f"proposal_fn: must be 'selective_search', a callable or None, got {proposal_fn!r}")
        proposal_fn = SelectiveSearch("fast", max_proposals)
    elif not callable(proposal_fn):
        raise TypeError(f"proposal_fn: must be 'selective_search', a callable or None, got "
                        f"{type(proposal_fn).__name__}")
    return ProposalCache(proposal_fn) if cache else proposal_fn


class ProposalDetector(torch.nn.Module):
    """What R-CNN, SPPNet and Fast R-CNN share around their networks: input checks, the
    proposals of each image (given, or ``proposal_fn``'s, cached), the transform (normalise,
    resize, batch) with the proposals resized alongside, and the detections mapped back.

    Subclasses set ``num_classes``, ``transform`` (a ``DetectionTransform``), ``proposal_fn`` and
    ``min_proposal_size`` and write ``forward`` with :meth:`prepare` and :meth:`finish`.
    """

    num_classes: int
    proposal_fn: Optional[Callable[[Tensor], Tensor]]
    min_proposal_size: float = 1.0

    def prepare(self, images, targets, proposals):
        """-> (ImageList, resized targets or None, proposals List[Tensor[P_i, 4]] in the batch's pixels,
        original sizes)."""
        from .faster_rcnn import validate_targets
        from .transform import resize_boxes
        check_images(images)
        if self.training:
            validate_targets(targets, len(images), self.num_classes)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        props = image_proposals(images, proposals, self.proposal_fn, self.min_proposal_size)
        image_list, targets = self.transform(images, targets)
        props = [resize_boxes(p, size, new) for p, size, new in zip(props, original_sizes, image_list.image_sizes)]
        return image_list, targets, props, original_sizes

    def finish(self, detections, image_list, original_sizes):
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    def set_proposal_cache_dir(self, cache_dir: Optional[str]) -> None:
        """Keep the cached proposals also under ``cache_dir`` (the training CLI: ``OUT/proposals``)."""
        if isinstance(self.proposal_fn, ProposalCache):
            self.proposal_fn.set_cache_dir(cache_dir)
