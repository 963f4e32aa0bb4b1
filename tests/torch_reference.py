"""PyTorch EDSR and MDSR as in the authors' official release, for tests only.

Written from shared/docs/EDSR_FACTS.md: the module names reproduce the official state_dict
keys (`sub_mean`, `head.0`, `body.{i}.body.{0,2}`, `body.{B}`, `tail.0.{0,2}`, `tail.1`;
MDSR `pre_process.{s}.{k}.body.{0,2}`, `upsample.{s}.{0,2}`, `tail.0`), inputs are NCHW
RGB on the 0..255 scale. The `parameter_count` of these modules is checked against the
published numbers in the tests, so that the reference itself can be trusted.
"""

import torch
from torch import nn

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def conv(in_ch: int, out_ch: int, kernel: int) -> nn.Conv2d:
  return nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=True)


class MeanShift(nn.Conv2d):
  """A fixed 1x1 conv adding `sign * rgb_range * mean / std` (the official sub/add_mean)."""

  def __init__(self, rgb_range=255.0, rgb_mean=DIV2K_RGB_MEAN, rgb_std=(1.0, 1.0, 1.0), sign=-1):
    super().__init__(3, 3, kernel_size=1)
    std = torch.tensor(rgb_std, dtype=torch.float32)
    self.weight.data = torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1)
    self.bias.data = sign * rgb_range * torch.tensor(rgb_mean, dtype=torch.float32) / std
    for p in self.parameters():
      p.requires_grad = False


class ResBlock(nn.Module):
  def __init__(self, features: int, kernel: int = 3, res_scale: float = 1.0):
    super().__init__()
    self.body = nn.Sequential(
      conv(features, features, kernel), nn.ReLU(True), conv(features, features, kernel)
    )
    self.res_scale = res_scale

  def forward(self, x):
    return self.body(x).mul(self.res_scale) + x


class Upsampler(nn.Sequential):
  def __init__(self, scale: int, features: int):
    layers = []
    if scale == 3:
      layers += [conv(features, 9 * features, 3), nn.PixelShuffle(3)]
    elif scale in (2, 4):
      for _ in range(scale // 2):
        layers += [conv(features, 4 * features, 3), nn.PixelShuffle(2)]
    else:
      raise ValueError(f"unsupported scale {scale}")
    super().__init__(*layers)


def _body(num_blocks: int, features: int, res_scale: float) -> nn.Sequential:
  blocks = [ResBlock(features, 3, res_scale) for _ in range(num_blocks)]
  return nn.Sequential(*blocks, conv(features, features, 3))


class EDSR(nn.Module):
  def __init__(
    self,
    scale=2,
    num_blocks=16,
    num_features=64,
    res_scale=1.0,
    rgb_range=255.0,
    rgb_std=(1.0, 1.0, 1.0),
  ):
    super().__init__()
    self.sub_mean = MeanShift(rgb_range, rgb_std=rgb_std, sign=-1)
    self.add_mean = MeanShift(rgb_range, rgb_std=rgb_std, sign=1)
    self.head = nn.Sequential(conv(3, num_features, 3))
    self.body = _body(num_blocks, num_features, res_scale)
    self.tail = nn.Sequential(Upsampler(scale, num_features), conv(num_features, 3, 3))

  def forward(self, x):
    x = self.head(self.sub_mean(x))
    res = self.body(x) + x
    return self.add_mean(self.tail(res))


class MDSR(nn.Module):
  """Branch `idx` of `scales` runs: pre_process[idx] and upsample[idx]."""

  def __init__(self, scales=(2, 3, 4), num_blocks=16, num_features=64, rgb_range=255.0):
    super().__init__()
    f = num_features
    self.sub_mean = MeanShift(rgb_range, sign=-1)
    self.add_mean = MeanShift(rgb_range, sign=1)
    self.head = nn.Sequential(conv(3, f, 3))
    self.pre_process = nn.ModuleList(
      [nn.Sequential(ResBlock(f, 5), ResBlock(f, 5)) for _ in scales]
    )
    self.body = _body(num_blocks, f, 1.0)
    self.upsample = nn.ModuleList([Upsampler(s, f) for s in scales])
    self.tail = nn.Sequential(conv(f, 3, 3))

  def forward(self, x, idx: int):
    x = self.pre_process[idx](self.head(self.sub_mean(x)))
    res = self.body(x) + x
    return self.add_mean(self.tail(self.upsample[idx](res)))


def parameter_count(model: nn.Module) -> int:
  """Trainable parameters (the mean shift is fixed), as counted in the paper's tables."""
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def randomize_(model: nn.Module, seed: int) -> nn.Module:
  """Perturbs every trainable weight and bias (relative to its spread, so activations stay
  in range), so that no mapping error can hide behind a symmetric or default init."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      if p.requires_grad:
        noise = torch.randn(p.shape, generator=gen)
        p.add_(noise * (0.5 * p.std() if p.dim() > 1 else 0.1))
  return model
