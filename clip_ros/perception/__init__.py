"""Perception (ROS-free): models and their loading, CLIPSeg, text, images, grounding, tracking."""
