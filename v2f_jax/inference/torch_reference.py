"""The reference's PyTorch networks, as `network.py` of cmu-mlsp/reconstructing_faces_from_voices
defines them (written here from that definition): the yardstick our layouts and speed are checked
against.

Imported only by tests and benchmarks, which skip without torch. Layouts are PyTorch's:
VoiceEmbedNet takes log-mels `[B, n_mels, T]` and returns `[B, D, 1, 1]`; Generator takes
`[B, D, 1, 1]` and returns faces `[B, 3, 64, 64]`; FaceEmbedNet takes faces `[B, 3, 64, 64]`
and returns `[B, D, 1, 1]`; Classifier flattens its input and maps it to `[B, output_channel]`.
Each keeps its layers in one `nn.Sequential` named `model`, so the state-dict keys are the
reference's (`model.0.weight`, ...: see `torch_state_dicts`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import nn

# The reference's config.py: channel widths of E, G and F, and its embedding size.
EMBED_DIM = 64
VOICE_CHANNELS = (256, 384, 576, 864)
GENERATOR_CHANNELS = (1024, 512, 256, 128, 64)
FACE_CHANNELS = (32, 64, 128, 256, 512)


class VoiceEmbedNet(nn.Module):
    """E: four Conv1d(k=3, s=2, p=1) + BatchNorm + ReLU blocks, a last Conv1d, mean over time."""

    def __init__(self, input_channel: int, channels: Sequence[int], output_channel: int):
        super().__init__()
        layers = []
        for c_in, c_out in zip((input_channel, *channels[:3]), channels[:4]):
            layers += [
                nn.Conv1d(c_in, c_out, 3, 2, 1, bias=False),
                nn.BatchNorm1d(c_out, affine=True),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv1d(channels[3], output_channel, 3, 2, 1, bias=True))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        x = self.model(x)
        x = F.avg_pool1d(x, x.size()[2], stride=1)
        return x.view(x.size()[0], -1, 1, 1)


class Generator(nn.Module):
    """G: ConvTranspose2d(k=4) from 1x1 to 4x4, four stride-2 ones to 64x64, a 1x1 to RGB; ReLU
    between them."""

    def __init__(self, input_channel: int, channels: Sequence[int], output_channel: int):
        super().__init__()
        layers = [nn.ConvTranspose2d(input_channel, channels[0], 4, 1, 0, bias=True)]
        for c_in, c_out in zip(channels[:4], channels[1:5]):
            layers += [nn.ReLU(inplace=True), nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=True)]
        layers += [
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(channels[4], output_channel, 1, 1, 0, bias=True),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class FaceEmbedNet(nn.Module):
    """F: a 1x1 Conv2d, four Conv2d(k=4, s=2, p=1), a 4x4 valid Conv2d; LeakyReLU(0.2) between."""

    def __init__(self, input_channel: int, channels: Sequence[int], output_channel: int):
        super().__init__()
        layers = [nn.Conv2d(input_channel, channels[0], 1, 1, 0, bias=True)]
        for c_in, c_out in zip(channels[:4], channels[1:5]):
            layers += [nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(c_in, c_out, 4, 2, 1, bias=True)]
        layers += [
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(channels[4], output_channel, 4, 1, 0, bias=True),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class Classifier(nn.Module):
    """The critics' heads (real/fake with `output_channel` 1, identity with the number of
    identities): one bias-free linear layer; `channels` is unused, as in the reference."""

    def __init__(self, input_channel: int, channels: Sequence[int], output_channel: int):
        super().__init__()
        self.model = nn.Linear(input_channel, output_channel, bias=False)

    def forward(self, x):
        return self.model(x.view(x.size()[0], -1))
