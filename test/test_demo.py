"""scripts/demo.py (make demo): cache keys and the cache itself (the full demo trains for minutes:
it is run by `make demo`, measured in the README, not here)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def demo():
    spec = importlib.util.spec_from_file_location('vizloc_demo_script', REPO / 'scripts' / 'demo.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_cache_is_reused_and_keyed_by_inputs(demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, 'CACHE', tmp_path)
    calls = []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / 'bundle').mkdir(parents=True)

    first, cached = demo._cached('bundles', 'k1', build, fresh=False)
    assert not cached and (first / 'bundle').is_dir() and (first / '.complete').is_file()
    again, cached = demo._cached('bundles', 'k1', build, fresh=False)
    assert cached and again == first and len(calls) == 1
    _, cached = demo._cached('bundles', 'k1', build, fresh=True)
    assert not cached and len(calls) == 2
    assert not list(tmp_path.glob('bundles/.*partial'))  # nothing half-built left behind

    def failing(tmp: Path) -> None:
        raise SystemExit('train failed')

    with pytest.raises(SystemExit):
        demo._cached('bundles', 'k2', failing, fresh=False)
    assert not (tmp_path / 'bundles' / 'k2').exists()


def test_keys_change_with_preset_world_and_code(demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    room = demo.DEMOS['room_classifier']
    base = demo._key('w', room.preset, *room.train_set, 'code1')
    assert demo._key('w', 'demo', *room.train_set, 'code1') != base
    assert demo._key('w2', room.preset, *room.train_set, 'code1') != base
    assert demo._key('w', room.preset, *room.train_set, 'code2') != base
    monkeypatch.setattr(demo, 'REPO', tmp_path)
    (tmp_path / 'pkg').mkdir()
    (tmp_path / 'pkg' / 'a.py').write_text('x = 1\n')
    (tmp_path / 'pkg' / 'notes.txt').write_text('not code')
    h1 = demo.code_hash(tmp_path / 'pkg')
    (tmp_path / 'pkg' / 'notes.txt').write_text('changed, still not code')
    assert demo.code_hash(tmp_path / 'pkg') == h1
    (tmp_path / 'pkg' / 'a.py').write_text('x = 2\n')
    assert demo.code_hash(tmp_path / 'pkg') != h1
    assert set(demo.DEMOS) == {'room_classifier', 'gps_regressor', 'scene_coordinates'}
