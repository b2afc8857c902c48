"""Feature extraction: normalisation, batching, cache hits; cache chunks that survive a kill, shared
by concurrent processes, and failures that name the file."""
import errno
import glob
import logging
import os
import re
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from persistent import backbones, data, features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "extract_worker.py")


class _Tiny(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(4, (3, 3), (2, 2))(x))
    return {"map": h, "pooled": h.mean((1, 2)), "zero": h.mean((1, 2)) * 0}


def tiny_backbone(seed=0):
  module = _Tiny()
  return backbones.Backbone(name="tiny", module=module,
                            params=backbones.random_params(module, (16, 16), seed),
                            input_size=(16, 16), preprocess=lambda x: x.astype(jnp.float32) / 255,
                            layers=("map", "pooled", "zero"), weights_id=f"random:{seed}")


def test_l2_normalize_keeps_zero_rows_finite():
  x = jnp.asarray([[3.0, 4.0], [0.0, 0.0]])
  np.testing.assert_allclose(features.l2_normalize(x), [[0.6, 0.8], [0, 0]])


def test_extract_matches_direct_application():
  src = data.open_source("synthetic:n=7,size=32")
  net = tiny_backbone()
  f = features.extract(net, "map", src, batch_size=3, progress=False, reduce="flatten")  # last batch padded
  assert f.shape == (7, 8 * 8 * 4)
  imgs = features.prepare([src[i] for i in range(7)], (16, 16))
  ref = np.asarray(net(imgs)["map"]).reshape(7, -1)
  np.testing.assert_allclose(f, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1, rtol=1e-5)
  assert np.all(features.extract(net, "zero", src, batch_size=4, progress=False) == 0)
  with pytest.raises(KeyError, match="no layer 'fc6'"):
    features.extract(net, "fc6", src)


def test_cache_hit_and_key(tmp_path):
  src = data.open_source("synthetic:n=5,size=32")
  net = tiny_backbone()
  a = features.extract(net, "pooled", src, batch_size=2, cache_dir=str(tmp_path), progress=False)
  files = os.listdir(tmp_path)
  assert len(files) == 1 and files[0].endswith(".npy")
  np.save(tmp_path / files[0], np.full_like(a, 7.0))  # a hit must read the file, not recompute
  b = features.extract(net, "pooled", src, batch_size=2, cache_dir=str(tmp_path), progress=False)
  assert np.all(b == 7.0)
  # Another layer, other weights or other data: different keys.
  keys = {features.cache_key(net, "pooled", src, True), features.cache_key(net, "map", src, True),
          features.cache_key(tiny_backbone(1), "pooled", src, True),
          features.cache_key(net, "pooled", data.open_source("synthetic:n=5,size=32,seed=1"), True),
          features.cache_key(net, "pooled", src.map(lambda e: e, "flip"), True)}
  assert len(keys) == 5


def _entry(tmp_path):
  """The one cache entry's path (KEY.npy, complete or not) under tmp_path."""
  keys = {f.split(".")[0] for f in os.listdir(tmp_path)}
  assert len(keys) == 1, os.listdir(tmp_path)
  return str(tmp_path / (keys.pop() + ".npy"))


def test_interrupted_pass_keeps_its_rows_and_resumes(tmp_path, caplog):
  src = data.open_source("synthetic:n=6,size=32")
  net = tiny_backbone()
  want = features.extract(net, "map", src, batch_size=2, progress=False)
  it = features.iterate(net, "map", src, batch_size=2, cache_dir=str(tmp_path), progress=False)
  next(it)
  it.close()  # consumer stops early: the computed rows stay as a chunk, no entry, no lock, no temp file
  entry = _entry(tmp_path)
  assert os.listdir(tmp_path) == [os.path.basename(entry)[:-4] + ".partial"]
  assert os.listdir(entry[:-4] + ".partial") == ["rows_000000000-000000002.npy"]
  with caplog.at_level(logging.INFO):
    got = features.extract(net, "map", src, batch_size=2, cache_dir=str(tmp_path), progress=False)
  assert "resuming at row 2 of 6" in caplog.text
  assert np.array_equal(got, want)
  assert os.listdir(tmp_path) == [os.path.basename(entry)]  # the chunks became the entry
  assert np.array_equal(np.load(entry), want)


def test_chunks_of_several_layers_resume_where_each_stopped(tmp_path):
  """Each layer is chunked by its own width; a rerun mixes rows on disk and recomputed ones."""
  src = data.open_source("synthetic:n=10,size=32")
  net = tiny_backbone()
  want = {l: features.extract(net, l, src, batch_size=2, progress=False, reduce="flatten") for l in ("map", "pooled")}
  opts = dict(batch_size=2, cache_dir=str(tmp_path), progress=False, reduce="flatten", chunk_bytes=4 * 256 * 4)
  it = features.iterate_layers(net, ["map", "pooled"], src, **opts)  # map: 4 rows a chunk, pooled: 256
  for _ in range(3):
    next(it)
  it.close()
  got = {l: [] for l in want}
  for _, feats in features.iterate_layers(net, ["map", "pooled"], src, **opts):
    for l in got:
      got[l].append(feats[l])
  for l in want:
    assert np.array_equal(np.concatenate(got[l]), want[l]), l
  assert sorted(f for f in os.listdir(tmp_path)) == sorted(
      features.cache_key(net, l, src, True, "flatten") + ".npy" for l in want)


def test_stale_temporary_files_are_removed(tmp_path, caplog):
  src = data.open_source("synthetic:n=4,size=32")
  net = tiny_backbone()
  entry = str(tmp_path / (features.cache_key(net, "pooled", src, True) + ".npy"))
  os.makedirs(entry[:-4] + ".partial")
  stale = [entry + ".999999.tmp.npy",
           os.path.join(entry[:-4] + ".partial", "rows_000000000-000000002.npy.999999.tmp.npy")]
  live = f"{entry}.{os.getppid()}.tmp.npy"  # a live process's (one that takes no lock, an older version)
  for f in stale + [live]:
    open(f, "wb").write(b"half a chunk")
  with caplog.at_level(logging.INFO):
    features.extract(net, "pooled", src, batch_size=2, cache_dir=str(tmp_path), progress=False)
  assert "removed 2 temporary files" in caplog.text
  assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(entry), os.path.basename(live)])


def _worker(cache_dir, out, delay=0.0, chunk_bytes=features.CHUNK_BYTES, barrier=""):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  args = [str(cache_dir), str(out), str(delay), str(chunk_bytes), str(barrier)]
  return subprocess.Popen([sys.executable, WORKER, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _reference():
  """The worker's features from an uninterrupted pass in this process, without a cache."""
  sys.path.insert(0, os.path.dirname(WORKER))
  import extract_worker
  return features.extract(tiny_backbone(), "map", data.open_source(extract_worker.SOURCE), batch_size=4,
                          progress=False, reduce="flatten")


def _finish(proc, timeout=120):
  out = proc.communicate(timeout=timeout)[0]
  assert proc.returncode == 0, out[-3000:]
  return out


def test_sigkill_midway_then_rerun_resumes_and_matches(tmp_path):
  """A real extraction process killed (SIGKILL) after its first chunks resumes after the last
  complete chunk and gives exactly the uninterrupted run's features."""
  chunk = 8 * 8 * 4 * 4 * 8  # 8 rows of the 256-d map a chunk: 6 chunks of 48 rows
  victim = _worker(tmp_path / "cache", tmp_path / "never.npy", delay=0.5, chunk_bytes=chunk)
  reference = _reference()
  try:
    parts = None
    deadline = time.time() + 60
    while time.time() < deadline and victim.poll() is None:
      parts = [f for f in glob.glob(str(tmp_path / "cache" / "*.partial" / "rows_*.npy"))
               if re.fullmatch(r"rows_\d+-\d+\.npy", os.path.basename(f))]  # complete chunks, not temp files
      if parts:
        break
      time.sleep(0.02)
    assert parts, "no chunk was written"
    victim.send_signal(signal.SIGKILL)
  finally:
    victim.kill()
    victim.wait()
  assert victim.returncode == -signal.SIGKILL
  assert not glob.glob(str(tmp_path / "cache" / "*.npy"))  # no entry from a killed run
  log = _finish(_worker(tmp_path / "cache", tmp_path / "resumed.npy", chunk_bytes=chunk))
  m = re.search(r"resuming at row (\d+) of 48", log)
  assert m and 8 <= int(m.group(1)) < 48 and int(m.group(1)) % 8 == 0, log
  assert np.array_equal(np.load(tmp_path / "resumed.npy"), reference)
  assert [f for f in os.listdir(tmp_path / "cache") if not f.endswith(".npy")] == []


def test_two_processes_extracting_one_entry_share_it(tmp_path):
  """Two processes start the same extraction into one cache: the second waits for the first's lock
  and reads its entry; both get the right features and one entry remains."""
  barrier = tmp_path / "barrier"
  barrier.mkdir()
  procs = [_worker(tmp_path / "cache", tmp_path / f"{i}.npy", delay=0.1, barrier=barrier) for i in range(2)]
  reference = _reference()
  deadline = time.time() + 60
  while len(os.listdir(barrier)) < 2 and time.time() < deadline and all(p.poll() is None for p in procs):
    time.sleep(0.01)
  (barrier / "go").touch()
  logs = [_finish(p) for p in procs]
  for i in range(2):
    assert np.array_equal(np.load(tmp_path / f"{i}.npy"), reference)
  assert sum("waiting for process" in log for log in logs) == 1, logs
  assert len(os.listdir(tmp_path / "cache")) == 1 and os.listdir(tmp_path / "cache")[0].endswith(".npy")


def test_full_disk_names_the_file_and_spares_other_entries(tmp_path, monkeypatch):
  src = data.open_source("synthetic:n=6,size=32")
  net = tiny_backbone()
  features.extract(net, "pooled", src, batch_size=2, cache_dir=str(tmp_path), progress=False)
  (earlier,) = os.listdir(tmp_path)
  before = (tmp_path / earlier).read_bytes()
  real_save = np.save

  def full(f, *args, **kwargs):
    real_save(f, *args, **kwargs)
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(np, "save", full)
  message = r"cannot write the feature cache \(No space left on device\): .*rows_000000000"
  with pytest.raises(OSError, match=message) as e:
    features.extract(net, "map", src, batch_size=2, cache_dir=str(tmp_path), progress=False, chunk_bytes=1)
  assert e.value.errno == errno.ENOSPC
  monkeypatch.undo()
  assert (tmp_path / earlier).read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == [earlier]  # no partial chunk, temporary file or lock left


def test_unwritable_cache_dir_names_it(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(OSError, match=f"cannot create the feature cache directory .*{blocker}"):
    features.extract(tiny_backbone(), "pooled", data.open_source("synthetic:n=2,size=32"),
                     cache_dir=str(blocker / "cache"), progress=False)


def test_a_second_pass_over_an_entry_being_written_in_this_process_does_not_wait(tmp_path):
  """The entry's lock is this process's own: a nested pass computes without the cache (no deadlock)."""
  src = data.open_source("synthetic:n=6,size=32")
  net = tiny_backbone()
  want = features.extract(net, "pooled", src, batch_size=2, progress=False)
  outer = features.iterate(net, "pooled", src, batch_size=2, cache_dir=str(tmp_path), progress=False)
  first = [next(outer)[1]]
  assert np.array_equal(features.extract(net, "pooled", src, batch_size=2, cache_dir=str(tmp_path),
                                         progress=False), want)
  first += [f for _, f in outer]
  assert np.array_equal(np.concatenate(first), want)
  assert os.listdir(tmp_path) == [features.cache_key(net, "pooled", src, True) + ".npy"]
