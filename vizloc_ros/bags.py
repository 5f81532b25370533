"""rosbag2 reading and writing with the ``rosbags`` library (no rosbag2 / rclpy needed).

Two layers here; what an *evaluation* bag holds (topics, ground truth, pairing) is
:mod:`vizloc_ros.eval_bag`:

* :class:`BagWriter` - a context manager that writes a rosbag2 directory (``sqlite3`` or ``mcap``
  storage) atomically: everything goes to a hidden temporary directory next to the target, which
  is renamed into place only when the writer closes without error (and removed otherwise).
* :func:`read_messages` / :func:`read_raw_messages` / :func:`bag_info` - generic readers that turn
  every storage or metadata problem into a :class:`BagError` naming the bag (and, for message
  errors, the index of the message that failed).

Message types come from the rosbags ``ros2_kilted`` type store (identical wire format to Humble,
Jazzy and Kilted for every type used here); messages are serialised with
``typestore.serialize_cdr``.

The evaluation-bag names (``EvalSample``, ``write_evaluation_bag``, ``read_evaluation_bag``,
``find_evaluation_bag``, ``EVAL_BAG_NAME``, the topic names...) are still importable from here for
existing code; they live in :mod:`vizloc_ros.eval_bag`.
"""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Iterable, Iterator, Literal

from rosbags.interfaces import Connection, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

from vizloc_ros.types import InvalidInputError

__all__ = [
    'BagError',
    'BagWriter',
    'RawMessage',
    'STORAGES',
    'TopicQos',
    'bag_info',
    'read_messages',
    'read_raw_messages',
    'typestore',
]

logger = logging.getLogger(__name__)

STORAGES: tuple[str, ...] = ('sqlite3', 'mcap')
_STORAGE_PLUGINS = {'sqlite3': StoragePlugin.SQLITE3, 'mcap': StoragePlugin.MCAP}

#: rosbag2 metadata version written by default. Version 8 stores offered QoS profiles as a YAML
#: string with numeric enums, which every rosbag2 from Humble to Kilted reads; version 9
#: (Jazzy+) stores them as a list with named enums.
DEFAULT_METADATA_VERSION: Literal[8, 9] = 8

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
