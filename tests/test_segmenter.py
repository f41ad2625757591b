import pytest
import torch

from pipeline.config import Model
from pipeline.errors import PipelineError
from pipeline.learn import models
from pipeline.learn.backbones import backbone_stages


def segmenter(**keys) -> models.Segmenter:
    return models.create_model(Model(**keys), 2, 1, dense=True)


@pytest.mark.parametrize("decoder", ["unet", "fpn"])
def test_a_segmenter_maps_each_pixel_to_a_logit_per_class(decoder):
    torch.manual_seed(0)
    model = segmenter(name="test_resnet", decoder=decoder)
    assert model(torch.randn(2, 1, 32, 64)).shape == (2, 2, 32, 64)
    assert model(torch.randn(2, 1, 40, 50)).shape == (2, 2, 40, 50)  # padded to multiples of 32, cropped back


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "test_efficientnet"])
def test_freeze_depth_counts_the_encoders_stages_as_in_a_classifier_and_the_decoder_always_trains(name):
    model = segmenter(name=name)
    groups = models.stages(model)
    assert len(groups) - 1 == backbone_stages(name, 1)
    frozen = models.freeze(model, 2)
    frozen_names = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen_names == set(groups[0]) | set(groups[1]) and len(frozen.params) == len(frozen_names)
    assert all(n.startswith("net.encoder.") for n in frozen_names)
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("net.encoder."))


def test_the_packaged_lite0_weights_load_into_the_encoder():
    model = segmenter(name="efficientnet_lite0", pretrained="efficientnet_lite0")
    state = torch.load(models.lite0_weights("efficientnet_lite0"), weights_only=True)
    grey = state["conv_stem.weight"].sum(dim=1, keepdim=True)  # timm's adapt_input_conv for 1 channel
    torch.testing.assert_close(model.encoder.conv_stem.weight, grey)
    torch.testing.assert_close(model.encoder.blocks[6][0].conv_pwl.weight, state["blocks.6.0.conv_pwl.weight"])


def test_weights_of_another_model_are_refused_in_one_line(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(models.timm_model("test_resnet", False, {}, False).state_dict(), path)
    with pytest.raises(PipelineError, match=r"^model.pretrained=file:.*weights do not fit the encoder: missing \["):
        segmenter(name="test_efficientnet", pretrained=f"file:{path}")


def test_an_encoder_smp_cannot_use_is_one_line():
    with pytest.raises(PipelineError, match="^model.name='test_vit' cannot be a unet encoder"):
        segmenter(name="test_vit")
