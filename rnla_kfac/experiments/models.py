"""Models for the experiments: a wide MLP, a 1-D CNN (CPU presets) and the paper's VGG16_bn.

The wide MLP has hidden layers of ``width`` units, so its K-factors have sizes up to
``width + 1``: at the default width 2048 they are large enough for the paper's
effect (low-rank decompositions beating a full eigendecomposition) to show. The 1-D
CNN is the paper's modified VGG16_bn in miniature (convolutions with batch norm, max
pooling, a wide fully connected layer with dropout): its convolutions have input
K-factors of size 1281-2305 (``C_in * kernel + 1``). The small GPT (pre-norm
Transformer decoder: ``nn.MultiheadAttention`` with a causal mask, LayerNorms, a
learned position embedding Parameter) is the language model of the ``gpt-markov``
preset.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from math import prod

import torch
from torch import nn

MODELS = ("mlp", "cnn1d", "vgg16_bn", "gpt")
"""Names accepted by :func:`build_model`."""

VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
    512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
"""VGG16 convolution widths, ``"M"`` for 2x2 max pooling."""

CNN1D_CONFIG: tuple[tuple[int, int] | str, ...] = (
    (64, 9), "M", (256, 5), "M", (256, 9), "M", (512, 5),
)  # fmt: skip
"""Convolutions of :class:`CNN1D` as ``(out_channels, kernel)``; ``"M"``: max pooling by 2."""


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

    The classifier is ``Linear(512, width) -> ReLU -> Dropout(0.5) -> Linear(width, n)``:
    with ``width = 512``, the CIFAR VGG16_bn with the extra 512-to-512 fully connected
    layer and dropout that the paper adds before the final layer.

    Parameters
    ----------
    n_classes : int
        Number of outputs.
    in_channels : int
        Input channels.
    width : int
        Outputs of the extra fully connected layer (the paper's 512).

    Examples
    --------
    >>> import torch
    >>> VGG16BN(10)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> VGG16BN(10, width=64).classifier[-1].in_features
    64
    """

    def __init__(self, n_classes: int = 10, in_channels: int = 3, width: int = 512):
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
            nn.Linear(channels, width),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(width, n_classes),
        )

    def forward(self, x):
        """Features, then classifier."""
        return self.classifier(self.features(x))


class CNN1D(nn.Module):
    """A VGG-style 1-D CNN for sequences: the paper's modified VGG16_bn in miniature.

    Convolutions of :data:`CNN1D_CONFIG` ("same" padding, each followed by
    ``BatchNorm1d`` and ReLU, ``"M"``: max pooling by 2), then the classifier
    ``Flatten -> Linear(C L, width) -> ReLU -> Dropout(0.5) -> Linear(width, n)``. On
    MNIST-1D (length 40) the convolutions' input K-factors have sizes 10, 321, 2305
    and 1281 and the wide layer's 2561 (``C_in * kernel + 1``, with the bias).

    Parameters
    ----------
    input_shape : sequence of int
        ``(length,)`` (one channel) or ``(channels, length)``; the length must survive
        the poolings (at least 8).
    n_classes : int
        Number of outputs.
    width : int
        Units of the wide fully connected layer.

    Examples
    --------
    >>> import torch
    >>> model = CNN1D((40,), 10, width=64)
    >>> model(torch.zeros(2, 40)).shape
    torch.Size([2, 10])
    >>> [name for name, m in model.named_modules() if isinstance(m, nn.Conv1d)]
    ['features.conv1', 'features.conv2', 'features.conv3', 'features.conv4']
    """

    def __init__(self, input_shape: Sequence[int], n_classes: int = 10, *, width: int = 1024):
        super().__init__()
        if len(input_shape) not in (1, 2):
            raise ValueError(
                f"cnn1d needs inputs of shape (length,) or (channels, length), got {input_shape}"
            )
        channels, length = (1, input_shape[0]) if len(input_shape) == 1 else input_shape
        poolings = CNN1D_CONFIG.count("M")
        if length < 2**poolings:
            raise ValueError(
                f"cnn1d needs sequences of length at least {2**poolings}, got {length}"
            )
        layers: list[tuple[str, nn.Module]] = []
        if len(input_shape) == 1:
            layers.append(("unflatten", nn.Unflatten(1, (channels, length))))
        index = 0
        for item in CNN1D_CONFIG:
            if item == "M":
                layers.append((f"pool{index}", nn.MaxPool1d(2)))
                length //= 2
                continue
            out_channels, kernel = item
            index += 1
            layers += [
                (f"conv{index}", nn.Conv1d(channels, out_channels, kernel, padding="same")),
                (f"bn{index}", nn.BatchNorm1d(out_channels)),
                (f"relu{index}", nn.ReLU(inplace=True)),
            ]
            channels = out_channels
        self.features = nn.Sequential(OrderedDict(layers))
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(channels * length, width)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("dropout", nn.Dropout(0.5)),
                    ("fc2", nn.Linear(width, n_classes)),
                ]
            )
        )

    def forward(self, x):
        """Features, then classifier."""
        return self.classifier(self.features(x))


class SmallGPT(nn.Module):
    """A small GPT: token embedding, position Parameter, pre-norm causal Transformer layers.

    Returns next-token logits of shape ``(n, vocabulary, length)`` (classes second, as
    ``cross_entropy`` takes them with ``(n, length)`` labels).

    Parameters
    ----------
    vocabulary, length : int
        Number of tokens and the longest sequence.
    width, depth, heads : int
        Model width, number of layers and attention heads (feed-forward ``4 width``).

    Examples
    --------
    >>> model = SmallGPT(10, 6, width=16, depth=1, heads=2)
    >>> model(torch.zeros(3, 6, dtype=torch.long)).shape
    torch.Size([3, 10, 6])
    """

    def __init__(self, vocabulary: int, length: int, *, width: int = 64, depth: int = 2,
                 heads: int = 4):  # fmt: skip
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, width)
        self.position = nn.Parameter(0.02 * torch.randn(1, length, width))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocabulary)

    def forward(self, tokens):
        """Next-token logits ``(n, vocabulary, length)``."""
        length = tokens.shape[1]
        x = self.embedding(tokens) + self.position[:, :length]
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        for layer in self.layers:
            x = layer(x, src_mask=mask, is_causal=True)
        return self.head(self.norm(x)).transpose(1, 2)


def build_model(
    name: str, input_shape: Sequence[int], n_classes: int, *, width: int = 2048, depth: int = 2
) -> nn.Module:
    """Build a model by name.

    Parameters
    ----------
    name : {"mlp", "cnn1d", "vgg16_bn", "gpt"}
        ``"mlp"``: :func:`wide_mlp`; ``"cnn1d"``: :class:`CNN1D` (sequences);
        ``"vgg16_bn"``: :class:`VGG16BN` (needs ``(3, 32, 32)`` inputs); ``"gpt"``:
        :class:`SmallGPT` of width ``width`` and ``depth`` layers on token sequences of
        ``input_shape = (length,)`` with ``n_classes`` tokens.
    input_shape : sequence of int
        Shape of one input sample.
    n_classes : int
        Number of outputs.
    width, depth : int
        Hidden width and number of hidden layers of the MLP; ``width`` is also the
        wide fully connected layer of the CNN and the extra one of VGG16_bn.

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
    ValueError: unknown model 'resnet'; choose one of mlp, cnn1d, vgg16_bn, gpt
    """
    if name == "mlp":
        return wide_mlp(input_shape, n_classes, width=width, depth=depth)
    if name == "cnn1d":
        return CNN1D(input_shape, n_classes, width=width)
    if name == "vgg16_bn":
        if tuple(input_shape) != (3, 32, 32):
            raise ValueError(f"vgg16_bn needs inputs of shape (3, 32, 32), got {input_shape}")
        return VGG16BN(n_classes, width=width)
    if name == "gpt":
        return SmallGPT(n_classes, input_shape[0], width=width, depth=depth)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
