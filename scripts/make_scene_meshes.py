"""Write the small meshes that the shipped scenes use (scenes/meshes/), reproducibly.

    .venv/bin/python scripts/make_scene_meshes.py          # rewrites scenes/meshes/*.obj
    .venv/bin/python scripts/make_scene_meshes.py --check  # exit 1 if a file differs

``rock.obj``: trimesh's regular icosahedron (unit circumradius), stretched to 1.0 x 0.95 x 0.9 (a
slightly squashed 20-sided "rock", convex and closed), written with fixed formatting so the bytes are the
same on every machine. The scene scales it (``scale`` in scenes/mesh_ramp.toml).

``pebble.obj``: trimesh's icosphere with one subdivision (80 faces, unit radius) squashed to
1.0 x 0.8 x 0.6, a flat rounded stone. ``prism.obj``: a hexagonal prism (unit circumradius, 1.2
high, trimesh's 6-section cylinder). Both convex and closed, like rock.obj; all three are what
scenes/rocks_random.toml draws from (``file = { choice_dir = "meshes/" }``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import trimesh

MESHES = Path(__file__).resolve().parents[1] / "scenes" / "meshes"


def rock() -> str:
    mesh = trimesh.creation.icosahedron()
    vertices = np.asarray(mesh.vertices) * np.array([1.0, 0.95, 0.9])
    faces = np.asarray(mesh.faces)
    check = trimesh.Trimesh(vertices, faces, process=False)
    assert check.is_watertight and check.is_convex and check.volume > 0
    lines = ["# rock.obj - icosahedron stretched 1.0 x 0.95 x 0.9; written by scripts/make_scene_meshes.py"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    return "\n".join(lines) + "\n"


def _obj(name: str, note: str, mesh) -> str:
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    check = trimesh.Trimesh(vertices, faces, process=False)
    assert check.is_watertight and check.is_convex and check.volume > 0, name
    lines = [f"# {name} - {note}; written by scripts/make_scene_meshes.py"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    return "\n".join(lines) + "\n"


def pebble() -> str:
    mesh = trimesh.creation.icosphere(subdivisions=1)
    mesh = trimesh.Trimesh(np.asarray(mesh.vertices) * np.array([1.0, 0.8, 0.6]), mesh.faces, process=False)
    return _obj("pebble.obj", "icosphere (1 subdivision) squashed to 1.0 x 0.8 x 0.6", mesh)


def prism() -> str:
    return _obj("prism.obj", "hexagonal prism, unit circumradius, 1.2 high",
                trimesh.creation.cylinder(radius=1.0, height=1.2, sections=6))


FILES = {"rock.obj": rock, "pebble.obj": pebble, "prism.obj": prism}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    args = parser.parse_args(argv)
    MESHES.mkdir(parents=True, exist_ok=True)
    stale = []
    for name, make in FILES.items():
        text, path = make(), MESHES / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"differs from the generator: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
