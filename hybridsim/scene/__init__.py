"""Scene descriptions: TOML files or a Python builder -> validated, frozen :class:`SceneSpec`."""

from .builder import SceneBuilder, learn
from .loader import load_scene, parse_scene, scene_from_dict
from .schema import (
    OBJECT_TYPES,
    CameraSpec,
    GroundSpec,
    Learnable,
    LightSpec,
    ObjectSpec,
    SceneSpec,
    SphereSpec,
    TimeSpec,
    dumps_toml,
)

__all__ = [
    "SceneSpec",
    "load_scene",
    "parse_scene",
    "scene_from_dict",
    "SceneBuilder",
    "learn",
    "Learnable",
    "TimeSpec",
    "CameraSpec",
    "GroundSpec",
    "LightSpec",
    "SphereSpec",
    "ObjectSpec",
    "OBJECT_TYPES",
    "dumps_toml",
]
