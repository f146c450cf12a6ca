#!/usr/bin/env bash
# The main job: ground a few commands in procedural tabletop frames over real DDS and write
# out/demo_strip.png. Arguments pass through (--device cuda, --output PATH).
set -euo pipefail
# In the caller's directory: a relative --output lands there (out/ under the repository when
# run from it, as scripts/setup.sh does).
source "$(CDPATH= cd -- "$(dirname "$0")/.." >/dev/null && pwd)/scripts/env.sh"
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-33}"
exec python -m clip_ros.tools.demo "$@"
