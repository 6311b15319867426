"""SCR/PCR box nets: shapes of both views, initialisation from a classifier, the loss, save/load."""

from __future__ import annotations

import pytest
import torch

import verydeep
from verydeep.errors import WeightsError
from verydeep.localize.head import (
    BoxNet,
    as_box_net,
    from_classifier,
    load_box_net,
    save_box_net,
    select_boxes,
)
from verydeep.localize.loss import euclidean_box_loss
from verydeep.models.metadata import WeightsMeta

TINY = dict(width=1 / 16, fc_width=32, crop_size=32)


@pytest.fixture
def classifier():
    torch.manual_seed(0)
    net = verydeep.vgg("A", num_classes=3, init="glorot", **TINY)
    net.meta = WeightsMeta(spec=net.spec, classes=["a", "b", "c"])
    return net.eval()


@pytest.mark.parametrize("mode, boxes", [("scr", 1), ("pcr", 3)])
def test_shapes_of_both_views(classifier, mode, boxes):
    box_net = from_classifier(classifier, mode).eval()
    assert box_net.net.num_classes == 4 * boxes
    assert box_net(torch.randn(2, 3, 32, 32)).shape == (2, boxes, 4)
    dense = box_net.dense(torch.randn(2, 3, 64, 96))
    assert dense.shape == (2, boxes, 4, 2, 3)
    # on a crop-sized image the dense view has one position, with the crop view's numbers
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(box_net.dense(x)[..., 0, 0], box_net(x), atol=1e-5, rtol=1e-4)


def test_initialised_from_the_classifier_with_a_random_last_layer(classifier):
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    box_net = from_classifier(classifier, "pcr", generator=torch.Generator().manual_seed(1))
    state = box_net.net.state_dict()
    for key, value in before.items():
        if key.startswith("classifier.6"):
            continue
        torch.testing.assert_close(state[key], value)
    assert state["classifier.6.weight"].shape == (12, 32)
    assert 0.003 < float(state["classifier.6.weight"].std()) < 0.03  # N(0, 0.01)
    assert float(state["classifier.6.bias"].abs().max()) == 0.0
    for key, value in classifier.state_dict().items():  # the classifier itself is untouched
        torch.testing.assert_close(value, before[key])
    assert box_net.head.classes == ["a", "b", "c"]


def test_select_boxes():
    pred = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    torch.testing.assert_close(
        select_boxes(pred, torch.tensor([2, 0])), torch.stack([pred[0, 2], pred[1, 0]])
    )
    single = pred[:, :1]
    torch.testing.assert_close(select_boxes(single, torch.tensor([2, 0])), pred[:, 0])


def test_loss_against_a_hand_computation():
    pred = torch.tensor(
        [
            [[0.5, 0.5, 1.0, 1.0], [0.1, 0.2, 0.3, 0.4]],
            [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]],
            [[9.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]],
        ]
    )
    target = torch.tensor([[0.1, 0.2, 0.3, 0.6], [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]])
    labels = torch.tensor([1, 0, 1])
    valid = torch.tensor([True, True, False])
    # PCR: sample 0 uses class 1's box: diff (0, 0, 0, -0.2) -> 0.04; sample 1 class 0: 4 * 0.25 = 1.0;
    # sample 2 has no target. Loss = (0.04 + 1.0) / (2 * 2) = 0.26
    assert float(euclidean_box_loss(pred, target, labels, valid)) == pytest.approx(0.26)
    # SCR (one box): sample 0: (0.16 + 0.09 + 0.49 + 0.16) = 0.9; sample 1: 1.0 -> (0.9 + 1.0) / 4
    assert float(euclidean_box_loss(pred[:, :1], target, labels, valid)) == pytest.approx(0.475)
    # no valid sample: zero, and still differentiable
    p = pred.clone().requires_grad_(True)
    loss = euclidean_box_loss(p, target, labels, torch.zeros(3, dtype=torch.bool))
    loss.backward()
    assert float(loss.detach()) == 0.0


def test_loss_gradient_reaches_only_the_labelled_class(classifier):
    box_net = from_classifier(classifier, "pcr")
    x = torch.randn(2, 3, 32, 32)
    loss = euclidean_box_loss(box_net(x), torch.rand(2, 4), torch.tensor([1, 1]))
    loss.backward()
    grad = box_net.net.classifier[6].weight.grad.view(3, 4, -1)
    assert float(grad[1].abs().sum()) > 0
    assert float(grad[0].abs().sum()) == 0.0 and float(grad[2].abs().sum()) == 0.0


def test_save_and_load_round_trip(classifier, tmp_path):
    box_net = from_classifier(classifier, "scr", fine_tune="fc", train_scale=40)
    path = save_box_net(box_net, tmp_path / "box.safetensors")
    loaded = load_box_net(path)
    assert isinstance(loaded, BoxNet)
    assert loaded.head == box_net.head
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), box_net.eval()(x))
    # a plain classification net is refused as a box net
    with pytest.raises(WeightsError, match="not a box net"):
        as_box_net(classifier)
