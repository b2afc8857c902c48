"""Task registry: each task is `run(config, workdir) -> metrics dict`."""
from __future__ import annotations

from typing import Any, Callable

import ml_collections

from persistent.registry import Registry

TASKS: Registry[Callable[[ml_collections.ConfigDict, str], dict[str, Any]]] = Registry("task")
register = TASKS.register
get = TASKS.get

# Importing the modules registers their tasks.
from persistent.tasks import rgb  # noqa: E402,F401
from persistent.tasks import keypoints  # noqa: E402,F401
from persistent.tasks import segmentation  # noqa: E402,F401
from persistent.tasks import landmarks  # noqa: E402,F401
from persistent.tasks import directions  # noqa: E402,F401
