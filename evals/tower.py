"""A target's own convolutional network as a backbone that fine-tuning and segmentation train:
the reference row of the trained evaluations (FT-CLIP's practice of fine-tuning the teacher).

On the world the in-project CLIP teacher has a ResNet tower (open_clip's ModifiedResNet); its
stem and four stages are exposed with the interface the evaluations read from a student:
`blocks` (layer decay), `embed_dim`, `num_prefix_tokens`, `forward_features` (tokens) and
`stages` (the four maps a segmentation head reads).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from mimbench.data.views import STUDENT_MEAN, STUDENT_STD
from mimbench.errors import ConfigError


class StageTower(nn.Module):
    """A ResNet image tower that takes images normalised as the student's views."""

    num_prefix_tokens = 0  # no class token: every output token is a position of the last stage

    def __init__(self, visual: nn.Module, mean: Tensor, std: Tensor, input_size: int):
        super().__init__()
        stem = nn.Sequential(visual.conv1, visual.bn1, visual.act1, visual.conv2, visual.bn2,
                             visual.act2, visual.conv3, visual.bn3, visual.act3, visual.avgpool)
        self.blocks = nn.ModuleList([stem, visual.layer1, visual.layer2, visual.layer3, visual.layer4])
        self.input_size = input_size  # the side the target's views have in pre-training
        # student normalisation -> the tower's own: x * scale + shift
        student_mean = torch.tensor(STUDENT_MEAN).view(1, 3, 1, 1)
        student_std = torch.tensor(STUDENT_STD).view(1, 3, 1, 1)
        mean, std = mean.detach().cpu().view(1, 3, 1, 1), std.detach().cpu().view(1, 3, 1, 1)
        self.register_buffer("scale", student_std / std, persistent=False)
        self.register_buffer("shift", (student_mean - mean) / std, persistent=False)
        with torch.no_grad():
            maps = self.train(False).stages(torch.zeros(1, 3, input_size, input_size))
        self.train(True)
        self.stage_channels = [m.shape[1] for m in maps]
        self.embed_dim = self.stage_channels[-1]

    def stages(self, images: Tensor) -> list[Tensor]:
        """[B, 3, S, S] student-normalised -> the maps of stages 1-4, [B, C_i, S/4/2^i, ...]."""
        x = self.blocks[0](images * self.scale + self.shift)
        maps = []
        for stage in self.blocks[1:]:
            x = stage(x)
            maps.append(x)
        return maps

    def forward_features(self, images: Tensor) -> Tensor:
        """[B, 3, S, S] -> [B, N, C]: the last stage's positions as tokens."""
        return self.stages(images)[-1].flatten(2).transpose(1, 2)


def target_tower(config) -> tuple[StageTower, str]:
    """A trainable copy of the network behind config.target, and its description for a card."""
    import open_clip

    from mimbench.targets.source import build_provider

    provider = build_provider(config)  # its own grid: the tower is trained, not its tokens resampled
    network = getattr(provider, "network", None)
    if not isinstance(network, open_clip.modified_resnet.ModifiedResNet):
        raise ConfigError(f"fine-tuning or segmenting target '{config.target.name}' itself needs a "
                          f"CLIP ResNet tower (the tiny clip teacher's); evaluate this target "
                          f"with the linear and k-NN probes only.")
    visual = copy.deepcopy(network).requires_grad_(True).train()
    tower = StageTower(visual, provider.mean, provider.std, provider.spec.input_size)
    return tower, (f"target {config.target.name}'s own network (stem + 4 stages, "
                   f"{provider.spec.input_size}-px input), fine-tuned")
