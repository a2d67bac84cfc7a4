"""Pose estimation: top-down ViTPose on images with COCO keypoint annotations."""
