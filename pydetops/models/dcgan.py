"""DCGAN (Radford, Metz, Chintala 2016), the seeds' last example: an example, not a detector
(not in ``pydetops.models.MODELS``).

Read top-down, as the paper:

1. ``Generator``      noise z (``nz``) -> a 4 x 4 map by a 4x4 transpose convolution, then
                      stride-2 4x4 transpose convolutions (pydetops' ``ConvTranspose2d``, i.e.
                      ``pydetops.ops.conv_transpose2d``: each input value scales the filter and is added
                      into its output window, overlaps summed) doubling the size up to ``image_size``;
                      BatchNorm + ReLU between, tanh at the end: images in [-1, 1];
2. ``Discriminator``  the mirror image: stride-2 4x4 convolutions (no pooling), BatchNorm (not on the
                      first layer) + LeakyReLU(0.2), a last 4x4 convolution to one logit per image;
3. losses             the minimax game with the usual non-saturating generator loss:
                      ``loss_d = -log D(x) - log(1 - D(G(z)))``, ``loss_g = -log D(G(z))``
                      (binary cross-entropy on logits); Adam (lr 2e-4, betas 0.5 / 0.999), weights
                      drawn from N(0, 0.02) as in the paper.

Train on a folder of images (e.g. the synthetic scenes) and write a grid of samples::

    python -m pydetops.models.dcgan --images DIR --out OUT [--steps N | --max-minutes M] \\
        [--batch-size 32] [--image-size 32] [--seed 0]

writes ``OUT/samples.png`` (8 x 8 samples from fixed noise), ``OUT/generator.pt`` (its
``state_dict``) and ``OUT/losses.json`` (per-step ``loss_d`` / ``loss_g``).
"""
import argparse
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import ConvTranspose2d

__all__ = ["Generator", "Discriminator", "discriminator_loss", "generator_loss", "init_weights_", "load_image_folder",
           "sample_grid", "train_dcgan", "main"]


def _stages(image_size: int) -> int:
    if not isinstance(image_size, int) or image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"image_size: must be a power of two >= 8, got {image_size!r}")
    return int(math.log2(image_size)) - 2  # stride-2 layers between 4 x 4 and image_size


class Generator(nn.Module):
    """z Tensor[N, nz] -> images Tensor[N, channels, image_size, image_size] in [-1, 1]."""

    def __init__(self, nz: int = 64, ngf: int = 32, image_size: int = 32, channels: int = 3):
        super().__init__()
        n = _stages(image_size)
        if nz < 1 or ngf < 1 or channels < 1:
            raise ValueError(f"nz, ngf, channels: must be positive, got {nz}, {ngf}, {channels}")
        self.nz = nz
        width = ngf * 2 ** (n - 1)
        layers: List[nn.Module] = [ConvTranspose2d(nz, width, 4, 1, 0, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(True)]
        for _ in range(n - 1):
            layers += [ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2),
                       nn.ReLU(True)]
            width //= 2
        layers += [ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.nz:
            raise ValueError(f"z: expected Tensor[N, {self.nz}], got shape {list(z.shape)}")
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """images Tensor[N, channels, image_size, image_size] -> logits Tensor[N] (real: high)."""

    def __init__(self, ndf: int = 32, image_size: int = 32, channels: int = 3):
        super().__init__()
        n = _stages(image_size)
        self.image_size = image_size
        layers: List[nn.Module] = [nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(n - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2),
                       nn.LeakyReLU(0.2, True)]
            width *= 2
        layers.append(nn.Conv2d(width, 1, 4, 1, 0, bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"x: expected Tensor[N, C, {self.image_size}, {self.image_size}], got {list(x.shape)}")
        return self.net(x).reshape(-1)


def init_weights_(m: nn.Module) -> None:
    """The paper's initialisation: conv weights N(0, 0.02), BatchNorm weight N(1, 0.02), bias 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def discriminator_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """``-log D(x) - log(1 - D(G(z)))`` (batch means) from the discriminator's logits Tensor[N] on
    real and on (detached) generated images."""
    return (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
            + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))


def generator_loss(d_fake: Tensor) -> Tensor:
    """The non-saturating ``-log D(G(z))`` from the discriminator's logits on generated images."""
    return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))


def load_image_folder(folder: str, image_size: int, limit: Optional[int] = None) -> Tensor:
    """Every .png / .jpg image of ``folder`` (sorted by name), resized to image_size x image_size
    (bilinear, antialiased), as Tensor[N, 3, S, S] in [-1, 1]."""
    from PIL import Image
    if not os.path.isdir(folder):
        raise ValueError(f"images: no such folder: {folder}")
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith((".png", ".jpg", ".jpeg")))[:limit]
    if not names:
        raise ValueError(f"images: no .png / .jpg image in {folder}")
    out = []
    for n in names:
        with Image.open(os.path.join(folder, n)) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        t = torch.from_numpy(a).permute(2, 0, 1)[None]
        out.append(F.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False,
                                 antialias=True)[0])
    return torch.stack(out).clamp(0, 1) * 2 - 1


def sample_grid(images: Tensor, path: str, nrow: int = 8) -> None:
    """Save Tensor[N, 3, S, S] in [-1, 1] as one PNG grid (``nrow`` per row, 2 px gaps)."""
    from PIL import Image
    n, c, s, _ = images.shape
    rows = math.ceil(n / nrow)
    grid = torch.ones(3, rows * (s + 2) + 2, nrow * (s + 2) + 2)
    x = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)
    if c == 1:
        x = x.expand(n, 3, s, s)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, 2 + r * (s + 2): 2 + r * (s + 2) + s, 2 + q * (s + 2): 2 + q * (s + 2) + s] = x[i, :3]
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


def train_dcgan(data: Tensor, steps: Optional[int] = None, max_minutes: Optional[float] = None,
                batch_size: int = 32, nz: int = 64, width: int = 32, lr: float = 2e-4, seed: int = 0,
                out: Optional[str] = None, log_every: int = 0) -> Dict[str, object]:
    """Train a DCGAN on ``data`` (Tensor[N, 3, S, S] in [-1, 1]) for ``steps`` steps or
    ``max_minutes`` (whichever ends first; at least one must be given). Each step: one
    discriminator update on a real and a fake batch, one generator update. With ``out``, writes
    samples.png, generator.pt, losses.json there. Returns ``generator``, ``discriminator``,
    ``history`` (per-step ``loss_d``, ``loss_g``) and ``samples`` (Tensor[64, 3, S, S])."""
    if steps is None and max_minutes is None:
        raise ValueError("steps, max_minutes: give at least one")
    if steps is not None and steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if data.dim() != 4 or data.shape[-1] != data.shape[-2]:
        raise ValueError(f"data: expected Tensor[N, C, S, S], got {list(data.shape)}")
    torch.manual_seed(seed)
    size, channels = int(data.shape[-1]), int(data.shape[1])
    G = Generator(nz, width, size, channels)
    D = Discriminator(width, size, channels)
    G.apply(init_weights_)
    D.apply(init_weights_)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.5, 0.999))
    fixed = torch.randn(64, nz, generator=torch.Generator().manual_seed(seed + 1))
    history: List[Dict[str, float]] = []
    t0 = time.monotonic()
    step = 0
    while True:
        idx = torch.randint(0, data.shape[0], (batch_size,))
        real = data[idx]
        z = torch.randn(batch_size, nz)
        fake = G(z)
        # discriminator: real -> 1, fake -> 0 (the generator's graph is not needed here)
        loss_d = discriminator_loss(D(real), D(fake.detach()))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # generator: make the (updated) discriminator call its images real
        loss_g = generator_loss(D(fake))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        step += 1
        history.append({"loss_d": loss_d.item(), "loss_g": loss_g.item()})
        if log_every and step % log_every == 0:
            print(f"step {step}: loss_d {loss_d.item():.3f} loss_g {loss_g.item():.3f}", file=sys.stderr)
        if (steps is not None and step >= steps) or (
                max_minutes is not None and time.monotonic() - t0 >= max_minutes * 60):
            break
    G.eval()
    with torch.no_grad():
        samples = G(fixed)
    if out is not None:
        os.makedirs(out, exist_ok=True)
        sample_grid(samples, os.path.join(out, "samples.png"))
        torch.save(G.state_dict(), os.path.join(out, "generator.pt"))
        with open(os.path.join(out, "losses.json"), "w", encoding="utf-8") as f:
            json.dump({"steps": step, "seconds": round(time.monotonic() - t0, 2), "history": history}, f)
    return {"generator": G, "discriminator": D, "history": history, "samples": samples}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pydetops.models.dcgan",
                                description="Train a small DCGAN on a folder of images; write a grid of samples.")
    p.add_argument("--images", required=True, help="folder of .png / .jpg images")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.steps is None and a.max_minutes is None:
        a.max_minutes = 2.0
    try:
        data = load_image_folder(a.images, a.image_size)
        res = train_dcgan(data, a.steps, a.max_minutes, a.batch_size, seed=a.seed, out=a.out, log_every=50)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    h = res["history"]
    print(f"{len(h)} steps on {data.shape[0]} images: loss_d {h[-1]['loss_d']:.3f}, loss_g {h[-1]['loss_g']:.3f}; "
          f"wrote {a.out}/samples.png, generator.pt, losses.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
