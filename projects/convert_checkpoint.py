"""Converts an official mmseg/mmdet CrossFormer checkpoint into one model file (config + variables).

    python -m projects.convert_checkpoint --input upernet_crossformer_s_ade20k.pth \
        --config configs/upernet_crossformer_s_ade20k.py --output upernet_s.msgpack

``--input`` is the released ``.pth`` (read with ``torch.load(weights_only=True)``; needs torch) or the same
state dict saved as ``.npz``. Every official key is used or explicitly dropped (``num_batches_tracked``); a
checkpoint of another model or size fails naming the keys that do not fit. The model file (read back with
``projects.common.model_io.load_model_file``) carries the config and the dataset's class names (from the
checkpoint's ``meta['CLASSES']`` when present, else the recipe dataset's).
"""

import argparse
import sys
from typing import Any, Dict, Optional, Sequence

import ml_collections

from projects.common import config_utils, model_io


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m projects.convert_checkpoint",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--input", required=True, help="official checkpoint: .pth (state_dict + meta) or .npz")
  parser.add_argument("--config", required=True, help="our config file, e.g. configs/upernet_crossformer_s_ade20k.py")
  parser.add_argument("--output", required=True, help="the model file to write (.msgpack)")
  return parser.parse_args(argv)


def dataset_meta(config: ml_collections.ConfigDict, checkpoint_meta: Dict[str, Any]) -> Dict[str, Any]:
  """The recipe dataset's meta, with the checkpoint's class names when it records them."""
  meta = model_io.dataset_facts(config)
  classes = checkpoint_meta.get("CLASSES")
  if classes is not None:
    classes = [str(c).strip() for c in classes]
    if len(classes) != meta["num_classes"]:
      raise ValueError(f"the checkpoint's meta lists {len(classes)} classes, the config's dataset has "
                       f"{meta['num_classes']}")
    meta["class_names"] = classes
  return meta


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the conversion; returns the exit status."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    config = config_utils.load_config(args.config)
    state_dict, checkpoint_meta = model_io.read_official_file(args.input)
    meta = dataset_meta(config, checkpoint_meta)
    with config.unlocked():
      config.dataset_meta = ml_collections.ConfigDict(meta)
    variables = model_io.convert_official_checkpoint(state_dict, config)
    path = model_io.save_model_file(args.output, config, variables)
  except (FileNotFoundError, ValueError, ImportError) as e:
    print(f"error: {args.input}: {e}", file=sys.stderr)
    return 1
  counts = model_io.parameter_counts(variables)
  print(f"wrote {path}")
  for name, count in counts.items():
    print(f"  {name:16s} {count:>12,d} parameters")
  return 0


if __name__ == "__main__":
  sys.exit(main())
