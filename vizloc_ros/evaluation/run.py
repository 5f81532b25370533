"""Run the node's localizers over an evaluation bag and collect their estimates.

Offline (:func:`run_offline`, deterministic): the bag is read with rosbags; the localizers are the
ones the node itself builds: a :class:`~vizloc_ros.node.VizlocNode` is constructed from the same
params file and *configured* (its own parameter parsing, plugin loading and localizer creation),
then every image goes through each localizer's ``localize`` in bag order, and the results become
the messages the node would publish (:func:`~vizloc_ros.conversions.navsatfix_from_result`,
:func:`~vizloc_ros.frames.base_pose_from_camera_pose` with the node's camera extrinsic,
:func:`~vizloc_ros.conversions.pose_msg_from_matrix`). No frame is dropped and nothing depends on timing.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..bags import BagError, bag_info, read_messages, read_raw_messages
from ..conversions import matrix_from_pose, stamp_to_ns
from ..eval_bag import (CAMERA_INFO_TOPIC, COMPRESSED_IMAGE_TOPIC, FIX_TOPIC, GROUND_TRUTH_TOPICS, IMAGE_TOPIC,
                        POSE_TOPIC, ROOM_TOPIC)
from ..frames import CameraExtrinsic
from ..types import InvalidInputError, ResultStatus

__all__ = ['EvalError', 'Estimate', 'EvalRun', 'GroundTruthSample', 'read_ground_truth', 'run_offline',
           'check_bag_topics', 'GROUND_TRUTH_TOPICS']

logger = logging.getLogger(__name__)


class EvalError(RuntimeError):
    """The evaluation cannot run (bag without the needed topics, params that configure nothing...)."""


@dataclass(frozen=True)
class GroundTruthSample:
    """Ground truth of one image stamp: camera optical-frame pose in map, WGS84 fix, room label."""

    stamp_ns: int
    T_map_camera: np.ndarray | None = None
    fix_lla: tuple[float, float, float] | None = None
    room: str | None = None


@dataclass
class Estimate:
    """What one localizer answered for one frame, as the node publishes it.

    ``status``: 'ok', 'no_fix', 'error' (the localizer raised or refused the frame; ``error`` says
    why) or 'waiting_camera_info'. ``T_map_base``/``cov_6x6`` are base_frame's pose in map (after
    the extrinsic); ``fix_lla``/``cov_enu_m2`` the published NavSatFix.
    """

    localizer: str
    stamp_ns: int
    status: str
    latency_ms: float = math.nan
    T_map_base: np.ndarray | None = None
    cov_6x6: np.ndarray | None = None
    fix_lla: tuple[float, float, float] | None = None
    cov_enu_m2: np.ndarray | None = None
    room: str | None = None
    error: str = ''
    #: (topic suffix, rclpy message) pairs as the node publishes them: ('fix', NavSatFix), ('pose', ...), ('room', String)
    messages: list[tuple[str, Any]] = field(default_factory=list)


@dataclass
class EvalRun:
    """Everything one evaluation produced (input to :mod:`.metrics` and :mod:`.report`)."""

    bag: Path
    mode: str
    frame_stamps_ns: list[int]
    estimates: dict[str, list[Estimate]]
    types: dict[str, str]
    extrinsic: CameraExtrinsic
    base_frame: str
    map_frame: str
    node_name: str
    config_errors: dict[str, str] = field(default_factory=dict)
    #: per localizer: frames received but not answered (live mode; offline 0)
    dropped: dict[str, int] = field(default_factory=dict)
    ground_truth: dict[int, GroundTruthSample] = field(default_factory=dict)
    #: images in the bag (live mode: what was replayed); 0 = len(frame_stamps_ns)
    frames_total: int = 0


def check_bag_topics(bag: Path, image_topic: str, camera_info_topic: str) -> tuple[str, bool]:
    """``(image topic to read, has camera_info)``; raises EvalError listing the bag's topics when the
    image topic or every ground-truth topic is missing."""
    try:
        info = bag_info(bag)
    except BagError as exc:
        raise EvalError(str(exc)) from exc
    topics = info['topics']
    listing = ', '.join(f'{t} ({v["type"]}, {v["count"]})' for t, v in sorted(topics.items())) or 'none'
    image = image_topic
    if image not in topics and image_topic == IMAGE_TOPIC and COMPRESSED_IMAGE_TOPIC in topics:
        image = COMPRESSED_IMAGE_TOPIC
    if image not in topics:
        raise EvalError(f'{bag}: no image topic {image_topic} (nor its compressed form); the bag has: {listing}. '
                        'Pass --image-topic.')
    if not any(t in topics for t in GROUND_TRUTH_TOPICS):
        raise EvalError(f'{bag}: no ground truth: none of {list(GROUND_TRUTH_TOPICS)} is in the bag; it has: {listing}')
    return image, camera_info_topic in topics


def read_ground_truth(bag: Path) -> dict[int, GroundTruthSample]:
    """``/ground_truth/{pose,fix,room}`` by stamp (pose and fix: header stamp; room, which has no
    header: the bag time, which the evaluation bags set to the image stamp)."""
    present = [t for t in GROUND_TRUTH_TOPICS if t in bag_info(bag)['topics']]
    rows: dict[int, dict[str, Any]] = {}
    for topic, _msgtype, timestamp_ns, msg in read_messages(bag, topics=present):
        if topic == ROOM_TOPIC:
            rows.setdefault(int(timestamp_ns), {})['room'] = str(msg.data)
            continue
        stamp = stamp_to_ns(msg.header.stamp)
        if topic == POSE_TOPIC:
            rows.setdefault(stamp, {})['T_map_camera'] = matrix_from_pose(msg.pose)
        elif topic == FIX_TOPIC and math.isfinite(msg.latitude) and math.isfinite(msg.longitude):
            rows.setdefault(stamp, {})['fix_lla'] = (float(msg.latitude), float(msg.longitude), float(msg.altitude))
    return {s: GroundTruthSample(stamp_ns=s, **v) for s, v in sorted(rows.items())}


def _progress(iterable: Any, total: int | None, desc: str, enabled: bool) -> Any:
    if not enabled or os.environ.get('VIZLOC_NO_PROGRESS'):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit='frame')


def _configured_node(params_file: Path, context: Any, overrides: Sequence[str] = (),
                     extra_plugins: Sequence[object] = ()) -> Any:
    """A VizlocNode configured from ``params_file`` exactly as ``vizloc_node --ros-args --params-file`` does."""
    from rclpy.lifecycle import TransitionCallbackReturn

    from ..node import VizlocNode

    cli = ['--ros-args', '--params-file', str(params_file)]
    for item in overrides:
        cli += ['-p', item]
    node = VizlocNode(context=context, cli_args=cli, extra_plugins=extra_plugins)
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        node.destroy_node()
        raise EvalError(f'{params_file}: the node does not configure with these parameters (see the log above)')
    if not node.workers:
        errors = '; '.join(f'{k}: {v}' for k, v in node.config_errors.items()) or 'parameter localizers is empty'
        node.destroy_node()
        raise EvalError(f'{params_file}: no localizer could be built ({errors})')
    return node


def _message_classes() -> dict[str, Any]:
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    return {'sensor_msgs/msg/Image': Image, 'sensor_msgs/msg/CompressedImage': CompressedImage,
            'sensor_msgs/msg/CameraInfo': CameraInfo}


def estimate_from_result(node: Any, name: str, result: Any, header: Any, latency_ms: float) -> Estimate:
    """The node's outputs for one LocalizationResult (the same conversions its workers publish with)."""
    from ..conversions import navsatfix_from_result, pose_msg_from_matrix, room_msg_from_estimate
    from ..frames import base_pose_from_camera_pose

    est = Estimate(localizer=name, stamp_ns=stamp_to_ns(header.stamp),
                   status=ResultStatus(result.status).value, latency_ms=latency_ms)
    fix = navsatfix_from_result(result, header.stamp, header.frame_id)
    if fix is not None:
        est.messages.append(('fix', fix))
    if est.status == 'no_fix':
        return est
    if result.geo is not None:
        est.fix_lla = (float(result.geo.lat_deg), float(result.geo.lon_deg), float(result.geo.alt_m))
        est.cov_enu_m2 = np.asarray(result.geo.cov_enu_m2, dtype=np.float64)
    if result.pose is not None:
        est.T_map_base, est.cov_6x6 = base_pose_from_camera_pose(result.pose, node.extrinsic)
        est.messages.append(('pose', pose_msg_from_matrix(est.T_map_base, est.cov_6x6, header.stamp,
                                                          node.node_params.map_frame)))
    if result.room is not None:
        est.room = result.room.label
        est.messages.append(('room', room_msg_from_estimate(result.room)))
    return est


def _frames(bag: Path, image_topic: str, camera_info_topic: str | None, rectified: bool) -> Iterator[tuple[Any, Any]]:
    """(rclpy image message, Frame or InvalidInputError) in bag order, camera from the latest camera_info.

    Messages recorded at the same bag time are taken camera_info first, so an image and the
    camera_info of its stamp go together whichever the bag stored first.
    """
    from rclpy.serialization import deserialize_message

    from ..conversions import frame_from_msg, intrinsics_from_camera_info
    from ..frames import intrinsics_for_input

    classes = _message_classes()
    camera = None
    topics = [image_topic] + ([camera_info_topic] if camera_info_topic else [])

    def batches() -> Iterator[list[Any]]:
        batch: list[Any] = []
        for raw in read_raw_messages(bag, topics=topics):
            if batch and raw.timestamp_ns != batch[0].timestamp_ns:
                yield batch
                batch = []
            batch.append(raw)
        if batch:
            yield batch

    for batch in batches():
        for raw in sorted(batch, key=lambda r: r.topic != camera_info_topic):
            cls = classes.get(raw.msgtype)
            if cls is None:
                raise EvalError(f'{bag}: {raw.topic} has type {raw.msgtype}, not an image / camera_info')
            msg = deserialize_message(raw.cdr, cls)
            if raw.topic == camera_info_topic:
                try:
                    camera = intrinsics_for_input(intrinsics_from_camera_info(msg), msg.p, rectified=rectified)
                except InvalidInputError as exc:
                    logger.warning('%s: camera_info at %d ignored: %s', bag, raw.timestamp_ns, exc)
                continue
            try:
                yield msg, frame_from_msg(msg, camera)
            except InvalidInputError as exc:
                yield msg, exc


def run_offline(bag: str | os.PathLike[str], params_file: str | os.PathLike[str], *,
                image_topic: str = IMAGE_TOPIC, camera_info_topic: str = CAMERA_INFO_TOPIC,
                max_frames: int | None = None, progress: bool = True,
                overrides: Sequence[str] = (), extra_plugins: Sequence[object] = ()) -> EvalRun:
    """Every frame of ``bag`` through every localizer the node builds from ``params_file``.

    ``overrides``: extra ``name:=value`` parameters (as ``-p`` on the command line);
    ``extra_plugins``: plugin objects besides the installed ones (in-process use, tests).
    """
    import rclpy
    from rclpy.context import Context

    bag, params_file = Path(bag), Path(params_file)
    if not params_file.is_file():
        raise EvalError(f'{params_file}: no such params file')
    image, has_info = check_bag_topics(bag, image_topic, camera_info_topic)
    total = bag_info(bag)['topics'][image]['count']
    if max_frames is not None:
        total = min(total, max_frames)
    context = Context()
    rclpy.init(context=context, args=[])
    node = None
    try:
        node = _configured_node(params_file, context, overrides, extra_plugins)
        workers = dict(node.workers)
        needs_info = [n for n, w in workers.items() if w.localizer.requires_camera_info]
        if needs_info and not has_info:
            raise EvalError(f'{bag}: localizers {needs_info} need camera intrinsics but the bag has no '
                            f'{camera_info_topic} (pass --camera-info-topic)')
        estimates: dict[str, list[Estimate]] = {n: [] for n in workers}
        stamps: list[int] = []
        frames = _frames(bag, image, camera_info_topic if has_info else None, node.node_params.rectified)
        for k, (msg, frame) in enumerate(_progress(frames, total, 'vizloc-eval', progress)):
            if max_frames is not None and k >= max_frames:
                break
            stamp_ns = stamp_to_ns(msg.header.stamp)
            stamps.append(stamp_ns)
            for name, worker in workers.items():
                estimates[name].append(_localize_one(node, name, worker.localizer, msg, frame, stamp_ns))
        return EvalRun(bag=bag, mode='offline', frame_stamps_ns=stamps, estimates=estimates,
                       types={n: w.stats.localizer_type for n, w in workers.items()},
                       extrinsic=node.extrinsic, base_frame=node.node_params.base_frame,
                       map_frame=node.node_params.map_frame,
                       node_name=node.get_fully_qualified_name(), config_errors=dict(node.config_errors),
                       dropped={n: 0 for n in workers}, ground_truth=read_ground_truth(bag))
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)


def _localize_one(node: Any, name: str, localizer: Any, msg: Any, frame: Any, stamp_ns: int) -> Estimate:
    if isinstance(frame, InvalidInputError):
        return Estimate(localizer=name, stamp_ns=stamp_ns, status='error', error=f'bad_input: {frame}')
    if localizer.requires_camera_info and frame.camera is None:
        return Estimate(localizer=name, stamp_ns=stamp_ns, status='waiting_camera_info')
    from ..localizer import LocalizeFault, run_localizer
    from ..types import InvalidOutputError

    try:  # as the node's workers: timed, checked and stamped by the host; one error heading per fault
        result, _, _ = run_localizer(localizer, frame, name)
    except LocalizeFault as fault:
        if fault.kind == 'plugin_error':
            logger.error('localizer %s raised on frame %d: %s', name, stamp_ns, fault.message)
        return Estimate(localizer=name, stamp_ns=stamp_ns, status='error', latency_ms=fault.latency_ms,
                        error=f'{fault.kind}: {fault.message}')
    try:
        return estimate_from_result(node, name, result, msg.header, result.latency_ms)
    except InvalidOutputError as exc:
        return Estimate(localizer=name, stamp_ns=stamp_ns, status='error', latency_ms=result.latency_ms,
                        error=f'invalid_output: {exc}')
    except (ValueError, TypeError) as exc:
        return Estimate(localizer=name, stamp_ns=stamp_ns, status='error', latency_ms=result.latency_ms,
                        error=f'publish_error: {type(exc).__name__}: {exc}')
