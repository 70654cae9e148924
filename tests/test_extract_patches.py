import math

import numpy as np
import pytest
import torch

from spatialseg_fast import BackendUnavailableError, PatchConfig
from spatialseg_fast.ops import extract_patches, extract_patches_ref, prepare_patch_source, smooth_in_plane
from conftest import available_backends, device_for, float32_tolerance

scipy_ndimage = pytest.importorskip("scipy.ndimage")


def coded_volume(shape):
    """vol[x, y, z] = 10000 x + 100 y + z: every value names its voxel."""
    x, y, z = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    return 10000 * x + 100 * y + z


NO_SMOOTHING = dict(smoothing=(0.0, 0.0, 0.0))


# ---------------------------------------------------------------- hand-computed cases


@pytest.mark.parametrize("backend", available_backends())
def test_axis_aligned_patches_read_the_named_voxels(backend):
    shape = (20, 30, 25)
    cfg = PatchConfig(slice_axis=1, patch2d=5, strides=(1, 2, 3), patch3d=3, grid=2, fill=-1.0, **NO_SMOOTHING)
    vol = coded_volume(shape)
    src = prepare_patch_source(vol, cfg, dtype=torch.float32 if backend != "torch" else torch.float64)
    src = src.to(device=device_for(backend))
    centre = (10, 7, 12)
    out = extract_patches(src, torch.tensor([centre]), backend=backend)
    planes = out.planes.cpu().double()
    for k, s in enumerate(cfg.strides):
        for i in range(5):
            for j in range(5):
                x, z = centre[0] + (i - 2) * s, centre[2] + (j - 2) * s  # in-plane axes (0, 2)
                assert planes[0, k, i, j] == 10000 * x + 100 * centre[1] + z
    cube = out.cube.cpu().double()
    assert cube[0, 0, 0, 0] == vol[9, 6, 11] and cube[0, 2, 1, 0] == vol[11, 7, 11]


@pytest.mark.parametrize("backend", available_backends())
def test_out_of_volume_reads_fill(backend):
    cfg = PatchConfig(slice_axis=0, patch2d=5, strides=(1, 3), patch3d=5, grid=0, fill=-7.0, smoothing=(0.0, 0.0))
    vol = coded_volume((4, 6, 5))
    src = prepare_patch_source(vol, cfg, dtype=torch.float64 if backend == "torch" else torch.float32).to(device=device_for(backend))
    out = extract_patches(src, torch.tensor([[0, 0, 4]]), backend=backend)
    planes = out.planes.cpu().double()
    # in-plane axes (1, 2); centre (y, z) = (0, 4): rows i < 2 are y < 0, columns j > 2 are z > 4
    assert torch.all(planes[0, 0, :2] == -7) and torch.all(planes[0, 0, :, 3:] == -7)
    assert planes[0, 0, 2, 2] == vol[0, 0, 4] and planes[0, 0, 3, 0] == vol[0, 1, 2]
    cube = out.cube.cpu().double()
    assert torch.all(cube[0, :2] == -7)  # x < 0
    assert cube[0, 2, 2, 2] == vol[0, 0, 4]
    assert out.distances is None


@pytest.mark.parametrize("backend", available_backends())
def test_rotation_by_90_degrees_and_scale(backend):
    cfg = PatchConfig(slice_axis=2, patch2d=3, strides=(1,), patch3d=0, grid=0, smoothing=(0.0,))
    vol = coded_volume((12, 12, 3))
    src = prepare_patch_source(vol, cfg, dtype=torch.float64 if backend == "torch" else torch.float32).to(device=device_for(backend))
    c = torch.tensor([[6, 6, 1], [6, 6, 1]])
    out = extract_patches(src, c, rotation=torch.tensor([90.0, 0.0]), scale=torch.tensor([1.0, 2.0]), backend=backend)
    p = out.planes.cpu().double()
    for i in range(3):
        for j in range(3):
            a, b = i - 1, j - 1
            # 90 degrees: u = c_u - b, v = c_v + a
            assert abs(p[0, 0, i, j] - (10000 * (6 - b) + 100 * (6 + a) + 1)) < 1e-2
            # scale 2 at stride 1: every other voxel
            assert abs(p[1, 0, i, j] - (10000 * (6 + 2 * a) + 100 * (6 + 2 * b) + 1)) < 1e-2


def test_bilinear_between_voxels_is_linear():
    # a linear ramp is reproduced exactly by bilinear sampling at any rotation and scale
    cfg = PatchConfig(slice_axis=0, patch2d=7, strides=(1, 2), patch3d=0, grid=0, smoothing=(0.0, 0.0))
    y, z = torch.meshgrid(torch.arange(40.0, dtype=torch.float64), torch.arange(40.0, dtype=torch.float64), indexing="ij")
    vol = (3 * y - 2 * z).expand(3, 40, 40).contiguous()
    src = prepare_patch_source(vol, cfg)
    out = extract_patches_ref(src, torch.tensor([[1, 20, 20]]), torch.tensor([7.5]), torch.tensor([1.07]))
    t, f = math.radians(7.5), 1.07
    for k, s in enumerate(cfg.strides):
        a = (torch.arange(7.0, dtype=torch.float64) - 3) * s
        u = 20 + f * (math.cos(t) * a[:, None] - math.sin(t) * a[None, :])
        v = 20 + f * (math.sin(t) * a[:, None] + math.cos(t) * a[None, :])
        assert torch.allclose(out.planes[0, k], 3 * u - 2 * v, atol=1e-9)


def test_smoothing_matches_scipy():
    g = torch.Generator().manual_seed(3)
    vol = torch.randn(9, 14, 11, generator=g, dtype=torch.float64)
    for axis in range(3):
        for sigma in (0.5, 1.0):
            ours = smooth_in_plane(vol, sigma, axis, fill=0.25)
            sig = [sigma] * 3
            sig[axis] = 0.0
            theirs = scipy_ndimage.gaussian_filter(vol.numpy(), sig, mode="constant", cval=0.25, truncate=3.0)
            assert np.allclose(ours.numpy(), theirs, atol=1e-12)


def test_default_config_is_the_papers():
    cfg = PatchConfig()
    assert (cfg.patch2d, cfg.strides, cfg.patch3d, cfg.grid) == (25, (1, 2, 3), 15, 7)
    # 25 samples at strides 1, 2, 3 cover 25, 49 and 73 voxels ("about 25, 51, 71")
    assert [(cfg.patch2d - 1) * s + 1 for s in cfg.strides] == [25, 49, 73]
    assert cfg.sigmas == (0.0, 0.5, 1.0)
    assert PatchConfig.from_dict(cfg.to_dict()) == cfg


# ---------------------------------------------------------------- backends vs the float64 reference


def _random_case(shape, slice_axis, labels, seed):
    g = torch.Generator().manual_seed(seed)
    vol = torch.randn(shape, generator=g, dtype=torch.float64)
    atlas = torch.rand((labels, *shape), generator=g, dtype=torch.float64) if labels else None
    n = 30
    centres = torch.stack([torch.randint(0, s, (n,), generator=g) for s in shape], 1)
    # faces and corners
    centres[0] = torch.tensor([0, 0, 0])
    centres[1] = torch.tensor([s - 1 for s in shape])
    centres[2] = torch.tensor([0, shape[1] - 1, shape[2] // 2])
    centres[3] = torch.tensor([shape[0] // 2, 0, shape[2] - 1])
    rotation = (torch.rand(n, generator=g, dtype=torch.float64) * 20 - 10)
    scale = torch.rand(n, generator=g, dtype=torch.float64) * 0.2 + 0.9
    return vol, atlas, centres, rotation, scale


CASES = [
    # shape, slice axis, atlas labels, config overrides
    ((11, 13, 9), 1, 4, dict(patch2d=7, patch3d=5, grid=3)),
    ((5, 17, 8), 0, 0, dict(patch2d=9, patch3d=7, grid=4, strides=(1, 2, 3))),
    ((8, 6, 15), 2, 3, dict(patch2d=5, patch3d=3, grid=2, strides=(2, 1), fill=0.5)),
    ((26, 27, 25), 1, 2, dict()),  # the paper's geometry on a volume barely larger than a patch
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_backends_match_reference(fast_backend, case, augment, threads):
    shape, axis, labels, over = CASES[case]
    if fast_backend == "triton" and (threads == 2 or case == 3) and not torch.cuda.is_available():
        pytest.skip("interpreter: threads do not apply; the paper-sized case is slow")
    cfg = PatchConfig(slice_axis=axis, **over)
    vol, atlas, centres, rotation, scale = _random_case(shape, axis, labels, seed=case)
    spacing = (1.0, 1.4, 0.8)
    src64 = prepare_patch_source(vol, cfg, atlas=atlas, spacing=spacing)
    src32 = prepare_patch_source(vol.float(), cfg, atlas=None if atlas is None else atlas.float(), spacing=spacing)
    kw = dict(rotation=rotation, scale=scale) if augment else {}
    ref64 = extract_patches_ref(src64, centres, **kw)
    ref32 = extract_patches_ref(src32, centres, **kw)
    dev = device_for(fast_backend)
    out = extract_patches(src32.to(device=dev), centres.to(dev), backend=fast_backend, num_threads=threads, **kw)
    for name, r64, r32, got in zip(out._fields, ref64, ref32, out):
        if r64 is None:
            assert got is None, name
            continue
        assert got.dtype == torch.float32 and got.shape == r64.shape, name
        err = float((got.cpu().double() - r64).abs().max())
        assert err <= float32_tolerance(r64, r32), (name, err, float32_tolerance(r64, r32))


def test_non_contiguous_volume_and_numpy_inputs(fast_backend):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(15, 12, 10, generator=g, dtype=torch.float64)
    vol = base.permute(2, 0, 1)  # non-contiguous [10, 15, 12]
    assert not vol.is_contiguous()
    cfg = PatchConfig(patch2d=7, patch3d=5, grid=3)
    centres = np.array([[0, 0, 0], [9, 14, 11], [4, 7, 3]])
    ref = extract_patches(vol, centres, config=cfg, backend="torch")
    dev = device_for(fast_backend)
    out = extract_patches(vol.float().to(dev), torch.from_numpy(centres).to(dev), config=cfg, backend=fast_backend)
    for r, o in zip(ref, out):
        if r is not None:
            assert torch.allclose(o.cpu().double(), r, atol=1e-5)


def test_auto_backend_uses_the_extension_on_cpu():
    if "cpp" not in available_backends():
        pytest.skip("extension not built")
    from spatialseg_fast._backend import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "cpp"


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "volume, centres, kwargs, message",
    [
        (torch.zeros(4, 5), [[0, 0, 0]], {}, "must be 3D"),
        (torch.zeros(1, 4, 5, 6), [[0, 0, 0]], {}, "must be 3D"),
        (torch.full((4, 5, 6), float("nan")), [[0, 0, 0]], {}, "NaN"),
        (torch.zeros(4, 5, 6, dtype=torch.int16), [[0, 0, 0]], {}, "floating-point"),
        (torch.zeros(0, 5, 6), [[0, 0, 0]], {}, "empty"),
        (torch.zeros(4, 5, 6), [[0, 5, 0]], {}, "outside the volume"),
        (torch.zeros(4, 5, 6), [[0.0, 1.0, 0.0]], {}, "integer voxel indices"),
        (torch.zeros(4, 5, 6), [[0, 1]], {}, "shape \\(N, 3\\)"),
        (torch.zeros(4, 5, 6), [[0, 0, 0]], dict(atlas=torch.zeros(3, 4, 5, 7)), "atlas must have shape"),
        (torch.zeros(4, 5, 6), [[0, 0, 0]], dict(atlas=torch.zeros(4, 5, 6)), "atlas must have shape"),
        (torch.zeros(4, 5, 6), [[0, 0, 0]], dict(atlas=torch.full((2, 4, 5, 6), float("inf"))), "NaN or infinite"),
        (torch.zeros(4, 5, 6), [[0, 0, 0]], dict(rotation=[1.0, 2.0]), "one value per centre"),
        (torch.zeros(4, 5, 6), [[0, 0, 0]], dict(scale=[-1.0]), "positive"),
        (torch.zeros(4, 5, 6), [[0, 0, 0]], dict(rotation=[float("nan")]), "NaN"),
        (torch.zeros(4, 5, 6), [[0, 0, 0]], dict(spacing=(1, 1)), "spacing"),
        (torch.zeros(4, 5, 6), [[0, 0, 0]], dict(backend="gpu"), "backend must be one of"),
        ("not a volume", [[0, 0, 0]], {}, "tensor or array"),
    ],
)
def test_bad_input_raises_value_error(volume, centres, kwargs, message):
    with pytest.raises(ValueError, match=message):
        extract_patches(volume, centres, **kwargs)


def test_bad_config_raises_value_error():
    with pytest.raises(ValueError, match="patch2d"):
        PatchConfig(patch2d=24)
    with pytest.raises(ValueError, match="slice_axis"):
        PatchConfig(slice_axis=3)
    with pytest.raises(ValueError, match="one non-negative sigma per stride"):
        PatchConfig(smoothing=(1.0,))


def test_explicit_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    from spatialseg_fast import _backend

    if _backend.triton_version() is None:
        pytest.skip("triton not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="CUDA tensors"):
        extract_patches(torch.zeros(4, 5, 6), [[0, 0, 0]], backend="triton")


def test_out_buffers_are_reused_and_checked(fast_backend):
    dev = device_for(fast_backend)
    cfg = PatchConfig(patch2d=5, patch3d=3, grid=2)
    g = torch.Generator().manual_seed(9)
    src = prepare_patch_source(torch.randn(8, 9, 7, generator=g), cfg, atlas=torch.rand(3, 8, 9, 7, generator=g)).to(device=dev)
    c1 = torch.tensor([[1, 2, 3], [7, 8, 6]], device=dev)
    c2 = torch.tensor([[4, 4, 4], [0, 0, 0]], device=dev)
    first = extract_patches(src, c1, backend=fast_backend)
    second = extract_patches(src, c2, backend=fast_backend, out=first)
    assert all(a is b for a, b in zip(first, second))  # written in place
    fresh = extract_patches(src, c2, backend="torch")
    for a, b in zip(second, fresh):
        assert torch.allclose(a.cpu(), b.cpu(), atol=1e-6)
    wrong = first._replace(cube=torch.empty(2, 4, 4, 4, device=dev))
    with pytest.raises(ValueError, match="out.cube"):
        extract_patches(src, c2, backend=fast_backend, out=wrong)
    with pytest.raises(ValueError, match="out= is supported"):
        extract_patches(src, c2, backend="torch", out=first)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("augment", ["paper", "wide", "absurd"])
def test_many_samples_per_slice_match_reference(threads, augment):
    """Dense batches (several samples per slice) take the C++ padded-slice path; large rotations
    and scales stretch its border, and a huge scale falls back to the checked path."""
    if "cpp" not in available_backends():
        pytest.skip("extension not built")
    g = torch.Generator().manual_seed(11)
    shape = (23, 6, 19)  # slice axis 1: six slices, ~50 samples each
    vol = torch.randn(shape, generator=g, dtype=torch.float64)
    cfg = PatchConfig(slice_axis=1, patch2d=9, strides=(1, 2, 3), patch3d=5, grid=3, fill=0.3)
    n = 300
    centres = torch.stack([torch.randint(0, s, (n,), generator=g) for s in shape], 1)
    if augment != "paper":
        rotation = torch.rand(n, generator=g, dtype=torch.float64) * 360 - 180
        scale = torch.rand(n, generator=g, dtype=torch.float64) * 3 + 0.2
        if augment == "absurd":
            scale[0] = 40.0  # the border would be absurd: the whole call keeps the checked path
    else:
        rotation = torch.rand(n, generator=g, dtype=torch.float64) * 20 - 10
        scale = torch.rand(n, generator=g, dtype=torch.float64) * 0.2 + 0.9
        rotation[::7] = 0.0  # a mix of aligned and rotated samples
        scale[::7] = 1.0
    src64 = prepare_patch_source(vol, cfg)
    src32 = prepare_patch_source(vol.float(), cfg)
    ref64 = extract_patches_ref(src64, centres, rotation, scale)
    ref32 = extract_patches_ref(src32, centres, rotation, scale)
    out = extract_patches(src32, centres, rotation=rotation, scale=scale, backend="cpp", num_threads=threads)
    for name, r64, r32, got in zip(out._fields, ref64, ref32, out):
        if r64 is not None:
            err = float((got.double() - r64).abs().max())
            assert err <= float32_tolerance(r64, r32), (name, err)


@pytest.mark.parametrize("backend", available_backends())
def test_int32_and_uint8_centres_are_accepted(backend):
    cfg = PatchConfig(patch2d=5, patch3d=3, grid=2)
    vol = coded_volume((6, 7, 8)).float()
    dev = device_for(backend)
    expected = extract_patches(vol, torch.tensor([[1, 2, 3]]), config=cfg, backend="torch")
    for dtype in (torch.int32, torch.uint8):
        got = extract_patches(vol.to(dev), torch.tensor([[1, 2, 3]], dtype=dtype, device=dev), config=cfg, backend=backend)
        assert torch.equal(got.planes.cpu(), expected.planes)
