"""What the node adds for fusion stacks and viewers beyond the extrinsic (test_fusion_config.py and
the frames tests cover that): rectified input uses P, a NO_FIX removes the localizer's markers, and
paths are kept per localizer."""
from __future__ import annotations

import numpy as np
import pytest
from geometry_msgs.msg import PoseWithCovarianceStamped

from vizloc_ros.frames import intrinsics_for_input
from vizloc_ros.types import CameraIntrinsics, InvalidInputError


def test_rectified_input_uses_p() -> None:
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    P = np.array([[450.0, 0, 330, 0], [0, 452, 235, 0], [0, 0, 1, 0]])
    distorted = CameraIntrinsics(K=K, width=640, height=480, D=np.array([-0.2, 0.05, 0, 0, 0]))
    assert intrinsics_for_input(distorted, P, rectified=False) is distorted  # raw image: K + D
    rect = intrinsics_for_input(distorted, P, rectified=True)
    np.testing.assert_array_equal(rect.K, P[:, :3]) and not rect.D.any()
    zero_d = CameraIntrinsics(K=K, width=640, height=480, D=np.zeros(5))
    np.testing.assert_array_equal(intrinsics_for_input(zero_d, P, rectified=False).K, P[:, :3])
    assert intrinsics_for_input(zero_d, np.zeros(12), rectified=False) is zero_d  # driver filled only K
    with pytest.raises(InvalidInputError, match='no projection matrix'):
        intrinsics_for_input(distorted, np.zeros(12), rectified=True)


def test_no_fix_deletes_markers_and_paths_are_per_localizer() -> None:
    from visualization_msgs.msg import Marker

    from vizloc_ros.conversions import ns_to_stamp
    from vizloc_ros.markers import PATH_PUBLISH_PERIOD_S, LocalizerPaths, delete_markers

    deleted = delete_markers('scene', ns_to_stamp(5), 'map')
    assert {(m.ns, m.id, m.action) for m in deleted.markers} == {('scene', i, Marker.DELETE) for i in (0, 1, 2)}
    paths = LocalizerPaths('map', 3)
    pose = PoseWithCovarianceStamped()
    pose.header.frame_id = 'map'
    assert paths.add('a', pose, now_s=0.0) is not None  # first pose of 'a': due
    assert paths.add('b', pose, now_s=0.0) is not None  # 'b' has its own path and period
    assert paths.add('a', pose, now_s=0.1) is None
    msg = paths.add('a', pose, now_s=PATH_PUBLISH_PERIOD_S + 0.01)
    assert msg is not None and len(msg.poses) == 3
    assert len(paths.add('b', pose, now_s=10.0).poses) == 2
