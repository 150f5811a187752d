"""ADE20K data: the ``ade20k_challenge`` tfds builder, the mmseg-style input pipeline, tools.

Modules: ``ade20k_classes`` (names, palette), ``ade20k_builder`` (tfds builder), ``prepare_ade20k`` (builds
it), ``make_synthetic_ade20k`` (a generated stand-in in the official layout), ``transforms`` (mmseg's
transforms in TensorFlow), ``pipeline`` (``get_dataset``). Import the submodules directly
(``projects.segmentation.data.pipeline.get_dataset``); this package initialiser stays empty so that
importing one tool does not pull in TensorFlow.
"""
