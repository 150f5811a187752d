"""Classification data: tfds builders (``imagenet2012`` from tfds, ``folder_builder`` for your own classes),
``datasets`` (which one ``config.dataset_name`` selects), ``transforms`` (the official train/eval transforms),
``pipeline`` (``get_dataset``), ``make_synthetic`` (a tiny generated folder) and ``prepare`` (the command).
Import the submodules directly; this initialiser stays empty so that importing one does not pull TensorFlow.
"""
