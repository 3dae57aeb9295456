"""Small scenes that the fit tests, benchmarks and examples share (TOML text).

``PLUME_SMALL``: a 2D plume of 32 x 40 cells seen one pixel per cell, buoyancy learnable (starts
at 1.0). ``SLIDE``: a box pushed along the ground, push velocity and friction learnable (start
at 2.0 m/s and 0.3); ``SLIDE_WITH_WALL`` adds a static wall to the background.
"""

__all__ = ["PLUME_SMALL", "SLIDE", "SLIDE_WITH_WALL"]

PLUME_SMALL = """
name = "plume_small"
backend = "warp"
precision = "float32"
[time]
fps = 30
frames = 20
substeps = 2
[camera]                      # one pixel per cell, looking along +y at the x-z plane
position = [0.4, -3.0, 0.5]
look_at = [0.4, 0.0, 0.5]
up = [0.0, 0.0, 1.0]
projection = "orthographic"
ortho_height = 1.0
width = 32
height = 40
[fluid]
cells = [32, 40]
cell_size = 0.025
boundary = "wall"
buoyancy = { value = 1.0, learn = true, range = [0.0, 10.0] }
advection = "semi_lagrangian"
density_advection = "conservative"
opacity = 2.0
[[fluid.inflows]]
shape = "disc"
center = [0.4, 0.12]
radius = 0.06
rate = 3.0
"""

SLIDE = """
name = "slide"
precision = "float64"
[time]
fps = 30
frames = 20
substeps = 8
[camera]
position = [0.0, -3.5, 1.6]
look_at = [0.0, 0.0, 0.2]
fovy_deg = 40.0
width = 96
height = 72
[ground]
friction = 0.5
restitution = 0.0
[[objects]]
type = "box"
name = "slider"
position = [-1.0, 0.0, 0.1]
half_extents = [0.15, 0.15, 0.1]
velocity = { value = [2.0, 0.0, 0.0], learn = true, range = [-6.0, 6.0] }
friction = { value = 0.3, learn = true, range = [0.05, 1.5] }
restitution = 0.0
mass = 1.0
color = [0.9, 0.35, 0.2]
"""

SLIDE_WITH_WALL = SLIDE + """[[objects]]
type = "static_box"
name = "wall"
position = [0.9, 0.4, 0.2]
half_extents = [0.1, 0.3, 0.2]
color = [0.5, 0.55, 0.6]
"""
