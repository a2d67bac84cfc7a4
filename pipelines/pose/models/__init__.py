"""Pose model families; importing this package registers them (and the official decoder)."""

from vitsuite.core.registry import register_official_function

from .. import decode

register_official_function("pose_decode", "keypoints_from_heatmaps", decode.keypoints_from_heatmaps)

from . import vitpose  # noqa: F401,E402
