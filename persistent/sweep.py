"""Every layer in one pass: a task runs once per layer, in lockstep, and the passes of all layers
over the same source are served by one pass (`probe.execute`: one decode, one forward pass that
taps every layer).

Each layer's run is a thread, but only one runs at a time: a run parks when its pipeline asks for
a pass, and when every unfinished run is parked the sweep serves the parked requests, grouped by
(kind, source), and resumes the runs in layer order. Task code therefore needs no thread safety
and no knowledge of the sweep; the order of passes (and of collectives across processes) is
deterministic. Passes whose sources differ between layers (e.g. look-back crops placed by each
layer's own estimates) are served one by one.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

from persistent import probe
from persistent.backbones import Backbone

_LOCAL = threading.local()


def current() -> "Sweep | None":
  """The sweep the calling thread runs in, if any."""
  return getattr(_LOCAL, "sweep", None)


class Aborted(RuntimeError):
  """Raised in a layer's run when another layer's run failed."""


class Sweep:
  """Runs jobs (one per layer) in lockstep; pipelines created inside share `backbone`."""

  def __init__(self, backbone: Backbone):
    self.backbone = backbone
    self._cv = threading.Condition()
    self._turn: int | None = None
    self._parked: dict[int, probe.Request] = {}
    self._answers: dict[int, tuple[bool, Any]] = {}

  def run(self, jobs: Sequence[Callable[[], Any]]) -> list[Any]:
    """Runs every job to its end; returns their results in order, or raises the first error."""
    n = len(jobs)
    self._done, self._out, self._errors = [False] * n, [None] * n, [None] * n
    threads = [threading.Thread(target=self._worker, args=(i, job), name=f"layer-{i}", daemon=True)
               for i, job in enumerate(jobs)]
    for t in threads:
      t.start()
    runnable = list(range(n))
    while True:
      for i in runnable:
        self._resume(i)
      failed = next((e for e in self._errors if e is not None and not isinstance(e, Aborted)), None)
      if failed is not None or all(self._done):
        break
      runnable = sorted(self._parked)
      self._answers = self._serve([self._parked[i] for i in runnable], runnable)
      self._parked = {}
    if failed is not None:  # let the parked runs end, then report the error
      for i in sorted(self._parked):
        self._answers[i] = (False, Aborted(f"stopped: another layer's run failed ({failed})"))
      for i in sorted(self._parked):
        self._resume(i)
      for t in threads:
        t.join()
      raise failed
    for t in threads:
      t.join()
    return self._out

  @staticmethod
  def _serve(requests: list[probe.Request], owners: list[int]) -> dict[int, tuple[bool, Any]]:
    """Every parked request answered: those of one kind over one source by one pass."""
    groups: dict[tuple[str, str], list[int]] = {}
    for j, r in enumerate(requests):
      groups.setdefault((r.kind, r.source.spec), []).append(j)
    answers = {}
    for members in groups.values():
      try:
        results = [(True, v) for v in probe.execute([requests[j] for j in members])]
      except Exception as e:  # every run that asked for this pass gets the error
        results = [(False, e)] * len(members)
      answers.update({owners[j]: res for j, res in zip(members, results)})
    return answers

  def _resume(self, i: int) -> None:
    """Gives run i the turn and waits until it parks or ends."""
    with self._cv:
      self._turn = i
      self._cv.notify_all()
      self._cv.wait_for(lambda: self._turn is None)

  def _worker(self, i: int, job: Callable[[], Any]) -> None:
    _LOCAL.sweep, _LOCAL.index = self, i
    with self._cv:
      self._cv.wait_for(lambda: self._turn == i)
    try:
      self._out[i] = job()
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
      self._errors[i] = e
    finally:
      with self._cv:
        self._done[i] = True
        self._turn = None
        self._cv.notify_all()

  def submit(self, request: probe.Request) -> Any:
    """Called by a pipeline inside a run: parks the run until its pass has been served."""
    i = _LOCAL.index
    with self._cv:
      self._parked[i] = request
      self._turn = None
      self._cv.notify_all()
      self._cv.wait_for(lambda: self._turn == i)
    ok, value = self._answers.pop(i)
    if not ok:
      raise value
    return value
