"""Plain-text metric tables for the ``vizloc-train`` output."""
from __future__ import annotations

import math
from typing import Any, Mapping

__all__ = ['format_table', 'flatten_metrics']


def _fmt(value: float | int | str) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return 'nan'
        if value != 0.0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f'{value:.4g}'
        return f'{value:.4f}'
    return str(value)


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = '') -> dict[str, float | int | str]:
    """Scalar entries of a nested metrics mapping, keys joined with ``/`` (lists are left out)."""
    out: dict[str, float | int | str] = {}
    for key, value in metrics.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, prefix=f'{name}/'))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        elif hasattr(value, 'item') and getattr(value, 'ndim', 1) == 0:
            out[name] = value.item()
    return out


def format_table(rows: Mapping[str, float | int | str], title: str = '') -> str:
    """A two-column ``metric | value`` table; floats with 4 decimals (or 4 significant digits)."""
    if not rows:
        return f'{title}\n(no metrics)' if title else '(no metrics)'
    cells = [(str(k), _fmt(v)) for k, v in rows.items()]
    w_key = max(len('metric'), *(len(k) for k, _ in cells))
    w_val = max(len('value'), *(len(v) for _, v in cells))
    lines = []
    if title:
        lines.append(title)
    lines.append(f'{"metric":<{w_key}} | {"value":>{w_val}}')
    lines.append(f'{"-" * w_key}-+-{"-" * w_val}')
    lines.extend(f'{k:<{w_key}} | {v:>{w_val}}' for k, v in cells)
    return '\n'.join(lines)
