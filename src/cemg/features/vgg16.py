"""VGG16 (Simonyan & Zisserman 2015, configuration D), the paper's image encoder (4.2.2.1), in plain torch.

Written out here rather than taken from torchvision: a torchvision wheel is built for one exact torch
version and does not import beside ours (torch 2.13 CPU), so it cannot be a dependency of a package
that installs on any torch in its range; and the architecture is twenty lines. The module and
parameter names are torchvision's `vgg16()` exactly (features.0.weight ... classifier.6.bias), so
its ImageNet state dict, vgg16-397923af.pth, loads unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

# Output channels of the 3x3 convolutions; "M" a 2x2 max-pool (torchvision's cfgs["D"]).
LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
FC7_DIM = 4096


class VGG16(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in LAYOUT:
            if out == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = out
        self.features = nn.Sequential(*layers)  # convolutions at indices 0, 2, 5, 7, 10, ..., 28
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, FC7_DIM), nn.ReLU(inplace=True), nn.Dropout(),  # fc6
            nn.Linear(FC7_DIM, FC7_DIM), nn.ReLU(inplace=True), nn.Dropout(),  # fc7
            nn.Linear(FC7_DIM, num_classes),  # fc8: ImageNet logits, unused for item features
        )

    def fc7(self, x: torch.Tensor) -> torch.Tensor:  # (batch, 3, 224, 224) -> (batch, 4096)
        x = torch.flatten(self.avgpool(self.features(x)), 1)  # (batch, 25088)
        return self.classifier[:5](x)  # fc6, relu, dropout, fc7, relu: the paper's 4096-d feature

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, 3, 224, 224) -> (batch, num_classes)
        return self.classifier[5:](self.fc7(x))
