"""Localizer plugin: scene_coordinates (being written)."""
