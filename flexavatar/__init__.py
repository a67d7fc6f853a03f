"""FlexAvatar: animatable 3D Gaussian head avatars from 1-4 unposed portrait photos.

The public API lives in :mod:`flexavatar.pipeline`; every step of the data flow is a plain
function on plain data (see DESIGN.md). Nothing in this package imports gradio.
"""

__version__ = "0.1.0"
