"""Video and frame I/O: H.264 mp4 through the ffmpeg binary shipped with imageio-ffmpeg, png/jpg
frame folders, and lossless npz layer dumps. Writes are atomic; unreadable inputs raise AssetError.
"""

from __future__ import annotations

import re
import subprocess
from fractions import Fraction
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np

from hybridsim.errors import AssetError, ResourceError
from hybridsim.fileio import atomic_path

__all__ = ["write_video", "read_video", "read_frame_folder", "read_frames", "write_layers"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CRF = 12  # x264 constant rate factor: visually lossless, a few grey levels at most


def write_video(path, frames, fps: float) -> None:
    """Write frames (F, H, W, 3) uint8, or float in [0, 1], as an H.264 mp4 of exactly H x W pixels.

    Even sizes use yuv420p (plays everywhere); odd sizes use yuv444p, since 4:2:0 needs even sizes.
    """
    frames = _as_uint8_frames(frames, path)
    if not float(fps) > 0:
        raise AssetError(f"fps must be positive, got {fps}", file=path)
    count, height, width, _ = frames.shape
    pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    rate = Fraction(float(fps)).limit_denominator(100000)
    with atomic_path(path) as tmp:
        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-nostdin", "-v", "error",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(rate), "-i", "-",
            "-an", "-c:v", "libx264", "-preset", "medium", "-crf", str(CRF), "-pix_fmt", pix_fmt,
            "-f", "mp4", str(tmp),
        ]
        proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
        if proc.returncode != 0:
            raise AssetError(f"ffmpeg could not encode the video: {_last_line(proc.stderr)}", file=path)


def read_video(path, max_bytes: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a video file -> (frames (F, H, W, 3) uint8 RGB, fps). Bad files raise AssetError:
    unreadable, truncated (fewer frames than the container's duration says, by more than one
    frame and 2%), or decoding to more than ``max_bytes`` (default
    :func:`hybridsim.assets.max_decoded_bytes`; ResourceError, stopped at the limit)."""
    from hybridsim.assets import MAX_DECODED_BYTES_ENV, max_decoded_bytes

    path = Path(path)
    if not path.is_file():
        raise AssetError("video file not found", file=path)
    limit = max_decoded_bytes() if max_bytes is None else int(max_bytes)
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "level+info", "-xerror",
        "-i", str(path), "-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-fs", str(limit), "-",
    ]
    proc = subprocess.run(cmd, capture_output=True)
    log = proc.stderr.decode("utf-8", "replace")
    errors = [ln.split("] ", 1)[-1] for ln in log.splitlines() if "[error]" in ln or "[fatal]" in ln]
    if proc.returncode != 0 or errors:
        reason = errors[0].replace("[error] ", "").replace("[fatal] ", "") if errors else f"ffmpeg exit {proc.returncode}"
        raise AssetError(f"not a readable video (truncated or corrupt?): {reason}", file=path)
    size = re.search(r"Output #0.*?Video: rawvideo.*?, (\d+)x(\d+)", log, re.S)
    fps = re.search(r"Input #0.*?Video: .*?([\d.]+)(k?) fps", log, re.S)
    if size is None:
        raise AssetError("no video stream found", file=path)
    width, height = int(size.group(1)), int(size.group(2))
    if len(proc.stdout) >= limit:
        raise ResourceError(f"video decodes to more than the limit of {limit} bytes ({width}x{height} RGB frames); "
                            f"shorten or downscale it, or raise the limit with {MAX_DECODED_BYTES_ENV}=N", file=path)
    if not proc.stdout or len(proc.stdout) % (width * height * 3):
        raise AssetError(f"decoded {len(proc.stdout)} bytes, not whole {width}x{height} frames", file=path)
    frames = np.frombuffer(proc.stdout, dtype=np.uint8).reshape(-1, height, width, 3).copy()
    rate = float(fps.group(1)) * (1000.0 if fps.group(2) else 1.0) if fps else 0.0
    expected = _expected_frames(log, rate)
    if expected is not None and len(frames) < expected - max(1.0, 0.02 * expected):
        raise AssetError(f"truncated video: {len(frames)} frames decoded but its header says about "
                         f"{expected:.0f} ({rate:g} fps)", file=path)
    return frames, rate


def _expected_frames(log: str, rate: float) -> float | None:
    """Frames the container's duration implies, for single-stream inputs with a known rate."""
    header = log.split("Stream mapping:", 1)[0]
    duration = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", header)
    streams = re.findall(r"Stream #0:\d+.*?: (\w+):", header)
    if not (duration and rate > 0) or streams != ["Video"]:
        return None
    hours, minutes, seconds = int(duration.group(1)), int(duration.group(2)), float(duration.group(3))
    return (3600 * hours + 60 * minutes + seconds) * rate


def read_frame_folder(folder, strict: bool = False) -> np.ndarray:
    """Read the png/jpg images of a folder in natural name order -> frames (F, H, W, 3) uint8.

    ``strict`` (fit targets) also refuses other files and gaps or duplicates in the frame numbers
    (see :func:`hybridsim.assets.frame_files`); otherwise other files are ignored. A folder that
    would decode to more than :func:`hybridsim.assets.max_decoded_bytes` is refused after its
    first frame (ResourceError)."""
    from hybridsim.assets import MAX_DECODED_BYTES_ENV, frame_files, max_decoded_bytes

    folder = Path(folder)
    files = frame_files(folder, strict=strict)
    frames = []
    for file in files:
        image = _read_image(file)
        if not frames and len(files) * image.size > max_decoded_bytes():
            raise ResourceError(f"{len(files)} frames of {image.shape[1]}x{image.shape[0]} decode to more than the "
                                f"limit of {max_decoded_bytes()} bytes; raise it with {MAX_DECODED_BYTES_ENV}=N",
                                file=folder)
        if frames and image.shape != frames[0].shape:
            raise AssetError(f"frame size {image.shape[1]}x{image.shape[0]} differs from "
                             f"{frames[0].shape[1]}x{frames[0].shape[0]} of {files[0].name}", file=file)
        frames.append(image)
    return np.stack(frames)


def read_frames(path, strict: bool = False) -> tuple[np.ndarray, float | None]:
    """Read a video file, a frame folder or one image -> (frames (F, H, W, 3) uint8, fps or None).
    ``strict`` applies to frame folders (see :func:`read_frame_folder`)."""
    path = Path(path)
    if path.is_dir():
        return read_frame_folder(path, strict=strict), None
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if not path.is_file():
            raise AssetError("image file not found", file=path)
        return _read_image(path)[None], None
    return read_video(path)


def write_layers(path, layers: dict) -> None:
    """Save named arrays (numpy or torch) losslessly as a compressed npz, atomically."""
    arrays = {}
    for name, value in layers.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        arrays[str(name)] = np.asarray(value)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)


def _read_image(file: Path) -> np.ndarray:
    """One image -> (H, W, 3) uint8; greyscale is repeated, alpha dropped, 16 bit scaled down."""
    try:
        image = np.asarray(iio.imread(file))
    except Exception as exc:  # imageio raises many types for bad files
        raise AssetError(f"cannot read image: {exc}", file=file) from None
    if image.dtype == np.uint16:
        image = np.rint(image / 257.0).astype(np.uint8)
    if image.dtype != np.uint8:
        raise AssetError(f"unsupported image dtype {image.dtype}", file=file)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise AssetError(f"unsupported image shape {image.shape}", file=file)
    return np.ascontiguousarray(np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3])


def _as_uint8_frames(frames, path) -> np.ndarray:
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise AssetError(f"frames must have shape (F>=1, H, W, 3), got {frames.shape}", file=path)
    if frames.dtype != np.uint8:
        if not np.issubdtype(frames.dtype, np.floating):
            raise AssetError(f"frames must be uint8 or float in [0, 1], got {frames.dtype}", file=path)
        frames = np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(frames)


def _last_line(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no error message"

