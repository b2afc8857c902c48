"""The ViT family in Flax against its references: timm's ViT-S/16 and ViT-B/16, DINOv2 (timm's
definition, fed the official checkpoint layout, position embeddings resampled as the official
code does with torch's own bicubic), CLIP ViT-B/16 (open_clip, OpenAI's layout); key layouts and
the position-embedding resampling against torch."""
from __future__ import annotations

import math

import numpy as np
import pytest

import torch_reference as tr
from persistent import backbones
from persistent.backbones import state_dict as sd_lib
from persistent.backbones import vit


def _vit_taps(bb, depth: int, grid: int, blocks: dict, extra: dict):
  """Reference taps -> the backbone's names and layouts: block grids, CLS tokens, final tokens."""
  ref, convert = {}, {}
  for i in (0, depth // 2, depth - 1):
    ref[f"block{i}"] = ref[f"block{i}_cls"] = blocks[i]
    convert[f"block{i}"] = lambda a: tr.token_grid(a, grid)
    convert[f"block{i}_cls"] = lambda a: a[:, 0]
  for name, (value, fn) in extra.items():
    ref[name], convert[name] = value, fn
  return ref, convert


def _timm_case(tmp_path, model_name, fmt, **kwargs):
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  torch.manual_seed(0)
  ref_model = tr.randomize_(timm.create_model(model_name, pretrained=False, **kwargs), seed=3)
  suffix = ".safetensors" if fmt == "safetensors" else ".pth"
  path = tr.save(ref_model.state_dict(), str(tmp_path / f"{model_name}{suffix}"), fmt)
  return torch, ref_model, path


def _run_timm_reference(bb, ref_model, grid):
  depth = len(ref_model.blocks)
  modules = {"embed": ref_model.norm_pre, "norm": ref_model.norm,
             **{i: ref_model.blocks[i] for i in range(depth)}}
  got, out = tr.capture(ref_model, modules, tr.torch_input(tr.images(), bb.preprocessing))
  extra = {"embed": (got["embed"], lambda a: tr.token_grid(a, grid)),
           "tokens": (got["norm"], lambda a: tr.token_grid(a, grid)),
           "head": (got["norm"], lambda a: a[:, 0])}
  return depth, got, out, extra


@pytest.mark.parametrize("name,fmt", [("vit_small_patch16_224", "safetensors"),
                                      ("vit_base_patch16_224", "zip")])
def test_timm_vit_matches_timm(tmp_path, name, fmt):
  _, ref_model, path = _timm_case(tmp_path, name, fmt)
  bb = backbones.create(name, weights=path)
  depth, got, logits, extra = _run_timm_reference(bb, ref_model, 14)
  extra["logits"] = (logits.numpy(), lambda a: a)
  ref, convert = _vit_taps(bb, depth, 14, got, extra)
  tr.assert_taps_match(bb(tr.images()), ref, convert)


def official_resample(torch, pos, grid):
  """The official DINOv2 `interpolate_pos_encoding`, in torch (scale factors (g + 0.1) / M)."""
  m = int(math.sqrt(pos.shape[1] - 1))
  patch = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
  out = torch.nn.functional.interpolate(patch, scale_factor=((grid[0] + 0.1) / m, (grid[1] + 0.1) / m),
                                        mode="bicubic", antialias=False)
  assert tuple(out.shape[-2:]) == tuple(grid)
  return torch.cat([pos[:, :1], out.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], dim=1)


def test_dinov2_matches_reference_with_resampled_positions(tmp_path):
  """The official checkpoint layout (37x37 positions for 518 pixels, mask_token) at 224 pixels."""
  torch, ref518, _ = _timm_case(tmp_path, "vit_small_patch14_dinov2", "zip")
  official = dict(ref518.state_dict(), mask_token=torch.randn(1, 384))
  path = tr.save(official, str(tmp_path / "dinov2_vits14_pretrain.pth"))
  bb = backbones.create("dinov2_vits14", weights=path)
  assert bb.input_size == (224, 224)
  import timm
  ref_model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224).eval()
  sd224 = {k: v for k, v in official.items() if k != "mask_token"}
  sd224["pos_embed"] = official_resample(torch, official["pos_embed"], (16, 16))
  ref_model.load_state_dict(sd224)
  depth, got, _, extra = _run_timm_reference(bb, ref_model, 16)
  ref, convert = _vit_taps(bb, depth, 16, got, extra)
  tr.assert_taps_match(bb(tr.images()), ref, convert)


@pytest.mark.parametrize("grid", [(16, 16), (12, 20), (37, 37), (40, 40), (5, 3)])
def test_position_resampling_matches_torch(grid):
  torch = pytest.importorskip("torch")
  """In float64 (torch's kernel then rounds nothing away): the same sampling positions and weights."""
  pos = torch.randn(1, 1 + 37 * 37, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
  want = official_resample(torch, pos, grid).numpy() if grid != (37, 37) else pos.numpy()
  got = vit.resample_pos_embed(pos.numpy(), grid, dtype=np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,arch,tower_only", [("clip_vit_b16", "ViT-B-16-quickgelu", False),
                                                  ("open_clip_vit_b16", "ViT-B-16", True)])
def test_clip_matches_open_clip(tmp_path, name, arch, tower_only):
  torch = pytest.importorskip("torch")
  open_clip = pytest.importorskip("open_clip")
  torch.manual_seed(0)
  model = tr.randomize_(open_clip.create_model(arch, pretrained=None), seed=4)
  sd = model.visual.state_dict() if tower_only else model.state_dict()
  path = tr.save(sd, str(tmp_path / f"{arch}.pth"))
  bb = backbones.create(name, weights=path)
  visual = model.visual
  depth = len(visual.transformer.resblocks)
  modules = {"embed": visual.ln_pre, "ln_post": visual.ln_post,
             **{i: visual.transformer.resblocks[i] for i in range(depth)}}
  got, emb = tr.capture(visual, modules, tr.torch_input(tr.images(), bb.preprocessing))
  extra = {"embed": (got["embed"], lambda a: tr.token_grid(a, 14)),
           "tokens": (got["ln_post"], lambda a: tr.token_grid(a, 14)),
           "cls": (got["ln_post"], lambda a: a[:, 0]), "head": (emb.numpy(), lambda a: a)}
  ref, convert = _vit_taps(bb, depth, 14, got, extra)
  tr.assert_taps_match(bb(tr.images()), ref, convert)


def _random_state_dict(name):
  config = vit.CONFIGS[name]
  expected = vit.expected_shapes(name, config.input_size)
  return sd_lib.disassemble(vit.random_params(name, config.input_size, 0), vit.entries(config, expected))


def test_clip_layout_and_errors_name_openai_keys():
  sd = _random_state_dict("clip_vit_b16")
  for key, shape in [("conv1.weight", (768, 3, 16, 16)), ("class_embedding", (768,)),
                     ("positional_embedding", (197, 768)), ("proj", (768, 512)),
                     ("transformer.resblocks.11.attn.in_proj_weight", (2304, 768)),
                     ("transformer.resblocks.0.mlp.c_fc.bias", (3072,)), ("ln_post.weight", (768,))]:
    assert sd[key].shape == shape, key
  assert "conv1.bias" not in sd and not any(k.startswith("blocks.") for k in sd)
  full = {**{f"visual.{k}": v for k, v in sd.items()}, "positional_embedding": np.zeros((77, 512)),
          "transformer.resblocks.0.ln_1.weight": np.ones(512), "logit_scale": np.ones(())}
  params = vit.params_from_state_dict(full, "clip_vit_b16")  # the text tower is ignored
  np.testing.assert_array_equal(params["head"]["kernel"], sd["proj"])
  missing = {k: v for k, v in full.items() if k != "visual.transformer.resblocks.3.attn.in_proj_weight"}
  with pytest.raises(sd_lib.StateDictError,
                     match=r"'visual\.transformer\.resblocks\.3\.attn\.in_proj_weight' is missing"):
    vit.params_from_state_dict(missing, "clip_vit_b16")
  with pytest.raises(sd_lib.StateDictError, match=r"unexpected tensor 'visual\.attnpool\.k_proj"):
    vit.params_from_state_dict(dict(full, **{"visual.attnpool.k_proj.weight": np.zeros(3)}),
                               "clip_vit_b16")


def test_timm_and_dinov2_layouts_name_bad_tensors():
  sd = _random_state_dict("vit_small_patch16_224")
  assert sd["blocks.11.attn.qkv.weight"].shape == (1152, 384) and sd["cls_token"].shape == (1, 1, 384)
  assert sd["patch_embed.proj.weight"].shape == (384, 3, 16, 16) and sd["head.weight"].shape == (1000, 384)
  with pytest.raises(sd_lib.StateDictError, match=r"'blocks\.4\.mlp\.fc2\.bias' has shape \[7\], "
                     r"vit_small_patch16_224 needs \[384\]"):
    vit.params_from_state_dict(dict(sd, **{"blocks.4.mlp.fc2.bias": np.zeros(7, np.float32)}),
                               "vit_small_patch16_224")
  # timm's ViT-S/16 has no layer scale: as DINOv2 it lacks the first gamma.
  with pytest.raises(sd_lib.StateDictError, match=r"does not fit dinov2_vits14: tensor "
                     r"'blocks\.0\.ls1\.gamma' is missing"):
    vit.params_from_state_dict({k: v for k, v in sd.items() if not k.startswith("head")},
                               "dinov2_vits14")
  dino = _random_state_dict("dinov2_vits14")
  dino["pos_embed"] = np.zeros((1, 1 + 37 * 36, 384), np.float32)
  with pytest.raises(sd_lib.StateDictError, match=r"'pos_embed' has shape \[1, 1333, 384\].*square"):
    vit.params_from_state_dict(dino, "dinov2_vits14")
  with pytest.raises(ValueError, match="not a multiple of the patch size 14"):
    backbones.create("dinov2_vits14", "random", input_size=225)
  with pytest.raises(ValueError, match="takes 224x224 inputs only"):
    backbones.create("vit_small_patch16_224", "random", input_size=448)


def test_dinov2_other_input_sizes():
  bb = backbones.create("dinov2_vits14", "random", input_size=98)
  out = bb(np.zeros((1, 98, 98, 3), np.uint8))
  assert out["block3"].shape == (1, 7, 7, 384) and out["head"].shape == (1, 384)
  assert bb.preprocessing["input_size"] == [98, 98]
