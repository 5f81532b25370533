"""``vizloc-replay``: publish a rosbag2 into a live ROS 2 graph without rosbag2 installed.

Where ``ros2 bag play`` exists, use it; this tool is for pip / minimal installs that have rclpy
but no rosbag2. Bags are read with ``rosbags`` (:mod:`vizloc_ros.bags`); every message is
published as the exact CDR bytes that were recorded (``Publisher.publish(bytes)``), on a
publisher of the message's rclpy class (``rosidl_runtime_py.utilities.get_message`` when
importable, else ``<pkg>.msg``), at the recorded timing scaled by ``rate``.

QoS follows ``ros2 bag play``: reliable unless some recorded publisher offered best effort,
transient-local only if every recorded publisher offered it, keep-last depth >= 10.
``--clock`` publishes ``/clock`` (rosgraph_msgs/Clock) at ``clock_hz`` and at every message, so
nodes with ``use_sim_time:=true`` follow bag time.

The logic is :func:`replay` (importable, returns a :class:`ReplaySummary`); :func:`main` is the
CLI shim.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Sequence

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosReliability

from vizloc_ros.bags import BagError, bag_info, read_raw_messages
from vizloc_ros.types import InvalidInputError

__all__ = ['ReplayError', 'ReplayOptions', 'ReplaySummary', 'replay', 'message_class', 'main']

logger = logging.getLogger(__name__)

CLOCK_TOPIC = '/clock'
_MIN_DEPTH = 10


class ReplayError(RuntimeError):
    """The bag cannot be replayed (no publishable topics, unknown remap source, ...)."""


@dataclass(frozen=True)
class ReplayOptions:
    """How to replay a bag.

    ``rate`` scales playback speed (2.0 = twice as fast); ``start_offset_s`` skips that many
    seconds from the start of the bag; ``topics`` restricts to those bag topics (``None`` = all);
    ``remaps`` renames topics on output as ``(from, to)`` pairs; ``delay_s`` waits before the
    first message; ``wait_for_subscribers_s`` waits up to that long for every output topic to
    have a subscriber (0 = do not wait); ``loop`` restarts at the end until stopped;
    ``domain_id`` overrides ``ROS_DOMAIN_ID``.
    """

    rate: float = 1.0
    clock: bool = False
    clock_hz: float = 40.0
    loop: bool = False
    remaps: tuple[tuple[str, str], ...] = ()
    topics: tuple[str, ...] | None = None
    start_offset_s: float = 0.0
    delay_s: float = 0.0
    wait_for_subscribers_s: float = 0.0
    node_name: str = 'vizloc_replay'
    domain_id: int | None = None

    def __post_init__(self) -> None:
        if not self.rate > 0.0:
            raise InvalidInputError(f'rate must be > 0, got {self.rate}')
        if not self.clock_hz > 0.0:
            raise InvalidInputError(f'clock_hz must be > 0, got {self.clock_hz}')
        for name in ('start_offset_s', 'delay_s', 'wait_for_subscribers_s'):
            if not getattr(self, name) >= 0.0:
                raise InvalidInputError(f'{name} must be >= 0, got {getattr(self, name)}')
        object.__setattr__(self, 'remaps', tuple((str(a), str(b)) for a, b in self.remaps))
        for src, dst in self.remaps:
            if not src.startswith('/') or not dst.startswith('/'):
                raise InvalidInputError(f'remaps need absolute topic names, got {src}:={dst}')
        if self.topics is not None:
            object.__setattr__(self, 'topics', tuple(self.topics))


@dataclass(frozen=True)
class ReplaySummary:
    """What a replay did. ``effective_rate`` = bag seconds played per wall second."""

    messages: int
    bag_duration_s: float
    wall_s: float
    loops: int
    per_topic: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def effective_rate(self) -> float:
        return self.bag_duration_s / self.wall_s if self.wall_s > 0 else 0.0

    def line(self) -> str:
        return (
            f'vizloc-replay: {self.messages} messages on {len(self.per_topic)} topics, '
            f'{self.bag_duration_s:.3f} s of bag time in {self.wall_s:.3f} s wall '
            f'(effective rate {self.effective_rate:.2f}x), {self.loops} loop(s)'
            + (', interrupted' if self.interrupted else '')
        )


def message_class(msgtype: str) -> type:
    """The rclpy message class of ``pkg/msg/Name`` (raises ``ImportError`` when not installed)."""
    try:
        from rosidl_runtime_py.utilities import get_message
    except ImportError:
        get_message = None
    if get_message is not None:
        try:
            return get_message(msgtype)
        except (AttributeError, ModuleNotFoundError, ValueError) as exc:
            raise ImportError(f'message type {msgtype} is not available: {exc}') from exc
    parts = msgtype.split('/')
    if len(parts) == 2:  # ROS 1 style 'pkg/Name'
        parts = [parts[0], 'msg', parts[1]]
    if len(parts) != 3:
        raise ImportError(f'not a ROS 2 message type name: {msgtype!r}')
    package, kind, name = parts
    module = importlib.import_module(f'{package}.{kind}')
    try:
        return getattr(module, name)
    except AttributeError:
        raise ImportError(f'{package}.{kind} has no message {name}') from None


def _qos_profile(offered: Sequence[Qos]) -> Any:
    """``ros2 bag play``'s adaptation of the recorded offered QoS to one publisher profile."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    known = [q for q in offered if q.reliability != QosReliability.UNKNOWN]
    reliable = all(q.reliability in (QosReliability.RELIABLE, QosReliability.SYSTEM_DEFAULT) for q in known)
    transient = bool(offered) and all(q.durability == QosDurability.TRANSIENT_LOCAL for q in offered)
    depths = [int(q.depth) for q in offered if q.history == QosHistory.KEEP_LAST]
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=max([_MIN_DEPTH, *depths]),
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient else DurabilityPolicy.VOLATILE,
    )


def _clock_msg(stamp_ns: int) -> Any:
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock

    return Clock(clock=Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000)))


def replay(
    bag: str | Path, options: ReplayOptions = ReplayOptions(), *, stop: threading.Event | None = None
) -> ReplaySummary:
    """Publish ``bag`` into the ROS graph (own rclpy context; ``ROS_DOMAIN_ID`` from the environment).

    Returns after the last message (or, with ``loop``, when ``stop`` is set). Raises
    :class:`~vizloc_ros.bags.BagError` for an unreadable bag and :class:`ReplayError` when nothing
    can be published.
    """
    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node
    from rclpy.qos import QoSProfile

    path = Path(bag)
    stop = stop or threading.Event()
    info = bag_info(path)
    bag_topics: dict[str, dict[str, Any]] = info['topics']
    wanted = list(options.topics) if options.topics is not None else sorted(bag_topics)
    missing = [t for t in wanted if t not in bag_topics]
    if missing:
        raise ReplayError(f'{path}: topics {missing} are not in the bag (it has {sorted(bag_topics)})')
    remap = dict(options.remaps)
    unknown = [src for src in remap if src not in bag_topics and src != CLOCK_TOPIC]
    if unknown:
        raise ReplayError(f'{path}: remap sources {unknown} are not bag topics (it has {sorted(bag_topics)})')

    classes: dict[str, type] = {}
    for topic in wanted:
        msgtype = bag_topics[topic]['type']
        try:
            classes[topic] = message_class(msgtype)
        except ImportError as exc:
            logger.warning('skipping %s: %s', topic, exc)
    if not classes:
        raise ReplayError(f'{path}: none of the topics {wanted} has an importable message type')
    if info['message_count'] == 0:
        raise ReplayError(f'{path}: the bag has no messages')

    start_ns = int(info['start_ns'] + round(options.start_offset_s * 1e9))
    context = Context()
    # args=[]: never parse sys.argv, where FROM:=TO would become a global ROS remap rule.
    rclpy.init(args=[], context=context, domain_id=options.domain_id)
    try:
        node = Node(options.node_name, context=context, start_parameter_services=False)
    except BaseException:
        rclpy.try_shutdown(context=context)
        raise
    per_topic = {topic: 0 for topic in classes}
    messages = 0
    loops = 0
    played_bag_ns = 0
    wall_start = time.monotonic()
    try:
        publishers = {}
        # Publishers offer what the recorded publishers offered (adapted as ros2 bag play does).
        offered = _offered_qos(path, list(classes))
        for topic, cls in classes.items():
            out = remap.get(topic, topic)
            publishers[topic] = node.create_publisher(cls, out, _qos_profile(offered.get(topic, ())))
            logger.info('publishing %s -> %s (%s)', topic, out, bag_topics[topic]['type'])
        clock_pub = None
        if options.clock:
            from rosgraph_msgs.msg import Clock

            clock_pub = node.create_publisher(Clock, remap.get(CLOCK_TOPIC, CLOCK_TOPIC), QoSProfile(depth=_MIN_DEPTH))

        if options.wait_for_subscribers_s > 0:
            waited = list(publishers.values()) + ([clock_pub] if clock_pub is not None else [])
            _wait_for_subscribers(waited, options.wait_for_subscribers_s, stop)
        if options.delay_s > 0:
            stop.wait(options.delay_s)

        clock_period = 1.0 / options.clock_hz
        wall_start = time.monotonic()
        while not stop.is_set():
            loop_wall0 = time.monotonic()
            first_ns: int | None = None
            last_ns = start_ns
            with closing(read_raw_messages(path, list(classes), start_ns=start_ns)) as stream:
                for raw in stream:
                    if first_ns is None:  # the schedule is anchored at the first message
                        first_ns = raw.timestamp_ns
                        loop_wall0 = time.monotonic()
                    target = loop_wall0 + (raw.timestamp_ns - first_ns) / 1e9 / options.rate
                    while not stop.is_set():
                        now = time.monotonic()
                        if now >= target:
                            break
                        if clock_pub is not None:
                            clock_pub.publish(_clock_msg(first_ns + int((now - loop_wall0) * options.rate * 1e9)))
                            stop.wait(min(clock_period, target - now))
                        else:
                            stop.wait(target - now)
                    if stop.is_set():
                        break
                    if clock_pub is not None:
                        clock_pub.publish(_clock_msg(raw.timestamp_ns))
                    publishers[raw.topic].publish(raw.cdr)
                    per_topic[raw.topic] += 1
                    messages += 1
                    last_ns = raw.timestamp_ns
            if first_ns is not None:
                played_bag_ns += last_ns - first_ns
            loops += 1
            if first_ns is None and not stop.is_set():
                raise ReplayError(f'{path}: no messages at or after start offset {options.start_offset_s} s')
            if not options.loop:
                break
        wall_s = time.monotonic() - wall_start
        _drain(publishers.values(), clock_pub)
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    return ReplaySummary(
        messages=messages,
        bag_duration_s=played_bag_ns / 1e9,
        wall_s=wall_s,
        loops=loops,
        per_topic={remap.get(t, t): n for t, n in per_topic.items()},
        interrupted=stop.is_set(),
    )


def _offered_qos(path: Path, topics: list[str]) -> dict[str, tuple[Qos, ...]]:
    """Recorded offered QoS per topic (from the bag's connections)."""
    from rosbags.rosbag2 import Reader, ReaderError

    try:
        with Reader(path) as reader:
            return {
                c.topic: tuple(getattr(c.ext, 'offered_qos_profiles', ()) or ())
                for c in reader.connections
                if c.topic in topics
            }
    except (ReaderError, OSError) as exc:
        raise BagError(f'{path}: cannot read topic QoS: {exc}') from exc


def _wait_for_subscribers(publishers: list[Any], timeout_s: float, stop: threading.Event) -> None:
    deadline = time.monotonic() + timeout_s
    while not stop.is_set():
        waiting = [p.topic_name for p in publishers if p.get_subscription_count() == 0]
        if not waiting:
            return
        if time.monotonic() >= deadline:
            logger.warning('no subscriber after %.1f s on %s; replaying anyway', timeout_s, waiting)
            return
        stop.wait(0.02)


def _drain(publishers: Any, clock_pub: Any, timeout_s: float = 2.0) -> None:
    """Give reliable subscribers the chance to receive the last messages before the node goes."""
    from rclpy.duration import Duration
    from rclpy.qos import ReliabilityPolicy

    for pub in [*publishers, *([clock_pub] if clock_pub is not None else [])]:
        if pub.qos_profile.reliability == ReliabilityPolicy.RELIABLE and pub.get_subscription_count() > 0:
            if not pub.wait_for_all_acked(Duration(seconds=timeout_s)):
                logger.warning('%s: not all messages acknowledged within %.1f s', pub.topic_name, timeout_s)


def _parse_remap(text: str) -> tuple[str, str]:
    src, sep, dst = text.partition(':=')
    if not sep or not src or not dst:
        raise argparse.ArgumentTypeError(f'remap must be FROM:=TO, got {text!r}')
    return src, dst


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='vizloc-replay',
        description='Publish a rosbag2 (sqlite3 or mcap) into the ROS 2 graph at its recorded timing. '
        'Use `ros2 bag play` where rosbag2 is installed.',
    )
    parser.add_argument('bag', type=Path, help='rosbag2 directory (or a single .mcap / .db3 file)')
    parser.add_argument('--rate', '-r', type=float, default=1.0, help='playback speed factor (default 1.0)')
    parser.add_argument('--clock', action='store_true', help='publish /clock for use_sim_time nodes')
    parser.add_argument('--clock-hz', type=float, default=40.0, help='/clock rate between messages (default 40)')
    parser.add_argument('--loop', '-l', action='store_true', help='restart at the end until interrupted')
    parser.add_argument('--remap', nargs='+', action='extend', type=_parse_remap, default=[], metavar='FROM:=TO',
                        help='rename output topics')
    parser.add_argument('--topics', nargs='+', default=None, metavar='TOPIC', help='only these bag topics')
    parser.add_argument('--start-offset', type=float, default=0.0, metavar='S', help='skip the first S seconds')
    parser.add_argument('--delay', type=float, default=0.0, metavar='S', help='wait S seconds before playing')
    parser.add_argument('--wait-for-subscribers', type=float, default=0.0, metavar='S',
                        help='wait up to S seconds for every topic to have a subscriber')
    parser.add_argument('--log-level', default='WARNING', choices=['DEBUG', 'INFO', 'WARNING', 'ERROR'])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format='%(levelname)s %(name)s: %(message)s')
    try:
        options = ReplayOptions(
            rate=args.rate,
            clock=args.clock,
            clock_hz=args.clock_hz,
            loop=args.loop,
            remaps=tuple(args.remap),
            topics=tuple(args.topics) if args.topics is not None else None,
            start_offset_s=args.start_offset,
            delay_s=args.delay,
            wait_for_subscribers_s=args.wait_for_subscribers,
        )
    except InvalidInputError as exc:
        print(f'vizloc-replay: {exc}', file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info('signal %d: stopping', signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = replay(args.bag, options, stop=stop)
    except (BagError, ReplayError) as exc:
        print(f'vizloc-replay: {exc}', file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(summary.line(), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
