"""torchvision VGG-16 in Flax against torchvision itself (seeded random weights saved as a state
dict), its key layout, and the (C, H, W) flattening before fc6."""
from __future__ import annotations

import numpy as np
import pytest

import torch_reference as tr
from persistent import backbones
from persistent.backbones import state_dict as sd_lib
from persistent.backbones import vgg


def test_matches_torchvision(tmp_path):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  ref_model = tr.randomize_(torchvision.models.vgg16(weights=None), seed=2)
  path = tr.save(ref_model.state_dict(), str(tmp_path / "vgg16.pth"))
  bb = backbones.create("vgg16", weights=path)
  x = tr.images()
  f, c = ref_model.features, ref_model.classifier
  modules = {"conv1_2": f[3], "pool2": f[9], "conv3_3": f[15], "conv4_1": f[18], "pool5": f[30],
             "fc6": c[1], "fc7": c[4]}
  ref, logits = tr.capture(ref_model, modules, tr.torch_input(x, bb.preprocessing))
  ref["logits"] = logits.numpy()
  out = bb(x)
  maps = {k: tr.nchw_to_nhwc for k in ("conv1_2", "pool2", "conv3_3", "conv4_1", "pool5")}
  tr.assert_taps_match(out, ref, maps)
  np.testing.assert_array_equal(out["head"], out["fc7"])


def test_state_dict_layout():
  params = sd_lib.random_params(vgg.expected_shapes(), 0)
  sd = sd_lib.disassemble(params, vgg.entries())
  convs = sorted(int(k.split(".")[1]) for k in sd if k.startswith("features.") and k.endswith("weight"))
  assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
  assert sd["classifier.0.weight"].shape == (4096, 512 * 7 * 7)
  assert sd["classifier.6.weight"].shape == (1000, 4096)
  with pytest.raises(sd_lib.StateDictError, match=r"'features\.28\.bias' is missing"):
    vgg.params_from_state_dict({k: v for k, v in sd.items() if k != "features.28.bias"})
  # vgg16_bn has batch norms (features.1.running_mean ...): not this network.
  bn = dict(sd, **{"features.1.running_mean": np.zeros(64, np.float32)})
  with pytest.raises(sd_lib.StateDictError, match=r"unexpected tensor 'features\.1\.running_mean'"):
    vgg.params_from_state_dict(bn)
