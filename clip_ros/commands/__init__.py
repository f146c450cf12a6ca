"""ROS-free command-line tools (prefetch, benchmark)."""
