"""Localizer plugin: room_classifier (being written)."""
