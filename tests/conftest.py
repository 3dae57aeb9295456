import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HYBRIDSIM_CACHE_DIR", str(ROOT / ".cache"))


@pytest.fixture
def sphere_scene():
    """Factory for small sphere scenes built with the Python builder."""
    from hybridsim.scene import SceneBuilder, learn

    def make(*, height=1.0, velocity=(0.0, 0.0, 0.0), restitution=0.8, radius=0.2, frames=30, fps=30,
             substeps=8, learn_params=True, backend="warp", precision="float64", width=32, height_px=24,
             gravity=(0.0, 0.0, -9.81)):
        builder = SceneBuilder(name="test", backend=backend, precision=precision, fps=fps, frames=frames,
                               substeps=substeps, gravity=gravity)
        builder.camera(position=(0.0, -4.0, 1.0), look_at=(0.0, 0.0, 0.6), width=width, height=height_px, fovy_deg=45.0)
        builder.add_sphere(
            position=(0.0, 0.0, height), radius=radius,
            velocity=learn(tuple(velocity), range=(-10.0, 10.0)) if learn_params else tuple(velocity),
            restitution=learn(restitution, range=(0.0, 1.0)) if learn_params else restitution,
            color=(0.9, 0.2, 0.2), name="ball")
        return builder.build()

    return make


BACKENDS = ["warp", "taichi"]
