"""Lazy, quiet, once-only initialisation of Warp and Taichi, with project-local caches.

Nothing here imports Warp, Taichi or torch at module import time: ``import hybridsim`` and
``hybridsim --help`` stay fast. The first solver that needs a backend calls ``warp()`` or
``taichi()``.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from pathlib import Path

__all__ = ["cache_dir", "warp", "taichi", "resolve_device", "cuda_available", "BACKENDS"]

BACKENDS = ("warp", "taichi")
_lock = threading.RLock()
_warp_module = None
_taichi_state: dict = {}


def cache_dir() -> Path:
    """Folder for kernel caches: $HYBRIDSIM_CACHE_DIR, else ``.cache/`` of the source checkout
    the package runs from, else ``~/.cache/hybridsim``."""
    env = os.environ.get("HYBRIDSIM_CACHE_DIR")
    if env:
        root = Path(env)
    else:
        checkout = Path(__file__).resolve().parent.parent
        if (checkout / "pyproject.toml").is_file() and (checkout / "kernels").is_dir():
            root = checkout / ".cache"
        else:
            root = Path.home() / ".cache" / "hybridsim"
    root.mkdir(parents=True, exist_ok=True)
    return root


def cuda_available() -> bool:
    """True when a CUDA device is usable (asked of torch, which is cheap once imported)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch always present in practice
        return False


def resolve_device(device: str | None) -> str:
    """Map ``"auto"``/None to ``"cuda"`` when present else ``"cpu"``; validate the rest."""
    from .errors import HybridsimError

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda"):
        if not cuda_available():
            raise HybridsimError("device 'cuda' requested but no CUDA device is available; use device = \"cpu\" or \"auto\"", field="device")
        return device
    if device == "cpu":
        return "cpu"
    raise HybridsimError(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'auto'", field="device")


def warp():
    """Return the initialised ``warp`` module (initialised once, quietly, cache in cache_dir())."""
    global _warp_module
    with _lock:
        if _warp_module is None:
            import warp as wp

            wp.config.kernel_cache_dir = str(cache_dir() / "warp")
            wp.config.log_level = wp.LOG_WARNING
            wp.config.verify_autograd_array_access = os.environ.get("HYBRIDSIM_VERIFY_AUTOGRAD") == "1"
            with _quiet_native_output(drop=("CUDA driver",)):
                wp.init()
            _warp_module = wp
        return _warp_module


def taichi(device: str = "cpu"):
    """Return the initialised ``taichi`` module for ``device`` (once per process).

    Taichi fixes its arch per process; hybridsim only passes torch tensors (external arrays)
    to Taichi kernels, so no Taichi field outlives a world and precision is a per-kernel
    template argument rather than ``default_fp``.
    """
    with _lock:
        arch_name = "cuda" if device.startswith("cuda") else "cpu"
        if _taichi_state.get("arch") is not None:
            if _taichi_state["arch"] != arch_name:
                from .errors import HybridsimError

                raise HybridsimError(
                    f"Taichi is already initialised for {_taichi_state['arch']!r} in this process; "
                    f"cannot switch to {arch_name!r} (run one device per process)",
                    field="device",
                )
            return _taichi_state["module"]
        os.environ.setdefault("TI_SKIP_VERSION_CHECK", "ON")
        os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")
        import taichi as ti

        with contextlib.redirect_stdout(io.StringIO()):
            ti.init(
                arch=ti.cuda if arch_name == "cuda" else ti.cpu,
                default_fp=ti.f32,
                fast_math=False,
                offline_cache=True,
                offline_cache_file_path=str(cache_dir() / "taichi"),
                debug=os.environ.get("HYBRIDSIM_TAICHI_DEBUG") == "1",
                log_level=ti.WARN,
            )
        _taichi_state.update(arch=arch_name, module=ti)
        return ti


@contextlib.contextmanager
def _quiet_native_output(drop: tuple[str, ...]):
    """Capture what native code prints on stdout/stderr; re-emit it on stderr except the lines
    containing a ``drop`` phrase (Warp's notice that a CPU-only machine has no CUDA driver)."""
    import sys
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if line.strip() and not any(phrase in line for phrase in drop):
                    print(line, file=sys.stderr)
