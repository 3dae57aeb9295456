"""What the fit needs from a scene, for each kind of scene it can fit.

The fit loop (``hybridsim.fit.optimize``), the restart screening and the Laplace uncertainty only
talk to a :class:`FitScene`: roll out with given values, render the frames differentiably, give the
soft coverage of the moving objects (what background subtraction finds in the target) and the
projected centres of the moving objects.

* ``spheres``: the sphere solver and the analytic sphere renderer; coverage is the sphere alpha.
* ``rigid``: the rigid-body solver and the mesh renderer; coverage is the soft coverage of the
  moving bodies (static boxes excluded, but hiding what is behind them, as they do in the
  target's background).
* ``fluid``: the 2D grid fluid and its plane renderer; coverage is the smoke opacity, the centre
  the smoke's density-weighted centroid.
* ``mpm``: MPM particles (2D or 3D, without rigid bodies) and the splat renderer; coverage is the
  splat coverage, the centres the mean particle position of each ``[[mpm.bodies]]``.
"""

from __future__ import annotations

import torch

from ..errors import HybridsimError

__all__ = ["FitScene", "fit_scene", "check_fittable", "NETWORKS_UNSUPPORTED"]

NETWORKS_UNSUPPORTED = ("a refiner or motion prior in the fit works on sphere scenes only; rigid-body and fluid scenes are not "
                        "supported yet, nor MPM scenes (fit them without --refiner / --motion-prior)")


class FitScene:
    """Adapter between the fit and one world's simulator and renderer."""

    kind = "spheres"
    time_fields = ("positions", "velocities", "times")
    """Trajectory fields with a leading frame axis, interpolated for a fractional start offset (None:
    the scene kind cannot learn one)."""

    def __init__(self, world):
        self.world = world

    def rollout(self, values: dict, frames: int, *, check: bool = True, motion_prior=None):
        """Trajectory of ``frames`` simulated frames (frames + 1 images), differentiable w.r.t. ``values``
        (and the parameters of ``motion_prior``, a ``(state, time) -> forces`` hook of the rollout)."""
        from ..sim.rollout import rollout

        return rollout(self.world, values, frames=frames, check_finite=check, motion_prior=motion_prior)

    def render(self, trajectory, values: dict, camera) -> dict:
        """``rgb`` (T, H, W, 3) and ``coverage`` (T, H, W) of the moving objects, differentiable."""
        from ..render.scene import render_trajectory

        out = render_trajectory(self.world, trajectory, values, camera=camera)
        out["coverage"] = out["alpha"]
        return out

    def centres(self, trajectory) -> torch.Tensor:
        """World centres (T, N, 3) of the moving objects of world 0."""
        return trajectory.positions[:, 0]

    def object_names(self) -> list[str]:
        """Names of the moving objects in ``centres`` order (the index where a name is missing)."""
        spec = self.world.spec
        return [spec.objects[self.world._object_index(k)].name or str(k) for k in range(self.world.sphere_count)]

    def screen_centres(self, draws: dict, count: int, frames: int) -> torch.Tensor:
        """Centres (T, M, N, 3) of the moving objects for ``count`` value sets (no gradients)."""
        from ..sim.rollout import rollout
        from ..sim.world import World

        world = World(self.world.spec, world_count=count, backend=self.world.backend, device=self.world.device)
        with torch.no_grad():
            trajectory = rollout(world, {k: v.to(world.dtype) for k, v in draws.items()}, frames=frames,
                                 check_finite=False)
        return trajectory.positions.cpu()

    def _screen_one_by_one(self, draws: dict, count: int, frames: int) -> torch.Tensor:
        """``screen_centres`` for solvers without a world batch: one rollout per value set; a draw
        that blows up is a bad candidate (NaN centres), not an error."""
        out = []
        with torch.no_grad():
            for m in range(count):
                values = {k: v[m].to(self.world.dtype) for k, v in draws.items()}
                try:
                    out.append(self.centres(self.rollout(values, frames, check=False)).detach().cpu().double())
                except HybridsimError:
                    out.append(None)
        shape = next((x.shape for x in out if x is not None), None)
        if shape is None:
            raise HybridsimError("every screened value set failed to simulate", file=self.world.spec.source)
        return torch.stack([x if x is not None else torch.full(shape, float("nan"), dtype=torch.float64)
                            for x in out], dim=1)

    def initial_coverage(self, camera) -> torch.Tensor:
        """Coverage (H, W) of the moving objects in frame 0 at the scene's values."""
        with torch.no_grad():
            trajectory = self.rollout({}, 0, check=False)
            return self.render(trajectory, {}, camera)["coverage"][0].detach().float().cpu()

    def background(self, camera) -> torch.Tensor:
        """The scene rendered without its moving objects (H, W, 3)."""
        from ..render.scene import scene_render_options
        from ..render.spheres import render_spheres

        empty = torch.zeros((0, 3), dtype=torch.float32)
        with torch.no_grad():
            out = render_spheres(camera, empty, torch.zeros(0), empty, **scene_render_options(self.world))
        return out["rgb"].float().cpu()


class RigidFitScene(FitScene):
    kind = "rigid"
    time_fields = ("positions", "orientations", "velocities", "angular_velocities", "times")

    def rollout(self, values: dict, frames: int, *, check: bool = True, motion_prior=None):
        """``motion_prior``: None or an :class:`hybridsim.sim.rigid.AirDrag` (the drag nuisance,
        ``hybridsim.fit.nuisance.drag_hook``), applied as the rollout's external force; a learned
        motion prior is not supported on rigid scenes."""
        from ..sim.rigid import AirDrag, rigid_rollout

        if motion_prior is not None and not isinstance(motion_prior, AirDrag):
            raise HybridsimError(NETWORKS_UNSUPPORTED, file=self.world.spec.source)

        return rigid_rollout(self.world, values, frames=frames, check=check, force_hook=motion_prior)

    shadows_in_coverage = True
    """False: the coverage leaves out the moving bodies' cast shadows (a target lit differently)."""

    def render(self, trajectory, values: dict, camera) -> dict:
        from ..render.rigid import render_rigid

        out = render_rigid(self.world, trajectory, values, camera=camera)
        if not self.shadows_in_coverage:
            out["coverage"] = out["coverage_objects"]
        return out

    def centres(self, trajectory) -> torch.Tensor:
        return trajectory.positions

    def object_names(self) -> list[str]:
        moving = [obj for obj in self.world.spec.objects if obj.type not in ("static_box", "static_mesh")]
        return [obj.name or str(k) for k, obj in enumerate(moving)]

    def screen_centres(self, draws: dict, count: int, frames: int) -> torch.Tensor:
        # the rigid solver runs one world at a time: one rollout per value set
        return self._screen_one_by_one(draws, count, frames)

    def background(self, camera) -> torch.Tensor:
        """Ground, sky and static boxes (their textures, the scene's light, their shadows): the scene
        without its moving bodies, rendered the way ``render_rigid`` renders it."""
        from ..render.mesh import render_meshes, transform_meshes
        from ..render.rigid import rigid_object_meshes, rigid_textures, scene_light_options
        from ..solvers.rigid import quat_from_rotation_vector
        from ..sim.rigid import rigid_model

        spec = self.world.spec
        statics = [i for i, obj in enumerate(spec.objects) if obj.type in ("static_box", "static_mesh")]
        options = scene_light_options(self.world)
        dtype = torch.float64
        if statics:
            meshes = rigid_object_meshes(self.world, rigid_model(self.world), dtype)
            poses = torch.stack([torch.cat([torch.tensor(spec.objects[i].position, dtype=dtype),
                                            quat_from_rotation_vector(torch.tensor(spec.objects[i].orientation,
                                                                                   dtype=dtype))]) for i in statics])
            local = [meshes[i][0] for i in statics]
            verts, faces, owner = transform_meshes(local, [meshes[i][1] for i in statics], poses)
            colors = torch.stack([torch.tensor(spec.objects[i].color, dtype=dtype) for i in statics])
            textures = [rigid_textures(self.world)[i] for i in statics]
            if any(t is not None for t in textures):
                options = dict(options, textures=textures, texture_coords=torch.cat(local))
        else:  # one invisible triangle far below the ground keeps the renderer's shapes simple
            verts = torch.tensor([[0.0, 0.0, -1e3], [1e-3, 0.0, -1e3], [0.0, 1e-3, -1e3]], dtype=dtype)
            faces, owner = torch.tensor([[0, 1, 2]]), torch.zeros(1, dtype=torch.long)
            colors, poses = torch.zeros(1, 3, dtype=dtype), None
        with torch.no_grad():
            out = render_meshes(camera, verts, faces, owner, colors, poses=poses, shadows=True, **options)
        return out["rgb"].float().cpu()


class FluidFitScene(FitScene):
    """A 2D grid fluid: the rendered smoke opacity is the coverage; the centre is the smoke's
    density-weighted centroid in the fluid plane (world x, z at y = 0)."""

    kind = "fluid"
    time_fields = None  # blending two frames of a grid field cross-fades the smoke: no start offset

    def rollout(self, values: dict, frames: int, *, check: bool = True, motion_prior=None):
        from ..sim.fluid import fluid_rollout

        return fluid_rollout(self.world, values, frames=frames, check=check)

    def render(self, trajectory, values: dict, camera) -> dict:
        from ..render.fluid import render_fluid_frames

        spec = self.world.spec
        out = render_fluid_frames(camera, spec.fluid, trajectory, 1.0 / spec.time.fps)
        out["coverage"] = out["alpha"]
        return out

    def centres(self, trajectory) -> torch.Tensor:
        fluid = self.world.spec.fluid
        density = trajectory.density.clamp(min=0.0)  # (T, nx, ny)
        nx, ny = density.shape[1:]
        dx = float(fluid.cell_size)
        xs = fluid.origin[0] + (torch.arange(nx, dtype=density.dtype) + 0.5) * dx
        zs = fluid.origin[1] + (torch.arange(ny, dtype=density.dtype) + 0.5) * dx
        mass = density.sum(dim=(1, 2)).clamp(min=1e-12)
        cx = (density.sum(dim=2) * xs).sum(1) / mass
        cz = (density.sum(dim=1) * zs).sum(1) / mass
        return torch.stack([cx, torch.zeros_like(cx), cz], dim=-1)[:, None, :]

    def object_names(self) -> list[str]:
        return ["smoke"]

    def screen_centres(self, draws: dict, count: int, frames: int) -> torch.Tensor:
        return self._screen_one_by_one(draws, count, frames)

    def background(self, camera) -> torch.Tensor:
        """The box without smoke (obstacles drawn), as the fluid renderer draws it."""
        from types import SimpleNamespace

        from ..render.fluid import render_fluid_frames

        spec = self.world.spec
        nx, ny = spec.fluid.cells
        empty = SimpleNamespace(density=torch.zeros(1, nx, ny, dtype=torch.float64),
                                velocity_x=torch.zeros(1, nx + 1, ny, dtype=torch.float64),
                                velocity_y=torch.zeros(1, nx, ny + 1, dtype=torch.float64),
                                times=torch.zeros(1, dtype=torch.float64), temperature=None)
        with torch.no_grad():
            out = render_fluid_frames(camera, spec.fluid, empty, 1.0 / spec.time.fps)
        return out["rgb"][0].float().cpu()


class MPMFitScene(FitScene):
    """MPM particles: the splat coverage is the coverage; the centres are the bodies' mean particle
    positions (world coordinates; a 2D domain's (x, z) lifted to (x, 0, z)). Rollouts are
    checkpointed by ``mpm_rollout`` (one segment replayed at a time in the backward pass)."""

    kind = "mpm"

    def rollout(self, values: dict, frames: int, *, check: bool = True, motion_prior=None):
        from ..sim.mpm import mpm_rollout

        if motion_prior is not None:
            raise HybridsimError(NETWORKS_UNSUPPORTED, file=self.world.spec.source)
        return mpm_rollout(self.world, values, frames=frames)

    def render(self, trajectory, values: dict, camera) -> dict:
        from ..render.particles import render_mpm

        out = render_mpm(self.world, trajectory, values, cameras=camera)
        out["coverage"] = out["alpha"]
        return out

    def centres(self, trajectory) -> torch.Tensor:
        positions = trajectory.world_positions()  # (T, N, 3)
        body = trajectory.particle_body.to(positions.device)
        count = int(body.max()) + 1 if body.numel() else 0
        weights = torch.nn.functional.one_hot(body, count).to(positions.dtype)  # (N, B)
        return torch.einsum("tnd,nb->tbd", positions, weights) / weights.sum(0)[None, :, None]

    def object_names(self) -> list[str]:
        return [body.name or str(k) for k, body in enumerate(self.world.spec.mpm.bodies)]

    def screen_centres(self, draws: dict, count: int, frames: int) -> torch.Tensor:
        return self._screen_one_by_one(draws, count, frames)

    def background(self, camera) -> torch.Tensor:
        """The empty domain (2D: its background colour; 3D: ground and sky) as the splat renderer draws it."""
        from types import SimpleNamespace

        from ..render.particles import _background, _mpm_options
        from ..sim.mpm import mpm_model

        model = mpm_model(self.world)
        options, _, _ = _mpm_options(self.world, SimpleNamespace(model=model), None)
        with torch.no_grad():
            light = torch.as_tensor(options["light_direction"], dtype=torch.float64)
            colour, _, _ = _background(camera, torch.float64, "cpu", options.get("background"), options.get("ground"),
                                       light / light.norm(), torch.as_tensor(options["light_intensity"]).double(),
                                       torch.as_tensor(options["ambient"]).double())
        return colour.reshape(camera.height, camera.width, 3).float().cpu()


def check_fittable(spec) -> None:
    """Refuse scenes the fit cannot handle yet, before any target is read."""
    if getattr(spec, "mpm", None) is not None and spec.objects:
        raise HybridsimError("fit works on sphere, rigid-body, grid-fluid and MPM scenes; MPM coupled with rigid "
                             "bodies cannot be fitted yet", file=spec.source)
    if getattr(spec, "fluid", None) is not None and spec.objects:
        raise HybridsimError("fit works on sphere, rigid-body, grid-fluid (without [[objects]]; obstacles are "
                             "[[fluid.obstacles]]) and MPM scenes; a [fluid] with rigid bodies ([[objects]]) cannot "
                             "be fitted yet (`render`, `metrics`, `generate` and the Python API "
                             "hybridsim.sim.fluid_rigid.fluid_rigid_rollout, differentiable, handle it)",
                             file=spec.source)


def fit_scene(world) -> FitScene:
    """The adapter for ``world``: spheres, rigid bodies, a grid fluid or MPM particles."""
    spec = world.spec
    check_fittable(spec)
    if getattr(spec, "fluid", None) is not None:
        return FluidFitScene(world)
    if getattr(spec, "mpm", None) is not None:
        return MPMFitScene(world)
    return RigidFitScene(world) if world.rigid else FitScene(world)
