"""Input normalisation of the backbones, and its JSON description for checkpoints and caches.

Every backbone maps uint8 RGB images (already resized to its input size by the data pipeline) to
its network input as x = (pixel - mean) / std per channel, in pixel units (0..255), after putting
the channels in the order the weights expect. `Preprocessing` is that function and says, besides,
how the weights' reference evaluation resizes and crops images (`resize`, `resize_to`, `crop`),
which `describe()` records: two backbones whose descriptions differ see different inputs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

# Caffe's ImageNet mean (BGR, 0..255) of the BVLC reference models (AlexNet, CaffeNet).
IMAGENET_MEAN_BGR = (104.007, 116.669, 122.679)
# torchvision's ImageNet statistics (RGB, 0..1), also DINOv2's.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# OpenAI CLIP's statistics (RGB, 0..1).
CLIP_MEAN_RGB = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD_RGB = (0.26862954, 0.26130258, 0.27577711)


def _triple(values: Sequence[float], what: str) -> tuple[float, float, float]:
  values = tuple(float(v) for v in values)
  if len(values) != 3:
    raise ValueError(f"{what} needs 3 values (one per channel), got {len(values)}")
  return values  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """uint8 RGB NHWC -> float32 (pixel - mean) / std, channels in `channels` order.

  mean, std: per channel in `channels` order, in pixel units (0..255).
  input_size: (H, W) the network takes. resize: the interpolation of the reference evaluation
  ('bilinear', 'bicubic'); resize_to: the shorter side it resizes to before cropping (None: the
  image is resized to input_size directly); crop: 'center' or None.
  """
  input_size: tuple[int, int]
  mean: tuple[float, float, float]
  std: tuple[float, float, float] = (1.0, 1.0, 1.0)
  channels: str = "RGB"
  resize: str = "bilinear"
  resize_to: int | None = None
  crop: str | None = None

  def __post_init__(self):
    if self.channels not in ("RGB", "BGR"):
      raise ValueError(f"channels must be 'RGB' or 'BGR', got {self.channels!r}")
    object.__setattr__(self, "mean", _triple(self.mean, "mean"))
    object.__setattr__(self, "std", _triple(self.std, "std"))
    if any(s <= 0 for s in self.std):
      raise ValueError(f"std must be positive, got {self.std}")
    object.__setattr__(self, "input_size", (int(self.input_size[0]), int(self.input_size[1])))

  @classmethod
  def unit_range(cls, input_size: tuple[int, int], mean: Sequence[float], std: Sequence[float],
                 **kwargs: Any) -> "Preprocessing":
    """From statistics of pixels scaled to 0..1 (torchvision's, timm's and CLIP's convention)."""
    return cls(input_size, tuple(255.0 * m for m in mean), tuple(255.0 * s for s in std), **kwargs)

  def __call__(self, images: jax.Array) -> jax.Array:
    x = jnp.asarray(images).astype(jnp.float32)
    if self.channels == "BGR":
      x = x[..., ::-1]
    x = x - jnp.asarray(self.mean, jnp.float32)
    if self.std != (1.0, 1.0, 1.0):
      x = x * jnp.asarray([1.0 / s for s in self.std], jnp.float32)
    return x

  def describe(self) -> dict[str, Any]:
    """JSON-able description: equal descriptions mean equal network inputs."""
    return {"input_size": list(self.input_size), "channels": self.channels,
            "mean": list(self.mean), "std": list(self.std), "pixel_range": [0, 255],
            "resize": self.resize, "resize_to": self.resize_to, "crop": self.crop}


def torchvision_imagenet(input_size: int = 224, resize_to: int = 256, resize: str = "bilinear"
                         ) -> Preprocessing:
  """torchvision's ImageNet evaluation: resize the shorter side, center crop, mean/std."""
  return Preprocessing.unit_range((input_size, input_size), IMAGENET_MEAN_RGB, IMAGENET_STD_RGB,
                                  resize=resize, resize_to=resize_to, crop="center")
