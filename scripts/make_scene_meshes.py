"""Write the small meshes that the shipped scenes use (scenes/meshes/), reproducibly.

    .venv/bin/python scripts/make_scene_meshes.py          # rewrites scenes/meshes/*.obj
    .venv/bin/python scripts/make_scene_meshes.py --check  # exit 1 if a file differs

``rock.obj``: trimesh's regular icosahedron (unit circumradius), stretched to 1.0 x 0.95 x 0.9 (a
slightly squashed 20-sided "rock", convex and closed), written with fixed formatting so the bytes are the
same on every machine. The scene scales it (``scale`` in scenes/mesh_ramp.toml).
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


FILES = {"rock.obj": rock}


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
