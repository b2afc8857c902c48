"""PyTorch-ecosystem weights -> Flax parameters: reading state dicts, matching them to a module,
seeded random parameters, and orbax checkpoints of converted parameters.

* `load_state_dict(path)`: `{name: numpy array}` from a `torch.save` file (both formats, read by
  `torch_checkpoint`'s restricted unpickler, never running code) or a `.safetensors` file (read
  with the `safetensors` package's NumPy API). Neither needs torch.
* `assemble(state_dict, entries, expected, ...)`: Flax parameters from named tensors, where each
  `Entry` says which tensor fills which parameter and how its axes map. Missing, unexpected,
  mis-shaped or non-float tensors raise `StateDictError` naming the tensor; `torch_entries`
  derives the entries of a module whose submodules are named as torch's (`layer1/0/conv1/kernel`
  <-> `layer1.0.conv1.weight`).
* `random_params(expected, seed)`: seeded host-side random parameters in Flax's default style.
* `save_converted` / `load_converted`: an orbax folder of converted parameters with a JSON record
  of the backbone and the weights id of the file it came from, which loads fast and torch-free.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from persistent.backbones import torch_checkpoint

SAFETENSORS_SUFFIX = ".safetensors"
CONVERTED_META = "persistent_weights.json"
CONVERTED_PARAMS = "params"
CONVERTED_FORMAT = "persistent.converted-params/1"
_SHOW = 8  # how many names an error lists

# Flax leaf name -> torch's, for modules named as torch's (kernels are 'weight' too).
TORCH_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                    "var": "running_var"}
IGNORED_SUFFIXES = (".num_batches_tracked",)  # batch norm's step counters: no part in inference


class StateDictError(ValueError):
  """A state dict that does not fit the network; the message names the tensor."""


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Tensors of a `.safetensors` file or a `torch.save` checkpoint, as numpy arrays."""
  path = os.fspath(path)
  if not path.endswith(SAFETENSORS_SUFFIX):
    return torch_checkpoint.load_torch_state_dict(path)
  if not os.path.exists(path):
    raise torch_checkpoint.CheckpointNotFoundError(f"checkpoint not found: {path}")
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  try:
    return dict(load_file(path))
  except (SafetensorError, OSError, ValueError, TypeError) as e:
    raise torch_checkpoint.CheckpointError(f"checkpoint {path} is not a readable .safetensors "
                                           f"file: {type(e).__name__}: {e}") from None


@dataclasses.dataclass(frozen=True)
class Entry:
  """One parameter: `key` (the tensor's name) fills `path` (in the Flax tree).

  perm: the torch tensor's axes in Flax order (e.g. (2, 3, 1, 0) for OIHW -> HWIO), or None.
  reshape: the tensor is reshaped to the parameter's shape after `perm` (same element count);
  `torch_shape(flax_shape)` then gives the tensor's expected shape.
  """
  key: str
  path: tuple[str, ...]
  perm: tuple[int, ...] | None = None
  torch_shape: Callable[[tuple[int, ...]], tuple[int, ...]] | None = None

  def expected_shape(self, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if self.torch_shape is not None:
      return tuple(self.torch_shape(flax_shape))
    return tuple(flax_shape[i] for i in np.argsort(self.perm)) if self.perm else tuple(flax_shape)

  def to_flax(self, value: np.ndarray, flax_shape: tuple[int, ...]) -> np.ndarray:
    if self.perm:
      value = value.transpose(self.perm)
    return np.ascontiguousarray(value.reshape(flax_shape))

  def to_torch(self, value: np.ndarray, flax_shape: tuple[int, ...]) -> np.ndarray:
    shape = self.expected_shape(flax_shape)
    if self.perm:
      return np.ascontiguousarray(value.transpose(np.argsort(self.perm))).reshape(shape)
    return np.asarray(value).reshape(shape)


def param_shapes(module: Any, input_shape: tuple[int, ...]) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{flax param path: shape} of a module for an input of this shape (no computation)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct(input_shape, jnp.float32))
  flat = jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def torch_entries(expected: Iterable[tuple[str, ...]],
                  rename: Mapping[tuple[str, ...], str] | None = None) -> list[Entry]:
  """Entries of a module whose submodules carry torch's names: 'a/0/b/kernel' <-> 'a.0.b.weight'.

  4-D kernels are convolutions (OIHW -> HWIO), 2-D kernels linear layers (transposed); other
  parameters keep their shape. `rename` gives the tensor name of paths that differ.
  """
  out = []
  for path in expected:
    key = (rename or {}).get(path)
    if key is None:
      key = ".".join(path[:-1] + (TORCH_LEAF_NAMES.get(path[-1], path[-1]),))
    out.append(Entry(key, path))
  return out


def with_kernel_perms(entries: Iterable[Entry], expected: Mapping[tuple[str, ...], tuple[int, ...]]
                      ) -> list[Entry]:
  """`entries` with the permutation of every 'kernel' set from its rank (conv or linear)."""
  perms = {4: (2, 3, 1, 0), 2: (1, 0)}
  return [dataclasses.replace(e, perm=perms.get(len(expected[e.path])))
          if e.path[-1] == "kernel" and e.perm is None and e.torch_shape is None else e
          for e in entries]


def _names(items: list[str]) -> str:
  return ", ".join(items[:_SHOW]) + (", ..." if len(items) > _SHOW else "")


def assemble(state_dict: Mapping[str, Any], entries: Iterable[Entry],
             expected: Mapping[tuple[str, ...], tuple[int, ...]], arch: str, source: str,
             ignore: Callable[[str], bool] | None = None) -> dict:
  """Nested float32 Flax parameters from `state_dict`, every tensor checked (see module doc).

  Tensors no entry names are errors unless `ignore(name)` or batch norm's counters.
  """
  entries = list(entries)
  missing = [e.key for e in entries if e.key not in state_dict]
  if missing:
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    raise StateDictError(f"{source} does not fit {arch}: tensor {missing[0]!r} is missing{more} "
                         f"({_names(missing)})")
  known = {e.key for e in entries}
  unexpected = [k for k in state_dict if k not in known and not k.endswith(IGNORED_SUFFIXES)
                and not (ignore and ignore(k))]
  if unexpected:
    raise StateDictError(f"{source} does not fit {arch}: unexpected tensor {unexpected[0]!r} "
                         f"({len(unexpected)} unexpected: {_names(unexpected)})")
  params: dict = {}
  for e in entries:
    value = np.asarray(state_dict[e.key])
    if not np.issubdtype(value.dtype, np.floating):
      raise StateDictError(f"{source}: tensor {e.key!r} has dtype {value.dtype}, expected floating point")
    want = e.expected_shape(expected[e.path])
    if value.shape != want:
      raise StateDictError(f"{source}: tensor {e.key!r} has shape {list(value.shape)}, "
                           f"{arch} needs {list(want)}")
    node = params
    for k in e.path[:-1]:
      node = node.setdefault(k, {})
    node[e.path[-1]] = e.to_flax(value.astype(np.float32), expected[e.path])
  return params


def disassemble(params: Any, entries: Iterable[Entry]) -> dict[str, np.ndarray]:
  """The inverse of `assemble`: {tensor name: array in torch's layout}."""
  out = {}
  for e in entries:
    node = params
    for k in e.path:
      node = node[k]
    value = np.asarray(node, np.float32)
    out[e.key] = e.to_torch(value, value.shape)
  return out


def random_params(expected: Mapping[tuple[str, ...], tuple[int, ...]], seed: int,
                  normal: Mapping[str, float] | None = None,
                  ones: Iterable[str] = ("scale", "var", "gamma")) -> dict:
  """Seeded random parameters drawn on the host (numpy), as Flax's defaults draw them.

  Kernels LeCun-normal (truncated at 2 sigma, std sqrt(1/fan_in)); parameters named in `normal`
  N(0, std); named in `ones` 1 (norm scales, variances, layer scales); the rest 0. Drawing here
  takes a second where compiling `module.init` for a large network takes a minute on a CPU.
  """
  rng = np.random.default_rng(seed)
  normal, ones = dict(normal or {}), set(ones)
  params: dict = {}
  for path, shape in sorted(expected.items()):
    leaf = path[-1]
    if leaf == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      z = rng.standard_normal(shape, np.float32)
      while (bad := np.abs(z) > 2).any():
        z[bad] = rng.standard_normal(int(bad.sum()), np.float32)
      z *= np.float32(np.sqrt(1.0 / fan_in) / 0.87962566103423978)  # std of N(0,1) truncated at 2
      value = z
    elif leaf in normal:
      value = rng.standard_normal(shape, np.float32) * np.float32(normal[leaf])
    else:
      value = np.ones(shape) if leaf in ones else np.zeros(shape)
    node = params
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[leaf] = value.astype(np.float32, copy=False)
  return params


def no_default_weights(name: str, usual_file: str) -> FileNotFoundError:
  """The error of a backbone whose weights users bring (weights=None)."""
  return FileNotFoundError(
      f"no default weights for {name!r} ship with this project: download {usual_file} (see "
      "README 'Backbones and weights') and pass --config.backbone.weights=PATH (the file, or a "
      "folder written by `python -m persistent.tools.convert_weights`), or weights='random'")


def load_weights(path: str, backbone: str, expected: Mapping[tuple[str, ...], tuple[int, ...]],
                 convert: Callable[[dict[str, np.ndarray], str], dict]) -> tuple[dict, str]:
  """(params as jax arrays, weights_id) from a weights file or a convert_weights folder.

  A file's tensors go through `convert(state_dict, source)`; its weights_id is 'sha1:<hex>' of
  the file. A converted folder carries the id of the file it was converted from.
  """
  from persistent import hashing
  path = os.fspath(path)
  if os.path.isdir(path):
    params, meta = load_converted(path, backbone, expected)
    wid = str(meta["weights_id"])
  else:
    params = convert(load_state_dict(path), f"checkpoint {path}")
    wid = f"sha1:{hashing.file_digest(path)}"
  return jax.tree.map(jnp.asarray, params), wid


# ---------------------------------------------------------------------------------------------
# Converted parameters on disk (orbax), written by `python -m persistent.tools.convert_weights`.

def is_converted(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, CONVERTED_META))


def save_converted(out_dir: str, params: Any, backbone: str, weights_id: str, source: str,
                   force: bool = False, extra: Mapping[str, Any] | None = None) -> str:
  """Writes `params` (orbax) and their record (backbone, weights_id, source file); returns out_dir."""
  import orbax.checkpoint as ocp
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and os.listdir(out_dir):
    if not force:
      raise FileExistsError(f"{out_dir} exists and is not empty (pass --force to overwrite)")
    if not os.path.exists(os.path.join(out_dir, CONVERTED_META)):
      raise FileExistsError(f"{out_dir} is not a folder of converted weights; refusing to "
                            "overwrite it")
  os.makedirs(out_dir, exist_ok=True)
  tree = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  ocp.PyTreeCheckpointer().save(os.path.join(out_dir, CONVERTED_PARAMS), tree, force=True)
  meta = {"format": CONVERTED_FORMAT, "backbone": backbone, "weights_id": weights_id,
          "source": source, **dict(extra or {})}
  with open(os.path.join(out_dir, CONVERTED_META), "w") as f:
    json.dump(meta, f, indent=2)
  return out_dir


def load_converted(path: str, backbone: str,
                   expected: Mapping[tuple[str, ...], tuple[int, ...]]) -> tuple[dict, dict]:
  """(params, meta) from a folder written by `save_converted` for `backbone`, shapes checked."""
  import orbax.checkpoint as ocp
  meta_path = os.path.join(path, CONVERTED_META)
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    if not isinstance(meta, dict) or meta.get("format") != CONVERTED_FORMAT:
      raise ValueError(f"not a {CONVERTED_FORMAT} record")
  except (OSError, ValueError) as e:
    raise StateDictError(f"{path}: not a folder written by `python -m "
                         f"persistent.tools.convert_weights` ({meta_path}: {e})") from None
  if meta.get("backbone") != backbone:
    raise StateDictError(f"{path}: converted for the {meta.get('backbone')!r} backbone, not "
                         f"{backbone!r}")
  restored = ocp.PyTreeCheckpointer().restore(os.path.join(os.path.abspath(path), CONVERTED_PARAMS))
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), restored)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  got = {tuple(k.key for k in p): tuple(leaf.shape) for p, leaf in flat}
  if got != dict(expected):
    diff = sorted(set(got.items()) ^ set(expected.items()))[:_SHOW]
    raise StateDictError(f"{path}: parameters do not fit {backbone} (first differences: {diff})")
  return params, meta
