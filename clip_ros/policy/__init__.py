"""Policy (ROS-free): command parsing, perceive -> lift, stamp sync, the policies."""
