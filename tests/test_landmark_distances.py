import math

import numpy as np
import pytest
import torch

from spatialseg_fast.ops import landmark_distances, landmark_distances_ref, landmark_positions
from conftest import available_backends, device_for, float32_tolerance


def test_landmarks_sit_at_bin_centres():
    pos = landmark_positions((14, 7, 1), grid=7)
    # 14 voxels in 7 bins of 2: centres at 0.5, 2.5, ..., 12.5
    assert torch.allclose(pos[0], torch.arange(7, dtype=torch.float64) * 2 + 0.5)
    # one voxel per bin: the landmarks are the voxels themselves
    assert torch.allclose(pos[1], torch.arange(7, dtype=torch.float64))
    # grid symmetric about the volume centre
    assert torch.allclose(pos[0] + pos[0].flip(0), torch.full((7,), 13.0, dtype=torch.float64))


@pytest.mark.parametrize("backend", available_backends())
def test_hand_computed_single_landmark(backend):
    # G = 1: the landmark is the volume centre (4.5, 2, 1.5); corner (0, 0, 0) with spacing (1, 2, 3)
    dev = device_for(backend)
    centres = torch.tensor([[0, 0, 0], [9, 4, 3]], device=dev)
    d = landmark_distances(centres, (10, 5, 4), spacing=(1, 2, 3), grid=1, backend=backend)
    expected = math.sqrt(4.5**2 + 4.0**2 + 4.5**2)
    assert d.shape == (2, 1, 1, 1)
    assert d.flatten().cpu().double().allclose(torch.tensor([expected, expected], dtype=torch.float64), atol=1e-5)


def test_grid_two_hand_computed():
    # shape 8: landmarks at 1.5 and 5.5 on every axis; point (1, 6, 2), spacing (1, 1, 0.5)
    d = landmark_distances_ref(torch.tensor([[1.0, 6.0, 2.0]], dtype=torch.float64), (8, 8, 8), (1, 1, 0.5), 2)
    expected = torch.empty(2, 2, 2, dtype=torch.float64)
    for i, a in enumerate((1.5, 5.5)):
        for j, b in enumerate((1.5, 5.5)):
            for k, c in enumerate((1.5, 5.5)):
                expected[i, j, k] = math.sqrt((1 - a) ** 2 + (6 - b) ** 2 + ((2 - c) * 0.5) ** 2)
    assert torch.allclose(d[0], expected)


def _cases():
    g = torch.Generator().manual_seed(1)
    for shape, spacing, grid in [((9, 13, 6), (1.0, 1.0, 1.0), 7), ((17, 5, 11), (0.8, 1.5, 2.5), 7), ((4, 4, 4), (1, 1, 1), 3)]:
        corners = torch.tensor([[i * (shape[0] - 1), j * (shape[1] - 1), k * (shape[2] - 1)] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        faces = torch.tensor([[0, shape[1] // 2, shape[2] // 2], [shape[0] - 1, 0, shape[2] - 1]])
        rand = torch.stack([torch.randint(0, n, (40,), generator=g) for n in shape], 1)
        yield shape, spacing, grid, torch.cat([corners, faces, rand])


@pytest.mark.parametrize("threads", [1, 2])
def test_backends_match_reference(fast_backend, threads):
    for shape, spacing, grid, centres in _cases():
        ref64 = landmark_distances_ref(centres.double(), shape, spacing, grid)
        ref32 = landmark_distances_ref(centres.float(), shape, spacing, grid)
        out = landmark_distances(centres.to(device_for(fast_backend)), shape, spacing, grid, backend=fast_backend, num_threads=threads)
        assert out.shape == (len(centres), grid, grid, grid) and out.dtype == torch.float32
        tol = float32_tolerance(ref64, ref32)
        assert float((out.cpu().double() - ref64).abs().max()) <= tol


def test_real_valued_and_non_contiguous_coordinates(fast_backend):
    g = torch.Generator().manual_seed(2)
    shape = (12, 7, 9)
    # [3, N] transposed: a non-contiguous [N, 3] view, real-valued positions
    raw = torch.rand(3, 50, generator=g, dtype=torch.float64) * (torch.tensor(shape, dtype=torch.float64)[:, None] - 1)
    centres = raw.t()
    assert not centres.is_contiguous()
    ref64 = landmark_distances_ref(centres, shape, (1.2, 0.7, 1.0), 5)
    ref32 = landmark_distances_ref(centres.float(), shape, (1.2, 0.7, 1.0), 5)
    out = landmark_distances(centres.to(device_for(fast_backend)), shape, (1.2, 0.7, 1.0), 5, backend=fast_backend)
    assert float((out.cpu().double() - ref64).abs().max()) <= float32_tolerance(ref64, ref32)


@pytest.mark.parametrize("backend", available_backends())
def test_box_mode_equals_explicit_coordinates(backend):
    shape, spacing = (7, 10, 6), (1.0, 1.3, 0.9)
    box = np.s_[2:5, :, 1:4]
    zz, yy, xx = np.meshgrid(np.arange(2, 5), np.arange(10), np.arange(1, 4), indexing="ij")
    coords = torch.from_numpy(np.stack([zz.ravel(), yy.ravel(), xx.ravel()], 1)).double()
    ref = landmark_distances_ref(coords, shape, spacing, 7)
    out = landmark_distances(box, shape, spacing, 7, backend=backend, device=device_for(backend))
    assert out.shape == (3 * 10 * 3, 7, 7, 7)
    assert float((out.cpu().double() - ref).abs().max()) < 1e-4


@pytest.mark.parametrize("backend", available_backends())
def test_paper_view_indexes_landmarks_by_axis(backend):
    # Viewed as seven 7x7 images, image k holds the landmarks whose axis-0 index is k, and pixel
    # (j, l) the one with axis-1 index j and axis-2 index l: check a few against hand arithmetic.
    shape, spacing, point = (14, 21, 28), (1.0, 0.5, 2.0), (3, 17, 5)
    d = landmark_distances(torch.tensor([point], device=device_for(backend)), shape, spacing, backend=backend)
    images = d.reshape(1, 7, 7, 7)[0].cpu().double()
    for k, j, l in [(0, 0, 0), (6, 1, 4), (2, 5, 6), (3, 3, 3)]:
        c = [(idx + 0.5) * n / 7 - 0.5 for idx, n in zip((k, j, l), shape)]
        expected = math.sqrt(sum(((x - ci) * s) ** 2 for x, ci, s in zip(point, c, spacing)))
        assert abs(images[k, j, l] - expected) < 1e-4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(centres=torch.zeros(4, 2)), "shape \\(N, 3\\)"),
        (dict(centres=torch.tensor([[0.0, float("nan"), 1.0]])), "NaN"),
        (dict(centres=torch.tensor([[0, 0, 9]])), "outside the volume"),
        (dict(centres=torch.tensor([[-1, 0, 0]])), "outside the volume"),
        (dict(centres=torch.zeros(1, 3), spacing=(1, 0, 1)), "spacing"),
        (dict(centres=torch.zeros(1, 3), grid=0), "grid"),
        (dict(centres=torch.zeros(1, 3), shape=(4, 4)), "shape"),
        (dict(centres=np.s_[0:3, ::2, :]), "step 1"),
        (dict(centres=np.s_[3:3, :, :]), "no voxel"),
        (dict(centres=torch.zeros(1, 3), backend="cuda"), "backend must be one of"),
    ],
)
def test_bad_input_raises_value_error(kwargs, message):
    args = dict(shape=(5, 6, 7))
    args.update(kwargs)
    centres = args.pop("centres")
    with pytest.raises(ValueError, match=message):
        landmark_distances(centres, **args)
