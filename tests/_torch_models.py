"""A tiny model holding every kind of tensor the converter and runtime must handle."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FAMILIES", "NESTED", "Tiny", "tiny"]


class Tiny(nn.Module):
    """Every kind of tensor the converter must handle, in a few hundred weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8, bias=False)])
        self.heads = nn.ModuleDict({"cls": nn.Linear(8, 5)})
        self.token = nn.Parameter(torch.randn(1, 8))
        self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))
        self.register_buffer("mask", torch.tensor([True, False, True]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)) + self.token
        for block in self.blocks:
            y = torch.relu(block(y))
        return self.heads["cls"](y)


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    model = Tiny()
    with torch.no_grad():  # non-trivial BN statistics, so RAW round trips are meaningful
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.num_batches_tracked.fill_(12)
    return model.eval()


NESTED = {"conv.weight", "blocks.0.weight", "blocks.1.weight", "heads.cls.weight"}

#: one model per family the runtimes must cover (pytorchcv and timm names)
FAMILIES = [
    ("ResNet", "resnet10"),
    ("DenseNet", "densenet121"),
    ("ResNeXt", "resnext14_16x4d"),
    ("MobileNet", "mobilenet_wd4"),
    ("MobileNetV2", "mobilenetv2_wd4"),
    ("ShuffleNet", "shufflenet_g1_wd4"),
    ("ShuffleNetV2", "shufflenetv2_wd2"),
    ("EfficientNet", "efficientnet_b0"),
    ("ViT", "vit_tiny_patch16_224"),
    ("DeiT", "deit_tiny_patch16_224"),
    ("Swin", "swin_tiny_patch4_window7_224"),
]
