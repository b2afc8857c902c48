"""The layer sweep's scheduler: runs in lockstep, one at a time; passes over one source merged;
errors end every run; and a multi-layer task run equals its single-layer runs."""
import threading
import time

import pytest

from persistent import probe, sweep


class FakeSource:
  def __init__(self, spec):
    self.spec = spec


def test_lockstep_merges_passes_over_the_same_source(monkeypatch):
  served, busy = [], []

  def alone():  # fails if another run executes at the same time
    assert not busy
    busy.append(1)
    time.sleep(0.01)
    busy.pop()

  def execute(requests):
    served.append([r.args["who"] for r in requests])
    return [f"{r.kind}:{r.source.spec}:{r.args['who']}" for r in requests]
  monkeypatch.setattr(probe, "execute", execute)

  def job(i):
    def run():
      alone()
      s = sweep.current()
      a = s.submit(probe.Request(None, "fit", FakeSource("train"), {"who": i}))  # one shared pass
      alone()
      b = s.submit(probe.Request(None, "predict", FakeSource(f"crops{i}"), {"who": i}))  # one pass each
      alone()
      return a, b
    return run

  out = sweep.Sweep(backbone=None).run([job(i) for i in range(3)])
  assert out == [(f"fit:train:{i}", f"predict:crops{i}:{i}") for i in range(3)]
  assert served == [[0, 1, 2], [0], [1], [2]]
  assert sweep.current() is None


def test_one_failing_run_stops_every_run(monkeypatch):
  monkeypatch.setattr(probe, "execute", lambda requests: [None] * len(requests))
  finished = []

  def good():
    sweep.current().submit(probe.Request(None, "fit", FakeSource("a"), {}))
    sweep.current().submit(probe.Request(None, "fit", FakeSource("b"), {}))
    finished.append(True)

  def bad():
    sweep.current().submit(probe.Request(None, "fit", FakeSource("a"), {}))
    raise KeyError("layer 'x' is broken")

  with pytest.raises(KeyError, match="broken"):
    sweep.Sweep(backbone=None).run([good, bad, good])
  assert not finished and threading.active_count() < 10


def test_a_failing_pass_reaches_every_run_that_asked_for_it(monkeypatch):
  def execute(requests):
    raise ValueError("corrupt image 7 of train")
  monkeypatch.setattr(probe, "execute", execute)
  job = lambda: sweep.current().submit(probe.Request(None, "fit", FakeSource("train"), {}))
  with pytest.raises(ValueError, match="corrupt image 7"):
    sweep.Sweep(backbone=None).run([job, job])
