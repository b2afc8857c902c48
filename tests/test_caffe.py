"""The Caffe reader and graph builder against an independent oracle: OpenCV 4's Caffe importer.

Every named blob is compared with relative error max|ours - opencv| / max|opencv| <= 1e-4 (blobs
compared in Caffe's NCHW layout). Where OpenCV 4.14 itself departs from Caffe (LRN's `k`,
InnerProduct's `transpose`, the Bias layer, `round_mode`), the test uses a NumPy transcription of
Caffe's formulas instead. Random-weight AlexNet / CaffeNet files are written in both binary formats
by tests/caffe_testnets.py; the photos come from ../shared/data/imagenet_samples when present, plus
images the tests make.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from persistent import backbones
from persistent.backbones import (caffe, caffe_format, caffe_graph, caffe_module, caffe_ops,
                                  caffe_params, preprocessing, state_dict)

sys.path.insert(0, os.path.dirname(__file__))
import caffe_testnets as tn  # noqa: E402
from caffe_testnets import Layer  # noqa: E402

cv2 = pytest.importorskip("cv2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")
SAMPLES = os.path.join(SHARED, "data", "imagenet_samples")
NSFW = os.path.join(SHARED, "models", "open_nsfw")
TOL = 1e-4


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
  """max|ours - ref| / max|ref|, the error measure of these tests."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def nchw(a) -> np.ndarray:
  a = np.asarray(a)
  return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def made_images(n: int, size: int, seed: int = 0) -> np.ndarray:
  """Photo-like uint8 RGB images: smooth colour fields, edges and noise."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  out = []
  for _ in range(n):
    img = np.zeros((size, size, 3))
    for c in range(3):
      f = rng.uniform(1, 6, 2)
      img[..., c] = 128 + 90 * np.sin(2 * np.pi * (f[0] * xx + f[1] * yy) + rng.uniform(0, 6))
    cx, cy, r = rng.uniform(0.2, 0.8, 3)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < (r / 2) ** 2] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    out.append(np.clip(img, 0, 255).astype(np.uint8))
  return np.stack(out)


def photos(n: int, size: int) -> list[np.ndarray]:
  """Up to n center-cropped ImageNet photos (empty when ../shared is absent)."""
  files = sorted(glob.glob(os.path.join(SAMPLES, "*.jpg")))[:: 97][:n]
  if not files:
    return []
  from PIL import Image
  out = []
  for f in files:
    im = Image.open(f).convert("RGB")
    scale = 256 / min(im.size)
    im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))),
                   Image.BILINEAR)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    out.append(np.asarray(im.crop((left, top, left + size, top + size))))
  return out


def sample_images(n: int, size: int) -> np.ndarray:
  """n images: up to n - 1 photos, the rest made."""
  real = photos(n - 1, size)
  made = made_images(n - len(real), size)
  return np.concatenate([np.stack(real), made]) if real else made


def caffe_input(images: np.ndarray, mean=preprocessing.IMAGENET_MEAN_BGR) -> np.ndarray:
  """Caffe's data blob in NHWC: BGR, mean subtracted."""
  return images[..., ::-1].astype(np.float32) - np.asarray(mean, np.float32)


def last_writers(prototxt: str) -> dict[str, str]:
  """Caffe blob name -> the layer that writes it last (OpenCV names outputs by layer)."""
  out = {}
  for layer in caffe_graph.net_definition(caffe_format.read_prototxt(prototxt), prototxt).layers:
    if layer.type == "Input":
      continue  # net inputs are not layer outputs in OpenCV
    for i, top in enumerate(layer.tops):
      out[top] = layer.name if i == 0 else None  # OpenCV's forward() reaches first outputs only
  return out


def opencv_blobs(prototxt: str, caffemodel: str, x_nhwc: np.ndarray, names) -> dict:
  net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
  net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
  net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
  net.enableFusion(False)  # keep BatchNorm / Scale / ReLU as separate outputs
  net.setInput(np.ascontiguousarray(nchw(x_nhwc)), "data")
  writers = last_writers(prototxt)
  names = [n for n in names if writers.get(n)]
  return dict(zip(names, net.forward([writers[n] for n in names])))


def compare_all(ours: dict, ref: dict, skip=("data",)) -> dict[str, float]:
  errs = {n: rel_err(nchw(ours[n]), ref[n]) for n in ref if n not in skip}
  bad = {n: e for n, e in errs.items() if not e <= TOL}
  assert not bad, f"blobs off by more than {TOL}: {bad}"
  return errs


# ---------------------------------------------------------------------------------------------
# AlexNet / CaffeNet, both binary formats
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def alexnet_case(tmp_path_factory):
  """Random-weight AlexNet as the published file is: a legacy V1 training snapshot."""
  folder = tmp_path_factory.mktemp("alexnet")
  model, deploy = tn.write_alexnet(str(folder), "alexnet", v1=True, seed=1)
  x = caffe_input(sample_images(3, 227))
  names = [b for b in last_writers(deploy)]
  return model, deploy, x, opencv_blobs(deploy, model, x, names)


@pytest.fixture(scope="module")
def caffenet_case(tmp_path_factory):
  """Random-weight CaffeNet in the current format (a training snapshot, Data layer included)."""
  folder = tmp_path_factory.mktemp("caffenet")
  model, deploy = tn.write_alexnet(str(folder), "caffenet", v1=False, seed=2)
  x = caffe_input(sample_images(3, 227)[::-1])
  names = [b for b in last_writers(deploy)]
  return model, deploy, x, opencv_blobs(deploy, model, x, names)


def test_alexnet_legacy_caffemodel_alone_matches_opencv(alexnet_case):
  model, deploy, x, ref = alexnet_case
  net = caffe.load(model)  # no prototxt: the V1 file's own (training) definition
  assert net.input_shape == (1, 3, 227, 227)  # from the Data layer's crop_size and conv1
  out = net(x)
  assert "label" not in out and "loss" not in out
  errs = compare_all(out, {k: v for k, v in ref.items() if k != "prob"})
  assert len(errs) == 13
  print("alexnet (V1 caffemodel, no prototxt) max rel err", max(errs.values()))


def test_caffenet_current_caffemodel_with_prototxt_matches_opencv(caffenet_case):
  model, deploy, x, ref = caffenet_case
  net = caffe.load(model, deploy)
  out = net(x)
  assert set(out) == {"data", *ref}
  errs = compare_all(out, ref)
  assert len(errs) == 14
  assert net.params["conv2"]["kernel"].shape == (5, 5, 48, 256)
  assert net.params["fc6"]["kernel"].shape == (9216, 4096)
  print("caffenet (current caffemodel + prototxt) max rel err", max(errs.values()))


def test_alexnet_backbone_from_caffemodel_matches_opencv(alexnet_case):
  model, _, x, ref = alexnet_case
  bb = backbones.create("alexnet", weights=model)
  out = jax.jit(bb.module.apply)({"params": bb.params}, jnp.asarray(x))
  errs = compare_all({k: out[k] for k in ref}, ref)
  assert bb.weights_id == backbones.file_weights_id(model)
  # The backbone's own preprocessing gives Caffe's data blob.
  images = np.clip(x[..., ::-1] + np.asarray(preprocessing.IMAGENET_MEAN_BGR)[::-1], 0, 255)
  np.testing.assert_allclose(np.asarray(bb.preprocess(jnp.asarray(images.round().astype(np.uint8)))),
                             x, atol=1e-3)
  print("alexnet backbone max rel err", max(errs.values()))


def test_convert_caffe_checkpoint_into_caffenet_backbone(caffenet_case, tmp_path, capsys):
  from persistent.tools import convert_caffe
  model, deploy, x, ref = caffenet_case
  out_dir = str(tmp_path / "caffenet_ckpt")
  assert convert_caffe.main(["--caffemodel", model, "--prototxt", deploy, "--out", out_dir]) == 0
  assert '"backbone": "caffenet"' in capsys.readouterr().out  # order read from the definitions
  bb = backbones.create("caffenet", weights=out_dir)
  assert bb.weights_id == backbones.file_weights_id(model)
  out = jax.jit(bb.module.apply)({"params": bb.params}, jnp.asarray(x))
  errs = compare_all({k: out[k] for k in ref}, ref)
  print("caffenet backbone from checkpoint max rel err", max(errs.values()))
  with pytest.raises(state_dict.StateDictError, match="converted for the 'caffenet' backbone"):
    backbones.create("alexnet", weights=out_dir)
  # A second conversion into the same folder needs --force.
  assert convert_caffe.main(["--caffemodel", model, "--out", out_dir]) == 1
  assert "--force" in capsys.readouterr().err
  # The command line itself.
  proc = subprocess.run([sys.executable, "-m", "persistent.tools.convert_caffe", "--help"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and "--caffemodel" in proc.stdout
  with pytest.raises(state_dict.StateDictError, match="not a folder written by"):
    backbones.create("caffenet", weights=str(tmp_path))


def test_both_binary_formats_give_the_same_net(alexnet_case, caffenet_case, tmp_path):
  """Each net written again in the other binary format reads as the same graph and weights."""
  def read(path):
    model = caffe_format.read_caffemodel(path)
    graph = caffe_graph.build_graph(caffe_graph.net_definition(model, path, phase=None))
    return graph, caffe_params.convert_params(graph, caffe_format.weights_by_layer(model), path)

  for (model, _, _, _), order, seed, v1 in ((alexnet_case, "alexnet", 1, False),
                                            (caffenet_case, "caffenet", 2, True)):
    other, _ = tn.write_alexnet(str(tmp_path), order, v1=v1, seed=seed)
    (ga, pa), (gb, pb) = read(model), read(other)
    os.unlink(other)
    assert ga.layers == gb.layers and ga.input_shapes == gb.input_shapes
    assert pa.keys() == pb.keys()
    for layer in pa:
      for k in pa[layer]:
        np.testing.assert_array_equal(pa[layer][k], pb[layer][k], err_msg=f"{layer}/{k}")


def test_backbone_refuses_the_other_layer_order(caffenet_case):
  model = caffenet_case[0]
  with pytest.raises(caffe_format.CaffeMismatchError, match="use the 'caffenet' backbone"):
    backbones.create("alexnet", weights=model)


def test_legacy_v1_prototxt_gives_the_same_graph(caffenet_case, tmp_path):
  model, deploy, _, _ = caffenet_case
  v1 = tmp_path / "deploy_v1.prototxt"
  v1.write_text(tn.prototxt(tn.alexnet_layers("caffenet", weights=False), (10, 3, 227, 227),
                            v1=True))
  cur = caffe_graph.build_graph(caffe_graph.net_definition(caffe_format.read_prototxt(deploy), deploy))
  old = caffe_graph.build_graph(caffe_graph.net_definition(caffe_format.read_prototxt(str(v1)), str(v1)))
  assert old.layers == cur.layers and old.input_shapes == cur.input_shapes


def test_training_prototxt_parses_and_runs_as_test_phase(tmp_path):
  """A train_val-style definition: TRAIN/TEST data layers, loss, accuracy, fillers, lr_mult."""
  layers = tn.alexnet_layers("alexnet", train=True, crop=227, weights=False)
  test_data = Layer("data", "Data", (), ("data", "label"),
                    {"transform_param": "crop_size: 227 mirror: false",
                     "data_param": 'source: "val_lmdb" batch_size: 50 backend: LMDB'}, phase=1)
  accuracy = Layer("accuracy", "Accuracy", ("fc8", "label"), ("accuracy",), phase=1)
  text = tn.prototxt([layers[0], test_data] + layers[1:] + [accuracy])
  text += 'layer { name: "extra" type: "ReLU" bottom: "fc8" top: "fc8" ' \
          'include { phase: TRAIN } future_field: 3 future_param { a: 1 b { c: "x" } } }\n'
  path = tmp_path / "train_val.prototxt"
  path.write_text(text)
  graph = caffe_graph.build_graph(caffe_graph.net_definition(caffe_format.read_prototxt(str(path)), str(path)))
  assert graph.inputs == ("data",) and graph.input_shapes == ((1, 0, 227, 227),)
  assert "extra" not in [l.name for l in graph.layers]  # TRAIN only
  assert {"data", "loss", "accuracy"} <= set(graph.dropped)
  assert graph.blob_names[-1] == "fc8"


# ---------------------------------------------------------------------------------------------
# Every supported layer type
# ---------------------------------------------------------------------------------------------

def _zoo_layers(rng) -> list[Layer]:
  def r(*s, scale=1.0):
    return (rng.standard_normal(s) * scale).astype(np.float32)
  return [
      Layer("conv_a", "Convolution", ["data"], ["conv_a"], {"convolution_param":
            "num_output: 8 kernel_h: 3 kernel_w: 5 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 2"},
            [r(8, 3, 3, 5, scale=0.1), r(8)]),
      Layer("bn_a", "BatchNorm", ["conv_a"], ["conv_a"], {"batch_norm_param": "eps: 0.001"},
            [r(8) * 2, np.abs(r(8)) * 3 + 0.5, np.array([2.0], np.float32)]),
      Layer("sc_a", "Scale", ["conv_a"], ["conv_a"], {"scale_param": "bias_term: true"},
            [r(8), r(8)]),
      Layer("relu_a", "ReLU", ["conv_a"], ["conv_a"], {"relu_param": "negative_slope: 0.1"}),
      Layer("conv_d", "Convolution", ["conv_a"], ["conv_d"], {"convolution_param":
            "num_output: 8 kernel_size: 3 dilation: 2 pad: 2 group: 2 bias_term: false"},
            [r(8, 4, 3, 3, scale=0.3)]),
      Layer("prelu", "PReLU", ["conv_d"], ["conv_d"], {}, [r(8) * 0.2]),
      Layer("pool_max", "Pooling", ["conv_d"], ["pool_max"],
            {"pooling_param": "pool: MAX kernel_size: 3 stride: 2 pad: 1"}),
      Layer("pool_ave", "Pooling", ["conv_d"], ["pool_ave"],
            {"pooling_param": "pool: AVE kernel_size: 3 stride: 2 pad: 1"}),
      Layer("pool_ave2", "Pooling", ["conv_d"], ["pool_ave2"],
            {"pooling_param": "pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 2"}),
      Layer("pool_rect", "Pooling", ["conv_d"], ["pool_rect"], {"pooling_param":
            "pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 3 stride_w: 2 pad_h: 1 pad_w: 0"}),
      Layer("concat", "Concat", ["pool_max", "pool_ave"], ["concat"], {"concat_param": "axis: 1"}),
      Layer("lrn_x", "LRN", ["concat"], ["lrn_x"],
            {"lrn_param": "local_size: 3 alpha: 0.5 beta: 0.75"}),
      Layer("lrn_w", "LRN", ["concat"], ["lrn_w"],
            {"lrn_param": "local_size: 3 alpha: 0.5 beta: 0.6 norm_region: WITHIN_CHANNEL"}),
      Layer("sum", "Eltwise", ["lrn_x", "lrn_w", "concat"], ["sum"],
            {"eltwise_param": "operation: SUM coeff: 0.5 coeff: -2 coeff: 1"}),
      Layer("prod", "Eltwise", ["lrn_x", "concat"], ["prod"], {"eltwise_param": "operation: PROD"}),
      Layer("emax", "Eltwise", ["lrn_x", "lrn_w"], ["emax"], {"eltwise_param": "operation: MAX"}),
      Layer("split", "Split", ["emax"], ["s1", "s2"]),
      Layer("sig", "Sigmoid", ["s1"], ["sig"]),
      Layer("tanh", "TanH", ["s2"], ["tanh"]),
      Layer("abs", "AbsVal", ["sum"], ["abs"]),
      Layer("pow", "Power", ["abs"], ["pow"], {"power_param": "power: 2 scale: 0.5 shift: 1"}),
      Layer("elu", "ELU", ["prod"], ["elu"], {"elu_param": "alpha: 0.7"}),
      Layer("cat2", "Concat", ["sig", "tanh", "pow", "elu"], ["cat2"]),
      Layer("gap", "Pooling", ["cat2"], ["gap"], {"pooling_param": "pool: AVE global_pooling: true"}),
      Layer("gmax", "Pooling", ["cat2"], ["gmax"], {"pooling_param": "pool: MAX global_pooling: true"}),
      Layer("flat", "Flatten", ["cat2"], ["flat"]),
      Layer("fc", "InnerProduct", ["flat"], ["fc"], {"inner_product_param": "num_output: 10"},
            [r(10, 64 * 10 * 23, scale=0.02), r(10)]),
      Layer("drop", "Dropout", ["fc"], ["fc"], {"dropout_param": "dropout_ratio: 0.3"}),
      Layer("sc2", "Scale", ["fc"], ["fc2"], {"scale_param": "bias_term: false"}, [r(10)]),
      Layer("soft", "Softmax", ["fc2"], ["soft"]),
      Layer("gapf", "Flatten", ["gap"], ["gapf"]),
      Layer("scale2", "Scale", ["cat2", "gapf"], ["scale2"], {"scale_param": "axis: 0"}),
      Layer("soft4", "Softmax", ["cat2"], ["soft4"]),
      Layer("flat2", "Flatten", ["cat2"], ["flat2"], {"flatten_param": "axis: 2"}),
      Layer("ip3", "InnerProduct", ["flat2"], ["ip3"],
            {"inner_product_param": "num_output: 4 axis: 2"}, [r(4, 230), r(4)]),
  ]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
  folder = tmp_path_factory.mktemp("zoo")
  layers = _zoo_layers(np.random.default_rng(3))
  proto, model = str(folder / "zoo.prototxt"), str(folder / "zoo.caffemodel")
  with open(proto, "w") as f:
    f.write(tn.prototxt(layers, (2, 3, 37, 45)))
  with open(model, "wb") as f:
    f.write(tn.caffemodel(layers))
  return proto, model, layers


def test_every_layer_type_matches_opencv(zoo):
  proto, model, _ = zoo
  net = caffe.load(model, proto)
  assert net.input_shape == (2, 3, 37, 45)
  x = np.random.default_rng(4).uniform(-3, 3, (2, 37, 45, 3)).astype(np.float32)
  out = net(x)
  ref = opencv_blobs(proto, model, x, net.blob_names)
  errs = compare_all(out, ref)
  assert len(errs) == len(net.blob_names) - 2  # all but the input and Split's second top
  np.testing.assert_array_equal(out["s1"], out["s2"])
  assert out["conv_a"].shape == (2, 19, 45, 8)  # NHWC, post in-place BN / Scale / ReLU
  assert out["fc"].shape == (2, 10) and out["flat2"].shape == (2, 64, 230)  # Caffe order
  assert out["pool_max"].shape[1:3] == (10, 23) and out["pool_rect"].shape[1:3] == (7, 23)
  print("layer zoo max rel err", max(errs.values()))


def test_caffe_backbone(zoo, tmp_path):
  proto, model, _ = zoo
  bb = backbones.create("caffe", weights=model, prototxt=proto, mean_bgr=(10, 20, 30), scale=0.5)
  assert bb.input_size == (37, 45) and "soft" in bb.layers and "data" in bb.layers
  images = made_images(2, 45)[:, :37]
  direct = caffe.load(model, proto)(caffe_input(images, (10, 20, 30)) * 0.5)
  np.testing.assert_allclose(np.asarray(bb.tap("soft")(images)), np.asarray(direct["soft"]),
                             rtol=1e-5, atol=1e-7)
  assert ":mean=10,20,30:scale=0.5" in bb.weights_id
  rand = backbones.create("caffe", weights="random", prototxt=proto, seed=1)
  assert rand.weights_id.startswith("random:1+")
  assert rand.tap("fc")(images).shape == (2, 10)
  with pytest.raises(FileNotFoundError, match="weights=PATH.caffemodel"):
    backbones.create("caffe")
  with pytest.raises(FileNotFoundError, match="bvlc_alexnet"):
    backbones.create("alexnet")


# ---------------------------------------------------------------------------------------------
# Where OpenCV departs from Caffe: NumPy transcriptions of Caffe's formulas
# ---------------------------------------------------------------------------------------------

def caffe_pool_ref(x, kernel, stride, pad, method, ceil_mode=True):
  """Caffe's pooling loops for one NCHW array (float64)."""
  n, c, h, w = x.shape
  clip = pad[0] > 0 or pad[1] > 0

  def size(s, k, st, p):
    span = s + 2 * p - k
    o = (-(-span // st) if ceil_mode else span // st) + 1
    return o - 1 if clip and (o - 1) * st >= s + p else o
  oh, ow = size(h, kernel[0], stride[0], pad[0]), size(w, kernel[1], stride[1], pad[1])
  out = np.zeros((n, c, oh, ow))
  for i in range(oh):
    for j in range(ow):
      hs, ws = i * stride[0] - pad[0], j * stride[1] - pad[1]
      he, we = min(hs + kernel[0], h + pad[0]), min(ws + kernel[1], w + pad[1])
      area = (he - hs) * (we - ws)
      hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
      win = x[:, :, hs:he, ws:we]
      out[:, :, i, j] = win.max(axis=(2, 3)) if method == "MAX" else win.sum(axis=(2, 3)) / area
  return out


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), kh=st.integers(1, 5), kw=st.integers(1, 5),
       sh=st.integers(1, 4), sw=st.integers(1, 4), ph=st.integers(0, 2), pw=st.integers(0, 2),
       method=st.sampled_from(["MAX", "AVE"]), ceil_mode=st.booleans())
def test_pooling_matches_caffe_loops(h, w, kh, kw, sh, sw, ph, pw, method, ceil_mode):
  ph, pw = min(ph, kh - 1), min(pw, kw - 1)  # Caffe requires pad < kernel
  clip = ph > 0 or pw > 0
  sizes = [caffe_ops.pool_output_size(s, k, st_, p, ceil_mode, clip)
           for s, k, st_, p in ((h, kh, sh, ph), (w, kw, sw, pw))]
  if min(sizes) < 1 or (kh < sh and not clip) or (kw < sw and not clip):
    return  # empty or window-free outputs, which Caffe does not define usefully
  x = np.random.default_rng(h * 100 + w).standard_normal((1, 2, h, w)).astype(np.float32)
  fn = caffe_ops.max_pool if method == "MAX" else caffe_ops.ave_pool
  ours = fn(jnp.asarray(x.transpose(0, 2, 3, 1)), (kh, kw), (sh, sw), (ph, pw),
            ceil_mode=ceil_mode, clip=clip)
  ref = caffe_pool_ref(x.astype(np.float64), (kh, kw), (sh, sw), (ph, pw), method, ceil_mode)
  np.testing.assert_allclose(nchw(ours), ref, rtol=1e-5, atol=1e-6)


def test_layers_opencv_gets_wrong_match_caffe_formulas(tmp_path):
  """LRN k != 1, InnerProduct transpose, Bias, round_mode: FLOOR (OpenCV 4.14 ignores or lacks
  them), checked against NumPy transcriptions of Caffe's forward passes."""
  rng = np.random.default_rng(5)
  wt = rng.standard_normal((6 * 5 * 7, 3)).astype(np.float32)  # transpose: (K, N)
  bias = rng.standard_normal(6).astype(np.float32)
  layers = [
      Layer("lrn", "LRN", ["data"], ["lrn"], {"lrn_param": "local_size: 3 alpha: 0.3 beta: 0.6 k: 2"}),
      Layer("bias", "Bias", ["lrn"], ["bias"], {}, [bias]),
      Layer("pool", "Pooling", ["bias"], ["pool"],
            {"pooling_param": "pool: AVE kernel_size: 2 stride: 2 pad: 1 round_mode: FLOOR"}),
      Layer("ipt", "InnerProduct", ["bias"], ["ipt"],
            {"inner_product_param": "num_output: 3 transpose: true bias_term: false"}, [wt]),
  ]
  proto, model = tmp_path / "p.prototxt", tmp_path / "m.caffemodel"
  proto.write_text(tn.prototxt(layers, (1, 6, 5, 7)))
  model.write_bytes(tn.caffemodel(layers))
  x = rng.standard_normal((2, 5, 7, 6)).astype(np.float32) * 2
  out = caffe.load(str(model), str(proto))(x)
  xc = nchw(x).astype(np.float64)
  sq = np.pad(xc ** 2, ((0, 0), (1, 1), (0, 0), (0, 0)))
  lrn = xc * (2 + 0.3 / 3 * (sq[:, :-2] + sq[:, 1:-1] + sq[:, 2:])) ** -0.6
  b = lrn + bias[None, :, None, None]
  assert rel_err(nchw(out["lrn"]), lrn) < TOL
  assert rel_err(nchw(out["bias"]), b) < TOL
  assert rel_err(nchw(out["pool"]), caffe_pool_ref(b, (2, 2), (2, 2), (1, 1), "AVE", False)) < TOL
  assert out["pool"].shape == (2, 3, 4, 6)
  assert rel_err(out["ipt"], b.reshape(2, -1) @ wt) < TOL


# ---------------------------------------------------------------------------------------------
# The real third-party model
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.isdir(NSFW), reason="../shared/models/open_nsfw is absent")
def test_open_nsfw_resnet50_matches_opencv():
  model = os.path.join(NSFW, "resnet_50_1by2_nsfw.caffemodel")
  deploy = os.path.join(NSFW, "deploy.prototxt")
  net = caffe.load(model, deploy)
  x = caffe_input(sample_images(2, 224), (104, 117, 123))
  out = net(x)
  ref = opencv_blobs(deploy, model, x, net.blob_names)
  errs = compare_all(out, ref)
  assert len(errs) == len(net.blob_names) - 1 == 73
  assert {"BatchNorm", "Scale", "Eltwise"} <= {l.type for l in net.graph.layers}
  print("open_nsfw max rel err", max(errs.values()))
  # The caffemodel's own (training) definition, written by Caffe, compiles to the same layers.
  own = caffe_graph.build_graph(caffe_graph.net_definition(caffe_format.read_caffemodel(model), model, phase=None))
  deploy_layers = {l.name: l for l in net.graph.layers}
  common = [l for l in own.layers if l.name in deploy_layers]
  assert len(common) == len(net.graph.layers) - 1  # all but 'prob': training nets end in a loss
  assert all(l.attrs == deploy_layers[l.name].attrs for l in common)


# ---------------------------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------------------------

def _write(path, data):
  path.write_bytes(data if isinstance(data, bytes) else data.encode())
  return str(path)


def test_truncated_corrupted_and_wrong_files(zoo, tmp_path):
  proto, model, _ = zoo
  data = open(model, "rb").read()
  truncated = _write(tmp_path / "cut.caffemodel", data[: len(data) // 2])
  with pytest.raises(caffe_format.CaffeFormatError, match="cut.caffemodel.*truncated or corrupted"):
    caffe.load(truncated, proto)
  with pytest.raises(caffe_format.CaffeFormatError, match="empty file"):
    caffe_format.read_caffemodel(_write(tmp_path / "empty.caffemodel", b""))
  with pytest.raises(caffe_format.CaffeFormatError, match="looks like a text .prototxt"):
    caffe.load(proto, proto)
  with pytest.raises(caffe_format.CaffeFormatError, match="not a text prototxt"):
    caffe_format.read_prototxt(model)
  bad_text = _write(tmp_path / "bad.prototxt", 'name: "x"\nlayer {\n  name: "a"\n  bottom: \n}')
  with pytest.raises(caffe_format.CaffeFormatError, match=r"bad.prototxt: .*5:1"):
    caffe_format.read_prototxt(bad_text)
  with pytest.raises(FileNotFoundError):
    caffe.load(str(tmp_path / "missing.caffemodel"))
  # A blob whose data does not fill its shape.
  lie = tn.caffemodel([Layer("c", "Convolution", ["data"], ["c"],
                             {"convolution_param": "num_output: 2 kernel_size: 1"},
                             [np.ones((2, 3, 1, 1), np.float32), np.ones(2, np.float32)])])
  lie = lie.replace(tn._ld(1, tn._varint(2) + tn._varint(3) + tn._varint(1) + tn._varint(1)),
                    tn._ld(1, tn._varint(2) + tn._varint(3) + tn._varint(9) + tn._varint(9)))
  lie_path = _write(tmp_path / "lie.caffemodel", lie)
  lie_proto = _write(tmp_path / "lie.prototxt", 'input: "data" input_dim: 1 input_dim: 3 '
                     'input_dim: 4 input_dim: 4 layer { name: "c" type: "Convolution" '
                     'bottom: "data" top: "c" convolution_param { num_output: 2 kernel_size: 1 } }')
  with pytest.raises(caffe_format.CaffeFormatError, match=r"layer 'c' blob 0.*\(2, 3, 9, 9\) needs 486"):
    caffe.load(lie_path, lie_proto)


def test_prototxt_and_caffemodel_that_do_not_match(zoo, tmp_path):
  proto, model, _ = zoo
  text = open(proto).read()
  renamed = _write(tmp_path / "renamed.prototxt", text.replace('"conv_d"', '"conv_x"', 1))
  with pytest.raises(caffe_format.CaffeMismatchError, match=r"no weights .* \['conv_x'\]"):
    caffe.load(model, renamed)
  wider = _write(tmp_path / "wider.prototxt",
                 text.replace("num_output: 10", "num_output: 12", 1))
  with pytest.raises(caffe_format.CaffeMismatchError,
                     match=r"'fc' \(InnerProduct\) blob 0 \(kernel\) has shape \(10, 14720\) in "
                           r"the caffemodel but the net definition implies \(12, 14720\)"):
    caffe.load(model, wider)
  nobias = _write(tmp_path / "nobias.prototxt", text.replace(
      "num_output: 8 kernel_h: 3", "bias_term: false num_output: 8 kernel_h: 3", 1))
  with pytest.raises(caffe_format.CaffeMismatchError, match=r"'conv_a' .* needs 1 blobs .* has 2"):
    caffe.load(model, nobias)
  smaller = _write(tmp_path / "small.prototxt", text.replace("dim: 37", "dim: 30", 1))
  with pytest.raises(caffe_format.CaffeMismatchError, match=r"'fc'.*\(10, 14720\).*\(10, 11776\)"):
    caffe.load(model, smaller)


@pytest.mark.parametrize("layer,match", [
    ('type: "Deconvolution" bottom: "data" top: "y"', "unsupported layer type 'Deconvolution'"),
    ('type: "Python" bottom: "data" top: "y"', "'y_layer' \\(Python\\): unsupported"),
    ('type: "Pooling" bottom: "data" top: "y" pooling_param { pool: STOCHASTIC kernel_size: 2 }',
     "STOCHASTIC pooling"),
    ('type: "BatchNorm" bottom: "data" top: "y" batch_norm_param { use_global_stats: false }',
     "use_global_stats: false"),
    ('type: "ReLU" bottom: "label" top: "y"', "reads blob 'label', which no earlier layer"),
    ('type: "LRN" bottom: "data" top: "y" lrn_param { local_size: 4 }', "must be odd"),
    ('type: "Convolution" bottom: "data" top: "y" convolution_param { num_output: 3 }',
     "no kernel size"),
    ('type: "Convolution" bottom: "data" top: "y" convolution_param { num_output: 4 group: 3 '
     'kernel_size: 1 }', "not a multiple of group"),
])
def test_unsupported_and_invalid_layers_name_the_layer(tmp_path, layer, match):
  text = ('input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
          f'layer {{ name: "y_layer" {layer} }}')
  path = _write(tmp_path / "net.prototxt", text)
  with pytest.raises(caffe_format.CaffeError, match=match):
    caffe_graph.build_graph(caffe_graph.net_definition(caffe_format.read_prototxt(path), path))


def test_shape_errors_at_trace_time_name_the_layer():
  text = ('input: "data" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4\n'
          'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
          'convolution_param { num_output: 2 kernel_size: 7 } }')
  graph = caffe_graph.build_graph(caffe_graph.net_definition(caffe_format.parse_prototxt(text), "t"))
  module = caffe_module.CaffeModule(graph.layers, graph.inputs)
  with pytest.raises(caffe_format.CaffeMismatchError, match=r"'c' \(Convolution\): the input height 4 "
                                                     r"\(padded 4\) is smaller than the kernel"):
    caffe_params.expected_param_shapes(module, graph.input_shapes)
