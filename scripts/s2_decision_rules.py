#!/usr/bin/env python3
"""Compare the S2 classifier's decision rules on one bundle, without retraining.

Runs the bundle's ONNX model (ONNX Runtime, images resized as the runtime does) on the val and
test images of a GPS-format dataset, alone and averaged with the mirror image, and scores the
plugin's fix (:func:`vizloc_plugins.s2_classifier.estimate_fix`) with each ``region_km`` (0 =
PlaNet's rule, the most probable cell decides). Prints % within 25 / 200 km and the misses per
variant:

    python scripts/s2_decision_rules.py --bundle /tmp/b/s2 --data /tmp/worlds/multisite

A bundle trained with ``tta_flip`` already averages over the mirror image; its ``+ mirror`` rows
repeat the plain ones.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--bundle', type=Path, required=True, help='s2_classifier bundle directory')
    parser.add_argument('--data', type=Path, required=True, help='GPS-format dataset (vizloc-synth multisite --out)')
    parser.add_argument('--region-km', type=float, nargs='+', default=[0.0, 25.0, 200.0])
    parser.add_argument('--splits', nargs='+', default=['val', 'test'])
    args = parser.parse_args(argv)

    from vizloc_ros.bundle import load_bundle
    from vizloc_plugins.s2_classifier import S2ClassifierContract
    from vizloc_training.gps_regressor.data import load_gps_data
    from vizloc_training.s2_classifier.evaluate import fix_errors_m, km_table

    bundle = load_bundle(args.bundle, expected_type='s2_classifier')
    contract = S2ClassifierContract.from_bundle(bundle)
    positions, extent = contract.partition.positions_N3(contract.cell_position), contract.partition.extent_var_m2()
    data = load_gps_data(args.data, width=bundle.input.width, height=bundle.input.height)
    print(f'{"split":6s} {"probabilities":14s} {"region_km":>9s} {"within 25 km":>12s} {"within 200 km":>13s} '
          f'{"misses":>6s}')
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle.model_path), providers=['CPUExecutionProvider'])
    for split in args.splits:
        images = data.splits[split].images_NHW3
        if not len(images):
            continue
        lat, lon = data.splits[split].lla_N3[:, 0], data.splits[split].lla_N3[:, 1]
        probs = _probs(session, images, bundle.input.name)
        mirrored = _probs(session, np.ascontiguousarray(images[:, :, ::-1]), bundle.input.name)
        for name, p in (('image', probs), ('+ mirror', 0.5 * (probs + mirrored))):
            for region_km in args.region_km:
                errors = fix_errors_m(p, positions, extent, lat, lon, top_k=contract.top_k,
                                      neighbourhood_km=contract.neighbourhood_km, region_km=region_km)
                table = km_table(errors)
                print(f'{split:6s} {name:14s} {region_km:9g} {table["within_25km_pct"]:11.1f} % '
                      f'{table["within_200km_pct"]:12.1f} % {int(np.sum(errors > 200e3)):6d}', flush=True)
    return 0


def _probs(session, images_NHW3: np.ndarray, input_name: str, batch: int = 64) -> np.ndarray:
    """Cell probabilities of model-size uint8 images (the runtime's resize), batched through the ONNX model."""
    out = [session.run(['probs'], {input_name: images_NHW3[i:i + batch]})[0] for i in range(0, len(images_NHW3), batch)]
    return np.concatenate(out).astype(np.float64)


if __name__ == '__main__':
    sys.exit(main())
