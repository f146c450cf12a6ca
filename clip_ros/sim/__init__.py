"""Simulation (ROS-free): MuJoCo scenes and renders, datasets, closed-loop episodes."""
