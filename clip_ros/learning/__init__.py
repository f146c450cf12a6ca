"""Learning (ROS-free): losses, the training loop, LoRA, behaviour cloning, the tabletop recipe."""
