"""Suite-wide pytest set-up.

- Fast DDS gets the project's shared-memory profile (as `make test` and the launch file do), so
  cross-process image tests see the same transport a user gets.
- Progress bars are off in tests; torch uses one thread per process (2-core CI machine).
"""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(REPO / 'config' / 'fastdds_shm.xml'))
os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
os.environ.setdefault('VIZLOC_NO_PROGRESS', '1')
os.environ.setdefault('OMP_NUM_THREADS', '1')

# Session fixtures shared by node, plugin and localizer tests (the example third-party plugin).
from example_plugin_support import example_bundle, example_plugin_site  # noqa: E402,F401  (re-exported fixtures)


@pytest.fixture(scope='session')
def campus_world(tmp_path_factory):
    """A small synthetic campus (real renders with depth and poses, GPS-format gt.csv, reference database;
    70 training frames at 320x240), shared by the retrieval and GPS regressor tests."""
    from vizloc_training.synth import campus

    return campus.generate(tmp_path_factory.mktemp('campus') / 'w', seed=2, frames=70, size=(320, 240),
                           write_bag=False)
