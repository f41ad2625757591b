import numpy as np
import pytest
import torch

from pipeline.config import Train
from pipeline.data.images import MemoryImages
from pipeline.learn import engine
from pipeline.learn.device import Device
from pipeline.learn.loader import ConcatImages
from pipeline.tasks.classification import Classification


def factors(cfg: Train, total: int = 100, per_epoch: int = 10) -> np.ndarray:
    return np.array([engine.lr_factor(step, total, cfg, per_epoch) for step in range(total)])


def test_onecycle_warms_up_to_the_peak_then_anneals():
    curve = factors(Train(scheduler="onecycle", pct_start=0.25, final_lr_ratio=1e-4))
    assert curve[0] == pytest.approx(1 / 25) and curve.argmax() == 25 and curve.max() == pytest.approx(1.0)
    assert np.all(np.diff(curve[:26]) > 0) and np.all(np.diff(curve[25:]) < 0) and curve[-1] < 1e-3


def test_cosine_with_linear_warmup():
    curve = factors(Train(scheduler="cosine", warmup_epochs=1))
    assert np.allclose(curve[:10], np.arange(1, 11) / 11) and curve[10] == pytest.approx(1.0)
    assert np.all(np.diff(curve[10:]) < 0)


def test_set_lr_applies_each_groups_scale():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.SGD([{"params": [params[0]], "lr_scale": 0.1}, {"params": [params[1]]}], lr=1.0)
    engine.set_lr(optimizer, 0.5)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.5])


def test_lower_is_better_metrics_and_their_values():
    task = Classification(["a", "b"], metric="log_loss")
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    metrics = task.metrics(probabilities, np.array([0, 1, 1]))
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4])))
    assert metrics["macro_f1"] == pytest.approx(np.mean([2 / 3, 2 / 3]))


def test_soft_targets_from_mixup_use_soft_cross_entropy():
    task = Classification([0, 1, 2], label_smoothing=0.0)
    logits = torch.randn(4, 3)
    hard = torch.tensor([0, 2, 1, 1])
    torch.testing.assert_close(task.loss(logits, torch.nn.functional.one_hot(hard, 3).float()), task.loss(logits, hard))


def test_concat_images_indexes_across_parts():
    first, second = [np.full((2, 2, 1), i) for i in range(3)], [np.full((3, 3, 1), 10 + i) for i in range(2)]
    images = ConcatImages([MemoryImages(first), MemoryImages(second)])
    assert len(images) == 5 and images[2][0, 0, 0] == 2 and images[3][0, 0, 0] == 10 and images[4].shape == (3, 3, 1)
    assert images.original_sizes.tolist() == [[2, 2]] * 3 + [[3, 3]] * 2


def test_diverging_loss_is_reported():
    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return torch.full((len(x), 2), float("nan")) * self.w

    model = Exploding()
    cfg = Train(device="cpu")
    device = Device.choose(cfg)
    state = engine.Step(torch.optim.SGD(model.parameters(), lr=0.1), device.scaler(), cfg, total_steps=1)
    batch = [(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), torch.zeros(2, 2))]
    with pytest.raises(FloatingPointError, match="nan"):
        engine.train_one_epoch(model, batch, Classification([0, 1]), state, device)
