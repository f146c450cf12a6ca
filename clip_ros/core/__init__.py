"""ROS-free core: models, text cache, grounding pipeline, command parsing, images, geometry."""
