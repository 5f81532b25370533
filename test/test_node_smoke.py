"""``vizloc-smoke`` (the README demo) end to end, in-process, on small frames."""
from __future__ import annotations

import ast
import io

import pytest

from test_node_support import domain_id_for
from vizloc_ros.smoke import COLOURS, SmokeConfig, main, run_smoke

pytestmark = pytest.mark.timeout(60)


def test_smoke_prints_one_fix_per_frame_and_the_rooms() -> None:
    out = io.StringIO()
    fixes = run_smoke(SmokeConfig(frames=5, rate_hz=20.0, width_px=64, height_px=48,
                                  domain_id=domain_id_for(__name__)), out=out)
    text = out.getvalue()
    assert fixes >= 4, text
    assert 'backend onnxruntime' in text
    # One frame of each colour, and the example localizer names the room after the colour: the rooms
    # come back in the order of the frames (a subsequence of the colours when a frame was dropped).
    rooms = ast.literal_eval(text.split('in order: ', 1)[1].splitlines()[0])
    assert len(rooms) == fixes
    remaining = iter(COLOURS)
    assert all(room in remaining for room in rooms), rooms


def test_smoke_cli_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        main(['--size', '64by48'])


def test_smoke_says_how_to_install_the_example_when_it_is_absent(monkeypatch, capsys) -> None:
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, 'entry_points', lambda **kw: [])  # nothing installed
    assert main(['--frames', '1']) == 2
    err = capsys.readouterr().err
    assert 'example plugin is not installed' in err and 'pip install ./examples/example_plugin' in err
