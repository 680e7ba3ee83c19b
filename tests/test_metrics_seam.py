import numpy as np

from keyprop.core.training.metrics import border_band, gradient_error, internal_band, seam, seam_shot


def _scene(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w]
    base = 0.3 + 0.2 * np.sin(xs / 5.0)[:, :, None] * np.array([1.0, 0.8, 0.6]) + 0.05 * np.cos(ys / 7.0)[:, :, None]
    return np.clip(base + rng.normal(0, 0.01, (h, w, 3)), 0, 1).astype(np.float32)


def _mask(h=48, w=64):
    m = np.zeros((h, w), np.float32)
    m[12:36, 16:48] = 1
    return m


def test_fill_equal_to_truth_has_no_seam():
    truth, mask = _scene(), _mask()
    labels = np.where(mask > 0, 0, -1)
    labels[:, 32:][mask[:, 32:] > 0] = 1
    border, internal = seam(truth.copy(), truth, mask, labels)
    assert border == 0.0 and internal == 0.0
    border, internal = seam_shot([truth] * 3, [truth] * 3, [mask] * 3)
    assert border == 0.0 and np.isnan(internal)          # no label maps: no internal figure
    assert seam_shot([truth] * 2, [truth] * 2, [mask] * 2, [labels, None]) == (0.0, 0.0)


def test_constant_offset_inside_shows_at_the_border_only():
    truth, mask = _scene(), _mask()
    pred = truth + 0.2 * (mask[:, :, None] > 0)
    border, internal = seam(pred, truth, mask)
    assert np.isnan(internal)
    # The step is 0.2 (x 100 = 20) on one forward difference across each edge; the band
    # (2 px on each side) holds about four pixels per edge pixel, and x/y are averaged.
    assert border > 1.5
    err = gradient_error(pred, truth)
    hole = mask > 0
    deep = np.zeros_like(hole)
    deep[15:33, 19:45] = True                      # more than 2 px inside the hole
    assert err[deep].max() < 1e-9
    assert not border_band(mask)[deep].any()


def test_internal_boundary_with_a_step_is_a_large_internal_seam():
    truth, mask = _scene(), _mask()
    labels = np.full(mask.shape, -1, np.int16)
    labels[mask > 0] = 0
    right = (mask > 0) & (np.arange(mask.shape[1])[None, :] >= 32)
    labels[right] = 1
    pred = truth.copy()
    pred[right] += 0.15                             # the second source is brighter: a step at x = 32
    border, internal = seam(pred, truth, mask, labels)
    assert internal > 1.5
    band = internal_band(labels, mask)
    assert band[:, 30:34][mask[:, 30:34] > 0].all() and not band[:, :29].any() and not band[:, 36:].any()
    # Same labels, no step: no internal seam.
    assert seam(truth, truth, mask, labels)[1] == 0.0
    # One source only: no internal boundary.
    assert np.isnan(seam(pred, truth, mask, np.where(mask > 0, 0, -1))[1])


def test_empty_mask_is_nan():
    truth = _scene()
    b, i = seam(truth, truth, np.zeros(truth.shape[:2], np.float32))
    assert np.isnan(b) and np.isnan(i)


def test_network_label_inside_the_hole_is_a_source_of_its_own():
    # keyprop's fill_frames(debug=) labels: -1 where the network filled, -2 outside its ROI.
    truth, mask = _scene(), _mask()
    labels = np.full(mask.shape, -2, np.int16)
    labels[4:44, 8:56] = 0                           # inside the ROI, outside the hole: ignored
    net = (mask > 0) & (np.arange(mask.shape[0])[:, None] >= 24)
    labels[net] = -1
    band = internal_band(labels, mask)
    assert band.any() and band[20:28].any() and not band[:20].any() and not band[29:].any()
    assert not (band & (mask == 0)).any()
    pred = truth + 0.1 * net[:, :, None]
    assert seam(pred, truth, mask, labels)[1] > 1.0
