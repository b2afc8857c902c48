"""Converts a BVLC AlexNet / CaffeNet .caffemodel into an orbax checkpoint for the backbones.

    python -m persistent.tools.convert_caffe --caffemodel bvlc_alexnet.caffemodel \
        [--prototxt deploy.prototxt] --out weights/alexnet

writes DIR/params (orbax) and DIR/persistent_weights.json (backbone, weights_id = 'sha1:<hex>' of
the caffemodel), which `--config.backbone.weights=DIR` loads into the `alexnet` or `caffenet` backbone.
The layer order (LRN before pooling: AlexNet; after: CaffeNet) is read from the caffemodel's own
definition (or the prototxt); `--order` states it where neither says. The backbones also take the
.caffemodel path directly; the checkpoint just loads faster and needs no protobuf.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m persistent.tools.convert_caffe",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--caffemodel", required=True, help="bvlc_alexnet.caffemodel or "
                      "bvlc_reference_caffenet.caffemodel (legacy or current format)")
  parser.add_argument("--prototxt", help="its deploy.prototxt, checked against the backbone")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--order", choices=("alexnet", "caffenet"),
                      help="the backbone to convert for (default: read from the definitions)")
  parser.add_argument("--force", action="store_true", help="overwrite an earlier conversion")
  args = parser.parse_args(argv)

  from persistent import backbones
  from persistent.backbones import alexnet, caffe_format, caffe_graph
  from persistent.backbones import state_dict as sd_lib
  try:
    order = args.order
    model = caffe_format.read_caffemodel(args.caffemodel)
    if order is None:
      defs = [caffe_graph.net_definition(model, args.caffemodel, None)]
      if args.prototxt:
        defs.append(caffe_graph.net_definition(caffe_format.read_prototxt(args.prototxt),
                                               args.prototxt))
      found = {alexnet.detect_order(d) for d in defs} - {None}
      if len(found) != 1:
        parser.error("cannot tell AlexNet from CaffeNet from the definitions"
                     + (f" (they disagree: {sorted(found)})" if found else "") + "; pass --order")
      order = found.pop()
    params = alexnet.params_from_caffemodel(args.caffemodel, order, args.prototxt, model)
    del model
    weights_id = backbones.file_weights_id(args.caffemodel)
    out = sd_lib.save_converted(args.out, params, order, weights_id,
                                os.path.basename(args.caffemodel), force=args.force)
    restored, _ = sd_lib.load_converted(out, order, alexnet.expected_shapes())
  except (caffe_format.CaffeError, sd_lib.StateDictError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  import numpy as np
  for layer, p in params.items():
    for k, v in p.items():
      if not np.array_equal(np.asarray(v), restored[layer][k]):
        print(f"error: {out}: {layer}/{k} did not read back identically", file=sys.stderr)
        return 1
  print(json.dumps({"out": out, "backbone": order, "weights_id": weights_id,
                    "use": f"--config.backbone.name={order} --config.backbone.weights={out}"}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
