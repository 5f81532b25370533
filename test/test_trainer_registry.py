"""Trainers are registered by plugins (``vizloc_register_trainers``) from the entry points the node uses:
the built-in ones, and the example third-party plugin's, trained through ``vizloc-train`` in a subprocess
and its bundle run by the ``vizloc_node`` executable (the plugin on the node's PYTHONPATH, as installed)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from example_plugin_support import EXAMPLE_PLUGIN_NAME, EXAMPLE_TYPE, example_plugin_module, subprocess_env
from vizloc_ros.bundle import load_bundle
from vizloc_ros.localizer import LocalizerConfig, LocalizerContext
from vizloc_ros.plugin_manager import load_registry, load_trainer_registry
from vizloc_ros.trainers import TrainerError, TrainerRegistry, TrainerType
from vizloc_ros.types import Frame

BUILT_IN = ('room_classifier', 'gps_regressor', 'scene_coordinates', 's2_classifier', 'retrieval')
ROOMS = ('red', 'green', 'blue', 'white', 'black')


def test_registry_lists_every_built_in_trainer_without_importing_torch() -> None:
    code = textwrap.dedent('''
        import sys
        from vizloc_ros.plugin_manager import load_trainer_registry
        report = load_trainer_registry()
        for name, t in sorted(report.registry.types.items()):
            print(name, t.plugin, t.train, t.presets)
        assert not report.failed, report.failed
        assert 'torch' not in sys.modules and 'vizloc_training' not in sys.modules
    ''')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()}
    assert set(BUILT_IN) <= set(listed)
    for name in BUILT_IN:  # each built-in plugin registers its own type's trainer, by dotted path
        assert listed[name] == [name, f'vizloc_training.{name}.train:train', f'vizloc_training.{name}.train:PRESETS']


def test_example_plugin_registers_its_trainer_and_bad_entries_are_refused() -> None:
    # the source module registered directly (its installed entry point, if any, blocked)
    report = load_trainer_registry(blocked=[EXAMPLE_PLUGIN_NAME], extra_plugins=[example_plugin_module()])
    example = report.registry.get(EXAMPLE_TYPE)
    assert example.plugin == 'vizloc_example_plugin.plugin' and example.train == 'vizloc_example_plugin.train:train'
    assert set(example.load_presets()) == {'demo', 'tiny', 'full'}
    with pytest.raises(TrainerError, match='registered twice'):
        report.registry.register(example)
    with pytest.raises(TrainerError, match='dotted path'):
        TrainerType(name='x', train='not a path', presets='m:PRESETS')
    with pytest.raises(TrainerError, match='no plugin registered a trainer'):
        TrainerRegistry().get('nothing')


def _colour_rooms_dataset(root: Path, per_room: int = 4, seed: int = 0) -> Path:
    """Rooms format, rooms named by colour; each image a noisy, slightly off version of its colour."""
    import cv2

    from vizloc_example_plugin import PALETTE

    rng = np.random.default_rng(seed)
    for split, n in (('train', per_room), ('val', 2)):
        for room in ROOMS:
            (root / split / room).mkdir(parents=True, exist_ok=True)
            base = np.array(PALETTE[room]) * 200 + 30  # not the palette's pure colours: training measures them
            for i in range(n):
                rgb = np.clip(base + rng.normal(0, 8, (24, 32, 3)), 0, 255).astype(np.uint8)
                cv2.imwrite(str(root / split / room / f'{i:03d}.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return root


def test_example_trainer_runs_through_vizloc_train_and_its_bundle_runs_in_the_node(example_plugin_site, tmp_path) -> None:
    pytest.importorskip('cv2')
    example_plugin_module()
    data = _colour_rooms_dataset(tmp_path / 'rooms')
    out = tmp_path / 'bundle'
    proc = subprocess.run([sys.executable, '-m', 'vizloc_training.train.cli', EXAMPLE_TYPE, '--data', str(data),
                           '--out', str(out), '--preset', 'tiny'],
                          capture_output=True, text=True, timeout=300, env=subprocess_env(example_plugin_site))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f'{EXAMPLE_TYPE} bundle {out}' in proc.stdout and 'val_accuracy' in proc.stdout

    bundle = load_bundle(out, expected_type=EXAMPLE_TYPE)
    palette = bundle.metadata['palette']  # measured: the dataset's colours, not the pure ones of PALETTE
    assert set(palette) == set(ROOMS) and palette['white'] == pytest.approx([230 / 255] * 3, abs=0.02)
    assert bundle.metrics['val_accuracy'] == 1.0
    registry = load_registry(extra_plugins=[example_plugin_module()]).registry
    loc = registry.create(LocalizerConfig(name='colour', type=EXAMPLE_TYPE, bundle=str(out)), {},
                          LocalizerContext(cache_dir=tmp_path / 'cache'))
    try:
        image = np.full((48, 64, 3), (30, 30, 230), np.uint8)  # the dataset's blue, not the palette's
        result = loc.localize(Frame(image, stamp_ns=1, frame_id='cam'))
    finally:
        loc.close()
    assert result.room.label == 'blue'

    # The same bundle in the node as users run it: frames of the dataset's colours come back as their rooms.
    from std_msgs.msg import String

    from test_node_support import NodeProcess, RosClient, domain_id_for

    domain = domain_id_for(__name__)
    colours = {'blue': (30, 30, 230), 'red': (230, 30, 30)}
    client = RosClient(domain)
    try:
        client.record(String, '/vizloc/colour/room')
        client.camera_publishers()
        params = {'localizers': ['colour'], 'colour.type': EXAMPLE_TYPE, 'colour.bundle': str(out),
                  'colour.backend': 'onnxruntime'}
        with NodeProcess(domain, params, python_paths=(example_plugin_site,), log_path=tmp_path / 'node.log') as node:
            assert client.wait_for_state('active') == 'active', node.log()
            assert client.wait_for_image_subscriber(), node.log()
            for name, rgb in colours.items():
                client.clear()
                client.publish_stream(10, rate_hz=20.0, make=lambda i, rgb=rgb: np.full((48, 64, 3), rgb, np.uint8))
                assert client.wait_for(lambda: len(client.messages('/vizloc/colour/room')) >= 5, 10.0), node.log()
                labels = {m.data for m in client.messages('/vizloc/colour/room')}
                assert labels == {name}, (name, labels)
    finally:
        client.close()
