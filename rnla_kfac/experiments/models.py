"""Models for the experiments: a wide MLP (CPU defaults) and the paper's VGG16_bn.

The wide MLP has hidden layers of ``width`` units, so its K-factors have sizes up to
``width + 1``: at the default width 2048 they are large enough for the paper's
effect (low-rank decompositions beating a full eigendecomposition) to show.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from math import prod

from torch import nn

MODELS = ("mlp", "vgg16_bn")
"""Names accepted by :func:`build_model`."""

VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
    512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
"""VGG16 convolution widths, ``"M"`` for 2x2 max pooling."""


def wide_mlp(
    input_shape: Sequence[int], n_classes: int, *, width: int = 2048, depth: int = 2
) -> nn.Sequential:
    """A ReLU MLP with ``depth`` hidden layers of ``width`` units.

    Layers are named ``fc1`` ... ``fc{depth+1}`` so K-factor names are readable.

    Parameters
    ----------
    input_shape : sequence of int
        Shape of one input sample (flattened by the first layer).
    n_classes : int
        Number of outputs.
    width : int
        Hidden width; K-factors of the hidden layers have size ``width`` (G) and
        ``width + 1`` (A, with the bias column).
    depth : int
        Number of hidden layers (at least 1).

    Returns
    -------
    torch.nn.Sequential

    Examples
    --------
    >>> import torch
    >>> model = wide_mlp((40,), 10, width=64)
    >>> model(torch.zeros(3, 40)).shape
    torch.Size([3, 10])
    >>> [name for name, m in model.named_children() if isinstance(m, nn.Linear)]
    ['fc1', 'fc2', 'fc3']
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    fan_in = prod(input_shape)
    for i in range(1, depth + 1):
        layers += [(f"fc{i}", nn.Linear(fan_in, width)), (f"relu{i}", nn.ReLU())]
        fan_in = width
    layers.append((f"fc{depth + 1}", nn.Linear(fan_in, n_classes)))
    return nn.Sequential(OrderedDict(layers))


class VGG16BN(nn.Module):
    """VGG16 with batch norm for 32x32 images, as in the paper (Puiu 2022).

    The classifier is ``Linear(512, 512) -> ReLU -> Dropout(0.5) -> Linear(512, n)``:
    the CIFAR VGG16_bn with the extra 512-to-512 fully connected layer and dropout
    that the paper adds before the final layer.

    Parameters
    ----------
    n_classes : int
        Number of outputs.
    in_channels : int
        Input channels.

    Examples
    --------
    >>> import torch
    >>> VGG16BN(10)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(self, n_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG16_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [
                    nn.Conv2d(channels, int(item), 3, padding=1),
                    nn.BatchNorm2d(int(item)),
                    nn.ReLU(inplace=True),
                ]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(512, n_classes),
        )

    def forward(self, x):
        """Features, then classifier."""
        return self.classifier(self.features(x))


def build_model(
    name: str, input_shape: Sequence[int], n_classes: int, *, width: int = 2048, depth: int = 2
) -> nn.Module:
    """Build a model by name.

    Parameters
    ----------
    name : {"mlp", "vgg16_bn"}
        ``"mlp"``: :func:`wide_mlp`; ``"vgg16_bn"``:
        :class:`VGG16BN` (needs ``(3, 32, 32)`` inputs).
    input_shape : sequence of int
        Shape of one input sample.
    n_classes : int
        Number of outputs.
    width, depth : int
        Hidden width and number of hidden layers of the MLP.

    Returns
    -------
    torch.nn.Module

    Examples
    --------
    >>> build_model("mlp", (64,), 10, width=32).fc1.in_features
    64
    >>> build_model("resnet", (64,), 10)
    Traceback (most recent call last):
    ...
    ValueError: unknown model 'resnet'; choose one of mlp, vgg16_bn
    """
    if name == "mlp":
        return wide_mlp(input_shape, n_classes, width=width, depth=depth)
    if name == "vgg16_bn":
        if tuple(input_shape) != (3, 32, 32):
            raise ValueError(f"vgg16_bn needs inputs of shape (3, 32, 32), got {input_shape}")
        return VGG16BN(n_classes)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
