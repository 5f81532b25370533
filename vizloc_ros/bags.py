"""rosbag2 reading and writing with the ``rosbags`` library (no rosbag2 / rclpy needed).

Three layers:

* :class:`BagWriter` - a context manager that writes a rosbag2 directory (``sqlite3`` or ``mcap``
  storage) atomically: everything goes to a hidden temporary directory next to the target, which
  is renamed into place only when the writer closes without error (and removed otherwise).
* :func:`read_messages` / :func:`read_raw_messages` / :func:`bag_info` - generic readers that turn
  every storage or metadata problem into a :class:`BagError` naming the bag (and, for message
  errors, the index of the message that failed).
* :func:`write_evaluation_bag` / :func:`read_evaluation_bag` - the evaluation-bag topic contract
  (see ``docs/bags.md``): camera images, camera_info and ground truth, all stamped with the image
  stamp.

Message types come from the rosbags ``ros2_kilted`` type store (identical wire format to Humble,
Jazzy and Kilted for every type used here); messages are serialised with
``typestore.serialize_cdr``.
"""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import struct
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Iterable, Iterator, Literal

import numpy as np
import transforms3d
from rosbags.interfaces import Connection, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

from vizloc_ros.types import CameraIntrinsics, InvalidInputError

__all__ = [
    'BagError',
    'BagWriter',
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
    'RawMessage',
    'TopicQos',
    'bag_info',
    'read_evaluation_bag',
    'read_messages',
    'read_raw_messages',
    'typestore',
    'write_evaluation_bag',
]

logger = logging.getLogger(__name__)

IMAGE_TOPIC = '/camera/image_raw'
COMPRESSED_IMAGE_TOPIC = '/camera/image_raw/compressed'
CAMERA_INFO_TOPIC = '/camera/camera_info'
FIX_TOPIC = '/ground_truth/fix'
POSE_TOPIC = '/ground_truth/pose'
ROOM_TOPIC = '/ground_truth/room'

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

STORAGES: tuple[str, ...] = ('sqlite3', 'mcap')
_STORAGE_PLUGINS = {'sqlite3': StoragePlugin.SQLITE3, 'mcap': StoragePlugin.MCAP}

#: rosbag2 metadata version written by default. Version 8 stores offered QoS profiles as a YAML
#: string with numeric enums, which every rosbag2 from Humble to Kilted reads; version 9
#: (Jazzy+) stores them as a list with named enums.
DEFAULT_METADATA_VERSION: Literal[8, 9] = 8

#: Messages of one evaluation sample are paired when their stamps are equal; a sample is complete
#: once the bag time has moved this far past its image stamp.
_PAIRING_WINDOW_NS = 1_000_000_000

_TYPESTORE: Typestore | None = None


class BagError(RuntimeError):
    """A bag that cannot be written or read (missing, corrupt, truncated, wrong contents).

    The message names the bag path and, where known, the message index at which reading failed.
    """


def typestore() -> Typestore:
    """The rosbags type store used for every bag written and read here (ROS 2 Kilted)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        _TYPESTORE = get_typestore(Stores.ROS2_KILTED)
    return _TYPESTORE


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicQos:
    """Offered QoS recorded in the bag for one topic (what ``ros2 bag play`` offers on replay).

    The default - reliable, volatile, keep-last 10 - is what a default rclcpp/rclpy publisher
    offers and what ``ros2 bag record`` stores for it.
    """

    reliable: bool = True
    transient_local: bool = False
    depth: int = 10

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise InvalidInputError(f'QoS depth must be >= 1, got {self.depth}')

    def to_rosbags(self) -> Qos:
        zero = QosTime(0, 0)  # 0 = RMW default = infinite deadline / lifespan / lease
        return Qos(
            history=QosHistory.KEEP_LAST,
            depth=self.depth,
            reliability=QosReliability.RELIABLE if self.reliable else QosReliability.BEST_EFFORT,
            durability=QosDurability.TRANSIENT_LOCAL if self.transient_local else QosDurability.VOLATILE,
            deadline=zero,
            lifespan=zero,
            liveliness=QosLiveliness.AUTOMATIC,
            liveliness_lease_duration=zero,
            avoid_ros_namespace_conventions=False,
        )


class BagWriter:
    """Write a rosbag2 directory atomically.

    >>> with BagWriter('out.bag', storage='mcap') as bag:          # doctest: +SKIP
    ...     bag.add_topic('/chatter', 'std_msgs/msg/String')
    ...     bag.write('/chatter', String(data='hi'), timestamp_ns=1)

    The bag is written under a hidden temporary directory next to ``path`` and renamed to
    ``path`` when the context exits normally; on an exception the temporary directory is removed
    and nothing appears at ``path``. ``path`` must not exist unless ``overwrite=True`` (then it is
    replaced only after the new bag is complete).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        storage: str = 'sqlite3',
        metadata_version: Literal[8, 9] = DEFAULT_METADATA_VERSION,
        overwrite: bool = False,
    ) -> None:
        if storage not in _STORAGE_PLUGINS:
            raise InvalidInputError(f'storage must be one of {STORAGES}, got {storage!r}')
        if metadata_version not in (8, 9):
            raise InvalidInputError(f'metadata_version must be 8 or 9, got {metadata_version!r}')
        self.path = Path(path)
        self.storage = storage
        self.metadata_version = metadata_version
        self.overwrite = overwrite
        self._tmp_root: Path | None = None
        self._writer: Writer | None = None
        self._connections: dict[str, Connection] = {}
        self.message_counts: dict[str, int] = {}

    # context management -------------------------------------------------------------------
    def open(self) -> 'BagWriter':
        if self._writer is not None:
            raise BagError(f'{self.path}: writer is already open')
        if self.path.exists() and not self.overwrite:
            raise BagError(f'{self.path} exists already; not overwriting (pass overwrite=True)')
        parent = self.path.parent
        # The bag directory keeps its final name inside a hidden temp dir, so the storage file
        # names recorded in metadata.yaml (<name>.db3 / <name>.mcap) stay right after the rename.
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._tmp_root = Path(tempfile.mkdtemp(prefix=f'.{self.path.name}.partial-', dir=parent))
        except OSError as exc:
            raise BagError(f'{self.path}: cannot create the bag directory: {exc}') from exc
        writer = Writer(
            self._tmp_root / self.path.name,
            version=self.metadata_version,
            storage_plugin=_STORAGE_PLUGINS[self.storage],
        )
        try:
            writer.open()
        except (WriterError, OSError) as exc:
            self._remove_tmp()
            raise BagError(f'{self.path}: cannot open bag for writing: {exc}') from exc
        self._writer = writer
        return self

    def close(self) -> Path:
        """Finish the bag (index, metadata.yaml) and move it into place; returns the bag path."""
        writer = self._require_open()
        tmp_root = self._tmp_root
        if tmp_root is None:
            raise BagError(f'{self.path}: writer has no temporary directory')
        try:
            writer.close()
        except (WriterError, OSError, sqlite3.Error) as exc:
            self.abort()
            raise BagError(f'{self.path}: cannot finish bag: {exc}') from exc
        self._writer = None
        built = tmp_root / self.path.name
        try:
            if self.path.is_dir():  # overwrite=True: replace only now that the new bag is whole
                shutil.rmtree(self.path)
            elif self.path.exists():
                self.path.unlink()
            built.rename(self.path)
        except OSError as exc:
            self._remove_tmp()
            raise BagError(f'{self.path}: cannot move finished bag into place: {exc}') from exc
        self._remove_tmp()
        logger.info('wrote %s (%s, %d messages)', self.path, self.storage, sum(self.message_counts.values()))
        return self.path

    def abort(self) -> None:
        """Discard everything written so far."""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.abort()
            except (WriterError, OSError, sqlite3.Error) as exc:
                logger.debug('ignoring error while aborting %s: %s', self.path, exc)
        self._remove_tmp()

    def __enter__(self) -> 'BagWriter':
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def _remove_tmp(self) -> None:
        tmp, self._tmp_root = self._tmp_root, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    def _require_open(self) -> Writer:
        if self._writer is None:
            raise BagError(f'{self.path}: writer is not open')
        return self._writer

    # topics and messages ------------------------------------------------------------------
    def add_topic(self, topic: str, msgtype: str, *, qos: TopicQos = TopicQos()) -> None:
        """Declare ``topic`` with ROS 2 type ``msgtype`` (``pkg/msg/Name``) and its offered QoS."""
        writer = self._require_open()
        if topic in self._connections:
            raise BagError(f'{self.path}: topic {topic} added twice')
        if msgtype not in typestore().fielddefs:
            raise InvalidInputError(f'unknown message type {msgtype!r} (not in the ROS 2 Kilted type store)')
        self._connections[topic] = writer.add_connection(
            topic,
            msgtype,
            typestore=typestore(),
            serialization_format='cdr',
            offered_qos_profiles=[qos.to_rosbags()],
        )
        self.message_counts[topic] = 0

    def write(self, topic: str, msg: object, timestamp_ns: int) -> None:
        """Serialise a rosbags message object (CDR, little endian) and record it at ``timestamp_ns``."""
        connection = self._connection(topic)
        self.write_raw(topic, typestore().serialize_cdr(msg, connection.msgtype), timestamp_ns)

    def write_raw(self, topic: str, cdr: bytes | memoryview, timestamp_ns: int) -> None:
        """Record already serialised CDR bytes at bag time ``timestamp_ns``."""
        connection = self._connection(topic)
        if timestamp_ns < 0:
            raise InvalidInputError(f'bag timestamps must be >= 0 ns, got {timestamp_ns}')
        self._require_open().write(connection, int(timestamp_ns), cdr)
        self.message_counts[topic] += 1

    def _connection(self, topic: str) -> Connection:
        try:
            return self._connections[topic]
        except KeyError:
            raise BagError(f'{self.path}: topic {topic} was not added') from None


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

# What rosbags and the storage back ends raise for damaged bags.
_READ_ERRORS = (
    ReaderError, OSError, EOFError, sqlite3.Error, struct.error,
    KeyError, ValueError, TypeError, IndexError, OverflowError,
)


@dataclass(frozen=True)
class RawMessage:
    """One recorded message as stored: CDR bytes plus the topic's type and offered QoS."""

    topic: str
    msgtype: str
    timestamp_ns: int
    cdr: bytes
    offered_qos: tuple[Qos, ...] = ()


def _check_bag_path(path: Path) -> None:
    if not path.exists():
        raise BagError(f'{path}: no such bag')
    if path.is_dir() and not (path / 'metadata.yaml').is_file():
        raise BagError(f'{path}: not a rosbag2 directory (metadata.yaml is missing)')


def _open_reader(path: Path) -> Reader:
    _check_bag_path(path)
    try:
        reader = Reader(path)
        reader.open()
    except _READ_ERRORS as exc:
        raise BagError(f'{path}: cannot open bag: {exc}') from exc
    return reader


def _close_reader(reader: Reader, path: Path) -> None:
    try:
        reader.close()
    except _READ_ERRORS as exc:
        logger.debug('ignoring error while closing %s: %s', path, exc)


def read_raw_messages(
    path: str | os.PathLike[str],
    topics: Iterable[str] | None = None,
    *,
    start_ns: int | None = None,
) -> Iterator[RawMessage]:
    """Yield the bag's messages in bag-time order as :class:`RawMessage` (undecoded CDR).

    ``topics`` restricts to those topics (a topic not in the bag is an error); ``start_ns``
    skips messages recorded before that bag time. Raises :class:`BagError` for a missing, corrupt
    or truncated bag, naming the message index reached.
    """
    bag = Path(path)
    reader = _open_reader(bag)
    try:
        connections = list(reader.connections)
        if topics is not None:
            wanted = list(topics)
            present = {c.topic for c in connections}
            missing = [t for t in wanted if t not in present]
            if missing:
                raise BagError(f'{bag}: topics {missing} not in bag (it has {sorted(present)})')
            connections = [c for c in connections if c.topic in wanted]
        if not connections:
            return
        index = 0
        iterator = reader.messages(connections=connections, start=start_ns)
        while True:
            try:
                connection, timestamp, data = next(iterator)
            except StopIteration:
                break
            except _READ_ERRORS as exc:
                raise BagError(f'{bag}: corrupt or truncated bag at message index {index}: {exc}') from exc
            qos = tuple(getattr(connection.ext, 'offered_qos_profiles', ()) or ())
            yield RawMessage(connection.topic, connection.msgtype, int(timestamp), bytes(data), qos)
            index += 1
    finally:
        _close_reader(reader, bag)


def read_messages(
    path: str | os.PathLike[str],
    topics: Iterable[str] | None = None,
    *,
    start_ns: int | None = None,
) -> Iterator[tuple[str, str, int, Any]]:
    """Yield ``(topic, msgtype, timestamp_ns, msg)`` with ``msg`` deserialised by rosbags."""
    store = typestore()
    bag = Path(path)
    for index, raw in enumerate(read_raw_messages(bag, topics, start_ns=start_ns)):
        try:
            msg = store.deserialize_cdr(raw.cdr, raw.msgtype)
        except KeyError as exc:
            raise BagError(f'{bag}: message type {raw.msgtype} of {raw.topic} is unknown to the type store') from exc
        except (SerdeError, ValueError, struct.error, IndexError, OverflowError) as exc:
            raise BagError(f'{bag}: cannot decode message index {index} on {raw.topic} ({raw.msgtype}): {exc}') from exc
        yield raw.topic, raw.msgtype, raw.timestamp_ns, msg


def _storage_of(path: Path) -> str:
    if path.is_dir():
        files = [p.suffix for p in path.iterdir()]
        if '.mcap' in files:
            return 'mcap'
        if '.db3' in files:
            return 'sqlite3'
        return 'unknown'
    return {'.mcap': 'mcap', '.db3': 'sqlite3'}.get(path.suffix, 'unknown')


def bag_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary of a bag from its metadata: storage, counts, start/duration, topics with types and QoS."""
    bag = Path(path)
    reader = _open_reader(bag)
    try:
        count = int(reader.message_count)
        topics = {
            name: {
                'type': info.msgtype,
                'count': int(info.msgcount),
                'offered_qos': [
                    {
                        'reliability': q.reliability.name.lower(),
                        'durability': q.durability.name.lower(),
                        'history': q.history.name.lower(),
                        'depth': int(q.depth),
                    }
                    for c in info.connections
                    for q in getattr(c.ext, 'offered_qos_profiles', ()) or ()
                ],
            }
            for name, info in reader.topics.items()
        }
        start_ns = int(reader.start_time) if count else 0
        end_ns = int(reader.end_time) - 1 if count else 0
        return {
            'path': str(bag),
            'storage': _storage_of(bag),
            'message_count': count,
            'start_ns': start_ns,
            'end_ns': end_ns,
            'duration_s': (end_ns - start_ns) / 1e9 if count else 0.0,
            'topics': topics,
        }
    except _READ_ERRORS as exc:
        raise BagError(f'{bag}: cannot read bag metadata: {exc}') from exc
    finally:
        _close_reader(reader, bag)


# --------------------------------------------------------------------------------------------
# Evaluation bags
# --------------------------------------------------------------------------------------------


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


def _stamp(store: Typestore, stamp_ns: int) -> Any:
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return store.types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec)


def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _header(store: Typestore, stamp_ns: int, frame_id: str) -> Any:
    return store.types['std_msgs/msg/Header'](stamp=_stamp(store, stamp_ns), frame_id=frame_id)


def _camera_info_msg(store: Typestore, sample: EvalSample) -> Any:
    cam = sample.camera
    P = np.zeros((3, 4))
    P[:3, :3] = cam.K
    roi = store.types['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return store.types['sensor_msgs/msg/CameraInfo'](
        header=_header(store, sample.stamp_ns, sample.frame_id),
        height=cam.height,
        width=cam.width,
        distortion_model=cam.distortion_model,
        d=np.asarray(cam.D, dtype=np.float64),
        k=cam.K.reshape(9).astype(np.float64),
        r=np.eye(3).reshape(9),
        p=P.reshape(12),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


def _image_msg(store: Typestore, sample: EvalSample, compressed: bool) -> Any:
    header = _header(store, sample.stamp_ns, sample.frame_id)
    if compressed:
        import cv2

        bgr = np.ascontiguousarray(sample.rgb_HW3[:, :, ::-1])
        ok, jpeg = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise BagError(f'cannot JPEG-encode image at stamp {sample.stamp_ns}')
        # image_transport's compressed format string: "<original encoding>; jpeg compressed <jpeg colour>".
        return store.types['sensor_msgs/msg/CompressedImage'](
            header=header, format='rgb8; jpeg compressed bgr8', data=np.frombuffer(jpeg.tobytes(), dtype=np.uint8)
        )
    height, width = sample.rgb_HW3.shape[:2]
    return store.types['sensor_msgs/msg/Image'](
        header=header,
        height=height,
        width=width,
        encoding='rgb8',
        is_bigendian=0,
        step=width * 3,
        data=np.ascontiguousarray(sample.rgb_HW3).reshape(-1),
    )


def _fix_msg(store: Typestore, sample: EvalSample, fix_lla: tuple[float, float, float]) -> Any:
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


def _pose_msg(store: Typestore, sample: EvalSample, T: np.ndarray, map_frame: str) -> Any:
    w, x, y, z = transforms3d.quaternions.mat2quat(T[:3, :3])
    types = store.types
    pose = types['geometry_msgs/msg/Pose'](
        position=types['geometry_msgs/msg/Point'](x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
        orientation=types['geometry_msgs/msg/Quaternion'](x=float(x), y=float(y), z=float(z), w=float(w)),
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
    import cv2

    if hasattr(msg, 'format'):  # CompressedImage
        bgr = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise BagError(f'{bag}: compressed image at stamp {stamp_ns} ({msg.format!r}) cannot be decoded')
        return np.ascontiguousarray(bgr[:, :, ::-1])
    from rosbags.image import image_to_cvimage

    try:
        image = image_to_cvimage(msg, 'rgb8')
    except (ValueError, TypeError, KeyError) as exc:  # unsupported encoding / wrong buffer size
        raise BagError(
            f'{bag}: image at stamp {stamp_ns} ({msg.encoding}, {msg.width}x{msg.height}) cannot be converted: {exc}'
        ) from exc
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.dtype != np.uint8:
        raise BagError(f'{bag}: image at stamp {stamp_ns} has non-8-bit encoding {msg.encoding}')
    return np.ascontiguousarray(image)


def _camera_from_info(msg: Any) -> CameraIntrinsics:
    return CameraIntrinsics(
        K=np.asarray(msg.k, dtype=np.float64).reshape(3, 3),
        width=int(msg.width),
        height=int(msg.height),
        D=np.asarray(msg.d, dtype=np.float64),
        distortion_model=str(msg.distortion_model) or 'plumb_bob',
    )


def _pose_matrix(msg: Any) -> np.ndarray:
    q = msg.pose.orientation
    T = np.eye(4)
    T[:3, :3] = transforms3d.quaternions.quat2mat([q.w, q.x, q.y, q.z])
    p = msg.pose.position
    T[:3, 3] = [p.x, p.y, p.z]
    return T


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
            stamp = _stamp_ns(msg.header.stamp)
            entry = part(stamp)
            entry['image'] = _decode_image(msg, bag, stamp)
            entry['frame_id'] = str(msg.header.frame_id) or 'camera'
            last_image_stamp[:] = [stamp]
        elif topic == CAMERA_INFO_TOPIC:
            try:
                camera = _camera_from_info(msg)
            except InvalidInputError as exc:
                raise BagError(f'{bag}: invalid camera_info at bag time {timestamp}: {exc}') from exc
            cameras[_stamp_ns(msg.header.stamp)] = camera
            latest_camera[:] = [camera]
        elif topic == FIX_TOPIC:
            part(_stamp_ns(msg.header.stamp))['fix'] = (float(msg.latitude), float(msg.longitude), float(msg.altitude))
        elif topic == POSE_TOPIC:
            part(_stamp_ns(msg.header.stamp))['pose'] = _pose_matrix(msg)
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
