"""pydetops.models.assign: ``match`` (torchvision Matcher semantics) and the balanced sampler."""
import pytest
import torch

from pydetops.models.assign import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BalancedSampler, match


def _boxes(n, scale=50.0):
    xy = torch.rand(n, 2) * scale
    wh = torch.rand(n, 2) * scale / 2 + 1
    return torch.cat([xy, xy + wh], 1)


def _iou64(a, b):
    a, b = a.double(), b.double()
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _reference(gt, boxes, high, low, allow_low):
    """Loop-by-loop statement of the rule, in float64."""
    iou = _iou64(gt, boxes)
    out = []
    for j in range(boxes.shape[0]):
        col = iou[:, j]
        best = float(col.max())
        g = int(torch.nonzero(col == best)[0])  # lowest index on ties
        if best >= high:
            m = g
        elif best >= low:
            m = BETWEEN_THRESHOLDS
        else:
            m = BELOW_LOW_THRESHOLD
        if allow_low:
            for i in range(gt.shape[0]):
                if float(iou[i, j]) == float(iou[i].max()):
                    m = g
        out.append(m)
    return torch.tensor(out), iou.max(0).values


@pytest.mark.parametrize("allow_low", [False, True])
def test_match_against_reference(allow_low):
    for _ in range(5):
        gt = _boxes(4)
        boxes = torch.cat([_boxes(60), gt[:2]])  # exact copies give IoU 1
        got, best = match(gt, boxes, 0.7, 0.3, allow_low)
        ref, ref_best = _reference(gt, boxes, 0.7, 0.3, allow_low)
        assert torch.equal(got, ref)
        torch.testing.assert_close(best.double(), ref_best, rtol=1e-5, atol=1e-6)
        assert got.dtype == torch.int64


def test_match_low_quality_ties_keep_every_best_box():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 20.0, 10.0], [50.0, 50, 60, 60]])  # IoU .5, .5, 0
    got, _ = match(gt, boxes, 0.7, 0.3, allow_low_quality_matches=True)
    assert got.tolist() == [0, 0, BELOW_LOW_THRESHOLD]
    got, _ = match(gt, boxes, 0.7, 0.3, allow_low_quality_matches=False)
    assert got.tolist() == [BETWEEN_THRESHOLDS, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD]


def test_match_bad_input():
    with pytest.raises(ValueError, match="gt_boxes"):
        match(torch.zeros(0, 4), _boxes(3), 0.7, 0.3)
    with pytest.raises(ValueError, match="boxes"):
        match(_boxes(2), torch.zeros(0, 4), 0.7, 0.3)
    with pytest.raises(ValueError, match="low_threshold"):
        match(_boxes(2), _boxes(3), 0.3, 0.7)


def test_sampler_counts_and_never_draws_ignored():
    labels = torch.tensor([1] * 10 + [0] * 100 + [-1] * 50)
    pos, neg = BalancedSampler(64, 0.25)([labels])
    assert int(pos[0].sum()) == 10 and int(neg[0].sum()) == 54   # few positives: negatives fill up
    assert bool((labels[pos[0].bool()] >= 1).all()) and bool((labels[neg[0].bool()] == 0).all())
    labels = torch.tensor([2] * 100 + [0] * 5)
    pos, neg = BalancedSampler(64, 0.25)([labels])
    assert int(pos[0].sum()) == 16 and int(neg[0].sum()) == 5
    with pytest.raises(ValueError, match="batch_size_per_image"):
        BalancedSampler(0, 0.5)
    with pytest.raises(ValueError, match="positive_fraction"):
        BalancedSampler(8, 1.5)


def test_against_torchvision_matcher_and_sampler():
    try:
        from torchvision.models.detection import _utils as tvu
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"torchvision is not usable here: {type(err).__name__}: {err}")
    from torchvision.ops import box_iou as tv_box_iou
    for allow_low in (False, True):
        gt, boxes = _boxes(5), _boxes(300)
        theirs = tvu.Matcher(0.5, 0.4, allow_low)(tv_box_iou(gt, boxes))
        ours, _ = match(gt, boxes, 0.5, 0.4, allow_low)
        assert torch.equal(ours, theirs)
    labels = [torch.randint(-1, 3, (500,)), torch.randint(-1, 2, (40,))]
    torch.manual_seed(3)
    tp, tn = tvu.BalancedPositiveNegativeSampler(128, 0.25)(labels)
    torch.manual_seed(3)
    op, on = BalancedSampler(128, 0.25)(labels)
    for a, b in zip(tp + tn, op + on):
        assert torch.equal(a, b)
