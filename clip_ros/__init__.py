"""Ground language commands in camera images with CLIP and CLIPSeg."""
