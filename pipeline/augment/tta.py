"""Test-time augmentation views, and the one affine warp they and the batched executor share.

A view is an affine map in the [-1, 1] coordinates of `grid_sample(align_corners=False)`,
which are the keypoint coordinates the network predicts: a point p predicted in a view lies
at theta @ [p, 1] in the image, exactly. Each task maps its predictions back (Task.view_back)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class View:
    theta: torch.Tensor  # (2, 3): output coordinates -> input coordinates
    hflip: bool = False  # a horizontal flip: left/right points swap names

    @property
    def is_identity(self) -> bool:
        return torch.equal(self.theta, torch.eye(2, 3))

    def to_image(self, points: torch.Tensor) -> torch.Tensor:
        """(B, K, 2) points predicted in the view -> the same places in the image."""
        return points @ self.theta[:, :2].T.to(points) + self.theta[:, 2].to(points)


def views(tta: list[str]) -> list[View]:
    """The plain view, then each named one; shift:f gives four views moved by f of the side."""
    out = [View(torch.eye(2, 3))]
    for spec in tta:
        name, _, value = spec.partition(":")
        if name == "hflip":
            out.append(View(torch.tensor([[-1.0, 0, 0], [0, 1, 0]]), hflip=True))
        elif name == "vflip":
            out.append(View(torch.tensor([[1.0, 0, 0], [0, -1, 0]])))
        elif name == "shift":
            step = 2 * float(value)  # a fraction of the side is twice that in [-1, 1] units
            out += [
                View(torch.tensor([[1.0, 0, dx], [0, 1, dy]]))
                for dx, dy in ((step, 0), (-step, 0), (0, step), (0, -step))
            ]
        elif name == "scale":
            out.append(View(torch.tensor([[1 / float(value), 0, 0], [0, 1 / float(value), 0]])))
    return out


def apply_view(view: View, images: torch.Tensor) -> torch.Tensor:
    if view.is_identity:
        return images
    return warp(images, view.theta.to(images.device, images.dtype).expand(len(images), 2, 3))


def warp(images: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """float (N, C, H, W) images resampled through (N, 2, 3) maps from output to input
    coordinates, zeros outside; `mode` nearest for masks, whose values are classes."""
    return sample(images, F.affine_grid(theta, list(images.shape), align_corners=False), mode)


def sample(images: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """float (N, C, H, W) images read at (N, H, W, 2) grid points in [-1, 1], zeros outside."""
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)
