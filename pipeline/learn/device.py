"""The device a model runs on: which one, at what precision and memory format, and batches of
0-255 values moved and normalised there."""

import contextlib
from dataclasses import dataclass

import torch

from pipeline.errors import PipelineError
from pipeline.learn import distributed


@dataclass(frozen=True)
class Device:
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    @classmethod
    def choose(cls, cfg) -> "Device":
        """For the train section's device, amp and channels_last (config.Train)."""
        name = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        if name == "cuda" and distributed.world_size() > 1:  # torchrun: one GPU per rank
            name = f"cuda:{distributed.local_rank()}"
        try:
            device = torch.device(name)
        except RuntimeError:
            raise PipelineError(f"train.device={name!r} is not a torch device") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise PipelineError(f"train.device={name!r}, but CUDA is not available here")
        if device.type == "cuda":
            # inputs keep one size, so cuDNN's autotuned kernels pay off; TF32 for what stays fp32
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")
        amp = None
        if device.type == "cuda" and cfg.amp == "auto":
            amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif cfg.amp in ("bf16", "fp16"):  # asked for by name: on the CPU too
            amp = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
        return cls(device, amp, cfg.channels_last and device.type == "cuda")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def images(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """fp16 needs loss scaling; bf16 and fp32 do not (a disabled scaler passes through)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)


class Normalise:
    """(B, C, H, W) batches of 0-255 values -> float32 (x / 255 - mean) / std, on their device.
    A float batch is normalised in place: its owner passes a temporary."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        std_ = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = 1 / (255 * std_)
        self.shift = -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images if images.is_floating_point() else images.float()
        if self.scale.device != x.device:  # moved once, not copied to the device every batch
            self.scale, self.shift = self.scale.to(x.device), self.shift.to(x.device)
        return x.mul_(self.scale).add_(self.shift)
