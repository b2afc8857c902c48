"""torchvision ResNet-18 / ResNet-50 in Flax against torchvision itself (seeded random weights saved
as users' state dicts, both torch.save formats), the torchvision key layout, and bad files."""
from __future__ import annotations

import numpy as np
import pytest

import torch_reference as tr
from persistent import backbones
from persistent.backbones import resnet
from persistent.backbones import state_dict as sd_lib


@pytest.mark.parametrize("name,fmt", [("resnet18", "legacy"), ("resnet50", "zip")])
def test_matches_torchvision(tmp_path, name, fmt):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  ref_model = tr.randomize_(getattr(torchvision.models, name)(weights=None), seed=1)
  path = tr.save(ref_model.state_dict(), str(tmp_path / f"{name}.pth"), fmt)
  bb = backbones.create(name, weights=path)
  x = tr.images()
  modules = {"stem": ref_model.maxpool, "layer1": ref_model.layer1, "layer2": ref_model.layer2,
             "layer3": ref_model.layer3, "layer4": ref_model.layer4, "head": ref_model.avgpool}
  ref, logits = tr.capture(ref_model, modules, tr.torch_input(x, bb.preprocessing))
  ref["logits"] = logits.numpy()
  out = bb(x)
  maps = {k: tr.nchw_to_nhwc for k in ("stem", "layer1", "layer2", "layer3", "layer4")}
  tr.assert_taps_match(out, ref, dict(maps, head=lambda a: a.reshape(a.shape[0], -1)))
  np.testing.assert_allclose(np.asarray(out["prob"]).sum(-1), 1, rtol=1e-5)
  assert bb.weights_id == backbones.file_weights_id(path)


def test_state_dict_layout_names_bad_tensors():
  """The torchvision names, and errors naming missing, unexpected and mis-shaped tensors."""
  params = sd_lib.random_params(resnet.expected_shapes("resnet18"), 0)
  sd = sd_lib.disassemble(params, resnet.entries("resnet18"))
  assert sd["conv1.weight"].shape == (64, 3, 7, 7)
  assert sd["layer2.0.downsample.1.running_var"].shape == (128,)
  assert sd["fc.weight"].shape == (1000, 512) and "layer1.0.downsample.0.weight" not in sd
  back = resnet.params_from_state_dict(sd, "resnet18")
  np.testing.assert_array_equal(back["layer3"]["1"]["conv2"]["kernel"],
                                params["layer3"]["1"]["conv2"]["kernel"])
  with pytest.raises(sd_lib.StateDictError, match=r"'layer4\.1\.bn2\.weight' is missing"):
    resnet.params_from_state_dict({k: v for k, v in sd.items() if k != "layer4.1.bn2.weight"},
                                  "resnet18")
  with pytest.raises(sd_lib.StateDictError, match=r"unexpected tensor 'layer1\.0\.conv3\.weight'"):
    resnet.params_from_state_dict(dict(sd, **{"layer1.0.conv3.weight": sd["conv1.weight"]}),
                                  "resnet18")
  with pytest.raises(sd_lib.StateDictError, match=r"'layer1\.0\.conv1\.weight' has shape "
                     r"\[64, 64, 1, 1\], resnet18 needs \[64, 64, 3, 3\]"):
    resnet.params_from_state_dict(dict(sd, **{"layer1.0.conv1.weight": np.zeros((64, 64, 1, 1),
                                                                                np.float32)}),
                                  "resnet18")
  # A ResNet-18 file is not a ResNet-50: the first tensor the latter lacks is named.
  with pytest.raises(sd_lib.StateDictError, match=r"does not fit resnet50: tensor "
                     r"'layer1\.0\.bn3\.bias' is missing and 164 more.*layer1\.0\.conv3\.weight"):
    resnet.params_from_state_dict(sd, "resnet50")
  # Other class counts are read from the classifier.
  ten = dict(sd, **{"fc.weight": np.zeros((10, 512), np.float32), "fc.bias": np.zeros(10, np.float32)})
  assert resnet.params_from_state_dict(ten, "resnet18")["fc"]["kernel"].shape == (512, 10)
