import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import Model
from pipeline.errors import PipelineError
from pipeline.learn import backbones, models

FAMILIES = ["test_resnet", "test_efficientnet", "test_convnext"]


def model_of(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return models.create_model(Model(name=name, **kwargs), num_outputs=3, in_chans=1)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_freeze_depth_freezes_exactly_the_named_stages(name, depth):
    model = model_of(name)
    stages = backbones.stages(model)
    models.freeze(model, depth)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for i, stage in enumerate(stages):
        assert set(stage).isdisjoint(trainable) if i < depth else set(stage) <= trainable, (name, i)
    assert set(stages[-1]) <= trainable  # the head always trains


@pytest.mark.parametrize("name", FAMILIES)
def test_freezing_every_backbone_stage_leaves_only_the_head(name):
    model = model_of(name)
    stages = backbones.stages(model)
    models.freeze(model, len(stages) - 1)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(stages[-1])
    with pytest.raises(PipelineError, match=f"freeze_depth={len(stages)}"):
        models.freeze(model_of(name), len(stages))


def test_freeze_blocks_goes_into_the_next_stage():
    model = model_of("test_convnext")
    stages = backbones.stages(model)
    frozen = models.freeze(model, 1, n_blocks=1)
    first_block = [b for b in backbones.blocks(model) if set(b) <= set(stages[1])][0]
    frozen_names = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen_names == set(stages[0]) | set(first_block)
    assert len(frozen.params) == len(frozen_names)


def test_frozen_batchnorm_stays_in_eval_mode_and_unfreezes():
    model = model_of("test_resnet")
    frozen = models.freeze(model, 2)
    model.train()
    frozen.keep_norms_in_eval()
    assert frozen.norms and all(not m.training for m in frozen.norms)
    before = [m.running_mean.clone() for m in frozen.norms]
    model(torch.randn(4, 1, 32, 32))
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, frozen.norms, strict=True))
    frozen.unfreeze()
    assert all(p.requires_grad for p in model.parameters())


def test_param_groups_no_decay_on_bias_and_norm_and_layer_decay():
    model = model_of("test_resnet")
    groups = models.param_groups(model, weight_decay=0.05, layer_decay=0.5, head_lr_mult=10.0)
    by_param = {id(p): g for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert by_param[id(names["fc.bias"])]["weight_decay"] == 0.0
    assert by_param[id(names["layer1.0.bn1.weight"])]["weight_decay"] == 0.0
    assert by_param[id(names["layer1.0.conv1.weight"])]["weight_decay"] == 0.05
    assert by_param[id(names["fc.weight"])]["lr_scale"] == 10.0
    assert by_param[id(names["layer4.0.conv1.weight"])]["lr_scale"] == 0.5
    assert by_param[id(names["layer1.0.conv1.weight"])]["lr_scale"] == 0.5**4
    assert sum(len(g["params"]) for g in groups) == len(names)


def test_file_weights_adapt_the_first_conv_and_replace_the_head(tmp_path):
    source = models.create_model(Model(name="test_resnet"), num_outputs=1000, in_chans=3)
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pth")
    model = models.create_model(Model(name="test_resnet", pretrained=f"file:{tmp_path / 'checkpoint.pth'}"), 5, 1)
    first = model.pretrained_cfg["first_conv"] + ".weight"
    torch.testing.assert_close(model.state_dict()[first], source.state_dict()[first].sum(dim=1, keepdim=True))
    torch.testing.assert_close(
        model.state_dict()["layer2.0.conv1.weight"], source.state_dict()["layer2.0.conv1.weight"]
    )
    assert model.fc.out_features == 5
    assert not model.fc.weight.any() and not model.fc.bias.any()  # a new head starts at zero


def test_a_head_that_fits_the_weights_is_loaded_not_reset(tmp_path):
    source = models.create_model(Model(name="test_resnet"), num_outputs=5, in_chans=1)
    torch.save(source.state_dict(), tmp_path / "own.pth")
    model = models.create_model(Model(name="test_resnet", pretrained=f"file:{tmp_path / 'own.pth'}"), 5, 1)
    torch.testing.assert_close(model.fc.weight, source.fc.weight)
    assert model_of("test_efficientnet").get_classifier().weight.any()  # no pretrained weights: timm's init


def test_weights_that_do_not_fit_are_an_error(tmp_path):
    torch.save(model_of("test_efficientnet").state_dict(), tmp_path / "other.pth")
    with pytest.raises(PipelineError, match="do not fit"):
        models.create_model(Model(name="test_resnet", pretrained=f"file:{tmp_path / 'other.pth'}"), 3, 1)
    with pytest.raises(PipelineError, match="does not exist"):
        models.create_model(Model(name="test_resnet", pretrained="file:/nowhere.pth"), 3, 1)
    with pytest.raises(PipelineError, match="not a timm model"):
        models.create_model(Model(name="resnet_nonexistent"), 3, 1)


def test_efficientnet_lite0_weights_know_a_cat(tmp_path, monkeypatch):
    """The package's ImageNet weights, mapped onto timm's efficientnet_lite0, see chelsea as a cat."""
    from skimage import data

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = models.create_model(Model(name="efficientnet_lite0", pretrained="efficientnet_lite0"), 1000, 3).eval()
    image = torch.tensor(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    image = nn.functional.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    mean, std = torch.tensor(model.pretrained_cfg["mean"]), torch.tensor(model.pretrained_cfg["std"])
    with torch.no_grad():
        top5 = model((image - mean[:, None, None]) / std[:, None, None]).topk(5).indices[0].tolist()
    cats = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert cats & set(top5), top5
    assert (tmp_path / "pipeline" / "efficientnet_lite0_imagenet.pth").exists()  # converted once, cached
    with pytest.raises(PipelineError, match="efficientnet_lite0"):
        models.create_model(Model(name="test_resnet", pretrained="efficientnet_lite0"), 3, 3)


def test_zero_init_last_bn():
    model = models.create_model(Model(name="test_resnet", zero_init_last=True), 3, 1)
    assert np.allclose(model.layer1[0].bn2.weight.detach().numpy(), 0.0)
    model = models.create_model(Model(name="test_resnet", zero_init_last=False), 3, 1)
    assert not np.allclose(model.layer1[0].bn2.weight.detach().numpy(), 0.0)


def test_hub_weights_without_network_are_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    # offline mode (read at import, so patched): no network here, and no 45 s of retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(PipelineError, match="model.pretrained=hub"):
        models.create_model(Model(name="resnet18", pretrained="hub"), 3, 3)
