"""Segmentation data: tfds builders (ADE20K, your own folder, Cityscapes), the mmseg-style pipeline, tools.

Modules: ``ade20k_classes`` (names, palette), ``ade20k_builder`` (tfds builder), ``prepare_ade20k`` (builds
it), ``make_synthetic_ade20k`` (a generated stand-in in the official layout), ``folder_builders`` /
``prepare_folder`` (your own folder and Cityscapes), ``make_synthetic_folder`` (generated data in those
layouts), ``datasets`` (the table of datasets ``config.dataset_name`` selects), ``transforms`` (mmseg's
transforms in TensorFlow), ``pipeline`` (``get_dataset``). Import the submodules directly
(``projects.segmentation.data.pipeline.get_dataset``); this package initialiser stays empty so that
importing one tool does not pull in TensorFlow.
"""
