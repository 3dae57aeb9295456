"""The ``hybridsim`` command line. Heavy modules load inside the commands, so ``--help`` is fast."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]

DEFAULT_SCENE = "bounce.toml"


def _default_scene_path() -> Path:
    from importlib.resources import files

    return Path(str(files("hybridsim.scenes") / DEFAULT_SCENE))


_PYTHON_SCENES = False  # set by ``hybridsim --python``: scene arguments are Python scripts to run


def _load_scene(path):
    """A scene argument: TOML data, or with ``--python`` a Python scene script (executed)."""
    from .scene.loader import load_python_scene, load_scene

    return load_python_scene(path) if _PYTHON_SCENES else load_scene(path)


def _build_world(args, precision=None):
    from .sim.world import World

    scene = Path(args.scene) if args.scene else _default_scene_path()
    spec = _load_scene(scene)
    return World(spec, backend=args.backend, device=args.device, precision=precision,
                 frames=getattr(args, "frames", None))


def cmd_render(args) -> int:
    from .errors import SimulationError
    from .sim.resources import check_scene_memory

    world = _build_world(args)
    spec = world.spec
    frames = args.frames if args.frames is not None else spec.frame_count
    out = Path(args.output)
    # the simulation plus every rendered layer kept in memory: refused before anything is allocated
    check_scene_memory(spec, frames=frames, render=True, precision=world.precision, device=world.device)
    try:
        code = _render_scene(args, world, frames, out, args.quiet)
    except SimulationError as error:  # a blow-up: keep the frames simulated so far, exit 1
        return _render_partial(args, world, out, error)
    _remove_partial_outputs(out)
    if code == 0 and getattr(args, "flo", False):  # Middlebury .flo files beside the layers
        from .render.flow import write_flo_frames

        written = write_flo_frames(out.with_suffix(".layers.npz"), out.with_suffix(".flo"))
        if not args.quiet:
            print(f"wrote {len(written)} .flo files to {out.with_suffix('.flo')}/")
    return code


def _partial_path(out: Path) -> Path:
    """Where a failed render keeps its good frames: OUT.partial.mp4 (side files beside it)."""
    return out.with_name(f"{out.stem}.partial{out.suffix}")


def _remove_partial_outputs(out: Path) -> None:
    """After a successful render, drop the partial outputs an earlier failed run left."""
    partial = _partial_path(out)
    for path in [partial] + [partial.with_suffix(s) for s in (".layers.npz", ".flow.mp4", ".states.npz",
                                                              ".camera.json", ".plain.mp4")]:
        if path.is_file():
            path.unlink()


def _render_partial(args, world, out: Path, error) -> int:
    """Render the good frames a SimulationError carries (``error.partial``) to OUT.partial.mp4 and
    its side files; print the error and where they are on one line; return 1."""
    import argparse
    import contextlib
    import io

    partial = getattr(error, "partial", None)
    kept = 0 if partial is None else int(partial.times.shape[0])
    if kept == 0:  # this simulator keeps no frames on failure
        print(f"error: {error}", file=sys.stderr)
        return 1
    path = _partial_path(out)
    plain = argparse.Namespace(**{**vars(args), "refiner": None})
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            _render_scene(plain, world, kept - 1, path, True, trajectory=partial)
    except Exception as failure:  # noqa: BLE001 - the blow-up is the error to report
        print(f"error: {error}; the {kept} good frames could not be written ({failure})", file=sys.stderr)
        return 1
    frames = "frame 0" if kept == 1 else f"frames 0-{kept - 1}"
    print(f"error: {error}; kept {frames} simulated before it in {path} (+ .layers.npz, .flow.mp4, "
          ".states.npz, .camera.json beside it)", file=sys.stderr)
    return 1


def _render_scene(args, world, frames: int, out: Path, quiet: bool, trajectory=None) -> int:
    """Simulate ``frames`` frames (or take ``trajectory``) and write the video, layers and states."""
    import numpy as np
    from tqdm import tqdm

    from .data.sample import render_layers, simulate
    from .fileio import atomic_path
    from .render import write_layers, write_video
    from .render.flow import flow_to_color

    spec = world.spec
    if spec.fluid is not None and spec.objects:  # 2D smoke coupled with rigid bodies
        from .render.fluid_rigid import write_fluid_rigid_outputs

        return _refine_written(args, out, spec.time.fps, _cameras_written(world, frames, out, write_fluid_rigid_outputs(
            world, frames, out, quiet, trajectory)))
    if spec.fluid is not None:
        return _refine_written(args, out, spec.time.fps, _cameras_written(world, frames, out,
                                                                          _render_fluid(world, frames, out, quiet,
                                                                                        trajectory)))
    if getattr(spec, "mpm", None) is not None and spec.objects:  # MPM coupled with rigid bodies
        from .render.composite import write_coupled_outputs

        return _refine_written(args, out, spec.time.fps, _cameras_written(world, frames, out, write_coupled_outputs(
            world, frames, out, quiet, trajectory)))
    if getattr(spec, "mpm", None) is not None:
        return _refine_written(args, out, spec.time.fps, _cameras_written(world, frames, out,
                                                                          _render_mpm(world, frames, out, quiet,
                                                                                      trajectory)))
    if world.rigid:
        return _refine_written(args, out, spec.time.fps, _cameras_written(world, frames, out,
                                                                          _render_rigid(world, frames, out, quiet,
                                                                                        trajectory)))
    if trajectory is None:
        with tqdm(total=frames, desc="simulate", unit="frame", disable=quiet, leave=False) as bar:
            trajectory = simulate(world, frames, progress=lambda done: bar.update(done - bar.n))
    with tqdm(total=trajectory.frame_count, desc="render", unit="frame", disable=quiet, leave=False) as bar:
        rendering = render_layers(world, trajectory, progress=lambda done: bar.update(done - bar.n))
    rgb, stacked = rendering.rgb, rendering.layers
    write_video(out, rgb, fps=spec.time.fps)
    if getattr(args, "refiner", None):
        _apply_refiner(args.refiner, out, rgb, stacked, spec.time.fps)
    layers_path = out.with_suffix(".layers.npz")
    write_layers(layers_path, stacked)
    flow_path = out.with_suffix(".flow.mp4")
    write_video(flow_path, flow_to_color(rendering.flow["flow_forward"].numpy()), fps=spec.time.fps)
    states_path = out.with_suffix(".states.npz")
    with atomic_path(states_path) as tmp:
        np.savez_compressed(tmp, positions=trajectory.positions.cpu().numpy(),
                            velocities=trajectory.velocities.cpu().numpy(), times=trajectory.times.numpy())
    print(f"wrote {out} ({rgb.shape[0]} frames, {rgb.shape[2]}x{rgb.shape[1]}, {spec.time.fps:g} fps, "
          f"backend {world.backend}, device {world.device})")
    print(f"wrote {layers_path} (depth, segmentation, normal, alpha, flow_forward/backward + occlusion, camera)")
    print(f"wrote {flow_path} (forward flow, colour wheel)")
    print(f"wrote {states_path} (positions, velocities, times)")
    return _cameras_written(world, frames, out, 0)


def _cameras_written(world, frames: int, out: Path, code: int) -> int:
    """After a successful render, write OUT.camera.json: frame 0's camera.json keys plus every
    frame's camera (time, position, look_at, up, fovy_deg, OpenCV K and world-to-camera extrinsics)."""
    if code != 0:
        return code
    from .render.camera_io import scene_cameras, write_camera_json

    spec = world.spec
    path = write_camera_json(out.with_suffix(".camera.json"), scene_cameras(spec.camera, frames + 1, spec.time.fps),
                             spec.time.fps)
    print(f"wrote {path} (camera per frame: position, look_at, up, fovy_deg, K, extrinsics)")
    return code


def _apply_refiner(weights, out: Path, rgb, layers: dict, fps: float) -> None:
    """``render --refiner``: keep the plain render as OUT.plain.mp4 and write the refined video as OUT."""
    import os

    from .neural.refiner import VideoRefiner
    from .render import write_video

    model = VideoRefiner.load(weights)
    refined = model.refine(dict(layers, rgb=rgb), layers["flow_backward"], layers["occlusion_backward"])
    plain = out.with_suffix(".plain.mp4")
    os.replace(out, plain)
    write_video(out, refined, fps=fps)
    print(f"wrote {out} (refined with {weights}); plain render kept as {plain}")


def _refine_written(args, out: Path, fps: float, code: int) -> int:
    """``render --refiner`` for fluid / rigid scenes: refine the video and layers just written."""
    if code != 0 or not getattr(args, "refiner", None):
        return code
    import numpy as np

    from .render import read_frames

    rgb, _ = read_frames(out)
    with np.load(out.with_suffix(".layers.npz"), allow_pickle=False) as data:
        layers = {key: data[key] for key in ("depth", "normal", "segmentation", "alpha", "flow_backward",
                                             "occlusion_backward")}
    _apply_refiner(args.refiner, out, rgb, layers, fps)
    return code


def _render_fluid(world, frames: int, out: Path, quiet: bool, trajectory=None) -> int:
    """``hybridsim render`` for a scene with a 2D grid fluid: smoke video, layers, states."""
    if world.spec.fluid.dimension == 3:  # a smoke volume over the ground and its obstacles
        from .render.fluid3d import write_fluid3d_outputs

        return write_fluid3d_outputs(world, frames, out, quiet, trajectory)
    import numpy as np
    import torch
    from tqdm import tqdm

    from .fileio import atomic_path
    from .render import Camera, to_uint8, write_layers, write_video
    from .render.flow import flow_to_color
    from .render.fluid import render_fluid_frames
    from .data.sample import camera_layers
    from .errors import SceneError
    from .render.camera_io import camera_moves
    from .sim.fluid import fluid_rollout

    spec = world.spec
    if camera_moves(spec.camera):
        raise SceneError("a moving camera ([[camera.keyframes]]) is not supported for [fluid] scenes yet",
                         file=spec.source, field="camera.keyframes")
    with torch.no_grad():
        with tqdm(total=frames, desc="simulate", unit="frame", disable=quiet, leave=False) as bar:
            trajectory = trajectory if trajectory is not None else \
                fluid_rollout(world, frames=frames, progress=lambda done: bar.update(done - bar.n))
        camera = Camera.from_spec(spec.camera)
        layers = render_fluid_frames(camera, spec.fluid, trajectory, 1.0 / spec.time.fps)
    rgb = to_uint8(layers.pop("rgb").numpy())
    write_video(out, rgb, fps=spec.time.fps)
    stacked = {key: value.numpy().astype(np.float32) if value.is_floating_point() else value.numpy()
               for key, value in layers.items()}
    stacked.update(camera_layers([camera] * rgb.shape[0]))
    layers_path, flow_path, states_path = (out.with_suffix(s) for s in (".layers.npz", ".flow.mp4", ".states.npz"))
    write_layers(layers_path, stacked)
    write_video(flow_path, flow_to_color(stacked["flow_forward"]), fps=spec.time.fps)
    with atomic_path(states_path) as tmp:
        extra = {} if getattr(trajectory, "temperature", None) is None else {"temperature": trajectory.temperature.numpy()}
        np.savez_compressed(tmp, density=trajectory.density.numpy(), velocity_x=trajectory.velocity_x.numpy(),
                            velocity_y=trajectory.velocity_y.numpy(), times=trajectory.times.numpy(), **extra)
    print(f"wrote {out} ({rgb.shape[0]} frames, {rgb.shape[2]}x{rgb.shape[1]}, {spec.time.fps:g} fps, "
          f"grid fluid {spec.fluid.cells[0]}x{spec.fluid.cells[1]}, backend {world.backend}, device {world.device})")
    print(f"wrote {layers_path} (density, alpha, depth, segmentation, normal, flow_forward/backward + occlusion, camera)")
    print(f"wrote {flow_path} (forward flow, colour wheel)")
    print(f"wrote {states_path} (density, face velocities, times)")
    return 0


def _render_mpm(world, frames: int, out: Path, quiet: bool, trajectory=None) -> int:
    """``hybridsim render`` for a scene with ``[mpm]`` particles: splat video, layers, states."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from .data.sample import camera_layers
    from .fileio import atomic_path
    from .render import write_layers, write_video
    from .render.camera_io import scene_cameras
    from .render.flow import flow_to_color
    from .render.particles import render_mpm_layers
    from .sim.mpm import mpm_rollout

    spec = world.spec
    with torch.no_grad():
        with tqdm(total=frames, desc="simulate", unit="frame", disable=quiet, leave=False) as bar:
            trajectory = trajectory if trajectory is not None else \
                mpm_rollout(world, frames=frames, progress=lambda done: bar.update(done - bar.n))
        cameras = scene_cameras(spec.camera, trajectory.frame_count, spec.time.fps)
        with tqdm(total=trajectory.frame_count, desc="render", unit="frame", disable=quiet, leave=False) as bar:
            rgb, stacked = render_mpm_layers(world, trajectory, cameras=cameras,
                                             progress=lambda done: bar.update(done - bar.n))
    stacked.update(camera_layers(cameras))
    write_video(out, rgb, fps=spec.time.fps)
    layers_path, flow_path, states_path = (out.with_suffix(s) for s in (".layers.npz", ".flow.mp4", ".states.npz"))
    write_layers(layers_path, stacked)
    write_video(flow_path, flow_to_color(stacked["flow_forward"]), fps=spec.time.fps)
    model = trajectory.model
    with atomic_path(states_path) as tmp:
        np.savez_compressed(tmp, positions=trajectory.positions.cpu().numpy(),
                            velocities=trajectory.velocities.cpu().numpy(), times=trajectory.times.numpy(),
                            particle_material=model.particle_material.cpu().numpy(),
                            particle_body=trajectory.particle_body.cpu().numpy(),
                            particle_color=model.particle_color.detach().cpu().numpy().astype(np.float32),
                            particle_volume=model.particle_volume.cpu().numpy())
    print(f"wrote {out} ({rgb.shape[0]} frames, {rgb.shape[2]}x{rgb.shape[1]}, {spec.time.fps:g} fps, "
          f"MPM {spec.mpm.dim}D {model.particle_count} particles, {trajectory.substeps} substeps/frame, "
          f"backend {world.backend}, device {world.device})")
    print(f"wrote {layers_path} (depth, segmentation = material + 1, normal, alpha, flow_forward/backward + occlusion, "
          "camera)")
    print(f"wrote {flow_path} (forward flow, colour wheel)")
    print(f"wrote {states_path} (particle positions, velocities, times, materials, bodies, colours, volumes)")
    return 0


def _render_rigid(world, frames: int, out: Path, quiet: bool, trajectory=None) -> int:
    """``hybridsim render`` for a scene with rigid objects (boxes, capsules, meshes, static boxes)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from .fileio import atomic_path
    from .render import write_layers, write_video
    from .render.flow import flow_to_color
    from .render.rigid import render_rigid_layers
    from .sim.rigid import rigid_rollout

    spec = world.spec
    with torch.no_grad():
        with tqdm(total=frames, desc="simulate", unit="frame", disable=quiet, leave=False) as bar:
            trajectory = trajectory if trajectory is not None else \
                rigid_rollout(world, frames=frames, progress=lambda done: bar.update(done - bar.n))
        with tqdm(total=frames + 1, desc="render", unit="frame", disable=quiet, leave=False) as bar:
            rgb, stacked = render_rigid_layers(world, trajectory, progress=lambda done: bar.update(done - bar.n))
    write_video(out, rgb, fps=spec.time.fps)
    layers_path, flow_path, states_path = (out.with_suffix(s) for s in (".layers.npz", ".flow.mp4", ".states.npz"))
    write_layers(layers_path, stacked)
    write_video(flow_path, flow_to_color(stacked["flow_forward"]), fps=spec.time.fps)
    with atomic_path(states_path) as tmp:
        np.savez_compressed(tmp, positions=trajectory.positions.cpu().numpy(),
                            orientations=trajectory.orientations.cpu().numpy(),
                            velocities=trajectory.velocities.cpu().numpy(),
                            angular_velocities=trajectory.angular_velocities.cpu().numpy(),
                            body_objects=np.asarray(trajectory.body_objects, dtype=np.int64),
                            times=trajectory.times.numpy())
    print(f"wrote {out} ({rgb.shape[0]} frames, {rgb.shape[2]}x{rgb.shape[1]}, {spec.time.fps:g} fps, "
          f"rigid bodies {len(trajectory.body_objects)}, backend {world.backend}, device {world.device})")
    print(f"wrote {layers_path} (depth, segmentation, normal, alpha, object coordinates and poses, "
          "flow_forward/backward + occlusion, camera)")
    print(f"wrote {flow_path} (forward flow, colour wheel)")
    print(f"wrote {states_path} (positions, orientations, velocities, angular velocities, times)")
    return 0


def cmd_info(args) -> int:
    import platform

    from . import __version__, backends

    lines = [f"hybridsim {__version__}", f"python {platform.python_version()} ({sys.executable})"]
    for module in ("torch", "warp", "taichi", "numpy", "trimesh", "imageio", "pydantic"):
        try:
            from importlib.metadata import version

            dist = {"warp": "warp-lang"}.get(module, module)
            lines.append(f"{module} {version(dist)}")
        except Exception:
            lines.append(f"{module} not installed")
    lines.append(f"backends: {', '.join(backends.BACKENDS)}")
    cuda = backends.cuda_available()
    lines.append("devices: cpu" + (", cuda" if cuda else " (no CUDA device)"))
    cache = backends.cache_dir()
    lines.append(f"warp kernel cache: {cache / 'warp'}")
    lines.append(f"taichi offline cache: {cache / 'taichi'}")
    lines.append(f"default scene: {_default_scene_path()}")
    print("\n".join(lines))
    return 0


def cmd_camera(args) -> int:
    """``hybridsim camera``: export a scene's camera(s) or import a camera file as a [camera] table."""
    from .render.camera_io import camera_toml, read_camera_file, scene_cameras, write_camera_json, write_opencv_yaml

    if args.import_file:
        camera, fields = read_camera_file(args.import_file, width=args.width, height=args.height)
        if camera is None:
            from .errors import AssetError

            raise AssetError("needs at least position, look_at, width and height to make a camera",
                             file=args.import_file)
        if "fps" in fields:
            print(f"# fps = {fields['fps']:g} (the target's frame rate; set [time] fps to match)")
        print(camera_toml(camera), end="")
        return 0
    spec = _load_scene(Path(args.scene) if args.scene else _default_scene_path())
    count = (args.frames if args.frames is not None else spec.frame_count) + 1
    cameras = scene_cameras(spec.camera, count, spec.time.fps)
    out = Path(args.export)
    if out.suffix.lower() in (".yml", ".yaml"):
        if not 0 <= args.frame < count:
            from .errors import HybridsimError

            raise HybridsimError(f"--frame must be in [0, {count - 1}] (got {args.frame})")
        write_opencv_yaml(out, cameras[args.frame], fps=spec.time.fps)
        print(f"wrote {out} (OpenCV FileStorage: camera_matrix, zero distortion, R, t, rvec of frame {args.frame})")
    else:
        write_camera_json(out, cameras, spec.time.fps)
        print(f"wrote {out} (camera.json of frame 0 plus {count} per-frame cameras with K and extrinsics)")
    return 0


def cmd_gradcheck(args) -> int:
    from .testing import finite_difference_gradcheck, scene_evaluator

    world = _build_world(args, precision="float64")
    if not world.learnable:
        print(f"{world.spec.source}: no learnable fields (mark some with learn = true)")
        return 1
    evaluate = scene_evaluator(world, frames=args.frames, pixel=args.pixel)
    rows = finite_difference_gradcheck(world, frames=args.frames, evaluate=evaluate)
    width = max(len(row.name) for row in rows)
    print(f"{'parameter':<{width}}  {'autodiff':>14}  {'finite diff':>14}  {'rel. error':>10}")
    worst = 0.0
    for row in rows:
        print(f"{row.name:<{width}}  {row.autodiff:>14.6e}  {row.finite_difference:>14.6e}  {row.error:>10.2e}{row.note}")
        worst = max(worst, row.error)
    verdict = "PASS" if worst <= args.tolerance else "FAIL"
    jumps = [row.name for row in rows if row.kind == "jump"]
    kinks = [row.name for row in rows if row.kind == "kink"]
    print(f"{verdict}: worst relative error {worst:.2e} (tolerance {args.tolerance:g}, backend {world.backend}, float64)"
          + (f"; kinks (checked against one side): {', '.join(kinks)}" if kinks else "")
          + (f"; not differentiable here (the loss jumps): {', '.join(jumps)}" if jumps else ""))
    return 0 if verdict == "PASS" else 1


def cmd_metrics(args) -> int:
    import json

    import numpy as np
    import torch

    from .errors import AssetError
    from .metrics import flicker, flow_consistency, scene_physics_metrics, warping_error
    from .render import read_frames

    frames, _ = read_frames(args.video)
    result = {"video": str(args.video), "frames": int(frames.shape[0]), "flicker": flicker(torch.from_numpy(frames))}
    layers_path = Path(args.layers) if args.layers else Path(str(args.video)).with_suffix(".layers.npz")
    if layers_path.exists():
        try:
            layers = np.load(layers_path, allow_pickle=False)
            forward, occlusion = torch.from_numpy(layers["flow_forward"]), torch.from_numpy(layers["occlusion_forward"])
            backward = torch.from_numpy(layers["flow_backward"])
        except (KeyError, ValueError, OSError) as error:
            raise AssetError(f"cannot read flow layers ({error})", file=str(layers_path)) from None
        if forward.shape[:3] != frames.shape[:3]:
            raise AssetError(f"layers have {tuple(forward.shape[:3])} frames x pixels, video has {frames.shape[:3]}",
                             file=str(layers_path))
        result["warping_error"] = warping_error(torch.from_numpy(frames), forward.double(), occlusion)
        result["flow_consistency_px"] = flow_consistency(forward.double(), backward.double(), occlusion)
    states_path = Path(args.states) if args.states else Path(str(args.video)).with_suffix(".states.npz")
    if states_path.exists() and args.scene:  # spheres: flat keys (as before); other simulators under "physics"
        spec = _load_scene(args.scene)
        try:
            with np.load(states_path, allow_pickle=False) as data:
                states = {key: data[key] for key in data.files}
            physics = scene_physics_metrics(spec, states)
        except (KeyError, ValueError, OSError) as error:
            raise AssetError(f"cannot read the states this scene's simulator writes ({error})",
                             file=str(states_path)) from None
        if physics["simulator"] == "spheres":
            result.update(physics)
        else:
            result["physics"] = physics
    print(json.dumps(result, indent=2))
    return 0


def cmd_generate(args) -> int:
    from .data.gates import QualityGates
    from .data.generation import generate

    distribution = Path(args.distribution)
    if not distribution.exists() and distribution.name == args.distribution:  # a shipped example by name
        from importlib.resources import files

        shipped = Path(str(files("hybridsim.scenes") / args.distribution))
        distribution = shipped if shipped.is_file() else distribution
    gates = QualityGates(penetration_m=args.penetration_tol, energy_gain_j_per_kg=args.energy_tol,
                         require_in_frame=args.require_in_frame, mass_gain=args.mass_tol, cfl_max=args.cfl_max)
    summary = generate(distribution, args.count, args.output, workers=args.workers, ray=args.ray,
                       shard_size=args.shard_size, seed=args.seed, frames=args.frames, gates=gates,
                       max_attempts=args.max_attempts, progress=not args.quiet,
                       max_state_particles=args.max_particles, field_stride=args.field_stride,
                       refiner=args.refiner, preview=args.preview)
    rejected = ", ".join(f"{gate} {n}" for gate, n in summary["rejected_by_gate"].items()) or "none"
    print(f"wrote {summary['count']} samples in {summary['shards']} shard(s) to {args.output} "
          f"({summary['generated']} generated now, {summary['resumed']} resumed; "
          f"{summary['samples_per_s'] or 0:.2f} samples/s over {summary['wall_s']:.1f} s, {summary['executor']})")
    print(f"rejected draws: {summary['rejected_count']} ({rejected}); manifest.json and summary.json beside the shards")
    return 0


def cmd_preview(args) -> int:
    from .data.preview import write_preview

    for path in write_preview(args.output, samples=args.samples, seed=args.seed):
        print(f"wrote {path}")
    return 0


def cmd_fit(args) -> int:
    from .fit import fit
    from .fit.report import OUTPUT_FILES

    spec = _load_scene(Path(args.scene))
    networks = {}
    if args.refiner or args.motion_prior:
        from .fit import NetworkSettings

        prior = args.motion_prior if args.motion_prior in (None, "new") else Path(args.motion_prior)
        networks = dict(refiner=Path(args.refiner) if args.refiner else None, motion_prior=prior,
                        network_settings=NetworkSettings(lr=args.network_lr, freeze_refiner=args.freeze_refiner))
    from .fit import FitSettings

    settings = FitSettings(lr=args.lr, max_offset=args.offset, drag=args.drag, drag_max=args.drag_max,
                           coverage=args.coverage)
    try:
        result = fit(spec, Path(args.target), iterations=args.iterations, restarts=args.restarts, lr=args.lr,
                     frames=args.frames, camera=Path(args.camera) if args.camera else None,
                     run_dir=Path(args.output), progress=not args.quiet, resume=not args.fresh,
                     backend=args.backend, device=args.device, threads=args.threads, settings=settings,
                     masks=Path(args.masks) if args.masks else None,
                     tracks=Path(args.tracks) if args.tracks else None, **networks)
    except KeyboardInterrupt:
        print(f"fit stopped; the checkpoint in {args.output} resumes it: run the same command again", file=sys.stderr)
        raise
    width = max(len(path) for path in result.values)
    for path, value in result.values.items():
        sigma = result.uncertainties.get(path)
        ident = result.identifiable.get(path)
        shown = ", ".join(f"{v:.5g}" for v in value) if isinstance(value, list) else f"{value:.5g}"
        if sigma is None:
            unc = "n/a"
        else:
            unc = ", ".join("n/a" if s is None else f"{s:.2g}" for s in sigma) if isinstance(sigma, list) else f"{sigma:.2g}"
        flag = "" if (all(ident) if isinstance(ident, list) else ident) is not False else "  (not identifiable)"
        print(f"{path:<{width}}  {shown}  +- {unc}{flag}")
    for path, value in result.nuisance.items():
        print(f"{path:<{width}}  {value:.5g}  (nuisance; not written to fitted.toml)")
    resumed = f", resumed after {result.resumed_from} iterations" if result.resumed_from else ""
    print(f"final loss {result.final_loss:.5g} ({', '.join(result.losses_used)}; {result.frames} frames; "
          f"best of {result.restarts} restart(s){resumed}; {result.wall_time_s:.1f} s)")
    files = list(OUTPUT_FILES) + list(result.details.get("networks", {}).get("files", {}).values())
    print(f"wrote {', '.join(files)} in {args.output}")
    return 0


def cmd_train_refiner(args) -> int:
    import torch

    from .errors import HybridsimError
    from .neural.train_refiner import checkpoint_dir, train_refiner

    if len(args.scenes) != len(args.targets):
        raise HybridsimError(f"--scenes and --targets must pair up: got {len(args.scenes)} scene(s) and "
                             f"{len(args.targets)} target(s)")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    try:
        result = train_refiner(list(zip(args.scenes, args.targets)), config=args.config, iterations=args.iterations,
                               lr=args.lr, out=out, checkpoint_every=args.checkpoint_every, resume=not args.fresh,
                               progress=not args.quiet, clip_length=args.clip_length, seed=args.seed,
                               temporal_weight=args.temporal_weight, adversarial_weight=args.adversarial_weight)
    except KeyboardInterrupt:
        print(f"training stopped; the checkpoint in {checkpoint_dir(out)} resumes it: run the same command again",
              file=sys.stderr)
        raise
    losses = result.history["total"]
    resumed = f", resumed after {result.resumed_from} iterations" if result.resumed_from else ""
    first = f"{losses[0]:.5g} -> " if losses else ""
    print(f"trained the {args.config} refiner for {result.steps} iterations{resumed}: loss {first}"
          f"{losses[-1]:.5g} ({result.wall_time_s:.1f} s)" if losses else f"nothing to train ({result.steps} iterations)")
    print(f"wrote {result.weights} (+ {out.with_suffix('.json').name})" + (f" and {result.plot}" if result.plot else ""))
    return 0


def cmd_bench(args) -> int:
    from .bench import run_benchmarks

    return run_benchmarks(args.case, as_json=args.json, quick=args.quick, output=args.output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridsim", description="Differentiable physics and neural video generation.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--python", action="store_true",
                        help="the scene arguments are Python scene scripts: run them (they define `scene` or "
                             "`build()`); without it scene files are TOML data and never executed")
    parser.add_argument("--allow-outside-paths", action="store_true",
                        help="let scene files name files outside their own folder (off by default)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def scene_args(p, scene_required=False):
        p.add_argument("scene", nargs=None if scene_required else "?", help="scene file (.toml); default: the shipped bounce scene")
        p.add_argument("--backend", choices=["warp", "taichi"], help="override the scene's backend")
        p.add_argument("--device", help="cpu, cuda or auto (overrides the scene)")
        p.add_argument("--frames", type=int, help="number of frames to simulate (overrides the scene)")

    p = sub.add_parser("render", help="simulate a scene and write video plus ground-truth layers")
    scene_args(p)
    p.add_argument("-o", "--output", default="out.mp4", help="output mp4 (layers and states go beside it)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--refiner", metavar="WEIGHTS", help="refine the video with trained refiner weights (.safetensors); "
                   "the plain render is kept as OUT.plain.mp4")
    p.add_argument("--flo", action="store_true", help="also write every frame's forward and backward flow as "
                   "Middlebury .flo files in OUT.flo/ (forward_0000.flo, backward_0000.flo, ...)")
    p.set_defaults(run=cmd_render)

    p = sub.add_parser("info", help="versions, backends, devices and cache paths")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("camera", help="export a scene's camera (camera.json or OpenCV YAML) or import one as [camera]")
    p.add_argument("scene", nargs="?", help="scene TOML (default: the embedded bounce scene)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--export", metavar="FILE", help="write FILE.json (every frame) or FILE.yml (OpenCV, one frame)")
    group.add_argument("--import", dest="import_file", metavar="FILE",
                       help="read camera.json or an OpenCV calibration (JSON/YAML) and print a [camera] table")
    p.add_argument("--frames", type=int, default=None, help="frames to export (default: the scene's)")
    p.add_argument("--frame", type=int, default=0, help="the frame an OpenCV YAML export describes (default 0)")
    p.add_argument("--width", type=int, default=None, help="image width, for OpenCV files that do not give it")
    p.add_argument("--height", type=int, default=None, help="image height, for OpenCV files that do not give it")
    p.set_defaults(run=cmd_camera)

    p = sub.add_parser("gradcheck", help="check autodiff gradients of a scene against finite differences (float64)")
    scene_args(p)
    p.add_argument("--pixel", action="store_true", help="differentiate a pixel loss through the renderer too")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest relative error that passes")
    p.set_defaults(run=cmd_gradcheck)

    p = sub.add_parser("metrics", help="warping error, flow consistency, flicker; physics checks from states")
    p.add_argument("video", help="video file or frame folder")
    p.add_argument("--layers", help="layers npz with flow (default: VIDEO.layers.npz beside it)")
    p.add_argument("--states", help="states npz (default: VIDEO.states.npz beside it)")
    p.add_argument("--scene", help="scene file, for physical checks of the states (masses, shapes, grids; any "
                   "simulator)")
    p.set_defaults(run=cmd_metrics)

    p = sub.add_parser(
        "generate", help="draw scenes from a distribution file and write WebDataset shards of samples",
        description="Draw COUNT scenes from a distribution file (a scene file whose values may be "
                    "{ uniform = [lo, hi] }, { normal = [mean, std] }, { loguniform = [lo, hi] }, { choice = [...] }, "
                    "{ randint = [lo, hi] }; see scenes/bounce_random.toml), simulate, render and write "
                    "OUT/shard-NNNNNN.tar with {key}.mp4, .layers.npz, .states.npz and .json per sample, plus "
                    "manifest.json and summary.json. Rerun the same command to resume after an interruption.")
    p.add_argument("distribution", help="distribution file (.toml), or the name of a shipped one (bounce_random.toml)")
    p.add_argument("--count", type=int, required=True, help="number of accepted samples to write")
    p.add_argument("-o", "--output", required=True, help="output folder for shards, manifest and summary")
    p.add_argument("--workers", type=int, help="local worker processes (default: CPU count); with --ray, "
                                               "the CPUs of a private local head")
    p.add_argument("--ray", metavar="ADDRESS", help="run as Ray tasks: 'auto' (this machine's cluster, else a private "
                                                     "local head), 'local', or an address such as ray://head:10001")
    p.add_argument("--shard-size", type=int, default=100, help="samples per shard (default 100)")
    p.add_argument("--seed", type=int, default=0, help="base seed: sample i is drawn with default_rng([seed, i])")
    p.add_argument("--frames", type=int, help="frames to simulate per sample (overrides the distribution)")
    p.add_argument("--require-in-frame", action="store_true", help="reject draws whose objects leave the image")
    p.add_argument("--penetration-tol", type=float, default=1e-3, metavar="M",
                   help="reject draws with an object overlapping the ground or another object by more (rigid "
                        "scenes: also at t = 0; default 1e-3 m)")
    p.add_argument("--energy-tol", type=float, default=1e-2, metavar="J_PER_KG",
                   help="reject draws whose mechanical energy rises by more (default 1e-2 J/kg)")
    p.add_argument("--max-attempts", type=int, default=16, help="draws per sample before giving up (default 16)")
    p.add_argument("--mass-tol", type=float, default=1e-2, metavar="FRACTION",
                   help="fluid: reject draws holding more density than the inflows added, by this fraction (default 0.01)")
    p.add_argument("--cfl-max", type=float, default=1.0, help="fluid / MPM: reject draws whose CFL number at a frame "
                                                               "boundary exceeds this (default 1)")
    p.add_argument("--max-particles", type=int, metavar="N", help="MPM: keep at most N particles (evenly strided) in "
                                                                  "states.npz (default: the distribution's [generate])")
    p.add_argument("--field-stride", type=int, metavar="N", help="fluid: keep every N-th cell of the fields in states.npz "
                                                                 "(default: the distribution's [generate], else 1)")
    p.add_argument("--refiner", metavar="WEIGHTS", help="also write {key}.refined.mp4, refined by trained refiner "
                                                        "weights (.safetensors); the plain video and layers stay")
    p.add_argument("--preview", action="store_true", help="write OUT/preview/contact_sheet.png and histograms.png")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("preview", help="contact sheet and parameter histograms of a generated data set",
                       description="Write OUT/preview/contact_sheet.png (first, middle and last frame of random "
                                   "samples) and OUT/preview/histograms.png (every drawn parameter, from the "
                                   "{key}.json files) for an output folder of hybridsim generate.")
    p.add_argument("output", help="output folder of hybridsim generate")
    p.add_argument("--samples", type=int, default=12, help="samples on the contact sheet (default 12)")
    p.add_argument("--seed", type=int, default=0, help="which samples (default 0)")
    p.set_defaults(run=cmd_preview)

    p = sub.add_parser("fit", help="fit learnable scene values to a target video by gradient descent")
    p.add_argument("scene", help="scene file (.toml) with learn = true fields")
    p.add_argument("--backend", choices=["warp", "taichi"], help="override the scene's backend")
    p.add_argument("--device", help="cpu, cuda or auto (overrides the scene)")
    p.add_argument("--frames", type=int, help="simulated frames to fit (default: all the target and scene cover)")
    p.add_argument("--target", required=True, help="target video (mp4) or folder of png/jpg frames")
    p.add_argument("--camera", help="camera.json (position, look_at, up, fovy_deg, width, height, fps) "
                   "overriding the scene camera; fps is the target's frame rate")
    p.add_argument("-o", "--output", required=True, help="run directory: outputs and the resumable checkpoint")
    p.add_argument("--iterations", type=int, default=40, help="Adam iterations per restart (default 40)")
    p.add_argument("--restarts", type=int, default=1, help="independent starts; the best final loss wins (default 1)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate in reparameterised units (default 0.05)")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--fresh", action="store_true", help="discard a checkpoint in the run directory instead of resuming")
    p.add_argument("--refiner", help="video refiner weights (.safetensors) trained jointly; the refined render "
                   "is what the rgb loss compares (sphere scenes only)")
    p.add_argument("--freeze-refiner", action="store_true", help="keep the refiner's weights fixed")
    p.add_argument("--motion-prior", metavar="new|WEIGHTS", help="train a residual-force motion prior inside the "
                   "rollout: 'new' or weights (.safetensors) to start from (sphere scenes only)")
    p.add_argument("--network-lr", type=float, default=1e-3, help="Adam learning rate of the networks (default 1e-3)")
    p.add_argument("--offset", type=float, default=0.0, metavar="MAX_FRAMES",
                   help="learn the target's start offset after the simulation, 0..MAX_FRAMES frames (fractional; "
                   "a nuisance value reported in fit.json; sphere, rigid and MPM scenes)")
    p.add_argument("--drag", choices=["linear", "quadratic"], help="learn an air-drag coefficient, -m k v or "
                   "-m c |v| v on every moving object (sphere and rigid-body scenes; rigid bodies: at the centre of "
                   "mass, no drag torque; a nuisance reported in fit.json; the scene has no drag term)")
    p.add_argument("--coverage", choices=["auto", "observed", "rendered"], default="auto",
                   help="how silhouettes are compared once the fit has settled: 'observed' runs the same background "
                   "subtraction on the target and on each render (exact for a target with the scene's own look), "
                   "'rendered' compares the target's mask with the renderer's coverage throughout; 'auto' (default) "
                   "goes on to 'observed' only when the target shares the scene's look")
    p.add_argument("--drag-max", type=float, default=2.0, help="upper end of the drag coefficient's range "
                   "(1/s linear, 1/m quadratic; default 2)")
    p.add_argument("--masks", metavar="DIR", help="folder of one binary PNG mask of the object(s) per target frame "
                   "(extra loss term 'masks')")
    p.add_argument("--tracks", metavar="FILE", help="CSV (frame,object,x,y) or JSON of the objects' pixel positions "
                   "per target frame (extra loss term 'tracks')")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_fit)

    p = sub.add_parser("train-refiner", help="train the neural video refiner on (scene, target video) pairs")
    p.add_argument("--scenes", nargs="+", required=True, help="scene files (.toml), one per target")
    p.add_argument("--targets", nargs="+", required=True, help="target videos (mp4) or frame folders, one per scene")
    p.add_argument("-o", "--output", required=True, help="weights (.safetensors); OUT.json, OUT.loss.png and the "
                   "resumable OUT.checkpoint/ go beside it")
    p.add_argument("--config", choices=["tiny", "base"], default="tiny", help="model size: tiny (CPU) or base (GPU)")
    p.add_argument("--iterations", type=int, default=200, help="Adam iterations (default 200)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    p.add_argument("--clip-length", type=int, default=4, help="frames per training clip (default 4)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="iterations between checkpoints (default 50)")
    p.add_argument("--temporal-weight", type=float, default=1.0, help="weight of the warped temporal loss (default 1)")
    p.add_argument("--adversarial-weight", type=float, default=0.0,
                   help="weight of the multi-scale temporal discriminator's hinge loss (0: off)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and clip-sampling seed")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--fresh", action="store_true", help="discard a checkpoint instead of resuming")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_train_refiner)

    p = sub.add_parser("bench", help="run benchmarks side by side with their references")
    p.add_argument("case", nargs="?", help="one case name (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON record per case")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.add_argument("-o", "--output", help="also write the records to this JSON file")
    p.set_defaults(run=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    global _PYTHON_SCENES
    _PYTHON_SCENES = bool(args.python)
    if args.allow_outside_paths:  # for this command only (main() may run inside a longer process)
        import os

        from .assets import ALLOW_OUTSIDE_ENV

        previous = os.environ.get(ALLOW_OUTSIDE_ENV)
        os.environ[ALLOW_OUTSIDE_ENV] = "1"
        try:
            return _run(args)
        finally:
            if previous is None:
                os.environ.pop(ALLOW_OUTSIDE_ENV, None)
            else:
                os.environ[ALLOW_OUTSIDE_ENV] = previous
    return _run(args)


def _run(args) -> int:
    from .errors import HybridsimError, SimulationError

    try:
        return int(args.run(args) or 0)
    except SimulationError as error:  # the run failed part way (1); bad input and usage give 2
        print(f"error: {error}", file=sys.stderr)
        return 1
    except HybridsimError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
