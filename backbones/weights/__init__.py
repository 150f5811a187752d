"""Weights in one place: files (atomic writer, safe readers of official files), trees (flatten / unflatten,
the shape report), converted files (msgpack + module description), safetensors and the Hub layout, Scenic
train-state checkpoints.

    files.py        write_atomic, read_official (.pth/.npz -> (state_dict, meta)), load_torch_checkpoint, load_npz
    tree.py         flatten, unflatten, compare_shapes -> ShapeReport (.problems(), .raise_if_bad(source))
    description.py  the module description stored beside converted weights (FORMAT, architecture_json)
    converted.py    save_converted / load_converted / load_backbone_params (msgpack; safetensors via hub)
    hub.py          safetensors files and timm's Hub layout (save_pretrained, push_to_hub, load_pretrained)
    scenic.py       Scenic train-state checkpoints (save / find / load)

Nothing here imports a model family: module classes are looked up in ``backbones.registry``.
"""
