"""The evaluation-bag contract: which topics an evaluation bag holds and how its ground truth pairs
with the images (``docs/bags.md``). Bag I/O itself is :mod:`vizloc_ros.bags`; message conversion
(stamps, CameraInfo checks, images, poses) is :mod:`vizloc_ros.conversions`, the same code the node
runs on live messages.

* :class:`EvalSample` - one frame: image, intrinsics and whatever ground truth exists for it.
* :func:`write_evaluation_bag` / :func:`read_evaluation_bag` - camera images, camera_info and ground
  truth, every message stamped with the image stamp.
* :func:`find_evaluation_bag` - a dataset's ``eval_bag`` (or the legacy ``eval.bag``).
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .bags import BagError, BagWriter, bag_info, read_messages, typestore
from .conversions import (JPEG_FORMAT, camera_info_matrices, encode_jpeg, frame_from_msg, intrinsics_from_camera_info,
                          matrix_from_pose, ns_to_stamp, stamp_to_ns)
from .geodesy import quaternion_xyzw_from_matrix
from .types import CameraIntrinsics, InvalidInputError

__all__ = [
    'EVAL_BAG_NAME',
    'LEGACY_EVAL_BAG_NAME',
    'EvalSample',
    'find_evaluation_bag',
    'IMAGE_TOPIC',
    'COMPRESSED_IMAGE_TOPIC',
    'CAMERA_INFO_TOPIC',
    'FIX_TOPIC',
    'POSE_TOPIC',
    'ROOM_TOPIC',
    'GROUND_TRUTH_TOPICS',
    'read_evaluation_bag',
    'write_evaluation_bag',
]

logger = logging.getLogger(__name__)

IMAGE_TOPIC = '/camera/image_raw'
COMPRESSED_IMAGE_TOPIC = '/camera/image_raw/compressed'
CAMERA_INFO_TOPIC = '/camera/camera_info'
FIX_TOPIC = '/ground_truth/fix'
POSE_TOPIC = '/ground_truth/pose'
ROOM_TOPIC = '/ground_truth/room'
GROUND_TRUTH_TOPICS = (FIX_TOPIC, POSE_TOPIC, ROOM_TOPIC)

#: Directory name of a dataset's evaluation bag (``DIR/eval_bag/``). Not ``eval.bag``: rosbags'
#: AnyReader (which evo and other tools build on) takes any path ending in ``.bag`` for a ROS 1 bag
#: and refuses a rosbag2 directory of that name. Datasets written before keep working:
#: :func:`find_evaluation_bag` also finds the old ``eval.bag``.
EVAL_BAG_NAME = 'eval_bag'
LEGACY_EVAL_BAG_NAME = 'eval.bag'


def find_evaluation_bag(dataset: str | os.PathLike[str]) -> Path | None:
    """``dataset/eval_bag`` if it exists, else the legacy ``dataset/eval.bag``, else None."""
    root = Path(dataset)
    for name in (EVAL_BAG_NAME, LEGACY_EVAL_BAG_NAME):
        if (root / name).is_dir():
            return root / name
    return None


#: Messages of one evaluation sample are paired when their stamps are equal; a sample is complete
#: once the bag time has moved this far past its image stamp.
_PAIRING_WINDOW_NS = 1_000_000_000


@dataclass(frozen=True)
class EvalSample:
    """One evaluation frame: image, calibration and whatever ground truth exists for it.

    ``fix_lla`` is WGS84 (lat_deg, lon_deg, ellipsoidal alt_m; alt may be NaN);
    ``T_map_camera`` is the 4x4 camera-to-map transform (camera optical frame); ``room`` a label.
    """

    stamp_ns: int
    rgb_HW3: np.ndarray
    camera: CameraIntrinsics
    frame_id: str = 'camera'
    fix_lla: tuple[float, float, float] | None = None
    T_map_camera: np.ndarray | None = field(default=None)
    room: str | None = None

    def __post_init__(self) -> None:
        image = self.rgb_HW3
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InvalidInputError(
                f'rgb_HW3 must be uint8 HxWx3, got shape {getattr(image, "shape", None)} '
                f'dtype {getattr(image, "dtype", type(image).__name__)}'
            )
        if (self.camera.width, self.camera.height) != (image.shape[1], image.shape[0]):
            raise InvalidInputError(
                f'camera is {self.camera.width}x{self.camera.height} but the image is {image.shape[1]}x{image.shape[0]}'
            )
        if self.stamp_ns < 0:
            raise InvalidInputError(f'stamp_ns must be >= 0, got {self.stamp_ns}')
        if self.fix_lla is not None:
            lat, lon, alt = (float(v) for v in self.fix_lla)
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
                raise InvalidInputError(f'impossible fix lat={lat} lon={lon}')
            object.__setattr__(self, 'fix_lla', (lat, lon, alt))
        if self.T_map_camera is not None:
            T = np.asarray(self.T_map_camera, dtype=np.float64)
            if T.shape != (4, 4) or not np.all(np.isfinite(T)):
                raise InvalidInputError(f'T_map_camera must be a finite 4x4 matrix, got shape {T.shape}')
            object.__setattr__(self, 'T_map_camera', T)


def _header(store: Any, stamp_ns: int, frame_id: str) -> Any:
    return store.types['std_msgs/msg/Header'](stamp=ns_to_stamp(stamp_ns, store.types['builtin_interfaces/msg/Time']),
                                              frame_id=frame_id)


def _camera_info_msg(store: Any, sample: EvalSample) -> Any:
    cam = sample.camera
    roi = store.types['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return store.types['sensor_msgs/msg/CameraInfo'](
        header=_header(store, sample.stamp_ns, sample.frame_id), height=cam.height, width=cam.width,
        distortion_model=cam.distortion_model, binning_x=0, binning_y=0, roi=roi, **camera_info_matrices(cam))


def _image_msg(store: Any, sample: EvalSample, compressed: bool) -> Any:
    header = _header(store, sample.stamp_ns, sample.frame_id)
    if compressed:
        try:
            jpeg = encode_jpeg(sample.rgb_HW3, quality=95)
        except InvalidInputError as exc:
            raise BagError(f'cannot JPEG-encode image at stamp {sample.stamp_ns}: {exc}') from exc
        return store.types['sensor_msgs/msg/CompressedImage'](header=header, format=JPEG_FORMAT, data=jpeg)
    height, width = sample.rgb_HW3.shape[:2]
    return store.types['sensor_msgs/msg/Image'](
        header=header, height=height, width=width, encoding='rgb8', is_bigendian=0, step=width * 3,
        data=np.ascontiguousarray(sample.rgb_HW3).reshape(-1))


def _fix_msg(store: Any, sample: EvalSample, fix_lla: tuple[float, float, float]) -> Any:
    lat, lon, alt = fix_lla
    status_cls = store.types['sensor_msgs/msg/NavSatStatus']
    fix_cls = store.types['sensor_msgs/msg/NavSatFix']
    return fix_cls(
        header=_header(store, sample.stamp_ns, sample.frame_id),
        status=status_cls(status=status_cls.STATUS_FIX, service=status_cls.SERVICE_GPS),
        latitude=lat,
        longitude=lon,
        altitude=alt,
        position_covariance=np.zeros(9),
        position_covariance_type=fix_cls.COVARIANCE_TYPE_UNKNOWN,
    )


def _pose_msg(store: Any, sample: EvalSample, T: np.ndarray, map_frame: str) -> Any:
    x, y, z, w = (float(v) for v in quaternion_xyzw_from_matrix(T[:3, :3]))
    types = store.types
    pose = types['geometry_msgs/msg/Pose'](
        position=types['geometry_msgs/msg/Point'](x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
        orientation=types['geometry_msgs/msg/Quaternion'](x=x, y=y, z=z, w=w),
    )
    return types['geometry_msgs/msg/PoseStamped'](header=_header(store, sample.stamp_ns, map_frame), pose=pose)


def write_evaluation_bag(
    path: str | os.PathLike[str],
    samples: Iterable[EvalSample],
    *,
    storage: str = 'sqlite3',
    compressed: bool = False,
    map_frame: str = 'map',
    overwrite: bool = False,
) -> Path:
    """Write evaluation samples as a rosbag2 (topic contract in ``docs/bags.md``); returns the path.

    Every message of a sample - image, camera_info and the ground truth it has - carries the
    image stamp in its header and is recorded at that bag time (``/ground_truth/room`` is a
    ``std_msgs/String`` without header: it is paired with the image by bag time). Ground-truth
    topics are declared only when at least one sample has that kind of ground truth.
    """
    store = typestore()
    image_topic = COMPRESSED_IMAGE_TOPIC if compressed else IMAGE_TOPIC
    image_type = 'sensor_msgs/msg/CompressedImage' if compressed else 'sensor_msgs/msg/Image'
    declared: set[str] = set()
    count = 0
    with BagWriter(path, storage=storage, overwrite=overwrite) as bag:
        bag.add_topic(image_topic, image_type)
        bag.add_topic(CAMERA_INFO_TOPIC, 'sensor_msgs/msg/CameraInfo')

        def ensure(topic: str, msgtype: str) -> None:
            if topic not in declared:
                bag.add_topic(topic, msgtype)
                declared.add(topic)

        for sample in samples:
            if not isinstance(sample, EvalSample):
                raise InvalidInputError(f'samples must be EvalSample, got {type(sample).__name__}')
            t = sample.stamp_ns
            bag.write(image_topic, _image_msg(store, sample, compressed), t)
            bag.write(CAMERA_INFO_TOPIC, _camera_info_msg(store, sample), t)
            if sample.fix_lla is not None:
                ensure(FIX_TOPIC, 'sensor_msgs/msg/NavSatFix')
                bag.write(FIX_TOPIC, _fix_msg(store, sample, sample.fix_lla), t)
            if sample.T_map_camera is not None:
                ensure(POSE_TOPIC, 'geometry_msgs/msg/PoseStamped')
                bag.write(POSE_TOPIC, _pose_msg(store, sample, sample.T_map_camera, map_frame), t)
            if sample.room is not None:
                ensure(ROOM_TOPIC, 'std_msgs/msg/String')
                bag.write(ROOM_TOPIC, store.types['std_msgs/msg/String'](data=sample.room), t)
            count += 1
        if count == 0:
            raise InvalidInputError('no samples to write')
    return Path(path)


def _decode_image(msg: Any, bag: Path, stamp_ns: int) -> np.ndarray:
    """The RGB image of an Image / CompressedImage, converted as the node converts it (a writable copy)."""
    try:
        return np.array(frame_from_msg(msg).rgb_HW3)
    except InvalidInputError as exc:
        raise BagError(f'{bag}: image at stamp {stamp_ns} cannot be converted: {exc}') from exc


def read_evaluation_bag(path: str | os.PathLike[str]) -> Iterator[EvalSample]:
    """Yield the evaluation samples of a bag written by :func:`write_evaluation_bag` (or recorded
    to the same contract), in image-stamp order.

    Pairing: ``camera_info``, ``fix`` and ``pose`` are matched to the image with the same header
    stamp (camera_info falls back to the latest one received); ``room`` (no header) to the image
    recorded at the same bag time, else to the latest earlier image. ``/camera/image_raw`` is
    used when present, else ``/camera/image_raw/compressed``.
    """
    bag = Path(path)
    info = bag_info(bag)
    topics = info['topics']
    if IMAGE_TOPIC in topics:
        image_topic = IMAGE_TOPIC
    elif COMPRESSED_IMAGE_TOPIC in topics:
        image_topic = COMPRESSED_IMAGE_TOPIC
    else:
        raise BagError(f'{bag}: no {IMAGE_TOPIC} or {COMPRESSED_IMAGE_TOPIC} topic (topics: {sorted(topics)})')
    wanted = [t for t in (image_topic, CAMERA_INFO_TOPIC, FIX_TOPIC, POSE_TOPIC, ROOM_TOPIC) if t in topics]

    pending: OrderedDict[int, dict[str, Any]] = OrderedDict()  # image stamp -> parts
    cameras: dict[int, CameraIntrinsics] = {}
    latest_camera: list[CameraIntrinsics] = []
    last_image_stamp: list[int] = []

    def part(stamp: int) -> dict[str, Any]:
        return pending.setdefault(stamp, {})

    def handle(topic: str, timestamp: int, msg: Any) -> None:
        if topic == image_topic:
            stamp = stamp_to_ns(msg.header.stamp)
            entry = part(stamp)
            entry['image'] = _decode_image(msg, bag, stamp)
            entry['frame_id'] = str(msg.header.frame_id) or 'camera'
            last_image_stamp[:] = [stamp]
        elif topic == CAMERA_INFO_TOPIC:
            try:
                camera = intrinsics_from_camera_info(msg)
            except InvalidInputError as exc:
                raise BagError(f'{bag}: invalid camera_info at bag time {timestamp}: {exc}') from exc
            cameras[stamp_to_ns(msg.header.stamp)] = camera
            latest_camera[:] = [camera]
        elif topic == FIX_TOPIC:
            part(stamp_to_ns(msg.header.stamp))['fix'] = (float(msg.latitude), float(msg.longitude), float(msg.altitude))
        elif topic == POSE_TOPIC:
            part(stamp_to_ns(msg.header.stamp))['pose'] = matrix_from_pose(msg.pose)
        elif topic == ROOM_TOPIC:
            if not last_image_stamp:
                logger.warning('%s: room %r at bag time %d precedes every image; dropped', bag, msg.data, timestamp)
                return
            part(last_image_stamp[0])['room'] = str(msg.data)

    def flush(before_ns: int | None) -> Iterator[EvalSample]:
        oldest_pending = next(iter(pending), None)
        for old in [s for s in cameras if oldest_pending is not None and s < oldest_pending]:
            del cameras[old]  # camera_info older than every pending image: only `latest` matters now
        while pending:
            stamp = next(iter(pending))
            if before_ns is not None and stamp > before_ns:
                return
            entry = pending.pop(stamp)
            if 'image' not in entry:
                logger.debug('%s: ground truth at stamp %d has no image; skipped', bag, stamp)
                continue
            camera = cameras.pop(stamp, None) or (latest_camera[0] if latest_camera else None)
            if camera is None:
                raise BagError(f'{bag}: no {CAMERA_INFO_TOPIC} for the image at stamp {stamp}')
            try:
                yield EvalSample(
                    stamp_ns=stamp,
                    rgb_HW3=entry['image'],
                    camera=camera,
                    frame_id=entry['frame_id'],
                    fix_lla=entry.get('fix'),
                    T_map_camera=entry.get('pose'),
                    room=entry.get('room'),
                )
            except InvalidInputError as exc:
                raise BagError(f'{bag}: inconsistent sample at stamp {stamp}: {exc}') from exc

    # Messages sharing one bag time are handled images first, so that a room string recorded at
    # the image's time pairs with that image whatever order the storage returns ties in.
    group: list[tuple[str, int, Any]] = []
    for topic, _msgtype, timestamp, msg in read_messages(bag, wanted):
        if group and timestamp != group[0][1]:
            for item in sorted(group, key=lambda g: g[0] != image_topic):
                handle(*item)
            group.clear()
            yield from flush(timestamp - _PAIRING_WINDOW_NS)
        group.append((topic, timestamp, msg))
    for item in sorted(group, key=lambda g: g[0] != image_topic):
        handle(*item)
    yield from flush(None)
