// Thin pybind11 wrappers over the torch-free kernels in core/. Arrays arrive as numpy views of
// the caller's tensors (the Python layer has already validated dtype, contiguity and values);
// outputs are written in place into arrays the caller allocated. The GIL is released while
// the kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/extract_patches.hpp"
#include "core/landmark_distances.hpp"
#include "core/parallel.hpp"
#include "core/surface_distances.hpp"

namespace py = pybind11;
using spatialseg::LandmarkGrid;
using spatialseg::PatchGeometry;

namespace {

using F32 = py::array_t<float, py::array::c_style>;
using F64 = py::array_t<double, py::array::c_style>;
using I64 = py::array_t<int64_t, py::array::c_style>;

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("spatialseg_fast._C: " + what);
}

LandmarkGrid make_grid(const std::array<int64_t, 3>& shape, const std::array<double, 3>& spacing,
                       int grid) {
  LandmarkGrid g{};
  for (int a = 0; a < 3; ++a) {
    require(shape[a] > 0, "shape must be positive");
    g.shape[a] = shape[a];
    g.spacing[a] = spacing[a];
  }
  g.grid = grid;
  return g;
}

template <typename A>
float* out_ptr(A& a, int64_t expected, const char* name) {
  require(a.size() == expected, std::string(name) + " has the wrong size");
  return a.mutable_data();
}

void landmark_distances(F64 coords, std::array<int64_t, 3> shape, std::array<double, 3> spacing,
                        int grid, F32 out, int num_threads) {
  require(coords.ndim() == 2 && coords.shape(1) == 3, "coords must be n x 3");
  require(grid > 0, "grid must be positive");
  const int64_t n = coords.shape(0);
  const LandmarkGrid g = make_grid(shape, spacing, grid);
  float* o = out_ptr(out, n * grid * grid * grid, "out");
  const double* c = coords.data();
  py::gil_scoped_release release;
  spatialseg::landmark_distances(c, n, g, o, num_threads);
}

void landmark_distances_box(std::array<int64_t, 3> start, std::array<int64_t, 3> stop,
                            std::array<int64_t, 3> shape, std::array<double, 3> spacing, int grid,
                            F32 out, int num_threads) {
  require(grid > 0, "grid must be positive");
  int64_t n = 1;
  for (int a = 0; a < 3; ++a) {
    require(start[a] <= stop[a], "box start must not exceed stop");
    n *= stop[a] - start[a];
  }
  const LandmarkGrid g = make_grid(shape, spacing, grid);
  float* o = out_ptr(out, n * grid * grid * grid, "out");
  py::gil_scoped_release release;
  spatialseg::landmark_distances_box(start.data(), stop.data(), g, o, num_threads);
}

void extract_patches(std::array<int64_t, 3> shape, F32 scales, std::optional<F32> volume, std::optional<F32> atlas, I64 centres,
                     std::optional<F32> rotation, std::optional<F32> scale, int slice_axis,
                     int patch2d, std::vector<int> strides, int patch3d, int grid,
                     std::array<double, 3> spacing, float fill, std::optional<F32> out2d,
                     std::optional<F32> out3d, std::optional<F32> out_dist,
                     std::optional<F32> out_atlas, int num_threads) {
  require(scales.ndim() == 4, "scales must be S x n_w x n_u x n_v");
  require(centres.ndim() == 2 && centres.shape(1) == 3, "centres must be n x 3");
  require(slice_axis >= 0 && slice_axis < 3, "slice_axis must be 0, 1 or 2");
  require(!strides.empty() && static_cast<int>(strides.size()) <= spatialseg::kMaxScales,
          "between 1 and 8 scales");
  require(static_cast<int64_t>(strides.size()) == scales.shape(0), "one image per stride");
  require(patch2d >= 1 && patch2d <= spatialseg::detail::kMaxPatch, "patch2d must be 1..255");
  const int64_t n = centres.shape(0);
  PatchGeometry g{};
  for (int a = 0; a < 3; ++a) g.shape[a] = shape[a];
  g.slice_axis = slice_axis;
  g.patch2d = patch2d;
  g.num_scales = static_cast<int>(strides.size());
  for (size_t k = 0; k < strides.size(); ++k) g.strides[k] = strides[k];
  g.patch3d = patch3d;
  g.fill = fill;
  g.grid = make_grid({g.shape[0], g.shape[1], g.shape[2]}, spacing, grid);
  g.num_labels = atlas ? atlas->shape(atlas->ndim() - 1) : 0;
  const int64_t voxels = g.shape[0] * g.shape[1] * g.shape[2];
  require(scales.size() == voxels * g.num_scales, "scales must hold S images of the volume's size");
  for (int a = 0; a < 3; ++a)
    for (int b = a + 1; b < 3; ++b)
      require(g.shape[a] * g.shape[b] < (int64_t{1} << 31), "a slice must hold < 2^31 voxels");
  if (volume) require(volume->size() == voxels, "volume size differs from the scales");
  if (atlas) require(atlas->size() == voxels * g.num_labels, "atlas must be D x H x W x L");
  if (rotation) require(rotation->size() == n, "one rotation per centre");
  if (scale) require(scale->size() == n, "one scale per centre");
  require(!out3d || (volume && patch3d > 0), "a 3D patch needs the volume");
  require(!out_atlas || atlas, "atlas output needs an atlas");

  const float* vol = volume ? volume->data() : nullptr;
  const float* atl = atlas ? atlas->data() : nullptr;
  const float* rot = rotation ? rotation->data() : nullptr;
  const float* scl = scale ? scale->data() : nullptr;
  float* o2 = out2d ? out_ptr(*out2d, n * g.num_scales * patch2d * patch2d, "out2d") : nullptr;
  float* o3 = out3d ? out_ptr(*out3d, n * patch3d * patch3d * patch3d, "out3d") : nullptr;
  float* od = out_dist ? out_ptr(*out_dist, n * grid * grid * grid, "out_dist") : nullptr;
  float* oa = out_atlas ? out_ptr(*out_atlas, n * g.num_labels, "out_atlas") : nullptr;
  if (grid <= 0) od = nullptr;
  const float* sc = scales.data();
  const int64_t* ce = centres.data();
  py::gil_scoped_release release;
  spatialseg::extract_patches(sc, vol, atl, ce, n, rot, scl, g, o2, o3, od, oa, num_threads);
}

using I32 = py::array_t<int32_t, py::array::c_style>;

// ref, pred: int32 label maps (a 2D map as 1 x H x W); lut: value -> id (or -1) for values
// 0..len(lut)-1; values: the label value of each id. Returns (counts [L, 5] int64: |X|, |Y|,
// |X & Y|, border X, border Y; list of L float64 arrays ref->pred; list of L arrays pred->ref).
// corner_area empty: border voxels; else the corner-grid surface with corner_area[code] per point.
// strategy: 0 auto, 1 per-label boxes, 2 whole-volume search (border voxels only; see the header).
// Returns (counts [L, 5], ref_to_pred, pred_to_ref, ref_areas, pred_areas); the area lists are
// empty arrays for border voxels.
py::tuple surface_distances(I32 ref, I32 pred, I32 lut, I32 values, std::array<double, 3> spacing,
                            int connectivity, int ndim, int num_threads, F64 corner_area, int strategy) {
  require(ref.ndim() == 3 && pred.ndim() == 3, "label maps must be 3D (a 2D map as 1 x H x W)");
  std::array<int64_t, 3> shape{};
  for (int a = 0; a < 3; ++a) {
    shape[a] = ref.shape(a);
    require(pred.shape(a) == shape[a], "label maps must have the same shape");
    require(spacing[a] > 0, "spacing must be positive");
  }
  require(ndim == 2 || ndim == 3, "ndim must be 2 or 3");
  require(ndim == 3 || shape[0] == 1, "a 2D map is passed as 1 x H x W");
  require(connectivity >= 1 && connectivity <= ndim, "connectivity must be 1..ndim");
  const int64_t num_labels = values.size();
  const int32_t* lt = lut.data();
  for (int64_t l = 0; l < num_labels; ++l) {
    const int32_t v = values.data()[l];
    require(v >= 0 && v < lut.size() && lt[v] == l, "lut and values must be inverse");
  }
  require(strategy >= 0 && strategy <= 2, "strategy must be 0 (auto), 1 (boxes) or 2 (search)");
  require(corner_area.size() == 0 || corner_area.size() == (ndim == 3 ? 256 : 16),
          "corner_area must have 2^(2^ndim) entries (or none)");
  const double* areas = corner_area.size() ? corner_area.data() : nullptr;
  const spatialseg::LabelLut table{lt, static_cast<int64_t>(lut.size())};
  const int32_t* r = ref.data();
  const int32_t* p = pred.data();
  const int32_t* vals = values.data();
  std::vector<spatialseg::LabelSurface> result;
  {
    py::gil_scoped_release release;
    result = spatialseg::surface_distances(r, p, shape, table, vals, num_labels, spacing, connectivity, ndim,
                                           num_threads, areas, strategy);
  }
  py::array_t<int64_t> counts({num_labels, int64_t{5}});
  auto c = counts.mutable_unchecked<2>();
  py::list ref_to_pred, pred_to_ref, ref_areas, pred_areas;
  for (int64_t l = 0; l < num_labels; ++l) {
    const auto& s = result[l];
    c(l, 0) = s.count_ref, c(l, 1) = s.count_pred, c(l, 2) = s.intersection;
    c(l, 3) = s.border_ref, c(l, 4) = s.border_pred;
    ref_to_pred.append(py::array_t<double>(s.ref_to_pred.size(), s.ref_to_pred.data()));
    pred_to_ref.append(py::array_t<double>(s.pred_to_ref.size(), s.pred_to_ref.data()));
    ref_areas.append(py::array_t<double>(s.ref_areas.size(), s.ref_areas.data()));
    pred_areas.append(py::array_t<double>(s.pred_areas.size(), s.pred_areas.data()));
  }
  return py::make_tuple(counts, ref_to_pred, pred_to_ref, ref_areas, pred_areas);
}

py::dict build_info() {
  py::dict d;
  d["version"] = SPATIALSEG_VERSION;
  d["openmp"] = spatialseg::openmp_enabled();
  d["max_threads"] = spatialseg::max_threads();
  d["compiler"] = SPATIALSEG_CXX_COMPILER;
#ifdef _OPENMP
  d["openmp_version"] = _OPENMP;
#else
  d["openmp_version"] = py::none();
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "spatialseg_fast C++ kernels (CPU, OpenMP)";
  m.def("landmark_distances", &landmark_distances, py::arg("coords"), py::arg("shape"),
        py::arg("spacing"), py::arg("grid"), py::arg("out"), py::arg("num_threads") = 0);
  m.def("landmark_distances_box", &landmark_distances_box, py::arg("start"), py::arg("stop"),
        py::arg("shape"), py::arg("spacing"), py::arg("grid"), py::arg("out"),
        py::arg("num_threads") = 0);
  m.def("extract_patches", &extract_patches, py::arg("shape"), py::arg("scales"), py::arg("volume"),
        py::arg("atlas"), py::arg("centres"), py::arg("rotation"), py::arg("scale"),
        py::arg("slice_axis"), py::arg("patch2d"), py::arg("strides"), py::arg("patch3d"),
        py::arg("grid"), py::arg("spacing"), py::arg("fill"), py::arg("out2d"), py::arg("out3d"),
        py::arg("out_dist"), py::arg("out_atlas"), py::arg("num_threads") = 0);
  m.def("surface_distances", &surface_distances, py::arg("ref"), py::arg("pred"), py::arg("lut"), py::arg("values"),
        py::arg("spacing"), py::arg("connectivity") = 1, py::arg("ndim") = 3, py::arg("num_threads") = 0,
        py::arg("corner_area") = F64(0), py::arg("strategy") = 0);
  m.def("build_info", &build_info, "How this extension was compiled");
}
