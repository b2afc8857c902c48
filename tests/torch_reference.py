"""Helpers for checking the Flax backbones against their PyTorch reference implementations.

A reference model (torchvision, timm, open_clip) gets seeded random weights in which every
normalisation, layer scale and bias is perturbed too (so a parameter loaded in the wrong place
shows), its state dict is written to a file the way users get them, and its intermediate outputs
are captured with forward hooks on real-looking images (the photos of the EfficientNet golden
fixture). The tests import torch through `pytest.importorskip`, so they skip where it is absent.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Mapping

import numpy as np

# torch imports triton (GPU kernel compiler, unused on the CPU) when present; loading its bundled
# LLVM late in a long test process beside jaxlib's crashed the whole suite once (SIGSEGV in
# triton's extension module). The references run on the CPU: keep triton out of the process.
sys.modules.setdefault("triton", None)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
RTOL = 1e-4  # max |flax - torch| / max |torch| per tap, float32


def images() -> np.ndarray:
  """Three 224x224 uint8 RGB photos-like images (from tests/fixtures)."""
  return np.load(os.path.join(FIXTURES, "efficientnet_lite0_golden.npz"))["images"]


def randomize_(model: Any, seed: int) -> Any:
  """Perturbs a torch model's norms, scales, biases and statistics in place (seeded)."""
  import torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
      if not t.is_floating_point():
        continue
      leaf = name.rsplit(".", 1)[-1]
      if leaf in ("running_var", "gamma") or (leaf == "weight" and t.ndim == 1):
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      elif leaf in ("bias", "running_mean"):
        t.copy_(torch.randn(t.shape, generator=g) * 0.1)
      elif leaf in ("cls_token", "pos_embed", "class_embedding", "positional_embedding"):
        t.copy_(torch.randn(t.shape, generator=g) * 0.5)
  return model.eval()


def save(state_dict: Mapping[str, Any], path: str, fmt: str = "zip") -> str:
  """Writes a state dict as users get them: torch.save 'zip' / 'legacy', or 'safetensors'."""
  import torch
  state_dict = {k: v.detach().contiguous() for k, v in state_dict.items()}
  if fmt == "safetensors":
    from safetensors.torch import save_file
    save_file(state_dict, path)
  else:
    torch.save(state_dict, path, _use_new_zipfile_serialization=(fmt == "zip"))
  return str(path)


def torch_input(images: np.ndarray, preprocessing: Mapping[str, Any]):
  """NCHW float32 network input computed independently (float64) from a backbone's description."""
  import torch
  x = images.astype(np.float64)
  if preprocessing["channels"] == "BGR":
    x = x[..., ::-1]
  x = (x - np.asarray(preprocessing["mean"])) / np.asarray(preprocessing["std"])
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32))


def capture(model: Any, modules: Mapping[str, Any], x: Any) -> tuple[dict[str, np.ndarray], Any]:
  """(outputs of the named submodules as numpy, model output) for one forward pass."""
  import torch
  got: dict[str, np.ndarray] = {}
  hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: got.__setitem__(
      name, (out[0] if isinstance(out, tuple) else out).detach().numpy().copy()))
      for name, m in modules.items()]
  try:
    with torch.no_grad():
      out = model(x)
  finally:
    for h in hooks:
      h.remove()
  return got, out


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
  return x.transpose(0, 2, 3, 1)


def token_grid(tokens: np.ndarray, grid: int) -> np.ndarray:
  """(N, 1 + g*g, D) tokens -> the patch tokens' (N, g, g, D) grid."""
  return tokens[:, 1:].reshape(tokens.shape[0], grid, grid, tokens.shape[-1])


def rel_err(got: Any, want: Any) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (got.shape, want.shape)
  return float(np.abs(got - want).max() / np.abs(want).max())


def assert_taps_match(out: Mapping[str, Any], ref: Mapping[str, np.ndarray],
                      convert: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
                      rtol: float = RTOL) -> dict[str, float]:
  """Every reference tap within `rtol` of the backbone's; returns the errors (printed with -s)."""
  errs = {}
  for layer, want in ref.items():
    fn = (convert or {}).get(layer, lambda a: a)
    errs[layer] = rel_err(out[layer], fn(want))
  worst = max(errs, key=errs.get)
  print({k: f"{v:.1e}" for k, v in errs.items()})
  assert errs[worst] < rtol, f"{worst}: max relative error {errs[worst]:.2e} (all: {errs})"
  return errs
