"""COCO-format detection data: the ``coco_tree`` tfds builder, the mmdet-style input pipeline, tools.

Import the submodules directly (``projects.detection.data.input_pipeline.get_dataset``); this package
initialiser stays empty so that importing one tool does not pull in TensorFlow.
"""
