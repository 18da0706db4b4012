"""The DCGAN example (pydetops/models/dcgan.py): shapes, the generator's up-sampling runs
pydetops' conv_transpose2d op (not torch's), a few training steps on synthetic images change
the discriminator's loss, and the command writes a grid of samples."""
import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pydetops.data import synthetic
from pydetops.models import MODELS
from pydetops.models.dcgan import (Discriminator, Generator, discriminator_loss, generator_loss, load_image_folder,
                                   main, train_dcgan)
from pydetops.ops import ConvTranspose2d


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func), args))
        return func(*args, **(kwargs or {}))


def test_shapes_and_the_generator_runs_pydetops_conv_transpose2d():
    torch.manual_seed(0)
    G, D = Generator(nz=16, ngf=8, image_size=32), Discriminator(ndf=8, image_size=32)
    ups = [m for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(ups) == 4 and all(isinstance(m, ConvTranspose2d) for m in ups)
    assert [m.stride for m in ups] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    z = torch.randn(5, 16)
    with _OpLog() as log:
        x = G(z)
    names = [n for n, _ in log.calls]
    assert names.count("pydetops.conv_transpose2d.default") == 4
    # torch's own transposed convolution is not called
    assert not any(n.startswith("aten.convolution") and a[6] for n, a in log.calls)
    assert x.shape == (5, 3, 32, 32) and float(x.detach().abs().max()) <= 1.0
    assert D(x).shape == (5,)
    # 64 x 64: one more stride-2 stage each
    assert Generator(16, 4, 64)(z).shape == (5, 3, 64, 64)
    assert Discriminator(4, 64)(torch.rand(2, 3, 64, 64)).shape == (2,)
    # the losses: log(2) each at D's indifference (logit 0)
    zero = torch.zeros(3)
    assert discriminator_loss(zero, zero).item() == pytest.approx(2 * 0.6931, abs=1e-3)
    assert generator_loss(zero).item() == pytest.approx(0.6931, abs=1e-3)
    assert "dcgan" not in MODELS  # an example, not a detector


def test_bad_input():
    with pytest.raises(ValueError, match="image_size"):
        Generator(image_size=48)
    with pytest.raises(ValueError, match="z"):
        Generator(nz=8)(torch.randn(2, 7))
    with pytest.raises(ValueError, match="x"):
        Discriminator(image_size=32)(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="steps"):
        train_dcgan(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="images"):
        load_image_folder("/nonexistent-folder", 16)


def test_a_few_training_steps_on_synthetic_images(tmp_path):
    synthetic.generate(str(tmp_path / "d"), images=6, seed=0, size=(32, 32))
    data = load_image_folder(str(tmp_path / "d" / "images"), 16)
    assert data.shape == (6, 3, 16, 16) and -1.0 <= float(data.min()) and float(data.max()) <= 1.0
    res = train_dcgan(data, steps=4, batch_size=4, nz=8, width=8, out=str(tmp_path / "out"))
    h = res["history"]
    assert len(h) == 4 and all(torch.isfinite(torch.tensor([s["loss_d"], s["loss_g"]])).all() for s in h)
    assert len({round(s["loss_d"], 6) for s in h}) > 1  # the discriminator's loss moves
    assert res["samples"].shape == (64, 3, 16, 16)
    assert (tmp_path / "out" / "samples.png").stat().st_size > 0
    g = Generator(8, 8, 16)
    g.load_state_dict(torch.load(str(tmp_path / "out" / "generator.pt"), weights_only=True))
    # the command line
    assert main(["--images", str(tmp_path / "d" / "images"), "--out", str(tmp_path / "cli"), "--steps", "2",
                 "--batch-size", "2", "--image-size", "16"]) == 0
    from PIL import Image
    with Image.open(tmp_path / "cli" / "samples.png") as im:
        assert im.size == (8 * 18 + 2, 8 * 18 + 2)
    assert json.loads((tmp_path / "cli" / "losses.json").read_text())["steps"] == 2
    assert main(["--images", str(tmp_path / "nothing"), "--out", str(tmp_path / "x"), "--steps", "1"]) == 2
