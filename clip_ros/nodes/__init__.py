"""Thin rclpy nodes: parameters, message conversion and calls into the core."""
