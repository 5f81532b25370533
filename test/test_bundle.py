"""Model bundles: write/load round trip, hash verification, version and key checks, missing files."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import yaml

from example_plugin_support import make_example_bundle
from onnx_models import expected_mean_rgb, mean_color_model
from vizloc_ros.backends import create_backend
from vizloc_ros.bundle import FORMAT_VERSION, BundleError, InputSpec, load_bundle, sha256_file, write_bundle


@pytest.fixture()
def bundle_dir(tmp_path):
    model = mean_color_model(tmp_path / 'src' / 'mean.onnx', 16, 24)
    labels = tmp_path / 'src' / 'labels.txt'
    labels.write_text('kitchen\nlab\n')
    return write_bundle(tmp_path / 'bundle', 'room_classifier', model, InputSpec(height=16, width=24),
                        outputs=['mean_rgb'], metadata={'labels': np.array([1, 2])}, metrics={'top1': np.float32(0.5)},
                        extra_files={'labels.txt': labels}, producer='test')


def _edit_yaml(bundle_dir, **changes):
    path = bundle_dir / 'bundle.yaml'
    meta = yaml.safe_load(path.read_text())
    meta.update(changes)
    path.write_text(yaml.safe_dump(meta))


def test_round_trip_and_the_model_runs(bundle_dir):
    bundle = load_bundle(bundle_dir, expected_type='room_classifier')
    assert bundle.localizer_type == 'room_classifier'
    assert bundle.input == InputSpec(name='image', height=16, width=24)
    assert bundle.outputs == ('mean_rgb',)
    assert bundle.metadata == {'labels': [1, 2]} and bundle.metrics['top1'] == pytest.approx(0.5)
    assert bundle.format_version == FORMAT_VERSION and bundle.producer == 'test' and bundle.created_utc.endswith('Z')
    assert bundle.model_path == bundle_dir / 'model.onnx'
    assert bundle.model_sha256 == sha256_file(bundle.model_path)
    assert bundle.file('labels.txt').read_text() == 'kitchen\nlab\n'
    with pytest.raises(BundleError, match="no file 'nope.txt'"):
        bundle.file('nope.txt')
    image = np.random.default_rng(0).integers(0, 256, (1, 16, 24, 3), dtype=np.uint8)
    with create_backend('onnxruntime', bundle.model_path) as runner:
        np.testing.assert_allclose(runner.infer({'image': image})['mean_rgb'][0], expected_mean_rgb(image[0]), atol=1e-6)
    assert not list(bundle_dir.parent.glob('.bundle.*')), 'temporary directory left behind'


def test_tampered_model_is_refused_naming_the_file(bundle_dir):
    with open(bundle_dir / 'model.onnx', 'ab') as fh:
        fh.write(b'\0')
    with pytest.raises(BundleError, match=r"sha256 mismatch for 'model.onnx'"):
        load_bundle(bundle_dir)
    assert load_bundle(bundle_dir, verify=False).model_file == 'model.onnx'


def test_tampered_extra_file_is_refused(bundle_dir):
    (bundle_dir / 'labels.txt').write_text('kitchen\nattic\n')
    with pytest.raises(BundleError, match="'labels.txt'"):
        load_bundle(bundle_dir)


def test_missing_listed_file(bundle_dir):
    (bundle_dir / 'labels.txt').unlink()
    with pytest.raises(BundleError, match="listed file 'labels.txt' is missing"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize('version', [0, 2, '1', None])
def test_wrong_format_version_is_a_clear_error(bundle_dir, version):
    _edit_yaml(bundle_dir, format_version=version)
    with pytest.raises(BundleError, match=f'format version {version!r} is not supported.*supports {FORMAT_VERSION}'):
        load_bundle(bundle_dir)


def test_unknown_keys_are_refused(bundle_dir):
    _edit_yaml(bundle_dir, labels=['a'], model_sha='x')
    with pytest.raises(BundleError, match=r"unknown keys \['labels', 'model_sha'\]"):
        load_bundle(bundle_dir)


def test_bad_input_spec_and_missing_required_keys(bundle_dir):
    meta = yaml.safe_load((bundle_dir / 'bundle.yaml').read_text())
    _edit_yaml(bundle_dir, input={**meta['input'], 'channels': 3})
    with pytest.raises(BundleError, match='bad input spec'):
        load_bundle(bundle_dir)
    _edit_yaml(bundle_dir, input={**meta['input'], 'layout': 'HWC'})
    with pytest.raises(BundleError, match='layout must be NHWC or NCHW'):
        load_bundle(bundle_dir)
    del meta['files']
    (bundle_dir / 'bundle.yaml').write_text(yaml.safe_dump(meta))
    with pytest.raises(BundleError, match="required key 'files' is missing"):
        load_bundle(bundle_dir)


def test_model_must_be_listed_and_type_must_match(bundle_dir):
    with pytest.raises(BundleError, match="for localizer type 'room_classifier', not 'gps_regressor'"):
        load_bundle(bundle_dir, expected_type='gps_regressor')
    meta = yaml.safe_load((bundle_dir / 'bundle.yaml').read_text())
    _edit_yaml(bundle_dir, files={'labels.txt': meta['files']['labels.txt']})
    with pytest.raises(BundleError, match="model file 'model.onnx' is not listed"):
        load_bundle(bundle_dir)


def test_missing_or_malformed_bundle_directory(tmp_path):
    with pytest.raises(BundleError, match='does not exist'):
        load_bundle(tmp_path / 'nothing')
    with pytest.raises(BundleError, match='bundle.yaml is missing'):
        load_bundle(tmp_path)
    (tmp_path / 'bundle.yaml').write_text('- just\n- a list\n')
    with pytest.raises(BundleError, match='expected a mapping'):
        load_bundle(tmp_path)
    (tmp_path / 'bundle.yaml').write_text('format_version: [1\n')
    with pytest.raises(BundleError, match='not valid YAML'):
        load_bundle(tmp_path)


def test_rewriting_replaces_the_bundle_atomically(bundle_dir, tmp_path):
    model = mean_color_model(tmp_path / 'other.onnx', 8, 8)
    out = write_bundle(bundle_dir, 'gps_regressor', model, InputSpec(height=8, width=8))
    bundle = load_bundle(out)
    assert bundle.localizer_type == 'gps_regressor' and bundle.files.keys() == {'model.onnx'}
    assert not (out / 'labels.txt').exists()


def test_example_bundle_carries_the_vizloc_onnx_metadata(tmp_path):
    bundle = load_bundle(make_example_bundle(tmp_path / 'example', height=8, width=12), expected_type='example_color')
    assert (bundle.input.height, bundle.input.width) == (8, 12)
    props = {p.key: p.value for p in onnx.load(str(bundle.model_path)).metadata_props}
    assert props == {'vizloc.localizer_type': 'example_color', 'vizloc.format_version': str(FORMAT_VERSION)}


# -- robustness finding 6: nothing outside the bundle directory is read ---------------------------------

def _point_model_at(bundle_dir, name):
    meta = yaml.safe_load((bundle_dir / 'bundle.yaml').read_text())
    files = meta['files']
    files[name] = files.pop(meta['model'])
    meta.update(model=name, files=files)
    (bundle_dir / 'bundle.yaml').write_text(yaml.safe_dump(meta))


def test_model_path_outside_the_bundle_is_refused(bundle_dir, tmp_path):
    outside = tmp_path / 'outside'
    outside.mkdir()
    (outside / 'model.onnx').write_bytes((bundle_dir / 'model.onnx').read_bytes())  # same hash: only the path is wrong
    _point_model_at(bundle_dir, '../outside/model.onnx')
    for verify in (True, False):
        with pytest.raises(BundleError, match='outside the bundle'):
            load_bundle(bundle_dir, verify=verify)
    _point_model_at(bundle_dir, str(outside / 'model.onnx'))
    with pytest.raises(BundleError, match='relative path inside the bundle'):
        load_bundle(bundle_dir)


def test_symlinked_model_leading_out_of_the_bundle_is_refused(bundle_dir, tmp_path):
    outside = tmp_path / 'elsewhere.onnx'
    (bundle_dir / 'model.onnx').rename(outside)
    (bundle_dir / 'model.onnx').symlink_to(outside)  # same bytes, same hash
    with pytest.raises(BundleError, match='outside the bundle'):
        load_bundle(bundle_dir)


def test_listed_files_outside_the_bundle_are_not_read(bundle_dir, tmp_path, monkeypatch):
    secret = tmp_path / 'secret.txt'
    secret.write_text('do not read')
    meta = yaml.safe_load((bundle_dir / 'bundle.yaml').read_text())
    meta['files']['../secret.txt'] = '0' * 64
    (bundle_dir / 'bundle.yaml').write_text(yaml.safe_dump(meta))
    import vizloc_ros.bundle as bundle_module

    read = []
    monkeypatch.setattr(bundle_module, 'sha256_file', lambda path, *a: read.append(path) or '0' * 64)
    with pytest.raises(BundleError, match='outside the bundle'):
        load_bundle(bundle_dir)
    assert read == [], 'refused before any file was hashed'


def test_a_symlink_inside_the_bundle_stays_allowed(bundle_dir):
    (bundle_dir / 'labels_link.txt').symlink_to(bundle_dir / 'labels.txt')
    bundle = load_bundle(bundle_dir)
    from vizloc_ros.bundle import contained_path

    assert contained_path(bundle.path, 'labels_link.txt') == (bundle_dir / 'labels.txt').resolve()
