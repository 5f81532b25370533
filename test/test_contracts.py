"""Typed bundle contracts: round trips, the metadata today's trainers write, unknown keys, what the plugins read."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vizloc_ros.contract import EXPORT_KEYS, ContractError
from vizloc_ros.geodesy import GeoReference
from vizloc_plugins.gps_regressor_contract import GPSRegressorContract
from vizloc_plugins.retrieval_contract import RetrievalContract
from vizloc_plugins.room_classifier_contract import RoomClassifierContract, SmoothingCalibration
from vizloc_plugins.scene_coordinates_contract import SceneCoordinatesContract, SceneRansac

EXPORTED = {'localizer_type': 'x', 'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225]}
SWITCH = [[0.0, 0.5, 0.5], [0.9, 0.0, 0.1], [0.5, 0.5, 0.0]]

#: Metadata as today's trainers write it (keys of room_classifier/train.py, gps_regressor/train.py,
#: scene_coordinates/train.py), values shortened.
TODAY = {
    RoomClassifierContract: {
        'classes': ['hall', 'kitchen', 'office'], 'backbone': 'efficientnet_lite0',
        'backbone_weights': {'package': 'timm'}, 'image_size': 48, 'resize': 'stretch', 'tta_flip': False,
        'outputs': {'probs': 'N x C softmax over classes'}, 'class_prior': [0.4, 0.3, 0.3], 'train_counts': [4, 3, 3],
        'preset': 'tiny', 'config': {'epochs': 1}, 'args': {'seed': 0}, 'history': [{'epoch': 1}],
        'room_map': 'rooms.yaml',
        'smoothing': {'p_stay': 0.97, 'temperature': 0.5, 'transition': 'learned', 'accuracy': 0.9,
                      'mean_log_prob': -0.2, 'frames': 9, 'single_frame_accuracy': 0.8,
                      'calibrated_on': 'val split in file-name order', 'switch_matrix': SWITCH, 'train_p_stay': 0.9}},
    GPSRegressorContract: {
        'geo': {'enu_origin': [47.0, 8.0, 400.0]}, 'target_frame': {'origin_lat_deg': 47.0}, 'variance_scale': 1.7,
        'altitude_known': True, 'alt_std_m': 3.0, 'resize': 'stretch', 'backbone': 'efficientnet_b0',
        'backbone_weights': {}, 'loss': 'haversine', 'head': 'gaussian', 'anchors': None, 'preset': 'tiny',
        'config': {}, 'train_args': {}, 'dataset': {'root': 'd'}, 'outputs': {'mean_en_m': '...'}, 'history': []},
    SceneCoordinatesContract: {
        'output_stride': 8, 'cell_centre': '8*j+4', 'resize': 'stretch', 'scene_mean_m': [0.0, 0.0, 0.0],
        'scene_scale_m': 12.0, 'supervision': 'coordinates', 'uncertainty': True, 'encoder': {'kind': 'cnn'},
        'head': {'width': 64, 'layers': 2},
        'ransac': {'hypotheses': 64, 'inlier_threshold_px': 8.0, 'min_inliers': 12, 'min_inlier_ratio': 0.2},
        'covariance_scale': 2.5, 'geo': {'crs': 'EPSG:32632', 'offset': [465000.0, 5247000.0, 400.0]},
        'dataset': 'd', 'train_images': 10, 'args': {}, 'preset': 'tiny', 'config': {}},
    RetrievalContract: {'descriptor_dim': 32, 'backbone': 'resnet18', 'gem_p': 3.0, 'positive_radius_m': 10.0,
                        'positive_max_angle_deg': 60.0, 'recall_radius_m': 25.0, 'resize': 'stretch',
                        'backbone_weights': {}},
}


@pytest.mark.parametrize('cls', list(TODAY), ids=lambda c: c.TYPE)
def test_today_metadata_parses_and_round_trips(cls):
    metadata = {**TODAY[cls], **EXPORTED}
    contract = cls.from_metadata(metadata)
    provenance = {k: v for k, v in metadata.items() if k in cls.PROVENANCE_KEYS}
    written = contract.to_metadata(**provenance)
    assert cls.from_metadata(written) == contract
    # what the trainer writes is what it wrote before, minus the export's own keys (added by the export)
    assert written == {k: v for k, v in metadata.items() if k not in EXPORT_KEYS}


@pytest.mark.parametrize('cls', list(TODAY), ids=lambda c: c.TYPE)
def test_unknown_keys_are_errors(cls):
    with pytest.raises(ContractError, match=r"unknown .* keys \['colour'\]"):
        cls.from_metadata({**TODAY[cls], 'colour': 'red'})
    contract = cls.from_metadata(TODAY[cls])
    with pytest.raises(ContractError, match=r"provenance keys \['colour'\]"):
        contract.to_metadata(colour='red')


def test_room_contract_reads_classes_room_map_and_smoothing():
    contract = RoomClassifierContract.from_metadata(TODAY[RoomClassifierContract])
    assert contract.classes == ('hall', 'kitchen', 'office') and contract.room_map == 'rooms.yaml'
    assert (contract.smoothing.p_stay, contract.smoothing.temperature, contract.smoothing.transition) == (
        0.97, 0.5, 'learned')
    np.testing.assert_allclose(contract.smoothing.switch_CC, SWITCH)
    assert SmoothingCalibration().switch_CC is None and SmoothingCalibration().p_stay == 0.95  # plugin fallback
    no_smoothing = {k: v for k, v in TODAY[RoomClassifierContract].items() if k != 'smoothing'}
    assert 'smoothing' not in RoomClassifierContract.from_metadata(no_smoothing).to_metadata()
    with pytest.raises(ContractError, match=r"unknown smoothing keys \['p_stya'\]"):
        RoomClassifierContract.from_metadata({**no_smoothing, 'smoothing': {'p_stya': 0.9}})
    with pytest.raises(ContractError, match='switch_matrix has shape'):
        RoomClassifierContract(classes=('a', 'b'), smoothing=SmoothingCalibration(switch_matrix=SWITCH))
    with pytest.raises(ContractError, match='at least 2'):
        RoomClassifierContract.from_metadata({'classes': ['only']})


def test_gps_contract_needs_a_geo_reference():
    contract = GPSRegressorContract.from_metadata(TODAY[GPSRegressorContract])
    assert contract.geo == GeoReference(enu_origin=(47.0, 8.0, 400.0)) and contract.variance_scale == 1.7
    with pytest.raises(ContractError, match='no "geo"'):
        GPSRegressorContract.from_metadata({'variance_scale': 1.0})
    with pytest.raises(ContractError, match='bad metadata.geo'):
        GPSRegressorContract.from_metadata({'geo': {'enu_origin': [95.0, 8.0, 0.0]}})
    unknown_altitude = GPSRegressorContract(geo=contract.geo)
    assert 'alt_std_m' not in unknown_altitude.to_metadata() and not unknown_altitude.altitude_known


def test_scene_plugin_takes_every_ransac_default_from_the_bundle():
    """ransac.hypotheses is written by the trainer and read by the plugin (option 0 = the bundle's)."""
    from vizloc_plugins.scene_coordinates import SceneCoordinateLocalizer, SceneCoordinatesOptions

    contract = SceneCoordinatesContract.from_metadata(TODAY[SceneCoordinatesContract])
    assert contract.ransac == SceneRansac(hypotheses=64, inlier_threshold_px=8.0, min_inliers=12, min_inlier_ratio=0.2)
    localizer = SceneCoordinateLocalizer.__new__(SceneCoordinateLocalizer)  # no model: _configure only
    localizer.options = SceneCoordinatesOptions()
    localizer._configure(contract)
    r = localizer.ransac
    assert (r.hypotheses, r.inlier_threshold_px, r.min_inliers, r.min_inlier_ratio) == (64, 8.0, 12, 0.2)
    assert localizer.covariance_scale == 2.5 and localizer.geo == contract.geo
    localizer.options = SceneCoordinatesOptions(hypotheses=300, min_inliers=40)
    localizer._configure(contract)
    assert (localizer.ransac.hypotheses, localizer.ransac.min_inliers, localizer.ransac.inlier_threshold_px) == (
        300, 40, 8.0)
    # a bundle without ransac settings gets the contract's defaults, one place for them
    bare = SceneCoordinatesContract.from_metadata({'output_stride': 8})
    assert bare.ransac == SceneRansac() and bare.geo is None and math.isclose(bare.covariance_scale, 1.0)
    with pytest.raises(ContractError, match=r"unknown ransac keys \['hypothesis'\]"):
        SceneCoordinatesContract.from_metadata({'ransac': {'hypothesis': 3}})
    with pytest.raises(ContractError, match='output_stride 16'):
        SceneCoordinatesContract.from_metadata({'output_stride': 16})


def test_from_bundle_checks_type_outputs_and_files(tmp_path):
    from onnx_models import mean_color_model
    from vizloc_ros.bundle import InputSpec, load_bundle, write_bundle

    model = mean_color_model(tmp_path / 'm.onnx', 8, 8)
    metadata = {k: v for k, v in TODAY[RoomClassifierContract].items() if k != 'room_map'}
    ok = load_bundle(write_bundle(tmp_path / 'ok', 'room_classifier', model, InputSpec(height=8, width=8),
                                  outputs=['probs'], metadata=metadata))
    assert RoomClassifierContract.from_bundle(ok).classes == ('hall', 'kitchen', 'office')
    with pytest.raises(ContractError, match="not 'gps_regressor'"):
        GPSRegressorContract.from_bundle(ok)
    no_probs = load_bundle(write_bundle(tmp_path / 'np', 'room_classifier', model, InputSpec(height=8, width=8),
                                        outputs=['mean_rgb'], metadata=metadata))
    with pytest.raises(ContractError, match=r"lacks outputs \['probs'\]"):
        RoomClassifierContract.from_bundle(no_probs)
    no_map = load_bundle(write_bundle(tmp_path / 'nm', 'room_classifier', model, InputSpec(height=8, width=8),
                                      outputs=['probs'], metadata={**metadata, 'room_map': 'rooms.yaml'}))
    with pytest.raises(ContractError, match="room_map 'rooms.yaml' is not a file of the bundle"):
        RoomClassifierContract.from_bundle(no_map)
