"""Depth lifting: back-projection, median masked depth, extrinsics and bad-depth reasons."""
import math

import numpy as np
import pytest

from clip_ros.policy.lifting import (
    back_project, camera_intrinsics, check_intrinsics, depth_to_metres, Extrinsic, lift_mask,
    lift_standing, matrix_to_quat, place_point, quat_to_matrix, table_view)

K = np.array([[100.0, 0.0, 39.5], [0.0, 100.0, 29.5], [0.0, 0.0, 1.0]])
SHAPE = (60, 80)


def square_mask(u0=30, v0=20, size=10):
    mask = np.zeros(SHAPE, bool)
    mask[v0:v0 + size, u0:u0 + size] = True
    return mask


def test_back_project_known_pixels():
    assert back_project(39.5, 29.5, 2.0, K) == pytest.approx([0.0, 0.0, 2.0])
    assert back_project(139.5, 29.5, 1.0, K) == pytest.approx([1.0, 0.0, 1.0])
    assert back_project(39.5, -70.5, 0.5, K) == pytest.approx([0.0, -0.5, 0.5])


def test_lift_plane_uses_median_pixel_and_depth():
    depth = np.full(SHAPE, 1.5, np.float32)
    lifted = lift_mask(depth, square_mask(), K)
    u, v = 34.5, 24.5  # median of columns 30..39 and rows 20..29
    assert lifted.pixel == (u, v)
    assert lifted.position_camera == pytest.approx([(u - 39.5) * 0.015, (v - 29.5) * 0.015, 1.5])
    assert lifted.valid_pixels == 100


def test_bad_values_are_ignored():
    depth = np.full(SHAPE, 2.0, np.float32)
    depth[20:23, 30:40] = np.nan
    depth[23:25, 30:40] = 0.0
    depth[25, 30:40] = 99.0  # beyond the range
    lifted = lift_mask(depth, square_mask(), K, depth_range=(0.1, 10.0))
    assert lifted.depth == pytest.approx(2.0) and lifted.valid_pixels == 40


def test_extrinsic_maps_into_base_frame():
    # Camera 1 m above the base origin looking straight down: optical z = -base z.
    rot = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
    extrinsic = Extrinsic.from_xyz_quat([0.0, 0.0, 1.0] + matrix_to_quat(rot))
    depth = np.full(SHAPE, 0.8, np.float32)
    lifted = lift_mask(depth, square_mask(35, 25, 10), K, extrinsic)
    assert lifted.position == pytest.approx([0.0, 0.0, 0.2], abs=1e-6)


def test_quaternion_round_trip():
    half = math.sqrt(0.5)
    for quat in ([0.0, 0.0, 0.0, 1.0], [half, 0.0, 0.0, half], [0.1, -0.7, 0.2, 0.6]):
        quat = np.asarray(quat) / np.linalg.norm(quat)
        assert matrix_to_quat(quat_to_matrix(quat)) == pytest.approx(quat.tolist(), abs=1e-9)


def test_millimetre_depth():
    depth = depth_to_metres(np.full(SHAPE, 1250, np.uint16), '16UC1', 0.001)
    assert depth.dtype == np.float32 and float(depth[0, 0]) == pytest.approx(1.25)
    with pytest.raises(ValueError, match='not one of'):
        depth_to_metres(depth, 'rgb8')


@pytest.mark.parametrize('fill, reason', [(np.nan, 'all NaN'), (0.0, 'all zero'),
                                          (50.0, 'none within')])
def test_unusable_depth_says_why(fill, reason):
    with pytest.raises(ValueError, match=reason):
        lift_mask(np.full(SHAPE, fill, np.float32), square_mask(), K)


def test_a_mask_with_depth_on_a_few_pixels_only_is_refused():
    # A real sensor's holes (dark, glossy, transparent objects) leave edge pixels that mix the
    # object's depth with its background's: 5 of 100 say too little about the object.
    depth = np.full(SHAPE, np.nan, np.float32)
    depth[20, 30:35] = 3.0
    with pytest.raises(ValueError, match=r'only 5 of 100 masked pixels have valid depth'):
        lift_mask(depth, square_mask(), K)
    depth[21, 30:35] = 3.0
    assert lift_mask(depth, square_mask(), K).valid_pixels == 10


def test_size_mismatch_and_missing_intrinsics():
    with pytest.raises(ValueError, match='differs'):
        lift_mask(np.ones((30, 40), np.float32), square_mask(), K)
    with pytest.raises(ValueError, match='no camera_info'):
        lift_mask(np.ones(SHAPE, np.float32), square_mask(), None)
    with pytest.raises(ValueError, match='invalid intrinsics'):
        check_intrinsics(np.zeros(9))
    with pytest.raises(ValueError, match='empty'):
        lift_mask(np.ones(SHAPE, np.float32), np.zeros(SHAPE, bool), K)


def test_a_principal_point_far_outside_the_image_is_refused():
    far = np.array(K, np.float64).reshape(3, 3).copy()
    far[0, 2] = 1e308  # lifted points would be infinite
    with pytest.raises(ValueError, match='principal point .* far outside the 40x30 image'):
        check_intrinsics(far, (40, 30))
    with pytest.raises(ValueError, match='far outside'):
        lift_mask(np.ones(SHAPE, np.float32), square_mask(), far)
    off = far.copy()
    off[0, 2] = -10.0  # a little outside (a cropped sensor): still a camera
    assert check_intrinsics(off, (40, 30))[0, 2] == -10.0


def test_sim_objects_lift_near_their_centres(gl_context):
    from clip_ros.sim.simulator import Simulator

    with Simulator(3, 160, 120) as sim:
        frame = sim.render(depth=True, instances=True)
        extrinsic = Extrinsic(*sim.camera_pose())
        lifted_count = 0
        for truth in frame.objects:
            if truth.visible_pixels < 20:
                continue
            lifted = lift_mask(frame.depth, frame.instances == truth.instance_id, frame.K,
                               extrinsic)
            # The median visible surface point lies within a few cm of the centre.
            assert np.linalg.norm(lifted.position - truth.position_world) < 0.04, truth.name
            lifted_count += 1
        assert lifted_count >= 3, 'too few visible objects in scene 3 to check the lifting'


def test_flat_masks_are_skipped_for_standing_ones():
    # Camera 1 m above the table looking straight down; a 10 cm tall box in the middle.
    down = Extrinsic(np.diag([1.0, -1.0, -1.0]), np.array([0.0, 0.0, 1.0]))
    depth = np.full(SHAPE, 1.0, np.float32)
    box = square_mask(35, 25, 10)
    depth[box] = 0.9
    shadow = square_mask(5, 5, 10)
    (index, lifted), reasons = lift_standing(depth, [shadow, box], K, down)
    assert index == 1 and lifted.top == pytest.approx(0.1, abs=1e-3)
    assert reasons == ['flat on the table (top +0.000 m)']
    assert place_point(lifted) == pytest.approx([*lifted.centre[:2], 0.1], abs=1e-3)
    (index, _), _ = lift_standing(depth, [shadow, box], K, down, min_height=0.0)
    assert index == 0  # the check switched off
    (index, lifted), reasons = lift_standing(depth, [shadow, np.zeros(SHAPE, bool)], K, down)
    assert index is None and lifted is None
    assert reasons[1] == 'the instance mask is empty'


def test_table_pixels_in_a_mask_do_not_move_the_objects_centre():
    # A mask that took in a strip of table behind the box (its shadow, the map's bleed): the
    # box's centre stays the box's, where the fingers must close.
    down = Extrinsic(np.diag([1.0, -1.0, -1.0]), np.array([0.0, 0.0, 1.0]))
    depth = np.full(SHAPE, 1.0, np.float32)
    box = square_mask(35, 25, 10)
    depth[box] = 0.96  # a 4 cm block: table points behind it lie within object_radius
    bled = box | square_mask(35, 19, 10) & (np.arange(SHAPE[0])[:, None] < 25)  # 6 rows of table
    alone = lift_mask(depth, box, K, down)
    (_, lifted), _ = lift_standing(depth, [bled], K, down)
    assert lifted.centre[:2] == pytest.approx(alone.centre[:2], abs=2e-3)
    assert lifted.top == pytest.approx(0.04, abs=1e-3)
    # Without a floor the strip pulls the centre centimetres off the box.
    assert abs(lift_mask(depth, bled, K, down).centre[1] - alone.centre[1]) > 0.02


def test_camera_intrinsics_fall_back_to_k_only_without_p():
    from sensor_msgs.msg import CameraInfo

    info = CameraInfo(width=80, height=60, k=K.ravel().tolist())  # P left all zero
    intrinsics, size = camera_intrinsics(info)
    assert np.array_equal(intrinsics, K) and size == (80, 60)
    info.p = [90.0, 0.0, 40.0, 0.0, 0.0, 90.0, 30.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert camera_intrinsics(info)[0][0].tolist() == [90.0, 0.0, 40.0]
    with pytest.raises(ValueError, match='uncalibrated'):
        camera_intrinsics(CameraInfo(width=80, height=60))


def test_table_view_is_the_cameras_right_and_forward_on_the_table():
    tilt = np.radians(50.0)  # looking down at the table, 50 degrees below the horizon
    # The simulator's camera: image right = world +x, looking along +y and down.
    sim = np.column_stack([(1.0, 0.0, 0.0), (0.0, -np.sin(tilt), -np.cos(tilt)),
                           (0.0, np.cos(tilt), -np.sin(tilt))])
    assert table_view(sim) == (pytest.approx((1.0, 0.0)), pytest.approx((0.0, 1.0)))
    # A REP 103 base_link (x forward, y left) with the camera behind the arm, looking forward:
    # image right is the base's -y.
    rep103 = np.column_stack([(0.0, -1.0, 0.0), (-np.sin(tilt), 0.0, -np.cos(tilt)),
                              (np.cos(tilt), 0.0, -np.sin(tilt))])
    assert table_view(rep103) == (pytest.approx((0.0, -1.0)), pytest.approx((1.0, 0.0)))
    # Straight down (x right, image up along +y): forward is the image's up.
    down = np.diag([1.0, -1.0, -1.0])
    assert table_view(down) == (pytest.approx((1.0, 0.0)), pytest.approx((0.0, 1.0)))


def test_instances_lifted_in_their_boxes_equal_whole_frame_masks(gl_context):
    # lift_instances reads each instance in its own box: the same lift as the frame's mask.
    from clip_ros.policy.perceive import lift_instances
    from clip_ros.sim.simulator import Simulator

    with Simulator(3, 160, 120) as sim:
        frame = sim.render(depth=True, instances=True)
        extrinsic = Extrinsic(*sim.camera_pose())
    ids = [o.instance_id for o in frame.objects if o.visible_pixels >= 20]
    labels = np.zeros(frame.depth.shape, np.uint16)
    for index, instance in enumerate(ids):
        labels[frame.instances == instance] = index + 1
    depth = frame.depth.copy()
    depth[labels == 1] = np.nan  # the first has no depth; one more index has no pixels
    lifted, reasons = lift_instances(labels, len(ids) + 1, depth, frame.K, extrinsic)
    assert set(reasons) == {0, len(ids)} and 'all NaN' in reasons[0]
    assert reasons[len(ids)] == 'the instance mask is empty'
    assert len(lifted) == len(ids) - 1 >= 2
    for index, got in lifted.items():
        want = lift_mask(depth, labels == index + 1, frame.K, extrinsic)
        assert got.pixel == want.pixel and got.valid_pixels == want.valid_pixels
        for name in ('position_camera', 'position', 'size', 'centre', 'points'):
            assert np.array_equal(getattr(got, name), getattr(want, name)), name
    # Depth of another size: every instance says so.
    _, reasons = lift_instances(labels, 2, depth[:-1], frame.K)
    assert set(reasons) == {0, 1} and 'differs from' in reasons[0]
