"""Build scenes in Python; the result equals the same scene written as TOML.

    b = SceneBuilder(name="bounce", fps=30, frames=60, substeps=8)
    b.camera(position=(3, -5, 2), look_at=(0, 0, 0.5), width=160, height=120)
    b.add_sphere(position=(0, 0, 1), radius=0.2, restitution=learn(0.8, range=(0.1, 1.0)), name="red")
    spec = b.build()

Every argument left as ``None`` is simply not written, so the schema's defaults apply exactly as
they do for a TOML file that omits the field. ``build`` goes through ``scene_from_dict``, so
problems raise the same :class:`~hybridsim.errors.SceneError` (file ``"<builder>"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .loader import scene_from_dict
from .schema import SceneSpec

__all__ = ["SceneBuilder", "learn"]

BUILDER_SOURCE = "<builder>"


def learn(value: Any, range: tuple[float, float] | None = None) -> dict:
    """Mark a numeric field learnable: ``restitution=learn(0.8, range=(0.1, 1.0))``.

    Returns the marker table ``{"value": value, "learn": True, "range": [lo, hi]}`` that a TOML
    file would write as ``{ value = 0.8, learn = true, range = [0.1, 1.0] }``.
    """
    marker: dict[str, Any] = {"value": _copy(value), "learn": True}
    if range is not None:
        marker["range"] = _copy(range)
    return marker


def _copy(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_copy(x) for x in v]
    return v


def _given(**fields: Any) -> dict:
    return {k: _copy(v) for k, v in fields.items() if v is not None}


class SceneBuilder:
    """Assemble a scene field by field; ``build()`` validates it into a :class:`SceneSpec`.

    Methods return the builder, so calls can be chained.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        backend: str | None = None,
        device: str | None = None,
        precision: str | None = None,
        deterministic: bool | None = None,
        seed: int | None = None,
        gravity: Any = None,
        fps: Any = None,
        frames: int | None = None,
        duration: Any = None,
        substeps: int | None = None,
    ):
        self._top = _given(
            name=name, backend=backend, device=device, precision=precision,
            deterministic=deterministic, seed=seed, gravity=gravity,
        )
        self._tables: dict[str, dict] = {}
        self._objects: list[dict] = []
        self.time(fps=fps, frames=frames, duration=duration, substeps=substeps)

    def _update(self, table: str, fields: dict) -> "SceneBuilder":
        if fields or table not in self._tables:
            self._tables.setdefault(table, {}).update(fields)
        return self

    def time(self, *, fps: Any = None, frames: int | None = None, duration: Any = None,
             substeps: int | None = None) -> "SceneBuilder":
        """Set ``[time]`` fields (frames *or* duration)."""
        return self._update("time", _given(fps=fps, frames=frames, duration=duration, substeps=substeps))

    def camera(self, *, position: Any = None, look_at: Any = None, up: Any = None, fovy_deg: Any = None,
               width: int | None = None, height: int | None = None, projection: str | None = None,
               ortho_height: Any = None) -> "SceneBuilder":
        """Set ``[camera]`` fields (position and look_at are required by the time of ``build``)."""
        return self._update("camera", _given(
            position=position, look_at=look_at, up=up, fovy_deg=fovy_deg, width=width, height=height,
            projection=projection, ortho_height=ortho_height,
        ))

    def ground(self, *, height: Any = None, checker_size: Any = None, colors: Any = None,
               enabled: bool | None = None, friction: Any = None, restitution: Any = None) -> "SceneBuilder":
        """Set ``[ground]`` fields (``friction`` / ``restitution`` matter for rigid objects only)."""
        return self._update("ground", _given(height=height, checker_size=checker_size, colors=colors, enabled=enabled,
                                             friction=friction, restitution=restitution))

    def light(self, *, direction: Any = None, intensity: Any = None, ambient: Any = None,
              sky_color: Any = None) -> "SceneBuilder":
        """Set ``[light]`` fields."""
        return self._update("light", _given(direction=direction, intensity=intensity, ambient=ambient, sky_color=sky_color))

    def add_sphere(self, position: Any, radius: Any, *, velocity: Any = None, mass: Any = None,
                   density: Any = None, restitution: Any = None, color: Any = None,
                   name: str | None = None) -> "SceneBuilder":
        """Append a ``[[objects]]`` entry with ``type = "sphere"``."""
        return self.add_object("sphere", name=name, position=position, velocity=velocity, radius=radius,
                               mass=mass, density=density, restitution=restitution, color=color)

    def add_object(self, type: str, **fields: Any) -> "SceneBuilder":
        """Append an object of any registered ``type``; ``None`` fields are left out."""
        self._objects.append({"type": type, **_given(**fields)})
        return self

    def to_dict(self) -> dict:
        """The scene as TOML-shaped data (a copy), learnable markers included."""
        data = _copy(self._top)
        for table, fields in self._tables.items():
            data[table] = _copy(fields)
        if self._objects:
            data["objects"] = _copy(self._objects)
        return data

    def build(self) -> SceneSpec:
        """Validate into a :class:`SceneSpec`; raises :class:`SceneError` (file ``"<builder>"``)."""
        return scene_from_dict(self.to_dict(), source=BUILDER_SOURCE)
