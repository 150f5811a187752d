"""Classification model declarations (one ``@registry.register_model`` class per module)."""
