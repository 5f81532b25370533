"""Localizer plugin: gps_regressor (being written)."""
