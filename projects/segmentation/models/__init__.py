"""Segmentation model declarations: each module registers its models (``projects.registry``)."""
