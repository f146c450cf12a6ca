# Source this file (bash) to use clip_ros: `source scripts/env.sh`.
# Activates .venv, overlays the colcon install/ and keeps models offline and DDS on this host.
# Safe under `set -u`; run `bash scripts/setup.sh` first.

_clip_ros_root="$(CDPATH= cd -- "$(dirname "${BASH_SOURCE[0]}")/.." >/dev/null && pwd)"
# colcon's and venv's setup scripts read unset variables: relax nounset while sourcing them.
case $- in *u*) _clip_ros_nounset=1 ;; *) _clip_ros_nounset= ;; esac
set +u

if [ ! -f "$_clip_ros_root/.venv/bin/activate" ]; then
    echo "clip_ros: no .venv in $_clip_ros_root; run: bash scripts/setup.sh" >&2
    [ -n "$_clip_ros_nounset" ] && set -u
    unset _clip_ros_root _clip_ros_nounset
    return 1
fi
. "$_clip_ros_root/.venv/bin/activate"

# rclpy and the message wheels register their ament resources under the venv prefix.
case ":${AMENT_PREFIX_PATH}:" in
    *":$VIRTUAL_ENV:"*) ;;
    *) export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" ;;
esac

if [ -f "$_clip_ros_root/install/setup.bash" ]; then
    . "$_clip_ros_root/install/setup.bash"
    # ament_python installs console scripts under lib/<package> (for `ros2 run`); put them on
    # PATH too, so `benchmark`, `evaluate`, `demo`, ... run by name without ros2cli.
    case ":${PATH}:" in
        *":$_clip_ros_root/install/clip_ros/lib/clip_ros:"*) ;;
        *) export PATH="$_clip_ros_root/install/clip_ros/lib/clip_ros:$PATH" ;;
    esac
else
    echo "clip_ros: $_clip_ros_root/install is missing; run: bash scripts/setup.sh" >&2
fi

export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-$HF_HUB_OFFLINE}"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export MPLBACKEND=Agg

[ -n "$_clip_ros_nounset" ] && set -u
unset _clip_ros_root _clip_ros_nounset
true
