"""The region of interest: whole strides at plate resolution, downscaled only when large."""
from keyprop.core.roi import plan_roi


def test_roi_at_plate_resolution_is_not_resampled():
    # A box whose margin-grown size is not a multiple of 8: the ROI grows to whole strides
    # instead of being resized by a pixel or two.
    roi = plan_roi((50, 60, 151, 203), (240, 320), 640, 8)
    assert (roi.work_h, roi.work_w) == (roi.height, roi.width)
    assert roi.height % 8 == 0 and roi.width % 8 == 0
    assert roi.y0 <= 50 and roi.y1 >= 151 and roi.x0 <= 60 and roi.x1 >= 203
    assert roi.scale == 1.0


def test_roi_without_room_to_grow_is_resized():
    roi = plan_roi((0, 0, 101, 77), (101, 77), 640, 8)
    assert (roi.y0, roi.x0, roi.y1, roi.x1) == (0, 0, 101, 77)
    assert roi.work_h % 8 == 0 and roi.work_w % 8 == 0


def test_large_roi_is_downscaled_to_the_working_resolution():
    roi = plan_roi((100, 100, 2000, 3700), (2160, 3840), 640, 8)
    assert max(roi.work_h, roi.work_w) <= 640 and roi.scale < 0.2
    assert roi.work_h % 8 == 0 and roi.work_w % 8 == 0


def test_thin_roi_counts_as_downscaled_along_its_reduced_axis():
    """A tall wire on a 1080p plate: the height is reduced, the width kept at MIN_WORK_SIDE. The
    ROI is downscaled (plate detail is restored) though one axis is at plate resolution."""
    roi = plan_roi((216, 900, 864, 910), (1080, 1920), 640, 8)
    assert roi.scale_x == 1.0 and roi.scale_y < 0.7
    assert roi.scale == roi.scale_y
