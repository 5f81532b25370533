"""km-scale metrics of the S2 classifier (seed 002): % within 1 / 25 / 200 / 750 / 2500 km, and the
seed's "best cell" oracle (the error left when every image is given the cell nearest to it).

Distances are great-circle distances (:func:`vizloc_training.metrics.geo.haversine_m`, the seed's
formula); the table itself is :func:`vizloc_training.metrics.geo.geo_error_stats` with km thresholds.
Predicted positions come from :func:`vizloc_plugins.s2_classifier.estimate_fix`, the function the
runtime plugin uses, so the bundle's metrics are what the node publishes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vizloc_plugins.s2_cells import unit_to_latlon

from ..metrics.geo import geo_error_stats, haversine_m

__all__ = ['THRESHOLDS_KM', 'km_table', 'fix_errors_m', 'top1_errors_m', 'oracle_errors_m']

#: The seed's (and PlaNet's) scales: street, city, region, country, continent.
THRESHOLDS_KM = (1.0, 25.0, 200.0, 750.0, 2500.0)


def km_table(errors_m: Sequence[float] | np.ndarray, thresholds_km: Sequence[float] = THRESHOLDS_KM) -> dict[str, float]:
    """``within_<t>km_pct`` per threshold plus ``median_km``, ``mean_km`` and ``count``."""
    stats = geo_error_stats(errors_m, thresholds_m=[1e3 * t for t in thresholds_km])
    table = {f'within_{t:g}km_pct': stats[f'within_{1e3 * t:g}m_pct'] for t in thresholds_km}
    table.update(median_km=stats['median_m'] / 1e3, mean_km=stats['mean_m'] / 1e3, count=stats['count'])
    return table


def fix_errors_m(probs_NC: np.ndarray, positions_C3: np.ndarray, extent_var_m2_C: np.ndarray, true_lat_deg,
                 true_lon_deg, *, top_k: int, neighbourhood_km: float, region_km: float = 0.0) -> np.ndarray:
    """Great-circle error (m) of the plugin's probability-weighted fix for every row of ``probs_NC``."""
    from vizloc_plugins.s2_classifier import estimate_fix

    fixes = [estimate_fix(p, positions_C3, extent_var_m2_C, top_k=top_k, neighbourhood_km=neighbourhood_km,
                          region_km=region_km)
             for p in np.asarray(probs_NC)]
    lat = np.array([f.lat_deg for f in fixes])
    lon = np.array([f.lon_deg for f in fixes])
    return haversine_m(lat, lon, true_lat_deg, true_lon_deg)


def top1_errors_m(probs_NC: np.ndarray, positions_C3: np.ndarray, true_lat_deg, true_lon_deg) -> np.ndarray:
    """Great-circle error (m) when the most probable cell's position is the answer (PlaNet's rule)."""
    lat, lon = unit_to_latlon(np.asarray(positions_C3)[np.argmax(probs_NC, axis=1)])
    return haversine_m(lat, lon, true_lat_deg, true_lon_deg)


def oracle_errors_m(positions_C3: np.ndarray, true_lat_deg, true_lon_deg) -> np.ndarray:
    """The "best cell" oracle: distance (m) from each true position to the nearest cell position."""
    lat_c, lon_c = unit_to_latlon(positions_C3)
    true_lat = np.asarray(true_lat_deg, dtype=np.float64).reshape(-1)
    true_lon = np.asarray(true_lon_deg, dtype=np.float64).reshape(-1)
    return haversine_m(true_lat[:, None], true_lon[:, None], lat_c[None, :], lon_c[None, :]).min(axis=1)
