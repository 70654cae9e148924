// Exact surface distances between two label maps, every label in one call (evaluator, issue 4).
//
// For each label l: X = {ref == l}, Y = {pred == l}. A border voxel of a set is one of its voxels
// with a neighbour (within `connectivity`: 1 = faces, up to ndim = all) outside the set; outside the
// image counts as outside (medpy's and MONAI's erosion with border value 0). For every border voxel
// of X the Euclidean distance (mm, voxel centres) to the nearest border voxel of Y, and the other
// way round. Torch-free; OpenMP over labels.
//
// Exact on a crop: all of X and Y (hence every feature point of either border) lies inside the
// union of their bounding boxes, so a distance transform computed on that box alone is exact at
// every voxel of the box. The transform is Felzenszwalb & Huttenlocher's separable squared EDT
// (lower envelope of parabolas), in millimetres along each axis.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "parallel.hpp"

namespace spatialseg {

struct LabelSurface {
  int64_t count_ref = 0, count_pred = 0, intersection = 0, border_ref = 0, border_pred = 0;
  std::vector<double> ref_to_pred;  // per border voxel of X (C order): distance to border(Y)
  std::vector<double> pred_to_ref;  // per border voxel of Y: distance to border(X)
  std::vector<double> ref_areas, pred_areas;  // corner surface only: each border point's area
};

struct Box {
  std::array<int64_t, 3> lo{}, hi{};  // [lo, hi) per axis; empty while lo > hi
  bool empty() const { return lo[0] >= hi[0]; }
};

namespace detail {

constexpr double kInf = std::numeric_limits<double>::infinity();

// In place: f[i] <- min_j ((i - j) * sp)^2 + f[j] over one line of n samples (inf = no feature).
struct Envelope {
  std::vector<int64_t> v;
  std::vector<double> z, out;
  void run(double* f, int64_t n, double sp) {
    v.resize(n);
    z.resize(n + 1);
    out.resize(n);
    const double sp2 = sp * sp;
    int64_t k = -1;
    for (int64_t q = 0; q < n; ++q) {
      if (f[q] == kInf) continue;
      const double fq = f[q] + sp2 * double(q) * double(q);
      double s = -kInf;
      while (k >= 0) {
        const int64_t p = v[k];
        s = (fq - (f[p] + sp2 * double(p) * double(p))) / (2.0 * sp2 * double(q - p));
        if (s > z[k]) break;
        --k;
      }
      ++k;
      v[k] = q;
      z[k] = k == 0 ? -kInf : s;
      z[k + 1] = kInf;
    }
    if (k < 0) return;  // no feature on this line: stays inf
    int64_t j = 0;
    for (int64_t q = 0; q < n; ++q) {
      while (z[j + 1] < double(q)) ++j;
      const double d = double(q - v[j]) * sp;
      out[q] = d * d + f[v[j]];
    }
    std::copy(out.begin(), out.begin() + n, f);
  }
};

// Squared EDT of a box (C order, sizes n) whose features are 0 and the rest inf, in place.
// `wanted[i * n[2] + j]` says whether line (., i, j) along axis 0 holds a voxel whose distance
// is read afterwards: the last pass skips the others (their values are never used).
inline void squared_edt(std::vector<double>& f, const std::array<int64_t, 3>& n, const std::array<double, 3>& sp,
                        const std::vector<uint8_t>& wanted, Envelope& env, std::vector<double>& line) {
  const std::array<int64_t, 3> stride{n[1] * n[2], n[2], 1};
  // axis 2 (contiguous rows of 0 / inf): nearest feature by two sweeps, no parabolas needed
  for (int64_t r = 0; r < n[0] * n[1]; ++r) {
    double* row = f.data() + r * n[2];
    int64_t last = -1;
    for (int64_t q = 0; q < n[2]; ++q) {
      if (row[q] == 0.0) last = q;
      else if (last >= 0) {
        const double d = double(q - last) * sp[2];
        row[q] = d * d;
      }
    }
    if (last < 0) continue;  // no feature: the row stays inf
    int64_t next = -1;
    for (int64_t q = n[2] - 1; q >= 0; --q) {
      if (row[q] == 0.0) next = q;
      else if (next >= 0) {
        const double d = double(next - q) * sp[2];
        row[q] = std::min(row[q], d * d);
      }
    }
  }
  // axes 1 and 0: lower envelopes on gathered lines; all-inf lines stay as they are
  for (int axis = 1; axis >= 0; --axis) {
    if (n[axis] == 1) continue;
    const int a1 = axis == 0 ? 1 : 0;
    line.resize(n[axis]);
    for (int64_t i = 0; i < n[a1]; ++i)
      for (int64_t j = 0; j < n[2]; ++j) {
        if (axis == 0 && !wanted[i * n[2] + j]) continue;
        double* base = f.data() + i * stride[a1] + j;
        bool any = false;
        for (int64_t q = 0; q < n[axis]; ++q) {
          line[q] = base[q * stride[axis]];
          any |= line[q] != kInf;
        }
        if (!any) continue;
        env.run(line.data(), n[axis], sp[axis]);
        for (int64_t q = 0; q < n[axis]; ++q) base[q * stride[axis]] = line[q];
      }
  }
}

// Neighbour offsets within `connectivity` (sum of |offsets| <= connectivity), in the last `ndim` axes.
inline std::vector<std::array<int64_t, 3>> neighbour_offsets(int connectivity, int ndim) {
  std::vector<std::array<int64_t, 3>> out;
  for (int64_t a = -1; a <= 1; ++a)
    for (int64_t b = -1; b <= 1; ++b)
      for (int64_t c = -1; c <= 1; ++c) {
        const int64_t m = std::abs(a) + std::abs(b) + std::abs(c);
        if (m == 0 || m > connectivity || (ndim == 2 && a != 0)) continue;
        out.push_back({a, b, c});
      }
  return out;
}

}  // namespace detail

// DeepMind surface-distance's surface: points on the grid of voxel corners. Point p has the voxels
// p - 1 + (a, b, c), (a, b, c) in {0,1}^3, around it; voxel (a, b, c) inside the set sets bit
// 1 << (7 - (4a + 2b + c)) of its code (2D: 1 << (3 - (2b + c)), on the last two axes). Codes other
// than none and all are surface points, weighted by area[code] (computed in Python from the
// marching-cubes surface, spatialseg_fast/ops/_surfels.py).
inline int corner_code(const int32_t* map, int32_t value, const std::array<int64_t, 3>& shape, int ndim,
                       int64_t x, int64_t y, int64_t z) {
  int code = 0;
  const int a_max = ndim == 3 ? 1 : 0;
  for (int a = 0; a <= a_max; ++a)
    for (int b = 0; b <= 1; ++b)
      for (int c = 0; c <= 1; ++c) {
        const int64_t xx = ndim == 3 ? x + a - 1 : x, yy = y + b - 1, zz = z + c - 1;
        if (xx < 0 || yy < 0 || zz < 0 || xx >= shape[0] || yy >= shape[1] || zz >= shape[2]) continue;
        if (map[(xx * shape[1] + yy) * shape[2] + zz] != value) continue;
        code |= ndim == 3 ? 1 << (7 - (4 * a + 2 * b + c)) : 1 << (3 - (2 * b + c));
      }
  return code;
}

// Label maps hold raw label values; `lut` (size lut_size) maps a value to its id 0..L-1 or -1
// (not asked for). Values outside [0, lut_size) are not asked for either.
struct LabelLut {
  const int32_t* lut;
  int64_t size;
  int32_t operator()(int32_t v) const { return (v >= 0 && v < size) ? lut[v] : -1; }
};

// Bounding boxes of ids 0..L-1 over both maps.
inline std::vector<Box> label_boxes(const int32_t* ref, const int32_t* pred, const std::array<int64_t, 3>& shape,
                                    int64_t num_labels, const LabelLut& lut, int num_threads) {
  std::vector<Box> boxes(num_labels);
  for (auto& b : boxes) {
    b.lo = {shape[0], shape[1], shape[2]};
    b.hi = {0, 0, 0};
  }
  const int threads = resolve_threads(num_threads, shape[0]);
  std::vector<std::vector<Box>> local(threads, boxes);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t x = 0; x < shape[0]; ++x) {
#ifdef _OPENMP
    auto& mine = local[omp_get_thread_num()];
#else
    auto& mine = local[0];
#endif
    for (int64_t y = 0; y < shape[1]; ++y) {
      const int64_t row = (x * shape[1] + y) * shape[2];
      for (int64_t z = 0; z < shape[2]; ++z) {
        for (const int32_t id : {lut(ref[row + z]), lut(pred[row + z])}) {
          if (id < 0) continue;
          Box& b = mine[id];
          b.lo[0] = std::min(b.lo[0], x), b.hi[0] = std::max(b.hi[0], x + 1);
          b.lo[1] = std::min(b.lo[1], y), b.hi[1] = std::max(b.hi[1], y + 1);
          b.lo[2] = std::min(b.lo[2], z), b.hi[2] = std::max(b.hi[2], z + 1);
        }
      }
    }
  }
  for (const auto& mine : local)
    for (int64_t l = 0; l < num_labels; ++l)
      for (int a = 0; a < 3; ++a) {
        boxes[l].lo[a] = std::min(boxes[l].lo[a], mine[l].lo[a]);
        boxes[l].hi[a] = std::max(boxes[l].hi[a], mine[l].hi[a]);
      }
  return boxes;
}

// ref, pred: label maps of `shape` (C order); values[id] is the label value of id (lut inverse).
// corner_area == nullptr: border voxels (centres) within `connectivity`. Otherwise the corner-grid
// surface above with corner_area[code] per point (2^(2^ndim) entries); connectivity is unused.
inline std::vector<LabelSurface> surface_distances(const int32_t* ref, const int32_t* pred,
                                                   const std::array<int64_t, 3>& shape, const LabelLut& lut,
                                                   const int32_t* values, int64_t num_labels,
                                                   const std::array<double, 3>& spacing, int connectivity, int ndim,
                                                   int num_threads, const double* corner_area = nullptr) {
  const bool corner = corner_area != nullptr;
  const int full_code = ndim == 3 ? 255 : 15;
  std::vector<LabelSurface> out(num_labels);
  const std::vector<Box> boxes = label_boxes(ref, pred, shape, num_labels, lut, num_threads);
  const auto offsets = detail::neighbour_offsets(connectivity, ndim);
  // largest boxes first: dynamic scheduling then balances the threads
  std::vector<int64_t> order(num_labels);
  std::iota(order.begin(), order.end(), 0);
  auto volume = [&](int64_t l) {
    const Box& b = boxes[l];
    return b.empty() ? 0 : (b.hi[0] - b.lo[0]) * (b.hi[1] - b.lo[1]) * (b.hi[2] - b.lo[2]);
  };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return volume(a) > volume(b); });
  const int threads = resolve_threads(num_threads, num_labels);

#pragma omp parallel num_threads(threads)
  {
    detail::Envelope env;
    std::vector<double> field, line;
    std::vector<uint8_t> border;  // bit 0: border of X (ref), bit 1: border of Y (pred)
    std::vector<uint8_t> wanted;  // lines along axis 0 that hold a voxel read afterwards
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < num_labels; ++k) {
      const int64_t l = order[k];
      const int32_t value = values[l];
      const Box& b = boxes[l];
      LabelSurface& s = out[l];
      if (b.empty()) continue;
      // the grid of surface points: voxels, or the (n + 1) corners of the box's voxels
      const int64_t grow = corner ? 1 : 0;
      const std::array<int64_t, 3> n{b.hi[0] - b.lo[0] + (ndim == 3 ? grow : 0), b.hi[1] - b.lo[1] + grow,
                                     b.hi[2] - b.lo[2] + grow};
      const int64_t size = n[0] * n[1] * n[2];
      border.assign(size, 0);
      auto is_border = [&](const int32_t* map, int64_t x, int64_t y, int64_t z) {
        for (const auto& o : offsets) {
          const int64_t xx = x + o[0], yy = y + o[1], zz = z + o[2];
          if (xx < 0 || yy < 0 || zz < 0 || xx >= shape[0] || yy >= shape[1] || zz >= shape[2]) return true;
          if (map[(xx * shape[1] + yy) * shape[2] + zz] != value) return true;
        }
        return false;
      };
      if (corner) {
        for (int64_t x = b.lo[0]; x < b.hi[0]; ++x)  // Dice counts over the voxels
          for (int64_t y = b.lo[1]; y < b.hi[1]; ++y)
            for (int64_t z = b.lo[2]; z < b.hi[2]; ++z) {
              const int64_t g = (x * shape[1] + y) * shape[2] + z;
              const bool in_x = ref[g] == value, in_y = pred[g] == value;
              s.count_ref += in_x;
              s.count_pred += in_y;
              s.intersection += in_x && in_y;
            }
        for (int64_t i = 0; i < n[0]; ++i)
          for (int64_t j = 0; j < n[1]; ++j)
            for (int64_t m = 0; m < n[2]; ++m) {
              const int64_t x = b.lo[0] + i, y = b.lo[1] + j, z = b.lo[2] + m;
              const int code_x = corner_code(ref, value, shape, ndim, x, y, z);
              const int code_y = corner_code(pred, value, shape, ndim, x, y, z);
              uint8_t bits = 0;
              if (code_x != 0 && code_x != full_code) bits |= 1, s.ref_areas.push_back(corner_area[code_x]);
              if (code_y != 0 && code_y != full_code) bits |= 2, s.pred_areas.push_back(corner_area[code_y]);
              border[(i * n[1] + j) * n[2] + m] = bits;
              s.border_ref += bits & 1;
              s.border_pred += (bits >> 1) & 1;
            }
      } else {
        for (int64_t i = 0; i < n[0]; ++i)
          for (int64_t j = 0; j < n[1]; ++j)
            for (int64_t m = 0; m < n[2]; ++m) {
              const int64_t x = b.lo[0] + i, y = b.lo[1] + j, z = b.lo[2] + m;
              const int64_t g = (x * shape[1] + y) * shape[2] + z;
              const bool in_x = ref[g] == value, in_y = pred[g] == value;
              s.count_ref += in_x;
              s.count_pred += in_y;
              s.intersection += in_x && in_y;
              uint8_t bits = 0;
              if (in_x && is_border(ref, x, y, z)) bits |= 1;
              if (in_y && is_border(pred, x, y, z)) bits |= 2;
              border[(i * n[1] + j) * n[2] + m] = bits;
              s.border_ref += bits & 1;
              s.border_pred += (bits >> 1) & 1;
            }
      }
      if (s.border_ref == 0 || s.border_pred == 0) continue;  // a set is empty: no distances
      // distances from the border of one map to the border of the other, both ways
      for (int dir = 0; dir < 2; ++dir) {
        const uint8_t target = dir == 0 ? 2 : 1, source = dir == 0 ? 1 : 2;
        field.assign(size, detail::kInf);
        wanted.assign(n[1] * n[2], 0);
        for (int64_t q = 0; q < size; ++q) {
          if (border[q] & target) field[q] = 0.0;
          if (border[q] & source) wanted[q % (n[1] * n[2])] = 1;
        }
        detail::squared_edt(field, n, spacing, wanted, env, line);
        auto& dst = dir == 0 ? s.ref_to_pred : s.pred_to_ref;
        dst.reserve(dir == 0 ? s.border_ref : s.border_pred);
        for (int64_t q = 0; q < size; ++q)
          if (border[q] & source) dst.push_back(std::sqrt(field[q]));
      }
    }
  }
  return out;
}

}  // namespace spatialseg
