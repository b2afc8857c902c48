"""The launcher as a user runs it: bad keys, bad sources and failures exit non-zero, naming them."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, tmp_path):
  return subprocess.run([sys.executable, "launch.py", "--config=configs/rgb.py",
                         f"--workdir={tmp_path}", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)


def test_unknown_config_key(tmp_path):
  r = launch("--config.ridge.alpha=3", tmp_path=tmp_path)
  assert r.returncode != 0 and "alpha" in r.stderr
  assert not (tmp_path / "metrics.json").exists()


def test_unknown_source_format_and_missing_folder(tmp_path):
  r = launch("--config.data.train=voc2077:/x", tmp_path=tmp_path)
  assert r.returncode != 0 and "unknown data source format 'voc2077'" in r.stderr
  r = launch(f"--config.data.train=imagefolder:{tmp_path}/nothing", tmp_path=tmp_path)
  assert r.returncode != 0 and f"{tmp_path}/nothing" in r.stderr
  assert not (tmp_path / "metrics.json").exists()


def test_corrupt_image_names_file_and_removes_stale_metrics(tmp_path):
  imgs = tmp_path / "imgs"
  imgs.mkdir()
  from PIL import Image
  for i in range(8):
    Image.new("RGB", (20, 20), (i * 30, 0, 0)).save(imgs / f"ok{i}.png")
  (imgs / "bad.jpg").write_bytes(b"not a jpeg at all")
  (tmp_path / "metrics.json").write_text("{}")  # an old result must not survive a failed run
  r = launch(f"--config.data.train=imagefolder:{imgs}", "--config.features.cache_dir=",
             tmp_path=tmp_path)
  assert r.returncode != 0 and "bad.jpg" in r.stderr
  assert not (tmp_path / "metrics.json").exists()


def test_unknown_variant(tmp_path):
  r = subprocess.run([sys.executable, "launch.py", "--config=configs/rgb.py:nope"], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode != 0 and "unknown variant 'nope'" in r.stderr
