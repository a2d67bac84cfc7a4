"""torchvision ResNet stages at any width, their initialisation, and a channels-last safety check:
the CNN halves of the hybrid medical models (ParaTransCNN, DuoFormer) are built from these."""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = ["resnet_stage", "channels_last_safe", "init_resnet_"]


def resnet_stage(block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, blocks: int,
                 stride: int) -> nn.Sequential:
    """torchvision ResNet ``layerN`` at any width: ``blocks`` BasicBlocks/Bottlenecks, the first with
    ``stride`` and a 1x1 conv + BN shortcut when the shape changes (torchvision's module names).

    Input (B, inplanes, H, W) -> (B, planes * block.expansion, H / stride, W / stride).
    """
    out = planes * block.expansion
    down = None
    if stride != 1 or inplanes != out:
        down = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
    return nn.Sequential(block(inplanes, planes, stride, down), *(block(out, planes) for _ in range(blocks - 1)))


def channels_last_safe(module: nn.Module) -> bool:
    """Whether ``module`` may run channels-last: False when it holds a 1x1 stride-2 convolution with at most
    8 input channels, whose channels-last CPU backward corrupts the heap in PyTorch 2.x (seen with 2.14;
    only tiny test widths have such shortcuts, the paper models never do)."""
    return not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels <= 8
                   for m in module.modules())


def init_resnet_(module: nn.Module) -> None:
    """torchvision's ResNet initialisation (what ``resnet34(weights=None)`` gives) on every conv/BN below
    ``module``; the official models start from ImageNet weights, which a user loads from a checkpoint."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
