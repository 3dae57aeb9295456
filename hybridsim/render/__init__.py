"""Rendering: cameras, differentiable analytic sphere rendering, volume ray marching, and video / frame I/O."""

from hybridsim.render.camera import Camera
from hybridsim.render.mesh import box_mesh, capsule_mesh, mesh_flow, render_meshes, transform_meshes, trimesh_to_mesh
from hybridsim.render.spheres import render_frames, render_spheres, to_uint8
from hybridsim.render.video import read_frame_folder, read_frames, read_video, write_layers, write_video
from hybridsim.render.volume import light_transmittance, render_volume

__all__ = [
    "Camera",
    "render_meshes",
    "mesh_flow",
    "transform_meshes",
    "box_mesh",
    "capsule_mesh",
    "trimesh_to_mesh",
    "render_spheres",
    "render_frames",
    "to_uint8",
    "write_video",
    "read_video",
    "read_frames",
    "read_frame_folder",
    "write_layers",
    "render_volume",
    "light_transmittance",
]
