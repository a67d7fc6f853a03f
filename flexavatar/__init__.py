"""FlexAvatar: animatable 3D Gaussian head avatars from 1-4 unposed portrait photos.

The public API lives in :mod:`flexavatar.pipeline`; every step of the data flow is a plain
function on plain data (see DESIGN.md). Nothing in this package imports gradio.
"""

import os

# OpenMP threads that spin while waiting slow every torch op 10-70x when another process
# shares the (2) cores; passive waiting costs nothing measurable when the CPU is free.
# Must be set before torch is first imported to take effect.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
