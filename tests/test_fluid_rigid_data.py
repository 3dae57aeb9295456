"""A 2D fluid with rigid bodies ([fluid] + [[objects]], ``hybridsim.sim.fluid_rigid``) in
``hybridsim metrics`` (the divergence measured with the faces the bodies cut at each frame, and the
bodies' own metrics), ``hybridsim generate`` (scenes/plume_pushed_random.toml) and ``hybridsim fit``
(refused, saying what is supported)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridsim.metrics import fluid_physics_metrics, scene_physics_metrics
from hybridsim.scene import parse_scene

ROOT = Path(__file__).resolve().parent.parent

SCENE = """
name = "tiny_pushed"
backend = "warp"
device = "cpu"
precision = "float64"
gravity = [0.0, 0.0, -9.81]
[time]
fps = 30
frames = {frames}
substeps = 4
[camera]
position = [0.3, -2.0, 0.3]
look_at = [0.3, 0.0, 0.3]
up = [0.0, 0.0, 1.0]
projection = "orthographic"
ortho_height = 0.6
width = 24
height = 24
[ground]
enabled = false
[fluid]
cells = [24, 24]
cell_size = 0.025
boundary = "wall"
density = 1.2
[[fluid.inflows]]
center = [0.3, 0.1]
radius = 0.05
rate = 2.0
[[objects]]                   # thrown sideways, spinning, through still air
type = "box"
name = "slab"
position = [0.2, 0.0, 0.35]
half_extents = [0.05, 0.05, 0.04]
velocity = [1.0, 0.0, 0.0]
angular_velocity = [0.0, 2.0, 0.0]
density = {density}
color = [0.9, 0.1, 0.1]
"""

BODY_KEYS = ("position", "orientation", "velocity", "angular_velocity")


def _spec(frames=4, density=50000.0):
    return parse_scene(SCENE.format(frames=frames, density=density), source="tiny_pushed.toml")


@pytest.fixture(scope="module")
def pushed():
    from hybridsim.sim.fluid_rigid import fluid_rigid_rollout
    from hybridsim.sim.world import World

    spec = _spec()
    with torch.no_grad():
        return spec, fluid_rigid_rollout(World(spec))


def _states(trajectory, plural=False, **changes):
    """The arrays ``hybridsim render`` writes for a fluid with bodies (singular body names), or the
    plural names of the MPM + rigid scenes."""
    fluid, rigid = trajectory.fluid, trajectory.rigid
    states = {key: getattr(fluid, key).numpy() for key in ("density", "velocity_x", "velocity_y", "times")}
    for key, name in zip(BODY_KEYS, ("positions", "orientations", "velocities", "angular_velocities")):
        states[f"body_{name}" if plural else f"body_{key}"] = getattr(rigid, name).numpy()
    states["body_objects"] = np.asarray(rigid.body_objects, dtype=np.int64)
    states.update(changes)
    return states


def test_divergence_is_measured_with_the_bodies_cut(pushed):
    from hybridsim.sim.fluid import fluid_model
    from hybridsim.sim.world import World

    spec, trajectory = pushed
    metrics = scene_physics_metrics(spec, _states(trajectory))
    assert metrics["simulator"] == "fluid_rigid" and set(metrics) == {"simulator", "fluid", "rigid"}
    fluid = metrics["fluid"]
    assert fluid["frames"] == 5 and fluid["divergence_max_relative"][0] == 0.0  # at rest before the first step
    # the faces the bodies cut, at the pose of each frame's last projection: at the solver's tolerance
    # (a body 40000 x denser than the air: its acceleration is gravity's, constant over a frame)
    assert 0.0 < fluid["max_divergence_max_relative"] < 1e-5
    assert fluid["max_divergence_l2_relative"] < 1e-6
    assert 0.0 < fluid["max_cfl"] < 1.0 and fluid["kinetic_energy_j_per_kg"][-1] > 0.0
    assert abs(fluid["mass_gain_relative"]) < 1e-2  # the inflow's budget (the box covers a few cells)
    # ignoring the bodies (the scene's static face fractions) the same states look divergent
    model = fluid_model(World(spec, device="cpu", precision="float64"))
    f = trajectory.fluid
    blind = fluid_physics_metrics(f.velocity_x, f.velocity_y, f.density, f.times, cell_size=spec.fluid.cell_size,
                                  dt=spec.dt, face_fraction_x=model.face_fraction_x,
                                  face_fraction_y=model.face_fraction_y)
    assert blind["max_divergence_max_relative"] > 0.3
    # the rigid part: the body's own energy and contacts, no free-flight check (the fluid pushes it)
    rigid = metrics["rigid"]
    assert rigid["body_count"] == 1 and len(rigid["energy_j"]) == 5 and rigid["flight_intervals"] is None
    assert rigid["max_penetration_m"] == 0.0
    mass = rigid["total_mass_kg"]
    assert mass == pytest.approx(50000.0 * 0.1 * 0.1 * 0.08, rel=1e-9)
    # no ground: the energy scale is what the body would release falling through the 0.6 m domain
    assert rigid["energy_scale_j"] == pytest.approx(mass * 9.81 * 0.6, rel=1e-9)
    assert abs(rigid["energy_drift_relative"]) < 1e-4  # a heavy body in air: nearly ballistic
    # the plural names of the MPM + rigid states read the same
    plural = scene_physics_metrics(spec, _states(trajectory, plural=True))
    assert plural == metrics


def test_a_light_body_leaves_a_small_residual_near_its_boundary():
    # 400 x denser than the air: the fluid's kicks vary within a frame, which the frames do not record
    # (fluid_rigid_face_geometry); still far below what the naive frame pose gives (about 6e-2)
    from hybridsim.sim.fluid_rigid import fluid_rigid_rollout
    from hybridsim.sim.world import World

    spec = _spec(density=500.0)
    with torch.no_grad():
        trajectory = fluid_rigid_rollout(World(spec))
    fluid = scene_physics_metrics(spec, _states(trajectory))["fluid"]
    assert fluid["max_divergence_max_relative"] < 1e-3 and fluid["max_divergence_l2_relative"] < 1e-4


def test_corrupted_body_states_are_measured(pushed):
    spec, trajectory = pushed
    clean = scene_physics_metrics(spec, _states(trajectory))
    k = 3
    velocity = trajectory.rigid.velocities.clone()
    velocity[k:] *= 1.5  # the recorded body velocity no longer drives the fluid's boundary
    faster = scene_physics_metrics(spec, _states(trajectory, body_velocity=velocity.numpy()))
    assert faster["fluid"]["divergence_max_relative"][k - 1] == clean["fluid"]["divergence_max_relative"][k - 1]
    assert faster["fluid"]["divergence_max_relative"][k] > 0.05
    gain = faster["rigid"]["energy_j"][k] - clean["rigid"]["energy_j"][k]
    kinetic = 0.5 * faster["rigid"]["total_mass_kg"] * float((trajectory.rigid.velocities[k] ** 2).sum())
    assert gain == pytest.approx((1.5 ** 2 - 1.0) * kinetic, rel=1e-9)

    position = trajectory.rigid.positions.clone()
    position[-1, 0, 0] += 2 * spec.fluid.cell_size  # the body drawn two cells off where the fluid saw it
    moved = scene_physics_metrics(spec, _states(trajectory, body_position=position.numpy()))
    assert moved["fluid"]["divergence_max_relative"][-1] > 0.05


def test_cli_metrics_of_a_rendered_fluid_with_bodies(tmp_path, capsys):
    from hybridsim.cli import main

    scene = tmp_path / "tiny_pushed.toml"
    scene.write_text(SCENE.format(frames=3, density=5000.0).replace('precision = "float64"', 'precision = "float32"'))
    out = tmp_path / "tiny.mp4"
    assert main(["render", str(scene), "-o", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["metrics", str(out), "--scene", str(scene)]) == 0
    physics = json.loads(capsys.readouterr().out)["physics"]
    assert physics["simulator"] == "fluid_rigid"
    assert len(physics["fluid"]["mass"]) == 4 and physics["fluid"]["max_divergence_max_relative"] < 1e-3
    assert len(physics["rigid"]["energy_j"]) == 4 and physics["rigid"]["flight_intervals"] is None


# --------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------
PLUME_RANDOM = ROOT / "scenes" / "plume_pushed_random.toml"
FRAMES = 3
JOB_ARGS = ["--shard-size", "1", "--frames", str(FRAMES), "--seed", "0", "--workers", "1", "-q"]


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.tar"))}


@pytest.fixture(scope="module")
def plumes(tmp_path_factory):
    """2 samples of the shipped fluid + bodies distribution, 3 frames each, in-process."""
    from hybridsim.cli import main

    out = tmp_path_factory.mktemp("plumes") / "out"
    assert main(["generate", str(PLUME_RANDOM), "-o", str(out), "--count", "2", *JOB_ARGS]) == 0
    return out


def test_shipped_distribution_varies_what_it_promises():
    from hybridsim.scene.distributions import load_distribution
    from hybridsim.sim.world import World

    dist = load_distribution(PLUME_RANDOM)
    specs = [dist.sample(0, i) for i in range(12)]
    assert all(World(s).fluid_rigid and s.fluid.dimension == 2 and not s.camera.keyframes for s in specs)
    for values in ([s.objects[0].half_extents for s in specs], [s.objects[0].density for s in specs],
                   [s.objects[0].velocity for s in specs], [s.fluid.inflows[0].center for s in specs],
                   [s.fluid.inflows[0].rate for s in specs], [s.fluid.temperature.buoyancy for s in specs]):
        assert len(set(values)) == 12
    assert all(s.objects[0].velocity[1] == 0.0 and s.objects[0].density > 100 * s.fluid.density for s in specs)
    assert dist.generate_options == {"field_stride": 2}


def test_generated_samples_hold_smoke_and_body_layers_states_and_labels(plumes):
    from hybridsim.data import iter_samples

    samples = list(iter_samples(plumes, video=True))
    assert [s["__key__"] for s in samples] == ["sample-0000000", "sample-0000001"]
    T = FRAMES + 1
    for sample in samples:
        meta, layers, states = sample["json"], sample["layers"], sample["states"]
        H, W = meta["height"], meta["width"]
        assert meta["simulator"] == "fluid_rigid" and (H, W) == (96, 80) and sample["mp4"].shape == (T, H, W, 3)
        for name in ("alpha", "density", "depth"):
            assert layers[name].shape == (T, H, W) and layers[name].dtype == np.float32
        for direction in ("forward", "backward"):
            assert layers[f"flow_{direction}"].shape == (T, H, W, 2) and layers[f"occlusion_{direction}"].dtype == bool
        # the box (object 0) is segment 2 (1 is the smoke), with its rigid motion as flow
        box = layers["segmentation"] == 2
        assert box[0].sum() > 20 and box.sum(axis=(1, 2)).min() > 20
        assert not layers["occlusion_forward"][0][box[0]].any() and layers["occlusion_forward"][-1][box[-1]].all()
        np.testing.assert_allclose(layers["object_poses"][..., :3], states["body_position"], atol=1e-6)
        np.testing.assert_allclose(layers["object_poses"][..., 3:], states["body_orientation"], atol=1e-6)
        # states: the strided fluid (field_stride 2 from the distribution) and the bodies
        assert states["density"].shape == (T, 40, 48) and states["velocity"].shape == (T, 40, 48, 2)
        assert states["temperature"].shape == (T, 40, 48) and int(states["field_stride"]) == 2
        for key, width in (("body_position", 3), ("body_orientation", 4), ("body_velocity", 3),
                           ("body_angular_velocity", 3)):
            assert states[key].shape == (T, 1, width)
        assert np.abs(states["body_position"][:, 0, 1]).max() == 0.0  # in the fluid plane
        assert states["body_objects"].tolist() == [0]
        # labels: the fluid's (with its density) and the box as rigid samples label objects
        fluid, box_meta = meta["fluid"], meta["objects"][0]
        sampled = meta["sampled"]
        assert fluid["density"] == 1.2 and fluid["field_stride"] == 2 and fluid["cells"] == [80, 96]
        assert fluid["temperature"]["buoyancy"] == sampled["fluid.temperature.buoyancy"]
        assert fluid["inflows"][0]["rate"] == sampled["fluid.inflows[0].rate"]
        assert box_meta["segmentation_id"] == 2 and box_meta["body"] == 0 and box_meta["type"] == "box"
        assert box_meta["density"] == sampled["objects[0].density"]
        assert box_meta["initial_velocity"][0] == sampled["objects[0].velocity[0]"]
        hx, hy, hz = box_meta["half_extents"]
        assert box_meta["mass"] == pytest.approx(sampled["objects[0].density"] * 8 * hx * hy * hz, rel=1e-5)
        assert float(states["body_mass"][0]) == pytest.approx(box_meta["mass"], rel=1e-12)
        assert meta["springs"][0]["anchor_b"][0] == sampled["springs[0].anchor_b[0]"]
        quality = meta["quality"]
        assert quality["passed"] and abs(quality["mass_gain"]) < 1e-4 and quality["max_cfl"] < 1.0
        assert quality["initial_overlap_m"] == 0.0 and quality["body_domain_margin_m"] > 0.05
        assert "body_position" in meta["entries"]["states.npz"] and "k + 2" in meta["entries"]["layers.npz"]
        assert "segmentation id k + 2" in meta["object_poses"]


def test_an_interrupted_job_resumes_to_the_same_bytes(plumes, tmp_path):
    """Leave the folder as a run killed after staging sample 0 would, then rerun the same command."""
    from hybridsim.cli import main
    from hybridsim.data.gates import QualityGates
    from hybridsim.data.job import ENTRY_SUFFIXES, GenerateJob
    from hybridsim.data.shards import ShardStore, tar_bytes_members

    out = tmp_path / "out"
    job = GenerateJob(PLUME_RANDOM.read_text(), str(PLUME_RANDOM), seed=0, frames=FRAMES, gates=QualityGates())
    store = ShardStore(out, 2, 1)
    store.open(job.record())
    members = dict(tar_bytes_members(plumes / "shard-000000.tar"))
    store.stage({"index": 0, "entries": {s: members[f"sample-0000000.{s}"] for s in ENTRY_SUFFIXES}})
    store.close()
    assert main(["generate", str(PLUME_RANDOM), "-o", str(out), "--count", "2", *JOB_ARGS]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] == 1 and summary["generated"] == 1
    assert _shards(out) == _shards(plumes)  # the same bytes: the coupled rollout is deterministic
    assert (out / "manifest.json").read_bytes() == (plumes / "manifest.json").read_bytes()


def test_body_gates_reject_bodies_outside_the_domain(pushed):
    from types import SimpleNamespace

    from hybridsim.data.gates import QualityGates, evaluate_fluid_rigid_gates, fluid_rigid_initial_gates
    from hybridsim.sim.world import World

    spec, trajectory = pushed
    world = World(spec)
    measured, failures = fluid_rigid_initial_gates(world, QualityGates())
    assert not failures and measured["initial_domain_margin_m"] == pytest.approx(0.2 - 0.05, abs=1e-9)
    measured, failures = evaluate_fluid_rigid_gates(world, trajectory, QualityGates())
    assert "out_of_domain" not in [f["gate"] for f in failures] and measured["body_domain_margin_m"] > 0.1
    rigid = trajectory.rigid
    positions = rigid.positions.clone()
    positions[2, 0, 2] = 0.6 - 0.04 + 0.01  # the box, level, its top 1 cm above the 0.6 m domain in frame 2
    orientations = rigid.orientations.clone()
    orientations[2, 0] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    escaped = SimpleNamespace(fluid=trajectory.fluid, rigid=SimpleNamespace(
        **{**vars(rigid), "positions": positions, "orientations": orientations}))
    measured, failures = evaluate_fluid_rigid_gates(world, escaped, QualityGates())
    out = [f for f in failures if f["gate"] == "out_of_domain"]
    assert len(out) == 1 and out[0]["value"] == pytest.approx(0.01, abs=1e-9) and "in frame 2" in out[0]["detail"]

    text = SCENE.format(frames=1, density=500.0).replace("position = [0.2, 0.0, 0.35]", "position = [0.03, 0.0, 0.35]")
    outside = parse_scene(text, source="outside.toml")  # 2 cm of the box left of the domain
    measured, failures = fluid_rigid_initial_gates(World(outside), QualityGates())
    assert [f["gate"] for f in failures] == ["out_of_domain"] and "at t = 0" in failures[0]["detail"]
    assert measured["initial_domain_margin_m"] == pytest.approx(-0.02, abs=1e-9)


@pytest.mark.filterwarnings("ignore:grid fluid step")  # the solver's own CFL warning
def test_a_blown_up_draw_is_rejected_by_the_fluid_guard():
    from hybridsim.data.continuum import _fluid_blow_up, _fluid_rigid_rollout
    from hybridsim.errors import SimulationError
    from hybridsim.sim.world import World

    fast = parse_scene(SCENE.format(frames=2, density=5000.0).replace("velocity = [1.0, 0.0, 0.0]",
                                                                       "velocity = [40.0, 0.0, 0.0]"),
                       source="fast.toml")  # the box crosses 13 cells per step: CFL 13 on the faces it covers
    with pytest.raises(SimulationError) as error:
        with torch.no_grad():
            _fluid_rigid_rollout(World(fast))
    assert error.value.quantity == "cfl" and "blew up in frame 1" in error.value.message
    assert _fluid_blow_up(error.value)["gate"] == "cfl"  # the rejection reason generate records


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------
def test_fit_refuses_a_fluid_with_bodies_saying_what_is_supported():
    from hybridsim.errors import HybridsimError
    from hybridsim.fit.scenes import check_fittable, fit_scene
    from hybridsim.sim.world import World

    spec = _spec()
    for refuse in (lambda: check_fittable(spec), lambda: fit_scene(World(spec))):
        with pytest.raises(HybridsimError) as error:
            refuse()
        message = str(error.value)
        assert "fit works on sphere, rigid-body, grid-fluid (without [[objects]]" in message
        assert "cannot be fitted yet" in message and "`generate`" in message
    # the shipped scene (learnable buoyancy and box velocity) through the fit API: refused before any target is read
    from hybridsim.fit import fit
    from hybridsim.scene import load_scene

    shipped = load_scene(ROOT / "scenes" / "plume_pushed.toml")
    assert shipped.learnable
    with pytest.raises(HybridsimError, match=r"a \[fluid\] with rigid bodies \(\[\[objects\]\]\) cannot be fitted yet"):
        fit(shipped, torch.zeros(3, 8, 8, 3), iterations=1, progress=False, uncertainty=False)
