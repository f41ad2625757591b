"""A segmentation network: segmentation-models-pytorch's U-Net or FPN decoder over any timm
encoder it accepts ("tu-<timm name>"), dressed as the rest of learn/ expects a timm model: its
encoder's `pretrained_cfg` (normalisation) and a `group_matcher` whose coarse groups are the
timm backbone's stages (so model.freeze_depth freezes the same stages it would in a classifier,
and layer decay scales them alike) with the decoder and its head as the last group.

Pretrained weights are the timm classifier's, loaded into the encoder by name: a features-only
timm model keeps its classifier's parameter names, but flattens a top-level sequence
(`stages.0` becomes `stages_0`) and has no classifier head.
"""

import re

import torch
from timm.models import adapt_input_conv, group_parameters
from torch import nn
from torch.nn import functional as F

from pipeline.errors import PipelineError
from pipeline.learn.backbones import timm_model

DECODERS = ("unet", "fpn")
STRIDE = 32  # the encoder's five halvings: smp needs sides it divides
FLATTENED = re.compile(r"^([A-Za-z]\w*?)_(\d+)(\.|$)")  # stages_0.blocks -> stages.0.blocks


class Segmenter(nn.Module):
    """(B, channels, H, W) -> (B, classes, H, W) logits."""

    def __init__(self, decoder: str, encoder: str, in_chans: int, classes: int):
        super().__init__()
        import segmentation_models_pytorch as smp

        if decoder not in DECODERS:
            raise PipelineError(f"model.decoder={decoder!r} is not one of {', '.join(DECODERS)}")
        architecture = {"unet": smp.Unet, "fpn": smp.FPN}[decoder]
        try:
            self.net = architecture(f"tu-{encoder}", encoder_weights=None, in_channels=in_chans, classes=classes)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise PipelineError(f"model.name={encoder!r} cannot be a {decoder} encoder: {exc}") from None
        self.pretrained_cfg = self.default_cfg = dict(self.encoder.pretrained_cfg)
        classifier = timm_model(encoder, False, {"num_classes": 1, "in_chans": in_chans}, False)
        self.timm_name = encoder_names(self.encoder, classifier, encoder)
        self.group_of = {coarse: timm_groups(classifier, coarse=coarse) for coarse in (True, False)}

    @property
    def encoder(self) -> nn.Module:
        """The timm features model inside smp's encoder."""
        return self.net.encoder.model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Any side: padded to the decoder's multiple of STRIDE, the output cropped back."""
        height, width = images.shape[-2:]
        padded = F.pad(images, (0, -width % STRIDE, 0, -height % STRIDE))
        return self.net(padded)[..., :height, :width]

    def group_matcher(self, coarse: bool = False):
        """Each parameter's group (timm's group_parameters reads it): the timm backbone's group
        (coarse: its stage, fine: its block) for an encoder parameter, one past the last for the
        decoder and head."""
        timm_group = self.group_of[coarse]
        head = max(timm_group.values()) + 1

        def group_of(name: str) -> int:
            inner = name.removeprefix("net.encoder.model.")
            return timm_group[self.timm_name[inner]] if inner != name else head

        return group_of

    def load_encoder(self, state: dict[str, torch.Tensor], source: str) -> None:
        """A timm classifier's weights into the encoder, the first conv adapted to the input
        channels; its head is left out, and anything else the encoder lacks is an error."""
        own = self.encoder.state_dict()
        renamed = {key: state[name] for key, name in self.timm_name.items() if name in state}
        conv = next(
            (k for k, n in self.timm_name.items() if n == f"{self.pretrained_cfg.get('first_conv')}.weight"), None
        )
        if conv in renamed and renamed[conv].shape[1] != own[conv].shape[1]:
            renamed[conv] = adapt_input_conv(own[conv].shape[1], renamed[conv])
        missing = [k for k in own if k not in renamed and not k.endswith("num_batches_tracked")]
        misshapen = [k for k, v in renamed.items() if v.shape != own[k].shape]
        if missing or misshapen:
            raise PipelineError(
                f"model.pretrained={source}: weights do not fit the encoder: "
                f"missing {missing[:3]}, misshapen {misshapen[:3]}"
            )
        self.encoder.load_state_dict(renamed, strict=False)


def encoder_names(encoder: nn.Module, classifier: nn.Module, name: str) -> dict[str, str]:
    """Each encoder state key -> the same tensor's key in timm's classifier `name`."""
    classifier = set(classifier.state_dict())
    names = {}
    for key in encoder.state_dict():
        candidate = key if key in classifier else FLATTENED.sub(r"\1.\2\3", key)
        if candidate not in classifier:
            raise PipelineError(f"model.name={name!r}: encoder parameter {key!r} has no counterpart in timm's {name}")
        names[key] = candidate
    return names


def timm_groups(model: nn.Module, *, coarse: bool) -> dict[str, int]:
    """A timm classifier's parameter names -> their group (coarse: stage, else block), stem 0."""
    groups = group_parameters(model, model.group_matcher(coarse=coarse))
    return {param: group for group, params in groups.items() for param in params}
