"""Offline training stack of vizloc_ros (torch lives here only)."""
