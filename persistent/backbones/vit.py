"""Vision Transformers in Flax: timm's ViT-S/16 and ViT-B/16, DINOv2 ViT-S/14 and ViT-B/14, and the
CLIP ViT-B/16 image tower, as configurations of one module, loading their usual files without torch.

The network (Dosovitskiy et al. 2021): a strided conv cuts the image into patches; a learned class
token is prepended and learned position embeddings added; pre-norm transformer blocks (LayerNorm,
multi-head self-attention with a fused qkv projection, LayerNorm, two-layer MLP, each added to the
residual stream) and a final LayerNorm. The configurations differ in:

* timm `vit_*_patch16_224`: GELU (erf), LayerNorm eps 1e-6, a linear classifier on the class
  token ('head' tensor); timm's state dict names.
* DINOv2 `dinov2_vit*14` (Oquab et al. 2023; the official `dinov2_vit*14_pretrain.pth`): patch 14,
  layer scale (a learned per-channel factor on each residual branch, `ls1/ls2.gamma`), no
  classifier; `mask_token` (used in training only) is ignored. The checkpoint's position
  embeddings are for a 37x37 grid (518 pixels); at other input sizes they are resampled as the
  official code does: bicubic (A = -0.75, no antialiasing) with scale factors (g + 0.1) / 37,
  done once on the host at load time.
* CLIP `clip_vit_b16` (Radford et al. 2021, OpenAI's layout, also what open_clip saves): QuickGELU
  (x * sigmoid(1.702 x)), LayerNorm eps 1e-5, no patch bias, a LayerNorm ('ln_pre') before the
  blocks, and a linear projection without bias ('proj') of the final class token to the 512-d
  image embedding. A full CLIP state dict ('visual.*' plus the text tower, which is ignored) or
  the image tower's alone are accepted. `open_clip_vit_b16` is the same with GELU (erf), as
  open_clip's non-OpenAI ViT-B-16 weights (LAION, DataComp) need.

Taps (NHWC grids of patch tokens, (N, D) vectors): 'embed' (tokens entering block 0), 'block0' ..
'block{n-1}' (each block's patch tokens as an (H/p, W/p, D) grid) with 'block{i}_cls' (its class
token), 'tokens' (the final-normed patch grid), 'cls' (CLIP: the final-normed class token), 'head'
(the global representation: timm and DINOv2 the final-normed class token, the classifier's input;
CLIP the projected image embedding), 'logits' and 'prob' (timm only).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from persistent.backbones import base
from persistent.backbones import state_dict as sd_lib
from persistent.backbones.layers import precision
from persistent.backbones.preprocessing import (CLIP_MEAN_RGB, CLIP_STD_RGB, IMAGENET_MEAN_RGB,
                                                IMAGENET_STD_RGB, Preprocessing)

POS_OFFSET = 0.1  # DINOv2's offset of the resampling scale factor
BICUBIC_A = -0.75  # PyTorch's bicubic kernel


@dataclasses.dataclass(frozen=True)
class Config:
  """One ViT variant: architecture, state-dict layout, input and preprocessing."""
  patch: int
  dim: int
  depth: int
  heads: int
  eps: float
  act: str                    # 'gelu' (erf) or 'quick_gelu'
  layout: str                 # 'timm', 'dinov2' or 'clip' (see `entries`)
  head: str | None            # 'classifier' (timm), 'projection' (CLIP) or None
  head_dim: int               # classes or embedding size
  native_size: int            # the input size the position embeddings were trained for
  input_size: int             # the default input size
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  resize_to: int              # the reference evaluation's shorter side before the center crop
  usual_file: str
  patch_bias: bool = True
  norm_pre: bool = False
  layer_scale: bool = False
  resample: bool = False      # position embeddings resampled to other input sizes (DINOv2)
  mlp_ratio: int = 4


_TIMM = dict(eps=1e-6, act="gelu", layout="timm", head="classifier", head_dim=1000, native_size=224,
             input_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_to=248)
_DINOV2 = dict(patch=14, eps=1e-6, act="gelu", layout="dinov2", head=None, head_dim=0,
               native_size=518, input_size=224, mean=IMAGENET_MEAN_RGB, std=IMAGENET_STD_RGB,
               resize_to=256, layer_scale=True, resample=True)
_CLIP = dict(patch=16, dim=768, depth=12, heads=12, eps=1e-5, layout="clip", head="projection",
             head_dim=512, native_size=224, input_size=224, mean=CLIP_MEAN_RGB, std=CLIP_STD_RGB,
             resize_to=224, patch_bias=False, norm_pre=True)
CONFIGS: dict[str, Config] = {
    "vit_small_patch16_224": Config(16, 384, 12, 6, **_TIMM, usual_file=(
        "timm's vit_small_patch16_224.augreg_in21k_ft_in1k model.safetensors")),
    "vit_base_patch16_224": Config(16, 768, 12, 12, **_TIMM, usual_file=(
        "timm's vit_base_patch16_224.augreg2_in21k_ft_in1k model.safetensors")),
    "dinov2_vits14": Config(dim=384, depth=12, heads=6, **_DINOV2,
                            usual_file="dinov2_vits14_pretrain.pth (the official DINOv2 release)"),
    "dinov2_vitb14": Config(dim=768, depth=12, heads=12, **_DINOV2,
                            usual_file="dinov2_vitb14_pretrain.pth (the official DINOv2 release)"),
    "clip_vit_b16": Config(**_CLIP, act="quick_gelu", usual_file=(
        "a state dict of OpenAI's CLIP ViT-B/16 (open_clip's copy of the 'openai' weights, or "
        "`torch.jit.load('ViT-B-16.pt').state_dict()` saved with torch.save)")),
    "open_clip_vit_b16": Config(**_CLIP, act="gelu", usual_file=(
        "open_clip's ViT-B-16 weights (e.g. laion2b_s34b_b88k, open_clip_pytorch_model.bin)")),
}


def quick_gelu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False), "quick_gelu": quick_gelu}


def layer_norm(eps: float, dtype: Any, name: str) -> nn.LayerNorm:
  # Two-pass variance, as torch computes it: E[x^2] - E[x]^2 loses digits on large activations.
  return nn.LayerNorm(epsilon=eps, dtype=dtype, use_fast_variance=False, name=name)


class LayerScale(nn.Module):
  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gamma = self.param("gamma", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    return x * gamma.astype(x.dtype)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (q, k, v stacked, heads contiguous)."""
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    hd = d // self.heads
    prec = precision(self.dtype)
    qkv = nn.Dense(3 * d, dtype=self.dtype, precision=prec, name="qkv")(x)
    q, k, v = jnp.moveaxis(qkv.reshape(b, t, 3, self.heads, hd), 2, 0)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * (hd ** -0.5), k, precision=prec)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=prec).reshape(b, t, d)
    return nn.Dense(d, dtype=self.dtype, precision=prec, name="proj")(out)


class Mlp(nn.Module):
  hidden: int
  act: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    prec = precision(self.dtype)
    h = ACTIVATIONS[self.act](nn.Dense(self.hidden, dtype=self.dtype, precision=prec, name="fc1")(x))
    return nn.Dense(x.shape[-1], dtype=self.dtype, precision=prec, name="fc2")(h)


class Block(nn.Module):
  config: Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    branches = (("norm1", lambda h: Attention(c.heads, self.dtype, name="attn")(h), "ls1"),
                ("norm2", lambda h: Mlp(c.dim * c.mlp_ratio, c.act, self.dtype, name="mlp")(h), "ls2"))
    for norm, fn, ls in branches:
      h = fn(layer_norm(c.eps, self.dtype, norm)(x))
      x = x + (LayerScale(name=ls)(h) if c.layer_scale else h)
    return x


def _grid_of(tokens: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """(N, 1 + gh*gw, D) -> the patch tokens as an NHWC grid (N, gh, gw, D)."""
  return tokens[:, 1:].reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[-1])


class ViT(nn.Module):
  """Returns every tap (see module docstring) for input already normalised by `preprocess`."""
  config: Config
  grid: tuple[int, int]
  head_dim: int | None = None  # default config.head_dim
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    c, out = self.config, {}
    n_tokens = 1 + self.grid[0] * self.grid[1]
    x = nn.Conv(c.dim, (c.patch, c.patch), (c.patch, c.patch), padding="VALID", use_bias=c.patch_bias,
                dtype=self.dtype, precision=precision(self.dtype), name="patch_embed_proj")(
                    x.astype(self.dtype))
    if x.shape[1:3] != self.grid:
      raise ValueError(f"input of {x.shape[1] * c.patch}x{x.shape[2] * c.patch} pixels gives a "
                       f"{x.shape[1:3]} patch grid; this module was built for {self.grid}")
    x = x.reshape(x.shape[0], -1, c.dim)
    cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, c.dim), jnp.float32)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, n_tokens, c.dim), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, c.dim)), x], 1)
    x = x + pos.astype(self.dtype)
    if c.norm_pre:
      x = layer_norm(c.eps, self.dtype, "norm_pre")(x)
    out["embed"] = _grid_of(x, self.grid)
    for i in range(c.depth):
      x = Block(c, self.dtype, name=f"blocks_{i}")(x)
      out[f"block{i}"], out[f"block{i}_cls"] = _grid_of(x, self.grid), x[:, 0]
    x = layer_norm(c.eps, self.dtype, "norm")(x)
    out["tokens"] = _grid_of(x, self.grid)
    head_dim = self.head_dim or c.head_dim
    prec = precision(self.dtype)
    if c.head == "projection":
      out["cls"] = x[:, 0]
      out["head"] = nn.Dense(head_dim, use_bias=False, dtype=self.dtype, precision=prec,
                             name="head")(x[:, 0])
    else:
      out["head"] = x[:, 0]
    if c.head == "classifier":
      out["logits"] = logits = nn.Dense(head_dim, dtype=self.dtype, precision=prec, name="head")(x[:, 0])
      out["prob"] = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return out


def layers(config: Config) -> tuple[str, ...]:
  """The taps of a configuration, in network order."""
  blocks = tuple(name for i in range(config.depth) for name in (f"block{i}", f"block{i}_cls"))
  head = {"classifier": ("head", "logits", "prob"), "projection": ("cls", "head"), None: ("head",)}
  return ("embed",) + blocks + ("tokens",) + head[config.head]


def preprocessing(config: Config, input_size: int) -> Preprocessing:
  resize_to = round(config.resize_to * input_size / config.input_size)
  return Preprocessing.unit_range((input_size, input_size), config.mean, config.std,
                                  resize="bicubic", resize_to=resize_to, crop="center")


# ---------------------------------------------------------------------------------------------
# Weights


def bicubic_weights(n_in: int, n_out: int, scale: float) -> np.ndarray:
  """(n_out, n_in) matrix of PyTorch's bicubic resampling (align_corners=False, no antialias)
  with an explicit scale factor: output i samples input (i + 0.5) / scale - 0.5, taps clamped."""
  def kernel(t):
    t = np.abs(t)
    a = BICUBIC_A
    return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))
  src = (np.arange(n_out) + 0.5) / scale - 0.5
  base = np.floor(src)
  w = np.zeros((n_out, n_in))
  for offset in (-1, 0, 1, 2):
    idx = np.clip(base + offset, 0, n_in - 1).astype(int)
    np.add.at(w, (np.arange(n_out), idx), kernel(src - (base + offset)))
  return w


def resample_pos_embed(pos: np.ndarray, grid: tuple[int, int], key: str = "pos_embed",
                       dtype: Any = np.float32) -> np.ndarray:
  """(1, 1 + M*M, D) position embeddings -> (1, 1 + gh*gw, D), as DINOv2 resamples them
  (computed in float64, returned as `dtype`)."""
  n = pos.shape[1] - 1
  m = int(round(np.sqrt(n)))
  if pos.ndim != 3 or pos.shape[0] != 1 or m * m != n:
    raise sd_lib.StateDictError(f"tensor {key!r} has shape {list(pos.shape)}: expected "
                                "(1, 1 + M*M, D) position embeddings of a square grid")
  if (m, m) == tuple(grid):
    return pos.astype(dtype)
  wh = bicubic_weights(m, grid[0], (grid[0] + POS_OFFSET) / m)
  ww = bicubic_weights(m, grid[1], (grid[1] + POS_OFFSET) / m)
  patches = pos[0, 1:].astype(np.float64).reshape(m, m, -1)
  out = np.einsum("im,jn,mnd->ijd", wh, ww, patches).reshape(-1, pos.shape[2])
  return np.concatenate([pos[0, :1], out]).astype(dtype)[None]


CLIP_PREFIX = "visual."
# The text tower of a full CLIP state dict (and OpenAI's constants), which an image tower ignores.
CLIP_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.",
                  "text_projection", "logit_scale", "input_resolution", "context_length",
                  "vocab_size", "text.", "attn_mask")
_CLIP_FIXED = {"patch_embed_proj.weight": "conv1.weight", "patch_embed_proj.bias": "conv1.bias",
               "cls_token": "class_embedding", "pos_embed": "positional_embedding",
               "head.weight": "proj"}
_CLIP_PARTS = (("norm_pre.", "ln_pre."), ("norm.", "ln_post."), ("norm1.", "ln_1."),
               ("norm2.", "ln_2."), ("attn.qkv.weight", "attn.in_proj_weight"),
               ("attn.qkv.bias", "attn.in_proj_bias"), ("attn.proj.", "attn.out_proj."),
               ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj."))


def _timm_name(key: str) -> str:
  """Flax-derived name -> timm's ('blocks_3.attn' -> 'blocks.3.attn', 'patch_embed_proj' ->
  'patch_embed.proj')."""
  if key.startswith("blocks_"):
    key = "blocks." + key[len("blocks_"):]
  return key.replace("patch_embed_proj", "patch_embed.proj")


def _clip_name(key: str, prefix: str) -> str:
  if key in _CLIP_FIXED:
    return prefix + _CLIP_FIXED[key]
  if key.startswith("blocks_"):
    i, rest = key[len("blocks_"):].split(".", 1)
    key = f"transformer.resblocks.{i}.{rest}"
  for old, new in _CLIP_PARTS:
    if old in key:
      key = key.replace(old, new, 1)
      break
  return prefix + key


def entries(config: Config, expected: dict, prefix: str = "") -> list[sd_lib.Entry]:
  """Which tensor of the configuration's layout fills which parameter (`prefix`: CLIP's
  'visual.' in a full CLIP state dict)."""
  out = []
  for e in sd_lib.torch_entries(expected):
    if config.layout == "clip":
      e = dataclasses.replace(e, key=_clip_name(e.key, prefix))
      special = {"cls_token": lambda s: (s[-1],), "pos_embed": lambda s: s[1:],
                 "head": lambda s: s}  # proj is (D, E): x @ proj, already Flax's layout
      if e.path[0] in special:
        e = dataclasses.replace(e, torch_shape=special[e.path[0]])
    else:
      e = dataclasses.replace(e, key=_timm_name(e.key))
    out.append(e)
  return sd_lib.with_kernel_perms(out, expected)


def grid_of(config: Config, input_size: int) -> tuple[int, int]:
  if input_size % config.patch:
    raise ValueError(f"input size {input_size} is not a multiple of the patch size {config.patch}")
  if input_size != config.native_size and not config.resample and input_size != config.input_size:
    raise ValueError(f"this ViT takes {config.input_size}x{config.input_size} inputs only")
  return (input_size // config.patch,) * 2


@functools.lru_cache(maxsize=16)
def expected_shapes(name: str, input_size: int, head_dim: int | None = None) -> dict:
  config = CONFIGS[name]
  module = ViT(config, grid_of(config, input_size), head_dim)
  return sd_lib.param_shapes(module, (1, input_size, input_size, 3))


def params_from_state_dict(state_dict: dict, name: str, input_size: int | None = None,
                           source: str = "state dict") -> dict:
  """Flax params from a timm / DINOv2 / CLIP state dict (see module doc) for an input size."""
  config = CONFIGS[name]
  input_size = input_size or config.input_size
  grid = grid_of(config, input_size)
  state_dict = dict(state_dict)
  prefix, ignore = "", None
  if config.layout == "clip":
    if any(k.startswith(CLIP_PREFIX) for k in state_dict):
      prefix = CLIP_PREFIX
    ignore = lambda k: not k.startswith(prefix) or (not prefix and k.startswith(CLIP_TEXT_KEYS))
  elif config.layout == "dinov2":
    ignore = lambda k: k == "mask_token"
  head_dim = None
  head_key = {"classifier": "head.weight", "projection": prefix + "proj"}.get(config.head)
  if head_key in state_dict and np.ndim(state_dict[head_key]) == 2:
    head_dim = int(state_dict[head_key].shape[0 if config.head == "classifier" else 1])
  pos_key = prefix + ("positional_embedding" if config.layout == "clip" else "pos_embed")
  if config.resample and pos_key in state_dict:
    state_dict[pos_key] = resample_pos_embed(np.asarray(state_dict[pos_key]), grid, pos_key)
  expected = expected_shapes(name, input_size, head_dim)
  return sd_lib.assemble(state_dict, entries(config, expected, prefix), expected, name, source,
                         ignore=ignore)


def random_params(name: str, input_size: int, seed: int) -> dict:
  """Seeded random weights: kernels LeCun-normal, norms and layer scales 1, biases 0, class token
  and position embeddings N(0, 0.02)."""
  return sd_lib.random_params(expected_shapes(name, input_size), seed,
                              normal={"cls_token": 0.02, "pos_embed": 0.02})


def _factory(name: str):
  config = CONFIGS[name]

  def make(weights: str | None = None, *, seed: int = 0, dtype: Any = jnp.float32,
           input_size: int | None = None) -> base.Backbone:
    """weights: the usual file (see module doc), a convert_weights folder, or 'random';
    input_size: square input side (DINOv2: any multiple of 14; others: their native size)."""
    size = int(input_size or config.input_size)
    grid = grid_of(config, size)
    if weights is None:
      raise sd_lib.no_default_weights(name, config.usual_file)
    if weights == "random":
      params = jax.tree.map(jnp.asarray, random_params(name, size, seed))
      wid = base.random_weights_id(seed)
    else:
      params, wid = sd_lib.load_weights(
          weights, name, expected_shapes(name, size),
          lambda sd, source: params_from_state_dict(sd, name, size, source))
    head_dim = params["head"]["kernel"].shape[-1] if "head" in params else None
    module = ViT(config, grid, head_dim, dtype=dtype)
    return base.Backbone(name=name, module=module, params=params, input_size=(size, size),
                              preprocess=preprocessing(config, size), layers=layers(config),
                              weights_id=wid)
  return make


for _name in CONFIGS:
  base.register(_name)(_factory(_name))
