"""ROS message <-> vizloc core types.

Images: ``sensor_msgs/Image`` becomes an RGB ``Frame`` without a copy when the encoding is
``rgb8`` and rows are not padded (the array is a read-only view of the message buffer). Other
encodings are converted by the ROS 2 ``cv_bridge`` when it is importable (a colcon workspace with
system ROS 2), else by ``rosbags-image`` (pip venv; it works on rclpy messages by duck typing).
``sensor_msgs/CompressedImage`` (JPEG/PNG) is decoded with OpenCV's ``imdecode``, which is what
both libraries use underneath, so that a corrupt buffer gives an :class:`InvalidInputError` instead
of an assertion or a ``None`` image.

Outputs: :func:`navsatfix_from_result`, :func:`pose_msg_from_estimate`, :func:`room_msg_from_estimate`.
Quaternions are :mod:`vizloc_ros.geodesy`'s (ROS order x, y, z, w; transforms3d underneath).
ROS covariance conventions: NavSatFix ``position_covariance`` is East-North-Up in m^2, row-major;
PoseWithCovariance is (x, y, z, rot_x, rot_y, rot_z) row-major, metres and radians.

Nothing in this module creates nodes; it only needs the message packages. The readers are duck-typed,
so they take rclpy messages and the rosbags messages of :mod:`vizloc_ros.bags` alike; the helpers
:func:`ns_to_stamp` (any Time class), :func:`camera_info_matrices`, :func:`encode_jpeg` and
:func:`matrix_from_pose` are shared with the evaluation bags (:mod:`vizloc_ros.eval_bag`).
"""
from __future__ import annotations

import logging
import math
from typing import Any

import cv2
import numpy as np

from .geodesy import matrix_from_quaternion_xyzw, quaternion_xyzw_from_matrix
from .types import (CameraIntrinsics, CovarianceType, Frame, GeoEstimate, InvalidInputError, LocalizationResult, PoseEstimate,
                    ResultStatus, RoomEstimate)

__all__ = [
    'IMAGE_CONVERTER',
    'stamp_to_ns',
    'ns_to_stamp',
    'frame_from_image_msg',
    'frame_from_compressed_msg',
    'frame_from_msg',
    'intrinsics_from_camera_info',
    'camera_info_from_intrinsics',
    'image_msg_from_rgb',
    'compressed_msg_from_rgb',
    'navsatfix_from_result',
    'pose_msg_from_estimate',
    'pose_msg_from_matrix',
    'room_msg_from_estimate',
    'matrix_from_pose',
    'camera_info_matrices',
    'encode_jpeg',
    'JPEG_FORMAT',
    'UNKNOWN_ALTITUDE_VARIANCE_M2',
    'DEFAULT_MAX_IMAGE_PIXELS',
    'compressed_image_size',
]

logger = logging.getLogger(__name__)


#: NavSatFix altitude variance when a localizer does not know the altitude (published altitude 0.0,
#: ellipsoidal): (1 km)^2, so that fusion gives it no weight but keeps the fix.
UNKNOWN_ALTITUDE_VARIANCE_M2 = 1.0e6

try:  # ROS 2 cv_bridge: present in a colcon workspace with system ROS 2, absent from the pip wheels
    from cv_bridge import CvBridge, CvBridgeError  # type: ignore[import-not-found]

    _BRIDGE: Any = CvBridge()
    IMAGE_CONVERTER = 'cv_bridge'
    _CONVERSION_ERRORS: tuple[type[BaseException], ...] = (CvBridgeError, cv2.error, ValueError, TypeError)
except ImportError:
    from rosbags.image import ImageError, image_to_cvimage

    _BRIDGE = None
    IMAGE_CONVERTER = 'rosbags-image'
    _CONVERSION_ERRORS = (ImageError, cv2.error, ValueError, TypeError)

# Encodings whose bytes per pixel we know, for validating size and step before converting.
_BYTES_PER_PIXEL = {
    'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1, 'mono16': 2,
    'rgb16': 6, 'bgr16': 6, 'rgba16': 8, 'bgra16': 8,
    'bayer_rggb8': 1, 'bayer_bggr8': 1, 'bayer_gbrg8': 1, 'bayer_grbg8': 1,
    '8UC1': 1, '8UC3': 3, '8UC4': 4, 'yuv422': 2, 'uyvy': 2, 'yuyv': 2, 'yuv422_yuy2': 2,
}


#: Largest image (width x height) decoded or converted unless the caller says otherwise (node
#: parameter ``max_image_pixels``): a compressed image's size is read from its header before decoding,
#: so a small file that claims a huge size (a decompression bomb) is refused without allocating it.
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
#: JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...): not DHT (C4), JPG (C8), DAC (CC).
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def compressed_image_size(data: bytes | np.ndarray) -> tuple[int, int, str]:
    """(width, height, 'png'|'jpeg') from a compressed image's header, without decoding it.

    Reads the PNG IHDR chunk or walks the JPEG markers up to the first start-of-frame. Raises
    InvalidInputError for other formats and for truncated or malformed headers.
    """
    # the header is in the first kilobytes; JPEG APPn segments (EXIF, ICC) can push SOF a bit further
    buf = data[:1 << 20].tobytes() if isinstance(data, np.ndarray) else bytes(data[:1 << 20])
    if buf.startswith(_PNG_SIGNATURE):
        if len(buf) < 24 or buf[12:16] != b'IHDR':
            raise InvalidInputError('PNG without an IHDR header chunk')
        return int.from_bytes(buf[16:20], 'big'), int.from_bytes(buf[20:24], 'big'), 'png'
    if buf.startswith(b'\xff\xd8'):
        pos = 2
        while pos + 4 <= len(buf):
            if buf[pos] != 0xFF:
                raise InvalidInputError(f'JPEG header is malformed at byte {pos}')
            marker = buf[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
                pos += 2
                continue
            length = int.from_bytes(buf[pos + 2:pos + 4], 'big')
            if length < 2:
                raise InvalidInputError(f'JPEG segment length {length} at byte {pos} is invalid')
            if marker in _JPEG_SOF:
                if pos + 9 > len(buf):
                    break
                height = int.from_bytes(buf[pos + 5:pos + 7], 'big')
                width = int.from_bytes(buf[pos + 7:pos + 9], 'big')
                return width, height, 'jpeg'
            if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
                break
            pos += 2 + length
        raise InvalidInputError('JPEG without a start-of-frame header (truncated or corrupt)')
    raise InvalidInputError(f'compressed image is neither PNG nor JPEG (first bytes {buf[:4].hex()}); '
                            'only jpeg and png CompressedImage formats are supported')


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width * height > max_pixels:
        raise InvalidInputError(f'{what} is {width}x{height} = {width * height} pixels, more than max_image_pixels '
                                f'= {max_pixels}; refused before decoding (raise max_image_pixels if this is intended)')


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(stamp_ns: int, time_type: Any = None) -> Any:
    """Integer nanoseconds -> builtin_interfaces/Time (``time_type``: the Time class to build, e.g. a
    rosbags type store's; default rclpy's)."""
    if time_type is None:
        from builtin_interfaces.msg import Time as time_type

    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return time_type(sec=sec, nanosec=nanosec)


def _buffer_view(data: Any) -> np.ndarray:
    """A uint8 view of a message's ``data`` (array.array, bytes, memoryview or list) without a copy when possible."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    if hasattr(data, 'typecode'):  # array.array('B') in rclpy messages
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8)


def frame_from_image_msg(msg: Any, camera: CameraIntrinsics | None = None,
                         max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Frame:
    """sensor_msgs/Image -> Frame (RGB). Raises InvalidInputError for unusable images."""
    width, height, step, encoding = int(msg.width), int(msg.height), int(msg.step), str(msg.encoding)
    if width <= 0 or height <= 0:
        raise InvalidInputError(f'image has an empty size {width}x{height}')
    _check_pixels(width, height, max_pixels, 'image')
    bpp = _BYTES_PER_PIXEL.get(encoding)
    if bpp is None and not encoding.startswith(('8UC', '16UC', '32FC')):
        raise InvalidInputError(f'unsupported image encoding {encoding!r}; use rgb8, bgr8, mono8, rgba8, bgra8, ...')
    data = _buffer_view(msg.data)
    if bpp is not None:
        if step < width * bpp:
            raise InvalidInputError(f'image step {step} is smaller than width*bytes_per_pixel = {width * bpp} ({encoding})')
        if data.size < step * (height - 1) + width * bpp:
            raise InvalidInputError(
                f'image data has {data.size} bytes, {encoding} {width}x{height} with step {step} needs {step * height}')
    if encoding == 'rgb8':
        # Zero-copy: a strided, read-only view of the message buffer (rows may be padded).
        rgb = np.lib.stride_tricks.as_strided(data, shape=(height, width, 3), strides=(step, 3, 1), writeable=False)
    else:
        rgb = _convert_other(msg, encoding, data, width, height, step, bpp)
    return Frame(rgb_HW3=rgb, stamp_ns=stamp_to_ns(msg.header.stamp), frame_id=str(msg.header.frame_id), camera=camera)


def _convert_other(msg: Any, encoding: str, data: np.ndarray, width: int, height: int, step: int, bpp: int | None) -> np.ndarray:
    if bpp is not None and step != width * bpp and not encoding.startswith('yuv'):
        # Padded rows: cut them off first (a copy; neither converter handles padding the same way).
        packed = np.lib.stride_tricks.as_strided(data, shape=(height, width * bpp), strides=(step, 1)).copy()
        msg = _PackedImage(msg, packed.reshape(-1), width * bpp)
    try:
        if _BRIDGE is not None:
            rgb = _BRIDGE.imgmsg_to_cv2(msg, desired_encoding='rgb8')
        else:
            rgb = image_to_cvimage(msg, 'rgb8')
    except _CONVERSION_ERRORS as exc:
        raise InvalidInputError(f'cannot convert {encoding} image to rgb8: {exc}') from exc
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InvalidInputError(f'{encoding} image did not convert to uint8 RGB (got {rgb.dtype} {rgb.shape})')
    return rgb


class _PackedImage:
    """An Image-like view with the row padding removed (what the converters expect)."""

    def __init__(self, msg: Any, data: np.ndarray, step: int) -> None:
        self.header = msg.header
        self.width = msg.width
        self.height = msg.height
        self.encoding = msg.encoding
        self.is_bigendian = msg.is_bigendian
        self.step = step
        self.data = data


def frame_from_compressed_msg(msg: Any, camera: CameraIntrinsics | None = None,
                              max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Frame:
    """sensor_msgs/CompressedImage (JPEG/PNG) -> Frame (RGB). Corrupt data raises InvalidInputError.

    The size in the header is checked against ``max_pixels`` before anything is decoded.
    """
    data = _buffer_view(msg.data)
    if data.size == 0:
        raise InvalidInputError('compressed image has no data')
    fmt = str(msg.format)
    if 'compressedDepth' in fmt:
        raise InvalidInputError(f'compressed depth images are not camera images (format {fmt!r})')
    try:
        width, height, kind = compressed_image_size(data)
    except InvalidInputError as exc:
        raise InvalidInputError(f'cannot decode compressed image (format {fmt!r}, {data.size} bytes): {exc}') from exc
    if width <= 0 or height <= 0:
        raise InvalidInputError(f'{kind} header gives an empty size {width}x{height}')
    _check_pixels(width, height, max_pixels, f'compressed {kind} image')
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise InvalidInputError(f'cannot decode compressed image (format {fmt!r}, {data.size} bytes): corrupt or unsupported')
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return Frame(rgb_HW3=rgb, stamp_ns=stamp_to_ns(msg.header.stamp), frame_id=str(msg.header.frame_id), camera=camera)


def frame_from_msg(msg: Any, camera: CameraIntrinsics | None = None,
                   max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Frame:
    """Image or CompressedImage (told apart by the ``format`` field) -> Frame."""
    if hasattr(msg, 'format'):
        return frame_from_compressed_msg(msg, camera, max_pixels)
    return frame_from_image_msg(msg, camera, max_pixels)


def intrinsics_from_camera_info(msg: Any) -> CameraIntrinsics:
    """sensor_msgs/CameraInfo -> CameraIntrinsics.

    Refused (InvalidInputError): an uncalibrated CameraInfo (K all zero), a K that is not a pinhole
    camera matrix (9 finite values, third row 0 0 1, no skew in the second row's first entry, positive
    focal lengths, principal point inside the image), non-finite distortion coefficients.
    """
    k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if k.size != 9:
        raise InvalidInputError(f'CameraInfo K must have 9 values, got {k.size}')
    K = k.reshape(3, 3)
    if not np.all(np.isfinite(K)):
        raise InvalidInputError('CameraInfo K has non-finite values')
    if not np.any(K):
        raise InvalidInputError('CameraInfo has an all-zero K: the camera is not calibrated')
    if not np.array_equal(K[2], [0.0, 0.0, 1.0]) or K[1, 0] != 0.0:
        raise InvalidInputError(f'CameraInfo K is not a camera matrix [fx s cx; 0 fy cy; 0 0 1]: {K.tolist()}')
    width, height = int(msg.width), int(msg.height)
    if not (0.0 <= K[0, 2] <= width and 0.0 <= K[1, 2] <= height):
        raise InvalidInputError(f'CameraInfo principal point ({K[0, 2]}, {K[1, 2]}) is outside the {width}x{height} image')
    D = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(D)):
        raise InvalidInputError('CameraInfo D has non-finite distortion coefficients')
    if int(msg.binning_x) > 1 or int(msg.binning_y) > 1 or int(msg.roi.width) or int(msg.roi.height):
        raise InvalidInputError(
            f'CameraInfo with binning ({msg.binning_x}, {msg.binning_y}) or an ROI is not supported; '
            'publish full-resolution intrinsics for the image you send')
    return CameraIntrinsics(K=K, width=width, height=height,
                            D=D, distortion_model=str(msg.distortion_model or 'plumb_bob'))


def camera_info_matrices(camera: CameraIntrinsics) -> dict[str, np.ndarray]:
    """The CameraInfo arrays of ``camera``, flat float64: ``d``, ``k``, ``r`` (= I) and ``p`` (= [K | 0])."""
    P = np.zeros((3, 4))
    P[:, :3] = camera.K
    return {'d': np.asarray(camera.D, dtype=np.float64).reshape(-1),
            'k': np.asarray(camera.K, dtype=np.float64).reshape(9), 'r': np.eye(3).reshape(9), 'p': P.reshape(12)}


def camera_info_from_intrinsics(camera: CameraIntrinsics, stamp_ns: int, frame_id: str) -> Any:
    """CameraIntrinsics -> sensor_msgs/CameraInfo (P = [K | 0], R = I)."""
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.width, msg.height = int(camera.width), int(camera.height)
    msg.distortion_model = camera.distortion_model
    arrays = camera_info_matrices(camera)
    msg.d, msg.k, msg.r, msg.p = (arrays[key].tolist() for key in ('d', 'k', 'r', 'p'))
    return msg


def image_msg_from_rgb(rgb_HW3: np.ndarray, stamp_ns: int, frame_id: str) -> Any:
    """RGB uint8 array -> sensor_msgs/Image (rgb8)."""
    from sensor_msgs.msg import Image

    rgb = np.ascontiguousarray(rgb_HW3, dtype=np.uint8)
    msg = Image()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = 'rgb8'
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    msg.data = rgb.tobytes()
    return msg


#: CompressedImage ``format`` of a JPEG made by :func:`encode_jpeg` (image_transport's
#: "<original encoding>; jpeg compressed <jpeg colour>").
JPEG_FORMAT = 'rgb8; jpeg compressed bgr8'


def encode_jpeg(rgb_HW3: np.ndarray, quality: int = 90) -> np.ndarray:
    """RGB uint8 array -> JPEG bytes (uint8 array) at ``quality``; InvalidInputError if encoding fails."""
    ok, buf = cv2.imencode('.jpg', cv2.cvtColor(np.asarray(rgb_HW3, dtype=np.uint8), cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise InvalidInputError('JPEG encoding failed')
    return buf.reshape(-1)


def compressed_msg_from_rgb(rgb_HW3: np.ndarray, stamp_ns: int, frame_id: str, quality: int = 90) -> Any:
    """RGB uint8 array -> sensor_msgs/CompressedImage (JPEG)."""
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.format = JPEG_FORMAT
    msg.data = encode_jpeg(rgb_HW3, quality).tobytes()
    return msg


def matrix_from_pose(pose: Any) -> np.ndarray:
    """geometry_msgs/Pose -> 4x4 transform (the quaternion normalised)."""
    T = np.eye(4)
    q, p = pose.orientation, pose.position
    T[:3, :3] = matrix_from_quaternion_xyzw([q.x, q.y, q.z, q.w])
    T[:3, 3] = [p.x, p.y, p.z]
    return T


def navsatfix_from_result(result: LocalizationResult, stamp: Any, frame_id: str) -> Any | None:
    """The NavSatFix of a result: its GeoEstimate, or STATUS_NO_FIX for a 'no_fix' result; None otherwise.

    ``stamp`` is the source image's header stamp (builtin_interfaces/Time), ``frame_id`` its camera frame.
    """
    from sensor_msgs.msg import NavSatFix, NavSatStatus

    if result.status != ResultStatus.NO_FIX and result.geo is None:
        return None
    msg = NavSatFix()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.status.service = 0  # not a GNSS receiver
    if result.status == ResultStatus.NO_FIX or result.geo is None:
        msg.status.status = NavSatStatus.STATUS_NO_FIX
        msg.latitude = msg.longitude = msg.altitude = math.nan
        msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_UNKNOWN
        return msg
    geo: GeoEstimate = result.geo
    msg.status.status = NavSatStatus.STATUS_FIX
    msg.latitude, msg.longitude = float(geo.lat_deg), float(geo.lon_deg)
    cov = np.array(geo.cov_enu_m2, dtype=np.float64)
    if math.isfinite(geo.alt_m):
        msg.altitude = float(geo.alt_m)
    else:
        # Unknown altitude: a finite value with a huge variance. robot_localization's navsat_transform
        # drops fixes whose altitude is NaN; with this variance the altitude carries no weight.
        msg.altitude = 0.0
        cov[2, :] = cov[:, 2] = 0.0
        cov[2, 2] = UNKNOWN_ALTITUDE_VARIANCE_M2
    msg.position_covariance = [float(v) for v in cov.reshape(-1)]
    msg.position_covariance_type = (NavSatFix.COVARIANCE_TYPE_APPROXIMATED
                                    if result.covariance_type == CovarianceType.APPROXIMATED
                                    else NavSatFix.COVARIANCE_TYPE_KNOWN)
    return msg


def pose_msg_from_estimate(pose: PoseEstimate, stamp: Any, map_frame: str) -> Any:
    """PoseEstimate -> geometry_msgs/PoseWithCovarianceStamped of the camera optical frame in ``map_frame``."""
    return pose_msg_from_matrix(pose.T_map_camera, pose.cov_6x6, stamp, map_frame)


def pose_msg_from_matrix(T_map_x: np.ndarray, cov_6x6: np.ndarray, stamp: Any, map_frame: str) -> Any:
    """A 4x4 pose of some frame x in ``map_frame`` and its 6x6 covariance -> PoseWithCovarianceStamped."""
    from geometry_msgs.msg import PoseWithCovarianceStamped

    msg = PoseWithCovarianceStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = map_frame
    T = np.asarray(T_map_x, dtype=np.float64)
    msg.pose.pose.position.x, msg.pose.pose.position.y, msg.pose.pose.position.z = (float(v) for v in T[:3, 3])
    o = msg.pose.pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in quaternion_xyzw_from_matrix(T[:3, :3]))
    msg.pose.covariance = [float(v) for v in np.asarray(cov_6x6, dtype=np.float64).reshape(-1)]
    return msg


def room_msg_from_estimate(room: RoomEstimate) -> Any:
    """RoomEstimate -> std_msgs/String holding the label (String has no header; see ~/markers for stamps)."""
    from std_msgs.msg import String

    return String(data=room.label)
