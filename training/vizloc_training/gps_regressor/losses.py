"""Losses of the GPS regressor (torch).

The network predicts, per image, a 2-D Gaussian over the camera's horizontal position in the
training split's local ENU frame, in *normalised* units (``(en_m - mean_en_m) / std_en_m``, train
split only): a mean ``mu_N2``, per-axis log-variances ``log_var_N2`` and a correlation ``rho_N``.

``--loss`` chooses what trains the mean:

* ``gaussian_nll`` - bivariate Gaussian negative log-likelihood trains mean and covariance jointly
  (heteroscedastic regression).
* ``haversine`` - the seed-001 loss: great-circle distance in metres between predicted and true
  position (both mapped to latitude/longitude through the ENU frame's spherical tangent plane).
* ``mse`` - mean squared error of the normalised coordinates.

With ``haversine`` and ``mse`` the covariance head is still trained by the Gaussian NLL, but on a
*detached* mean, so the covariance cannot pull the mean and every loss yields a usable covariance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ['LOSSES', 'LossTerms', 'GPSLoss', 'gaussian_nll_2d', 'haversine_loss_m', 'covariance_from_head']

LOSSES = ('gaussian_nll', 'haversine', 'mse')
#: Same radius as vizloc_training.metrics.geo.EARTH_RADIUS_M (the seed's formula).
EARTH_RADIUS_M = 6_371_000.0
#: |rho| stays below this so that the covariance stays well conditioned.
MAX_ABS_RHO = 0.95


def covariance_from_head(log_var_N2: torch.Tensor, rho_N: torch.Tensor) -> torch.Tensor:
    """(N, 2, 2) covariance from per-axis log-variances and a correlation coefficient."""
    var = torch.exp(log_var_N2)
    off = rho_N * torch.sqrt(var[:, 0] * var[:, 1])
    row0 = torch.stack([var[:, 0], off], dim=-1)
    row1 = torch.stack([off, var[:, 1]], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def gaussian_nll_2d(mu_N2: torch.Tensor, log_var_N2: torch.Tensor, rho_N: torch.Tensor,
                    target_N2: torch.Tensor) -> torch.Tensor:
    """Per-sample negative log-likelihood (N,) of ``target`` under a bivariate Gaussian.

    ``0.5 * (log det S + d^T S^-1 d) + log(2 pi)`` with ``S = [[s_e^2, rho s_e s_n], [rho s_e s_n,
    s_n^2]]``; for ``rho = 0`` it equals the sum of two ``torch.nn.GaussianNLLLoss(full=True)`` terms.
    """
    z = (target_N2 - mu_N2) * torch.exp(-0.5 * log_var_N2)
    one_minus_rho2 = 1.0 - rho_N * rho_N
    maha = (z[:, 0] ** 2 - 2.0 * rho_N * z[:, 0] * z[:, 1] + z[:, 1] ** 2) / one_minus_rho2
    log_det = log_var_N2.sum(dim=1) + torch.log(one_minus_rho2)
    return 0.5 * (log_det + maha) + math.log(2.0 * math.pi)


def haversine_loss_m(pred_en_m: torch.Tensor, true_en_m: torch.Tensor, origin_lat_deg: float,
                     origin_lon_deg: float) -> torch.Tensor:
    """Per-sample great-circle distance (N,) in metres between two sets of ENU positions.

    Both are mapped to latitude/longitude through the spherical tangent plane at the ENU origin
    (``lat = lat0 + n / R``, ``lon = lon0 + e / (R cos lat0)``; distances agree with the Euclidean
    ENU distance to ~2e-5 relative over a few hundred metres, i.e. millimetres on campus), then the haversine formula with the seed's double clamping
    (``a`` into [0, 1] and ``sqrt(a)`` away from 0 so the gradient stays finite).
    """
    lat0 = math.radians(origin_lat_deg)
    lon0 = math.radians(origin_lon_deg)
    cos_lat0 = math.cos(lat0)

    def to_lat_lon(en: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lat0 + en[:, 1] / EARTH_RADIUS_M, lon0 + en[:, 0] / (EARTH_RADIUS_M * cos_lat0)

    lat1, lon1 = to_lat_lon(pred_en_m.double())
    lat2, lon2 = to_lat_lon(true_en_m.double())
    a = torch.sin((lat2 - lat1) / 2.0) ** 2 + torch.cos(lat1) * torch.cos(lat2) * torch.sin((lon2 - lon1) / 2.0) ** 2
    sqrt_a = torch.sqrt(a.clamp(1e-24, 1.0)).clamp(max=1.0)
    return (2.0 * EARTH_RADIUS_M * torch.asin(sqrt_a)).to(pred_en_m.dtype)


@dataclass(frozen=True)
class LossTerms:
    """One batch's loss and its parts (for logging)."""

    total: torch.Tensor
    mean_term: float
    nll_term: float


class GPSLoss:
    """The training loss for ``kind`` in :data:`LOSSES` (see the module docstring).

    ``mean_en_m``/``std_en_m`` de-normalise to metres (haversine); ``origin`` is the ENU origin
    (lat, lon) in degrees. ``nll_beta`` > 0 applies beta-NLL weighting (Seitzer et al. 2022: each
    sample's NLL is multiplied by its detached variance^beta), which keeps the mean learning on
    hard samples.
    """

    def __init__(self, kind: str, *, mean_en_m: torch.Tensor, std_en_m: torch.Tensor,
                 origin_lat_deg: float, origin_lon_deg: float, nll_beta: float = 0.0) -> None:
        if kind not in LOSSES:
            raise ValueError(f'unknown loss {kind!r}; choose one of {LOSSES}')
        if nll_beta < 0.0 or nll_beta > 1.0:
            raise ValueError(f'nll_beta must be in [0, 1], got {nll_beta}')
        self.kind = kind
        self.mean_en_m = mean_en_m
        self.std_en_m = std_en_m
        self.origin = (origin_lat_deg, origin_lon_deg)
        self.nll_beta = nll_beta
        #: Metres per normalised unit (mean of the two axes): keeps the haversine term O(1).
        self.scale_m = float(std_en_m.mean())

    def _nll(self, mu: torch.Tensor, log_var: torch.Tensor, rho: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        nll = gaussian_nll_2d(mu, log_var, rho, target)
        if self.nll_beta > 0.0:
            nll = nll * torch.exp(self.nll_beta * log_var.mean(dim=1)).detach()
        return nll.mean()

    def __call__(self, mu_N2: torch.Tensor, log_var_N2: torch.Tensor, rho_N: torch.Tensor,
                 target_N2: torch.Tensor) -> LossTerms:
        if self.kind == 'gaussian_nll':
            nll = self._nll(mu_N2, log_var_N2, rho_N, target_N2)
            return LossTerms(total=nll, mean_term=float(nll.detach()), nll_term=float(nll.detach()))
        nll = self._nll(mu_N2.detach(), log_var_N2, rho_N, target_N2)
        if self.kind == 'mse':
            mean_term = ((mu_N2 - target_N2) ** 2).sum(dim=1).mean()
        else:
            std = self.std_en_m.to(mu_N2.device)
            mean = self.mean_en_m.to(mu_N2.device)
            dist_m = haversine_loss_m(mu_N2 * std + mean, target_N2 * std + mean, *self.origin)
            mean_term = dist_m.mean() / self.scale_m
        return LossTerms(total=mean_term + nll, mean_term=float(mean_term.detach()), nll_term=float(nll.detach()))
