"""Keyframe maps of scene-coordinate bundles (vizloc_plugins.keyframes): lifting keypoints to 3D, building
and reading the map, matching a new view to a pose, the choice between the keyframe and the network pose,
and a bundle with a keyframe map through the registry.

Test data: the textured ground plane of test_scene_coordinates (a real homography render; exact scene
coordinates by ray/plane intersection), here at 320x240 so that SIFT finds enough keypoints.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
import transforms3d

from vizloc_plugins.keyframes import (KEYFRAMES_INDEX, KEYFRAMES_NPZ, KeyframeError, KeyframeMap, build_keyframe_map,
                                      lift_pixels)
from vizloc_plugins.pnp import Evidence, PnPSolution
from vizloc_plugins.scene_coordinates import select_pose
from vizloc_plugins.scene_coordinates_contract import SceneKeyframes

from test_scene_coordinates import _planar_samples

KW, KH = 320, 240


def _depth(sample: SimpleNamespace) -> np.ndarray:
    """z-depth (m) of every pixel from the sample's exact scene coordinates (0 outside the plane)."""
    X = sample.coords_3HW.reshape(3, -1)
    T = sample.T_world_camera
    z = (T[:3, :3].T @ (X - T[:3, 3:4]))[2]
    return np.where(np.any(X != 0, axis=0), z, 0.0).reshape(sample.coords_3HW.shape[1:]).astype(np.float32)


def _plane_points(sample: SimpleNamespace, px: np.ndarray) -> np.ndarray:
    """Exact intersection of the pixels' rays with the plane z = 0."""
    T = sample.T_world_camera
    rays = T[:3, :3] @ np.linalg.solve(sample.K, np.stack([px[:, 0], px[:, 1], np.ones(len(px))]))
    lam = -T[2, 3] / rays[2]
    return (T[:3, 3:4] + rays * lam).T


def _detailed_texture(size: int = 1024, seed: int = 3) -> np.ndarray:
    """Ground texture with detail at the ground resolution of the views (~0.4 m/px = 1 texture px):
    multi-scale noise and 4000 discs/squares of random colour."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3), np.float32)
    for cells in (8, 32, 128):
        image += cv2.resize(rng.uniform(0, 85, (cells, cells, 3)).astype(np.float32), (size, size),
                            interpolation=cv2.INTER_CUBIC)
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(4000):
        colour = tuple(int(x) for x in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        r = int(rng.integers(2, 9))
        if rng.random() < 0.5:
            cv2.circle(image, (x, y), r, colour, -1)
        else:
            cv2.rectangle(image, (x - r, y - r), (x + r, y + r), colour, -1)
    return image


@pytest.fixture(scope='module')
def views() -> tuple[list[SimpleNamespace], list[SimpleNamespace]]:
    """16 mapping views and 4 new ones (other positions and headings) of the plane, 320x240, ~100 m up."""
    texture = _detailed_texture()
    return (_planar_samples(16, seed=0, width=KW, height=KH, texture=texture),
            _planar_samples(4, seed=5, width=KW, height=KH, texture=texture))


@pytest.fixture(scope='module')
def keyframe_dir(tmp_path_factory: pytest.TempPathFactory, views: tuple) -> Path:
    out = tmp_path_factory.mktemp('keyframes')
    mapping, _ = views
    # half of the views lift their keypoints by depth, half by scene coordinates (as datasets have either)
    frames = [SimpleNamespace(rgb_HW3=s.rgb_HW3, K=s.K, T_world_camera=s.T_world_camera, name=s.name,
                              depth_HW=_depth(s) if i % 2 else None, coords_3HW=None if i % 2 else s.coords_3HW,
                              coords_stride_px=1) for i, s in enumerate(mapping)]
    described = build_keyframe_map(frames, out, n_features=500)
    assert described['frames'] == 16 and described['points'] > 16 * 200 and described['index'] == 'flat'
    return out


def test_lifted_keypoints_lie_on_the_plane_by_depth_and_by_scene_coordinates(views: tuple) -> None:
    sample = views[0][3]
    px = np.random.default_rng(0).uniform([20, 20], [KW - 20, KH - 20], (200, 2))  # sub-pixel positions
    exact = _plane_points(sample, px)
    by_depth, ok_d = lift_pixels(px, sample.K, sample.T_world_camera, depth_HW=_depth(sample))
    by_coords, ok_c = lift_pixels(px, sample.K, sample.T_world_camera, coords_3HW=sample.coords_3HW)
    assert ok_d.all() and ok_c.all()
    # bilinear interpolation of a plane's depth / coordinates over one pixel (~0.4 m on the ground at
    # 100 m with f = 256 px): the interpolation error is a small fraction of that
    assert np.max(np.linalg.norm(by_depth - exact, axis=1)) < 0.05
    assert np.max(np.linalg.norm(by_coords - exact, axis=1)) < 0.05
    # 1/8-resolution scene coordinates (the DSAC* init layout): cell k at pixel 8 k + 4
    coarse = np.ascontiguousarray(sample.coords_3HW[:, 4::8, 4::8])
    inner = px[(px[:, 0] > 8) & (px[:, 0] < KW - 12) & (px[:, 1] > 8) & (px[:, 1] < KH - 12)]
    by_cells, ok = lift_pixels(inner, sample.K, sample.T_world_camera, coords_3HW=coarse, coords_stride_px=8)
    # (a plane's coordinates are linear in the pixel up to perspective: an interpolation off by half a
    # pixel would be ~0.2 m off)
    assert ok.all() and np.max(np.linalg.norm(by_cells - _plane_points(sample, inner), axis=1)) < 0.1
    # pixels without depth are dropped, not placed at the camera
    holes = _depth(sample)
    holes[:, : KW // 2] = 0.0
    _, ok_h = lift_pixels(px, sample.K, sample.T_world_camera, depth_HW=holes)
    assert not ok_h[px[:, 0] < KW // 2 - 1].any() and ok_h[px[:, 0] > KW // 2 + 1].all()


def test_new_views_are_posed_from_the_keyframe_map(keyframe_dir: Path, views: tuple) -> None:
    keyframes = KeyframeMap(keyframe_dir / KEYFRAMES_NPZ, keyframe_dir / KEYFRAMES_INDEX, SceneKeyframes())
    assert len(keyframes) > 16 * 200 and len(keyframes.names) == 16
    for sample in views[1]:
        match = keyframes.match(cv2.cvtColor(sample.rgb_HW3, cv2.COLOR_RGB2GRAY), sample.K)
        assert match.solution is not None, match
        T = match.solution.T_map_camera
        # exact map points, hundreds of matches with sub-pixel keypoint noise: within 2.5 ground pixels
        # (0.4 m each at 100 m with f = 256 px; a plane seen nearly nadir couples tilt and lateral
        # shift: 0.5 deg of tilt moves the camera 0.9 m) of the truth
        assert np.linalg.norm(T[:3, 3] - sample.T_world_camera[:3, 3]) < 1.0
        R = T[:3, :3].T @ sample.T_world_camera[:3, :3]
        assert math.degrees(math.acos(np.clip((np.trace(R) - 1) / 2, -1, 1))) < 0.5
        assert match.solution.num_inliers >= 100 and len(match.keyframes) == 5
        assert np.all(np.linalg.eigvalsh(match.solution.cov_6x6) > 0)
    # an image of something else: no pose rather than a wrong one
    noise = np.random.default_rng(1).integers(0, 256, (KH, KW), dtype=np.uint8)
    assert keyframes.match(noise, views[1][0].K).solution is None
    assert keyframes.match(np.full((KH, KW), 90, np.uint8), views[1][0].K).solution is None


def test_unreadable_or_inconsistent_maps_are_errors(tmp_path: Path, keyframe_dir: Path) -> None:
    with pytest.raises(KeyframeError, match='cannot read'):
        KeyframeMap(tmp_path / KEYFRAMES_NPZ, keyframe_dir / KEYFRAMES_INDEX, SceneKeyframes())
    with np.load(keyframe_dir / KEYFRAMES_NPZ) as data:
        arrays = dict(data)
    arrays['frame_N'] = arrays['frame_N'][:-1]
    np.savez(tmp_path / KEYFRAMES_NPZ, **arrays)
    with pytest.raises(KeyframeError, match='disagree'):
        KeyframeMap(tmp_path / KEYFRAMES_NPZ, keyframe_dir / KEYFRAMES_INDEX, SceneKeyframes())
    with pytest.raises(KeyframeError, match='no frame with depth'):
        build_keyframe_map([SimpleNamespace(rgb_HW3=np.zeros((KH, KW, 3), np.uint8), K=np.eye(3),
                                            T_world_camera=np.eye(4), depth_HW=None, coords_3HW=None)], tmp_path / 'x')


def _solution(T_map_camera: np.ndarray, inliers: int) -> PnPSolution:
    R_cm = T_map_camera[:3, :3].T
    rvec, _ = cv2.Rodrigues(R_cm)
    return PnPSolution(T_map_camera=T_map_camera, cov_6x6=np.eye(6), rvec=rvec.reshape(3),
                       tvec=-R_cm @ T_map_camera[:3, 3], inlier_mask=np.ones(inliers, bool), num_inliers=inliers,
                       inlier_ratio=1.0, soft_score=float(inliers), reprojection_rmse_px=1.0, hypotheses_valid=1)


def test_select_pose_publishes_the_pose_that_explains_more_of_both_sources() -> None:
    K = np.array([[200.0, 0.0, 160.0], [0.0, 200.0, 120.0], [0.0, 0.0, 1.0]])
    T = np.eye(4)
    T[:3, :3] = transforms3d.euler.euler2mat(math.pi, 0.05, 0.3, 'sxyz')
    T[:3, 3] = [10.0, -5.0, 100.0]
    rng = np.random.default_rng(0)

    def seen(n: int, T_seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """n pixels and the ground points (z = 0) a camera at T_seen sees there."""
        pixels = rng.uniform([0, 0], [320, 240], (n, 2))
        rays = T_seen[:3, :3] @ np.linalg.solve(K, np.stack([pixels[:, 0], pixels[:, 1], np.ones(n)]))
        return (T_seen[:3, 3:4] + rays * (-T_seen[2, 3] / rays[2])).T, pixels

    points, pixels = seen(600, T)
    points[:200] += rng.normal(0.0, 30.0, (200, 3))  # a network with a third of its cells wrong
    cells = Evidence(points, pixels, K, 10.0)
    near = T.copy()
    near[:3, 3] += [0.05, -0.05, 0.02]  # a keyframe pose centimetres from the truth
    far = T.copy()
    far[:3, 3] += [40.0, 0.0, 0.0]  # a keyframe pose at a look-alike place 40 m away
    network = _solution(T, 400)
    right = Evidence(*seen(300, T), K, 4.0)  # keyframe matches of the right place
    # matches of a look-alike place: a third agree with it (its repeated texture), the rest are scattered
    # (as measured indoors, where wrong keyframe poses explained 7-42 % of their matches)
    like_points, like_pixels = seen(300, far)
    like_points[100:] += rng.normal(0.0, 30.0, (200, 3))
    lookalike = Evidence(like_points, like_pixels, K, 4.0)

    chosen, source, scores = select_pose(network, _solution(near, 300), cells, right)
    assert source == 'keyframes' and np.allclose(chosen.T_map_camera, near)
    assert scores['keyframe_score'] == pytest.approx(scores['network_score'], abs=0.05)  # both right: keyframes
    chosen, source, scores = select_pose(network, _solution(far, 300), cells, lookalike)
    assert source == 'network' and np.allclose(chosen.T_map_camera, T)
    assert scores['network_score'] == pytest.approx(400 / 600, abs=0.05)  # its cells; none of the matches
    assert scores['keyframe_score'] == pytest.approx(100 / 300, abs=0.05)  # a third of the matches; no cells
    # a network pose fitted to noise (its cells are all wrong) loses against a right keyframe pose
    noise = Evidence(rng.uniform(-500, 500, (600, 3)), pixels, K, 10.0)
    wrong_network = _solution(far, 30)
    assert select_pose(wrong_network, _solution(T, 300), noise, right)[1] == 'keyframes'
    # one source alone
    assert select_pose(None, _solution(far, 300), cells, lookalike)[1] == 'keyframes'
    assert select_pose(network, None, cells, right)[1] == 'network'
    assert select_pose(None, None, cells, None) == (None, 'none', {})


def build_keyframe_bundle(out_dir: Path, mapping: list[SimpleNamespace]) -> Path:
    """A scene_coordinates bundle of the plane (network input 128x96, mapped from ``mapping``) with the
    keyframe map of the same views (matched at the camera's resolution), in ``out_dir/bundle``."""
    import torch

    from vizloc_ros.bundle import InputSpec
    from vizloc_training.scene_coordinates.data import prepare_split
    from vizloc_training.scene_coordinates.train import fit
    from vizloc_training.train.export import export_and_bundle

    from test_scene_coordinates import FIT_CONFIG, GEO, H, W

    frames = [SimpleNamespace(rgb_HW3=s.rgb_HW3, K=s.K, T_world_camera=s.T_world_camera, name=s.name,
                              depth_HW=_depth(s), coords_3HW=None) for s in mapping]
    described = build_keyframe_map(frames, out_dir / 'keyframes', n_features=500)
    torch.manual_seed(0)
    scene = fit(prepare_split(mapping, W, H), FIT_CONFIG, seed=0)
    metadata = {'output_stride': 8, 'resize': 'stretch', 'geo': GEO, 'covariance_scale': 1.0,
                'ransac': {'hypotheses': 64, 'inlier_threshold_px': 10.0, 'min_inliers': 12, 'min_inlier_ratio': 0.1},
                'keyframes': {'n_features': 500, 'min_inliers': 30, 'covariance_scale': 2.0,
                              'frames': described['frames'], 'points': described['points']}}
    return export_and_bundle(scene.net, out_dir / 'bundle', localizer_type='scene_coordinates',
                             input_spec=InputSpec(name='image', height=H, width=W), output_names=['coords', 'log_scale'],
                             metadata=metadata, measure_latency=False,
                             extra_files={name: out_dir / 'keyframes' / name for name in (KEYFRAMES_NPZ, KEYFRAMES_INDEX)})


@pytest.fixture(scope='module')
def keyframe_bundle(tmp_path_factory: pytest.TempPathFactory, views: tuple) -> Path:
    return build_keyframe_bundle(tmp_path_factory.mktemp('kb'), views[0])


def test_plugin_poses_new_views_from_the_keyframe_map_and_can_turn_it_off(tmp_path: Path, keyframe_bundle: Path,
                                                                          views: tuple) -> None:
    """Through the registry as the node creates it (the running node: test_trained_localizers_node)."""
    from vizloc_ros.localizer import LocalizerConfig, LocalizerContext
    from vizloc_ros.plugin_manager import load_registry
    from vizloc_ros.types import CameraIntrinsics, Frame

    registry = load_registry().registry
    config = LocalizerConfig(name='aerial', type='scene_coordinates', bundle=str(keyframe_bundle), backend='onnxruntime')
    localizer = registry.create(config, {}, LocalizerContext(cache_dir=tmp_path / 'cache'))
    network_only = registry.create(config, {'keyframes': False}, LocalizerContext(cache_dir=tmp_path / 'cache'))
    try:
        for i, sample in enumerate(views[1]):
            frame = Frame(rgb_HW3=sample.rgb_HW3, stamp_ns=i, frame_id='camera',
                          camera=CameraIntrinsics(K=sample.K, width=KW, height=KH))
            result = localizer.localize(frame)
            assert result.status == 'ok' and result.diagnostics['source'] == 'keyframes', result.diagnostics
            assert np.linalg.norm(result.pose.T_map_camera[:3, 3] - sample.T_world_camera[:3, 3]) < 1.0
            assert int(result.diagnostics['keyframe_inliers']) >= 100 and result.geo is not None
            plain = network_only.localize(frame)
            assert 'keyframe_inliers' not in plain.diagnostics and plain.diagnostics['source'] in ('network', 'none')
    finally:
        localizer.close()
        network_only.close()


def test_large_maps_use_an_inverted_file_that_keeps_the_descriptors_exact(tmp_path: Path, views: tuple,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import vizloc_plugins.keyframes as keyframes_module

    mapping, new = views
    frames = [SimpleNamespace(rgb_HW3=s.rgb_HW3, K=s.K, T_world_camera=s.T_world_camera, name=s.name,
                              depth_HW=_depth(s), coords_3HW=None) for s in mapping]
    monkeypatch.setattr(keyframes_module, 'FLAT_MAX_POINTS', 1000)  # as a map of > 50 000 points would
    assert build_keyframe_map(frames, tmp_path, n_features=500)['index'] == 'ivf'
    keyframes = KeyframeMap(tmp_path / KEYFRAMES_NPZ, tmp_path / KEYFRAMES_INDEX, SceneKeyframes())
    # the index codes the uint8 SIFT values themselves: what it gives back is what was detected
    px, descs = keyframes_module.sift_features(cv2.cvtColor(mapping[0].rgb_HW3, cv2.COLOR_RGB2GRAY),
                                                   keyframes_module.sift_detector(500))
    _, kept = lift_pixels(px, mapping[0].K, mapping[0].T_world_camera, depth_HW=_depth(mapping[0]))
    rows = keyframes.frames.frame_rows(0)
    np.testing.assert_array_equal(keyframes.frames.index.reconstruct_batch(rows), descs[kept].astype(np.float32))
    sample = new[0]
    match = keyframes.match(cv2.cvtColor(sample.rgb_HW3, cv2.COLOR_RGB2GRAY), sample.K)
    assert match.solution is not None
    assert np.linalg.norm(match.solution.T_map_camera[:3, 3] - sample.T_world_camera[:3, 3]) < 1.0


def test_choose_place_groups_averages_and_settles_repeats_by_the_prior() -> None:
    """Hand-checked places: images 0-2 near the origin, 3 at (100, 0) (a repeated texture elsewhere)."""
    from vizloc_plugins.gps_regressor_contract import GPSKeyframes
    from vizloc_plugins.keyframes import choose_place

    settings = GPSKeyframes(covariance_scale=4.0)  # place radius 25 m, members with >= 0.3 x the head's inliers
    positions = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 20.0], [100.0, 0.0]])
    verified = [(0, 40), (1, 20), (2, 10), (3, 70)]  # image 2: 10 < 0.3 x 40 inliers, not a member of 0's place
    # no prior: the most summed inliers win: image 3's place (70, only itself) over image 0's (40 + 20)
    alone = choose_place(verified, positions, settings)
    np.testing.assert_allclose(alone.position_m, [100.0, 0.0])
    assert alone.used == 1 and not alone.rejected
    # covariance (min_inliers / inliers)^2 x covariance_scale = (15 / 70)^2 x 4
    np.testing.assert_allclose(alone.cov_m2, np.eye(2) * (15 / 70) ** 2 * 4.0)
    # a prior at the origin (sigma 10 m): image 3 is 10 sigma away, outside the 99.9 % gate; image 0's place
    # averages 0 and 1 by inliers times a Gaussian of 0.6 x 25 = 15 m about the head (image 0):
    # w1 = 20 e^(-(10 / 15)^2 / 2), (40 x 0 + w1 x 10) / (40 + w1) = 2.86 m east
    near = choose_place(verified, positions, settings, np.zeros(2), np.eye(2) * 100.0)
    w1 = 20.0 * math.exp(-0.5 * (10.0 / 15.0) ** 2)
    np.testing.assert_allclose(near.position_m, [10.0 * w1 / (40.0 + w1), 0.0])
    assert near.used == 2
    # a prior nowhere near any place: rejected, no position
    far = choose_place(verified, positions, settings, np.array([1000.0, 1000.0]), np.eye(2) * 100.0)
    assert far.position_m is None and far.rejected
    # nothing verified: no position, not rejected
    empty = choose_place([], positions, settings)
    assert empty.position_m is None and not empty.rejected


def test_track_grows_with_time_and_is_dropped_when_the_stamp_goes_back() -> None:
    from vizloc_plugins.keyframes import Track

    track = Track(sigma_m=2.0, speed_mps=10.0)
    assert track.prior(0) is None  # nothing published yet
    track.update(np.array([1.0, 2.0, 3.0]), 1_000_000_000)
    position, sigma_m = track.prior(1_500_000_000)  # 0.5 s later: 2 + 10 x 0.5 m
    np.testing.assert_allclose(position, [1.0, 2.0, 3.0])
    assert sigma_m == pytest.approx(7.0)
    assert track.prior(500_000_000) is None  # the stamp went back: dropped
    assert track.prior(2_000_000_000) is None
    track.update(np.zeros(2), 0)
    track.reset()
    assert track.prior(1) is None
    off = Track(sigma_m=2.0, speed_mps=0.0)
    off.update(np.zeros(2), 0)
    assert off.prior(1) is None


def _texture_place_map(tmp_path: Path, positions: list[tuple[float, float]]) -> Any:
    """A place map of crops of one texture, one per position (the tests hand their verification in), with
    covariance_scale 4."""
    from vizloc_plugins.gps_regressor_contract import GPSKeyframes
    from vizloc_plugins.keyframes import PlaceMap, build_place_map

    texture = _detailed_texture(512)
    build_place_map(((f'img{i}', texture[64 * i:64 * i + 256, 64 * i:64 * i + 256], p) for i, p in enumerate(positions)),
                    tmp_path, n_features=200)
    return PlaceMap(tmp_path / 'keyframes.npz', tmp_path / 'keyframes.faiss', GPSKeyframes(covariance_scale=4.0))


def test_place_hypotheses_hold_the_run_through_a_texture_repeated_elsewhere(tmp_path: Path) -> None:
    """Hand-checked run (10 Hz, track 10 m + 15 m/s, network prior at (50, 0) with sigma 60 m, which admits
    every place): images 0 and 1 at (0, 0) and (10, 0) are where the camera is; image 3 at (100, 0) wears a
    texture repeated there. In the frame that verifies only image 3, the single track (every place beyond its
    reach) lets the network choose and jumps to (100, 0); the place hypotheses keep (10, 0) best (image 3's
    place is born 5 below it and loses to the carried one), so the keyframes give no place and the frame is held
    at the last one, (10, 0); the next frames continue (10, 0), also when the network is far off."""
    from vizloc_plugins.keyframes import PlaceTracker

    places = _texture_place_map(tmp_path, [(0.0, 0.0), (10.0, 0.0), (0.0, 20.0), (100.0, 0.0)])
    network = (np.array([50.0, 0.0]), np.eye(2) * 60.0 ** 2)
    no_px, no_descs = np.zeros((0, 2)), np.zeros((0, 128), np.float32)
    run = [(0, [(0, 40)]), (100, [(3, 20), (1, 30)]), (200, [(3, 20)]), (300, [(1, 30)])]  # (ms, verified)
    single = PlaceTracker(places, track_sigma_m=10.0, track_speed_mps=15.0, chain_frames=0, hypotheses=1)
    several = PlaceTracker(places, track_sigma_m=10.0, track_speed_mps=15.0, chain_frames=0, hypotheses=5)
    got = {tracker: [tracker.choose(no_px, no_descs, verified, ms * 1_000_000, *network) for ms, verified in run]
           for tracker in (single, several)}
    for tracker, expected in ((single, [(0, 0), (10, 0), (100, 0), (10, 0)]),
                              (several, [(0, 0), (10, 0), (10, 0), (10, 0)])):
        for tracked, position in zip(got[tracker], expected):
            np.testing.assert_allclose(tracked.position_m, position)
    # the hypotheses' frame 2: no place of its own, held at frame 1's
    assert got[several][2].place.position_m is None and got[several][2].held is not None
    assert got[single][2].held is None
    assert [t.prior for t in got[several]] == ['network', 'track', 'track', 'track']
    # a network far off (its gate excludes every place) starts no hypothesis but does not stop the run's
    far_network = (np.array([1000.0, 1000.0]), np.eye(2) * 10.0 ** 2)
    np.testing.assert_allclose(several.choose(no_px, no_descs, [(1, 30)], 400_000_000, *far_network).position_m,
                               [10.0, 0.0])
    # frame 1's hypotheses: (10, 0) continues (0, 0) (sigma 10 + 15 x 0.1 m) with half the network's log density
    # there (40 m from its mean), (100, 0) is born 5 below the best with the network's density; the published
    # covariance is theirs as a mixture about (10, 0): each place's ((min_inliers / inliers)^2 x
    # covariance_scale) and the spread of (100, 0) weighted by e^score
    from vizloc_plugins.keyframes import HYPOTHESIS_NETWORK_WEIGHT

    sigma_m = 10.0 + 15.0 * 0.1
    near = (math.log(30) - 0.5 * HYPOTHESIS_NETWORK_WEIGHT * (40.0 / 60.0) ** 2 - 0.5 * (10.0 / sigma_m) ** 2
            - 2.0 * math.log(sigma_m / 10.0))
    far = 0.0 - 5.0 + math.log(20) - 0.5 * (50.0 / 60.0) ** 2
    w_far = 1.0 / (1.0 + math.exp(near - far))
    spread = w_far * np.diag([90.0 ** 2, 0.0])
    expected = (1 - w_far) * np.eye(2) * (15 / 30) ** 2 * 4.0 + w_far * np.eye(2) * (15 / 20) ** 2 * 4.0 + spread
    np.testing.assert_allclose(got[several][1].cov_m2, expected, rtol=1e-9)
    np.testing.assert_allclose(got[several][1].place.spread_m2, spread, rtol=1e-9)
    np.testing.assert_allclose(got[single][1].cov_m2, np.eye(2) * (15 / 30) ** 2 * 4.0)  # one place, no spread
    # the verified images named, most inliers first
    assert got[several][1].place.verified == (('img1', 30), ('img3', 20))
    # a stamp that goes back drops the hypotheses: the place is born again (the network's prior settles it)
    again = several.choose(no_px, no_descs, [(3, 20)], 50_000_000, *network)
    np.testing.assert_allclose(again.position_m, [100.0, 0.0])
    assert again.prior == 'network'
    several.reset()
    assert several.choose(no_px, no_descs, [(0, 40)], 0, *network).prior == 'network'
    with pytest.raises(ValueError, match='hypotheses'):
        PlaceTracker(places, track_sigma_m=10.0, track_speed_mps=15.0, chain_frames=0, hypotheses=0)


def test_a_hypothesis_missed_just_after_its_place_keeps_a_fading_image_of_evidence(tmp_path: Path) -> None:
    """Hand-checked: the camera at (10, 0) (image 1, 30 inliers), then one frame that verifies only image 3 at
    (100, 0) (100 inliers) inside the network's wide ellipse (mean (50, 0), sigma 60 m). Image 3's place is born
    at 0 - 5 + log 100 - (50 / 60)^2 / 2 = -0.75. 0.1 s after its place the run's hypothesis loses 1 but keeps
    log 15 x e^(-0.1 / 2) = 2.58 of a barely verified image: 1.58, so the frame is held at (10, 0) (without the
    carry, -1 < -0.75, it would jump 90 m). 10 s later the carry has faded to 0.02: -0.98, and the frame goes
    to (100, 0)."""
    from vizloc_plugins.keyframes import HYPOTHESIS_MISS_CARRY_S, PlaceTracker

    assert HYPOTHESIS_MISS_CARRY_S == pytest.approx(2.0)
    places = _texture_place_map(tmp_path, [(0.0, 0.0), (10.0, 0.0), (0.0, 20.0), (100.0, 0.0)])
    network = (np.array([50.0, 0.0]), np.eye(2) * 60.0 ** 2)
    no_px, no_descs = np.zeros((0, 2)), np.zeros((0, 128), np.float32)
    for later_ms, expected in ((100, (10.0, 0.0)), (10_000, (100.0, 0.0))):
        tracker = PlaceTracker(places, track_sigma_m=10.0, track_speed_mps=15.0, chain_frames=0, hypotheses=5)
        first = tracker.choose(no_px, no_descs, [(1, 30)], 0, *network)
        np.testing.assert_allclose(first.position_m, [10.0, 0.0])
        second = tracker.choose(no_px, no_descs, [(3, 100)], later_ms * 1_000_000, *network)
        np.testing.assert_allclose(second.position_m, expected)
        assert (second.held is not None) == (later_ms == 100)


def test_a_frame_nothing_places_is_held_at_the_last_place_until_the_network_is_sharper(tmp_path: Path) -> None:
    """Hand-checked run (track 10 m + 15 m/s, network prior at (50, 0) with sigma 60 m): image 0 at (0, 0) places
    the first frame; a frame 0.1 s later verifies nothing, and no recent frame can place it (no keypoints): it is
    held at (0, 0) with the place's covariance grown by (15 m/s x 0.1 s)^2 per axis, with one hypothesis or
    several. 4 s after the place the held covariance (60 m sigma) is no sharper than the network's: no
    position. A stamp going back, ``reset()`` and tracking off hold nothing."""
    from vizloc_plugins.keyframes import PlaceTracker

    places = _texture_place_map(tmp_path, [(0.0, 0.0), (10.0, 0.0)])
    network = (np.array([50.0, 0.0]), np.eye(2) * 60.0 ** 2)
    no_px, no_descs = np.zeros((0, 2)), np.zeros((0, 128), np.float32)
    place_cov = np.eye(2) * (15 / 40) ** 2 * 4.0  # (min_inliers / inliers)^2 x covariance_scale
    T0 = 1_000_000_000  # the first frame's stamp (ns)
    for hypotheses in (1, 5):
        tracker = PlaceTracker(places, track_sigma_m=10.0, track_speed_mps=15.0, chain_frames=5, hypotheses=hypotheses)
        placed = tracker.choose(no_px, no_descs, [(0, 40)], T0, *network)
        assert placed.held is None
        np.testing.assert_allclose(placed.position_m, [0.0, 0.0])
        held = tracker.choose(no_px, no_descs, [], T0 + 100_000_000, *network)
        assert held.place.position_m is None and held.chained is None and held.held is not None
        np.testing.assert_allclose(held.position_m, [0.0, 0.0])
        np.testing.assert_allclose(held.cov_m2, place_cov + np.eye(2) * (15.0 * 0.1) ** 2)
        assert held.held.age_s == pytest.approx(0.1) and held.held.inliers == 0
        # 15 m/s x 3.9 s = 58.5 m < 60 m: still held; 4.1 s: 61.5 m, the network is sharper
        assert tracker.choose(no_px, no_descs, [], T0 + 3_900_000_000, *network).held is not None
        late = tracker.choose(no_px, no_descs, [], T0 + 4_100_000_000, *network)
        assert late.position_m is None and late.held is None
        # without the other prior it stays held, however old
        assert tracker.choose(no_px, no_descs, [], T0 + 60_000_000_000).held is not None
        assert tracker.choose(no_px, no_descs, [], T0 // 2, *network).position_m is None  # the stamp went back
        tracker.choose(no_px, no_descs, [(0, 40)], 100_000_000_000, *network)
        tracker.reset()
        assert tracker.choose(no_px, no_descs, [], 100_100_000_000, *network).position_m is None
    off = PlaceTracker(places, track_sigma_m=10.0, track_speed_mps=0.0, chain_frames=5, hypotheses=1)
    off.choose(no_px, no_descs, [(0, 40)], 0, *network)
    assert off.choose(no_px, no_descs, [], 100_000_000, *network).position_m is None


def test_a_run_seen_through_another_lens_reads_its_places_at_the_lens_scale(tmp_path: Path) -> None:
    """Hand-checked: every frame verifies image 0 at (0, 0) (40 inliers, log-scale 0.3) and image 1 at (10, 0)
    (30 inliers, 0.1): one place whose images see the frame 0.214 larger on average, as a camera with a
    longer lens would. For the first LENS_SCALE_MIN_FRAMES places the place is read at scale 0 (the fit
    moves it 5.44 m off the images' weighted mean: weights 0.625 / 0.375, mean scale 0.225, slope
    -0.469 / (0.00938 + SCALE_RIDGE) = -24.2 m per unit of log-scale; the same images at scales 1.3 and 1.1
    would move it 29.6 m, cut to SCALE_SHIFT_MAX_M); after that at the run's median scale, 0.214 (the
    images' inlier-weighted mean scale): 0.27 m from their weighted mean, whose scale (weights also a Gaussian of
    15 m about image 0) is 0.225. A run whose places' median scale (0.046) lies within the dead band keeps
    reading at 0; ``reset()`` forgets the lens."""
    from vizloc_plugins.gps_regressor_contract import GPSKeyframes
    from vizloc_plugins.keyframes import (LENS_SCALE_DEADBAND, LENS_SCALE_MIN_FRAMES, PLACE_HEAD_SIGMA,
                                          SCALE_SHIFT_MAX_M, Overlap, PlaceTracker, scale_aligned_position)

    places = _texture_place_map(tmp_path, [(0.0, 0.0), (10.0, 0.0)])
    network = (np.array([50.0, 0.0]), np.eye(2) * 60.0 ** 2)
    no_px, no_descs = np.zeros((0, 2)), np.zeros((0, 128), np.float32)
    lens = [Overlap(0, 40, 0.3), Overlap(1, 30, 0.1)]
    mean_scale = (40 * 0.3 + 30 * 0.1) / 70
    assert mean_scale > LENS_SCALE_DEADBAND
    sigma_m = PLACE_HEAD_SIGMA * GPSKeyframes().place_radius_m
    assert sigma_m == pytest.approx(15.0)
    w1 = 30 * math.exp(-0.5 * (10.0 / sigma_m) ** 2)
    mean_m = np.array([w1 * 10.0 / (40 + w1), 0.0])
    at_zero = scale_aligned_position(lens, places.positions_FD, head_sigma_m=sigma_m)
    assert np.linalg.norm(at_zero - mean_m) == pytest.approx(5.443, abs=1e-3)
    assert SCALE_SHIFT_MAX_M < 29.6
    far = scale_aligned_position([Overlap(0, 40, 1.3), Overlap(1, 30, 1.1)], places.positions_FD,
                                 head_sigma_m=sigma_m)
    assert np.linalg.norm(far - mean_m) == pytest.approx(SCALE_SHIFT_MAX_M)  # the cap
    at_lens = scale_aligned_position(lens, places.positions_FD, mean_scale, head_sigma_m=sigma_m)
    assert 0.2 < np.linalg.norm(at_lens - mean_m) < 0.35
    for hypotheses in (1, 5):
        tracker = PlaceTracker(places, track_sigma_m=10.0, track_speed_mps=15.0, chain_frames=0, hypotheses=hypotheses)
        run = [tracker.choose(no_px, no_descs, lens, i * 100_000_000, *network) for i in range(LENS_SCALE_MIN_FRAMES + 3)]
        for tracked in run[:LENS_SCALE_MIN_FRAMES]:
            np.testing.assert_allclose(tracked.position_m, at_zero)
            assert tracked.place.log_scale == pytest.approx(mean_scale)
        for tracked in run[LENS_SCALE_MIN_FRAMES:]:
            np.testing.assert_allclose(tracked.position_m, at_lens, atol=1e-9)
        assert tracker.lens_log_scale == pytest.approx(mean_scale)
        tracker.reset()
        assert tracker.lens_log_scale == 0.0
        np.testing.assert_allclose(tracker.choose(no_px, no_descs, lens, 0, *network).position_m, at_zero)
    near = [Overlap(0, 40, 0.08), Overlap(1, 30, 0.0)]  # mean scale 0.046: within the dead band
    tracker = PlaceTracker(places, track_sigma_m=10.0, track_speed_mps=15.0, chain_frames=0, hypotheses=5)
    run = [tracker.choose(no_px, no_descs, near, i * 100_000_000, *network) for i in range(LENS_SCALE_MIN_FRAMES + 3)]
    assert tracker.lens_log_scale == 0.0
    np.testing.assert_allclose(run[-1].position_m, scale_aligned_position(near, places.positions_FD,
                                                                          head_sigma_m=sigma_m))


def test_log_scale_is_how_much_larger_the_query_sees_the_matches() -> None:
    from vizloc_plugins.keyframes import log_scale

    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 300, (40, 2))
    rotation = np.array([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]])
    query = 1.5 * ref @ rotation.T + [20.0, -7.0]  # the same points seen 1.5 x larger, turned and moved
    assert log_scale(query, ref) == pytest.approx(math.log(1.5), abs=1e-9)
    assert log_scale(ref, query) == pytest.approx(-math.log(1.5), abs=1e-9)
    assert log_scale(query[:2], ref[:2]) == 0.0  # one pair: no scale
    many = rng.uniform(0, 300, (400, 2))  # more matches than it reads (100, evenly spaced): the same scale
    assert log_scale(0.8 * many, many) == pytest.approx(math.log(0.8), abs=1e-9)


def test_places_are_read_at_the_query_scale_between_their_images(tmp_path: Path) -> None:
    """Rendered views straight down onto the textured plane from 80, 100 and 130 m (the map images) and from
    110 m (the query), as a camera 8, 10 and 13 m and 11 m in front of a facade (positions in tenths of the
    height: the images are those of a facade 10 x nearer with a texture 10 x finer). The query sees what it
    shares with each map image scaled by their distances' ratio, also when it is filmed at twice the map's
    resolution with the same lens; the place's position, its images fitted against those scales and read at
    the query's, lies nearer 11 m than the images' inlier-weighted mean."""
    from vizloc_plugins.gps_regressor_contract import GPSKeyframes
    from vizloc_plugins.keyframes import KEYFRAMES_INDEX, KEYFRAMES_NPZ, PlaceMap, build_place_map, places_of
    from test_scene_coordinates import _render

    texture = _detailed_texture()

    def view(height_m: float, zoom: int = 1) -> np.ndarray:
        K = np.array([[0.8 * KW * zoom, 0.0, KW * zoom / 2], [0.0, 0.8 * KW * zoom, KH * zoom / 2], [0.0, 0.0, 1.0]])
        T = np.eye(4)
        T[:3, :3] = transforms3d.euler.euler2mat(math.pi, 0.0, 0.3, 'sxyz')
        T[:3, 3] = [200.0, 200.0, height_m]
        return cv2.cvtColor(_render(texture, K, T, KW * zoom, KH * zoom)[0], cv2.COLOR_RGB2GRAY)

    heights = [80.0, 100.0, 130.0]
    build_place_map(((f'h{h:.0f}', view(h), (h / 10.0, 0.0)) for h in heights), tmp_path, n_features=500)
    places = PlaceMap(tmp_path / KEYFRAMES_NPZ, tmp_path / KEYFRAMES_INDEX, GPSKeyframes(covariance_scale=1.0))
    np.testing.assert_array_equal(places.sides_F, [KW, KW, KW])
    for zoom in (1, 2):  # 320x240 like the map images, and 640x480
        overlaps = places.verify(view(110.0, zoom))
        assert sorted(o.frame for o in overlaps) == [0, 1, 2]
        for o in overlaps:
            # half a percent of scale per pixel of error on points ~100 px apart; 0.05 is ten times that
            assert o.log_scale == pytest.approx(math.log(heights[o.frame] / 110.0), abs=0.05)
        place = max(places_of(overlaps, places.positions_FD, places.settings), key=lambda p: len(p.members))
        assert len(place.members) == 3
        weights = np.array([o.inliers for o in place.members], float)
        mean_m = weights @ places.positions_FD[[o.frame for o in place.members]] / weights.sum()
        assert abs(place.position_m[0] - 11.0) < 0.5 * abs(mean_m[0] - 11.0)
        assert place.position_m[1] == pytest.approx(0.0, abs=1e-9)
    # a map written before the images' sides were kept still loads; its scales are in pixels
    with np.load(tmp_path / KEYFRAMES_NPZ) as data:
        np.savez_compressed(tmp_path / KEYFRAMES_NPZ, **{k: data[k] for k in data.files if k != 'sides_F'})
    older = PlaceMap(tmp_path / KEYFRAMES_NPZ, tmp_path / KEYFRAMES_INDEX, GPSKeyframes(covariance_scale=1.0))
    assert older.sides_F is None
    same_size = {o.frame: o.log_scale for o in places.verify(view(110.0))}
    assert {o.frame: o.log_scale for o in older.verify(view(110.0))} == pytest.approx(same_size, abs=0.01)


def _level_camera(yaw_rad: float) -> np.ndarray:
    """Rotation (3, 3) of a level camera's optical frame (x right, y down, z forward) into east/north/up at a
    heading of ``yaw_rad`` (its forward axis counter-clockwise from east)."""
    forward = np.array([math.cos(yaw_rad), math.sin(yaw_rad), 0.0])
    right = np.array([math.sin(yaw_rad), -math.cos(yaw_rad), 0.0])
    return np.stack([right, np.array([0.0, 0.0, -1.0]), forward], axis=1)


def _street(cameras: list[tuple[tuple[float, float], float]], focal_px: float, seed: int = 0,
            depths: list[np.ndarray] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Keypoints (pixels in a 320 x 240 image, 0.3 px of noise) and descriptors of 800 points on facades 20-40 m
    north of the street, seen by level cameras 1.6 m up at ((east, north), heading) each: every point has its
    own random SIFT-like descriptor (a camera sees it with +-2 of noise), so Lowe's ratio test matches it
    exactly (the essential matrices are what is tested, not SIFT). ``depths`` gets each camera's keypoints' true
    depths."""
    rng = np.random.default_rng(seed)
    points = np.stack([rng.uniform(-40, 40, 800), rng.uniform(20, 40, 800), rng.uniform(0, 8, 800)], axis=1)
    descriptors = rng.uniform(0, 120, (800, 128)).astype(np.float32)
    K = np.array([[focal_px, 0, 160.0], [0, focal_px, 120.0], [0, 0, 1]])
    out = []
    for (east, north), yaw in cameras:
        R = _level_camera(yaw)
        X = (points - [east, north, 1.6]) @ R  # camera coordinates
        seen = X[:, 2] > 1.0
        px = (X[seen] @ K.T)[:, :2] / X[seen][:, 2:3]
        inside = (px[:, 0] >= 0) & (px[:, 0] < 320) & (px[:, 1] >= 0) & (px[:, 1] < 240)
        if depths is not None:
            depths.append(X[seen][inside, 2])
        px = px[inside] + rng.normal(0, 0.3, (int(inside.sum()), 2))
        descs = np.clip(descriptors[seen][inside] + rng.uniform(-2, 2, (int(inside.sum()), 128)), 0, None)
        out.append((px.astype(np.float32), descs.astype(np.float32)))
    return out


def test_map_images_are_oriented_from_their_positions_and_rays_place_a_query_beside_them(tmp_path: Path) -> None:
    """Nine level cameras 1.5 m apart along a street (headings 65-115 deg, a 65 deg field of view: focal length
    0.785 x the 320 px side), facades to the north. Each sees its neighbours 25-65 deg off its optical axis, where
    a wrong focal length bends the directions (a camera facing square to its neighbours sees them at 90 deg whatever
    the focal length: the search cannot choose). From their keypoints and positions alone the map finds the
    focal length (within one step of its search grid, 1.2^(1/4) = 4.7 %) and every heading within the
    agreement tolerance (ORIENT_AGREE_DEG: a heading is the mean of neighbours' estimates that agree that well;
    sideways baselines of 1.5 m at 20-40 m give a few degrees per pair). A query 6 m off the street, where no map
    image stands, verifies several map images; each sees its camera at the true bearing (within that tolerance
    plus 3 deg), and the place moves from the images' scale-aligned position toward where the rays cross, as far
    as the prior weight lets it (against the rays' weakest direction from the true bearings, Cauchy-weighted)."""
    from vizloc_plugins.gps_regressor_contract import GPSKeyframes
    from vizloc_plugins.keyframes import (ORIENT_AGREE_DEG, RAY_PRIOR_WEIGHT, RAY_SCALE_M, Overlap, PlaceMap,
                                          orient_images, places_of,
                                          ray_refined_position, scale_aligned_position, write_place_map)

    focal_side = 0.5 / math.tan(math.radians(65.0) / 2.0)
    yaws = np.radians([90.0 + 25.0 * (-1) ** i for i in range(9)])
    positions = np.array([[-6.0 + 1.5 * i, 0.0] for i in range(9)])
    cameras = [(tuple(p), y) for p, y in zip(positions, yaws)]
    query_at, query_yaw = np.array([1.0, 6.0]), math.radians(95.0)
    *mapped, query = _street(cameras + [(tuple(query_at), query_yaw)], focal_side * 320)

    found = orient_images([px for px, _ in mapped], [d for _, d in mapped], positions, np.tile([160.0, 120.0], (9, 1)),
                          np.full(9, 320.0))
    assert abs(math.log(found.focal_side / focal_side)) < math.log(1.2) / 4
    assert np.all(np.isfinite(found.yaws_F))
    heading_errors = np.degrees(np.angle(np.exp(1j * (found.yaws_F - yaws))))
    np.testing.assert_allclose(heading_errors, 0.0, atol=ORIENT_AGREE_DEG)

    write_place_map([f'img{i}' for i in range(9)], [px for px, _ in mapped], [d for _, d in mapped], positions,
                    np.full(9, 320), np.tile([160.0, 120.0], (9, 1)), tmp_path)
    places = PlaceMap(tmp_path / KEYFRAMES_NPZ, tmp_path / KEYFRAMES_INDEX, GPSKeyframes(covariance_scale=1.0))
    assert places.oriented and places.focal_side == pytest.approx(found.focal_side)
    verified = places.verify_features(*query, (240, 320))
    assert len(verified) >= 4
    # the candidates verified on VERIFY_THREADS threads: the overlaps one thread gives, in the same order
    assert places._pool is not None

    def flat(overlaps: list[Overlap]) -> np.ndarray:
        return np.array([(*o[:6], *o.depth_east_north_m, o.depth_points) for o in overlaps], dtype=np.float64)

    with PlaceMap(tmp_path / KEYFRAMES_NPZ, tmp_path / KEYFRAMES_INDEX, places.settings, threads=1) as one:
        np.testing.assert_array_equal(flat(one.verify_features(*query, (240, 320))), flat(verified))
    places.close()  # the threads stop; verifying goes on, on the calling thread
    np.testing.assert_array_equal(flat(places.verify_features(*query, (240, 320))), flat(verified))
    with pytest.raises(ValueError, match='threads'):
        PlaceMap(tmp_path / KEYFRAMES_NPZ, tmp_path / KEYFRAMES_INDEX, places.settings, threads=0)
    for o in verified:
        truth = query_at - positions[o.frame]
        error = np.angle(np.exp(1j * (o.bearing_rad - math.atan2(truth[1], truth[0]))))
        assert abs(math.degrees(error)) < ORIENT_AGREE_DEG + 3.0
        # the query sees the map image's camera at its bearing minus its own heading (the same essential matrices,
        # no heading's error in it, but the focal length found only to one search step), and the map image's
        # heading turned by the rotation between them is the query's heading
        seen_error = np.angle(np.exp(1j * (o.seen_rad - (math.atan2(-truth[1], -truth[0]) - query_yaw))))
        assert abs(math.degrees(seen_error)) < ORIENT_AGREE_DEG
        heading_error = np.angle(np.exp(1j * (o.heading_rad - query_yaw)))
        assert abs(math.degrees(heading_error)) < ORIENT_AGREE_DEG + 3.0
    members = tuple(verified)
    base = scale_aligned_position(members, places.positions_FD)
    refined = ray_refined_position(base, members, places.positions_FD)
    weights = np.array([o.inliers for o in members], float) / sum(o.inliers for o in members)
    normals = np.array([(-math.sin(a), math.cos(a)) for a in
                        (math.atan2(*(query_at - positions[o.frame])[::-1]) for o in members)])
    weakest = float(np.linalg.eigvalsh((normals * weights[:, None]).T @ normals)[0])
    # the prior's pull: its weight against the rays' weakest direction, each ray down-weighted by the Cauchy
    # weight at the distance d the refined position keeps from the crossing (a fixed point, from above), plus
    # the rays' own scatter (3 deg at ~8 m: 0.4 m)
    d = far = float(np.linalg.norm(base - query_at))
    for _ in range(50):
        d = RAY_PRIOR_WEIGHT / (RAY_PRIOR_WEIGHT + weakest / (1.0 + (d / RAY_SCALE_M) ** 2)) * far + 0.4
    assert np.linalg.norm(refined - query_at) <= d
    assert np.linalg.norm(refined - query_at) < np.linalg.norm(base - query_at) - 1.0
    # places_of refines every place so
    best = max(places_of(verified, places.positions_FD, places.settings), key=lambda p: p.inliers_sum)
    assert np.linalg.norm(best.position_m - query_at) < np.linalg.norm(base - query_at) - 1.0
    # one ray, or none (a map without headings, a plain (frame, inliers) pair): the position is not moved
    lone = (members[0], Overlap(members[1].frame, members[1].inliers, members[1].log_scale))
    np.testing.assert_array_equal(ray_refined_position(base, lone, places.positions_FD), base)
    # a wrong ray among them (a heading 40 deg off) moves the place by less than a metre
    wrong = members + (Overlap(members[0].frame, members[0].inliers, 0.0, members[0].bearing_rad + 0.7),)
    assert np.linalg.norm(ray_refined_position(base, wrong, places.positions_FD) - refined) < 1.0
    # an altitude is kept
    with3 = np.c_[places.positions_FD, np.full(9, 300.0)]
    np.testing.assert_allclose(ray_refined_position(np.r_[base, 301.0], members, with3), np.r_[refined, 301.0])


def test_ray_refined_position_is_where_the_rays_cross_pulled_toward_the_prior() -> None:
    """Hand-checked: two rays of equal inliers, east from (0, 0) and north from (5, -5), cross at (5, 0). From
    there the position does not move; from (5, 2) only its north moves (the east ray's normal), to the
    fixed point of 0.25 (y - 2) + 0.5 y r(y) = 0 with the Cauchy weight r(y) = 1 / (1 + (y / 3)^2)."""
    from vizloc_plugins.keyframes import RAY_PRIOR_WEIGHT, RAY_SCALE_M, Overlap, ray_refined_position

    positions = np.array([[0.0, 0.0], [5.0, -5.0]])
    members = (Overlap(0, 30, 0.0, 0.0), Overlap(1, 30, 0.0, math.pi / 2))
    np.testing.assert_allclose(ray_refined_position(np.array([5.0, 0.0]), members, positions), [5.0, 0.0], atol=1e-12)
    moved = ray_refined_position(np.array([5.0, 2.0]), members, positions)
    assert moved[0] == pytest.approx(5.0, abs=1e-12)
    y = moved[1]
    residual = RAY_PRIOR_WEIGHT * (y - 2.0) + 0.5 * y / (1.0 + (y / RAY_SCALE_M) ** 2)
    assert abs(residual) < 1e-3  # converged within the reweighting rounds
    assert 0.0 < y < 2.0 * RAY_PRIOR_WEIGHT / (RAY_PRIOR_WEIGHT + 0.5) + 0.1


def test_ray_refined_position_resects_the_query_from_the_angles_it_sees_its_images_at() -> None:
    """Six map images without headings 10 m around a query (every 60 deg) whose heading (20 deg, one of the
    RAY_YAW_STEPS tried) nobody knows; the query sees each at its true bearing minus that heading. From a prior
    6 m off, the position lands where every ray passes through the truth: at the true heading the rays'
    information is 0.5 x identity (equal weights 1/6, normals evenly around), so the prior pulls it from the
    truth by at most RAY_PRIOR_WEIGHT / (RAY_PRIOR_WEIGHT + 0.5 x the Cauchy weight at that distance) of its
    6 m; every other heading leaves the rays apart. Any one angle 40 or 115 deg wrong (the essential matrix's
    tail) leaves it nearer the truth than half the prior's offset; one angle alone (or none) moves nothing; two
    leave an arc that a heading from headed images (Overlap.heading_rad) settles."""
    from vizloc_plugins.keyframes import (RAY_HEADING_SCALE_DEG, RAY_PRIOR_WEIGHT, RAY_SCALE_M, RAY_YAW_STEPS, Overlap,
                                          ray_refined_position)

    truth = np.array([3.0, -2.0])
    around = np.radians([90.0, 30.0, -30.0, -90.0, -150.0, 150.0])
    positions = truth + 10.0 * np.c_[np.cos(around), np.sin(around)]
    heading = -math.pi + 110 * 2.0 * math.pi / RAY_YAW_STEPS  # 20 deg, on the grid of headings tried
    seen = [math.atan2(*(p - truth)[::-1]) - heading for p in positions]
    members = tuple(Overlap(i, 30, 0.0, math.nan, a) for i, a in enumerate(seen))
    prior = truth + np.array([6.0, 0.0])
    found = ray_refined_position(prior, members, positions)
    d = 6.0
    for _ in range(50):  # the fixed point of the prior's pull against the Cauchy-weighted rays
        d = RAY_PRIOR_WEIGHT / (RAY_PRIOR_WEIGHT + 0.5 / (1.0 + (d / RAY_SCALE_M) ** 2)) * 6.0
    assert np.linalg.norm(found - truth) <= d + 1e-6
    for i in range(len(members)):
        for error_rad in (0.7, -0.7, 2.0):
            wrong = tuple(m._replace(seen_rad=m.seen_rad + error_rad) if j == i else m for j, m in enumerate(members))
            assert np.linalg.norm(ray_refined_position(prior, wrong, positions) - truth) < 3.0
    lone = (members[0], Overlap(1, 30))
    np.testing.assert_array_equal(ray_refined_position(prior, lone, positions), prior)
    # two angles (60 deg apart: the rays' information has 0.5 (1 - cos 60 deg) = 0.25 in its weakest direction)
    # leave an arc, every heading its crossing, and the prior picks the point on it nearest itself; the heading
    # headed images give the query picks the crossing, within the prior's pull plus the heading term's Cauchy
    # scale at 10 m: 10 m x tan(RAY_HEADING_SCALE_DEG)
    d_two = 6.0
    for _ in range(50):
        d_two = RAY_PRIOR_WEIGHT / (RAY_PRIOR_WEIGHT + 0.25 / (1.0 + (d_two / RAY_SCALE_M) ** 2)) * 6.0
    reach = d_two + 10.0 * math.tan(math.radians(RAY_HEADING_SCALE_DEG))
    two = members[:2]
    assert np.linalg.norm(ray_refined_position(prior, two, positions) - truth) > reach
    headed = tuple(m._replace(heading_rad=heading) for m in two)
    assert np.linalg.norm(ray_refined_position(prior, headed, positions) - truth) < reach


def test_map_images_give_metric_depth_and_place_a_query_far_behind_them(tmp_path: Path) -> None:
    """The street of nine map images (1.5 m apart, facades 20-40 m north) and a query 15 m behind them, where
    their positions' scales and rays say little about the distance. The pairs of map images triangulate their
    keypoints with the distance between their positions as the baseline: their median depth is the true one within
    one step of the focal-length search (4.7 %: a wrong focal length scales triangulated depths about as much) plus
    the pixel noise's share (0.3 px over the shortest 1.5 m baseline at 40 m: 1.3 %). One pair's depths are off
    together by its relative rotation's error (0.1-0.5 deg with USAC's local optimisation, against the 9 px
    disparity of a 40 m point over 1.5 m: up to 23 %), less after the median over a keypoint's pairs; so each
    verified map image puts the query's camera where its depths and the essential matrix with the query say within
    25 % of its ~16 m offset plus what its heading's error turns the offset, and the place, the members' weighted
    median, within the median depth's 6 % plus the largest heading error."""
    from vizloc_plugins.gps_regressor_contract import GPSKeyframes
    from vizloc_plugins.keyframes import (DEPTH_AGREE_M, DEPTH_MOVE_MAX_M, Overlap, PlaceMap, depth_refined_position,
                                          orient_images, places_of, write_place_map)

    focal_side = 0.5 / math.tan(math.radians(65.0) / 2.0)
    yaws = np.radians([90.0 + 25.0 * (-1) ** i for i in range(9)])
    positions = np.array([[-6.0 + 1.5 * i, 0.0] for i in range(9)])
    query_at, query_yaw = np.array([1.0, -15.0]), math.radians(95.0)
    true_depths: list[np.ndarray] = []
    *mapped, query = _street([(tuple(p), y) for p, y in zip(positions, yaws)] + [(tuple(query_at), query_yaw)],
                             focal_side * 320, depths=true_depths)
    found = orient_images([px for px, _ in mapped], [d for _, d in mapped], positions, np.tile([160.0, 120.0], (9, 1)),
                          np.full(9, 320.0))
    truth = np.concatenate(true_depths[:9])
    known = np.isfinite(found.depths_N)
    assert found.depths_N.shape == truth.shape and known.mean() > 0.5
    assert abs(np.median(found.depths_N[known] / truth[known]) - 1.0) < 0.047 + 0.013

    write_place_map([f'img{i}' for i in range(9)], [px for px, _ in mapped], [d for _, d in mapped], positions,
                    np.full(9, 320), np.tile([160.0, 120.0], (9, 1)), tmp_path)
    places = PlaceMap(tmp_path / KEYFRAMES_NPZ, tmp_path / KEYFRAMES_INDEX, GPSKeyframes(covariance_scale=1.0))
    np.testing.assert_allclose(places.depths_N, found.depths_N, rtol=1e-6)  # stored as float32
    bad = tmp_path / 'bad'  # depths that do not fit the keypoints are an error
    bad.mkdir()
    with np.load(tmp_path / KEYFRAMES_NPZ) as data:
        np.savez_compressed(bad / KEYFRAMES_NPZ, **{**{k: data[k] for k in data.files},
                                                    'depths_N': data['depths_N'][:-1]})
    (bad / KEYFRAMES_INDEX).write_bytes((tmp_path / KEYFRAMES_INDEX).read_bytes())
    with pytest.raises(KeyframeError, match='keypoint depths'):
        PlaceMap(bad / KEYFRAMES_NPZ, bad / KEYFRAMES_INDEX, GPSKeyframes())
    verified = places.verify_features(*query, (240, 320))
    with_depth = [o for o in verified if o.depth_points > 0]
    assert len(with_depth) >= 3
    heading_errors, offsets_m = [], []
    for o in with_depth:
        offsets_m.append(float(np.linalg.norm(query_at - positions[o.frame])))
        heading_errors.append(abs(float(np.angle(np.exp(1j * (places.yaws_F[o.frame] - yaws[o.frame]))))))
        assert np.linalg.norm(np.array(o.depth_east_north_m) - query_at) < offsets_m[-1] * (heading_errors[-1] + 0.25)
    best = max(places_of(verified, places.positions_FD, places.settings), key=lambda p: p.inliers_sum)
    assert np.linalg.norm(best.position_m - query_at) < max(offsets_m) * (max(heading_errors) + 0.06)

    # what moves a place and what does not: one member with a depth, members that disagree, a move too far
    a, b = Overlap(0, 30, depth_east_north_m=(0.0, -15.0), depth_points=10), Overlap(1, 30)
    start = np.array([0.0, -10.0, 120.0])  # an altitude is kept
    np.testing.assert_array_equal(depth_refined_position(start, (a, b)), start)
    c = Overlap(1, 30, depth_east_north_m=(0.0, -16.0), depth_points=30)
    np.testing.assert_allclose(depth_refined_position(start, (a, c)), [0.0, -16.0, 120.0])  # the weighted median
    apart = Overlap(1, 30, depth_east_north_m=(0.0, -15.0 - 3.0 * DEPTH_AGREE_M), depth_points=10)
    d = Overlap(2, 30, depth_east_north_m=(0.0, -15.0 + 3.0 * DEPTH_AGREE_M), depth_points=10)
    np.testing.assert_array_equal(depth_refined_position(start, (apart, d)), start)
    far = np.array([0.0, -15.0 + DEPTH_MOVE_MAX_M + 1.0, 120.0])
    np.testing.assert_array_equal(depth_refined_position(far, (a, c)), far)
