"""Waymo Open Dataset without TensorFlow: frames -> points/boxes, range images, the converter."""
