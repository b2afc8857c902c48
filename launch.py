"""Runs an experiment: python launch.py --config=configs/rgb.py[:variant] [--workdir=DIR] [--config.k=v]."""
import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default workdirs/<task>.")
flags.mark_flag_as_required("config")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from persistent import experiment  # after flag parsing: keeps --help fast
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join("workdirs", config.task)
  metrics = experiment.run(config, workdir)
  logging.info("wrote %s", os.path.join(workdir, "metrics.json"))
  print({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})


if __name__ == "__main__":
  app.run(main)
