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
#include <memory>
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
// step > 1: only every step-th voxel along each axis (a cheap estimate of the boxes, slightly small).
inline std::vector<Box> label_boxes(const int32_t* ref, const int32_t* pred, const std::array<int64_t, 3>& shape,
                                    int64_t num_labels, const LabelLut& lut, int num_threads, int64_t step = 1) {
  std::vector<Box> boxes(num_labels);
  for (auto& b : boxes) {
    b.lo = {shape[0], shape[1], shape[2]};
    b.hi = {0, 0, 0};
  }
  const int threads = resolve_threads(num_threads, shape[0]);
  std::vector<std::vector<Box>> local(threads, boxes);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t x = 0; x < shape[0]; x += step) {
#ifdef _OPENMP
    auto& mine = local[omp_get_thread_num()];
#else
    auto& mine = local[0];
#endif
    for (int64_t y = 0; y < shape[1]; y += step) {
      const int64_t row = (x * shape[1] + y) * shape[2];
      for (int64_t z = 0; z < shape[2]; z += step) {
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

// The per-label strategy: each label's border sets and two EDTs on the union of its bounding boxes
// (see the top of the file). `only` (optional, size num_labels): compute just the labels marked 1.
inline std::vector<LabelSurface> surface_distances_boxes(const int32_t* ref, const int32_t* pred,
                                                         const std::array<int64_t, 3>& shape, const LabelLut& lut,
                                                         const int32_t* values, int64_t num_labels,
                                                         const std::array<double, 3>& spacing, int connectivity,
                                                         int ndim, int num_threads, const double* corner_area,
                                                         const std::vector<Box>& boxes,
                                                         const std::vector<uint8_t>* only = nullptr) {
  const bool corner = corner_area != nullptr;
  const int full_code = ndim == 3 ? 255 : 15;
  std::vector<LabelSurface> out(num_labels);
  const auto offsets = detail::neighbour_offsets(connectivity, ndim);
  // largest boxes first: dynamic scheduling then balances the threads
  std::vector<int64_t> order;
  for (int64_t l = 0; l < num_labels; ++l)
    if (!only || (*only)[l]) order.push_back(l);
  const int64_t num_work = static_cast<int64_t>(order.size());
  auto volume = [&](int64_t l) {
    const Box& b = boxes[l];
    return b.empty() ? 0 : (b.hi[0] - b.lo[0]) * (b.hi[1] - b.lo[1]) * (b.hi[2] - b.lo[2]);
  };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return volume(a) > volume(b); });
  const int threads = resolve_threads(num_threads, num_work);

#pragma omp parallel num_threads(threads)
  {
    detail::Envelope env;
    std::vector<double> field, line;
    std::vector<uint8_t> border;  // bit 0: border of X (ref), bit 1: border of Y (pred)
    std::vector<uint8_t> wanted;  // lines along axis 0 that hold a voxel read afterwards
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < num_work; ++k) {
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

// The whole-volume strategy (voxel borders only; issue 17). Per-label boxes overlap (on a brain
// parcellation they total ~4x the labelled voxels) and each box voxel pays for two EDT passes. Here
// every voxel is read once: one pass marks each voxel's border bits (of its own label, in each map)
// and counts; each label's border voxels are gathered in C order; then each border voxel looks for
// the nearest border voxel of its label in the other map by visiting neighbour offsets in order of
// increasing distance (the first hit is the nearest, so the result is exact). Predictions differ
// from references by a few voxels almost everywhere, so most searches stop within a few offsets.
// A point with no hit within the offset table's radius is farther than that radius: its label and
// direction are finished by brute force over the target border voxels when they are few, else by
// the label's box EDT above.
namespace detail {

struct Offset {
  int64_t dx, dy, dz;
  double d;  // distance in mm: sqrt(dx^2 + (dy^2 + dz^2)), each term in mm (the EDT's sum, up to rounding)
};

// Offsets (excluding 0) within `radius_mm`, sorted by distance (ties: C order of the offset).
inline std::vector<Offset> sorted_offsets(const std::array<double, 3>& sp, int ndim, double radius_mm) {
  std::array<int64_t, 3> reach{};
  for (int a = 0; a < 3; ++a) reach[a] = static_cast<int64_t>(std::floor(radius_mm / sp[a]));
  if (ndim == 2) reach[0] = 0;
  std::vector<Offset> out;
  for (int64_t a = -reach[0]; a <= reach[0]; ++a)
    for (int64_t b = -reach[1]; b <= reach[1]; ++b)
      for (int64_t c = -reach[2]; c <= reach[2]; ++c) {
        if (a == 0 && b == 0 && c == 0) continue;
        const double ta = double(a) * sp[0], tb = double(b) * sp[1], tc = double(c) * sp[2];
        const double d2 = ta * ta + (tb * tb + tc * tc);
        if (d2 > radius_mm * radius_mm) continue;
        out.push_back({a, b, c, std::sqrt(d2)});
      }
  std::stable_sort(out.begin(), out.end(), [](const Offset& u, const Offset& v) { return u.d < v.d; });
  return out;
}

}  // namespace detail

// Offsets out to this many of the smallest voxel sides (~17k offsets at most; farther points are
// rare in real comparisons and go to the fallbacks).
constexpr double kSearchRadiusVoxels = 16.0;

// Edge: the per-voxel label id type of the border maps (int16_t while the ids fit: half the memory
// traffic of int32_t).
template <typename Edge>
std::vector<LabelSurface> surface_distances_search(const int32_t* ref, const int32_t* pred,
                                                          const std::array<int64_t, 3>& shape, const LabelLut& lut,
                                                          int64_t num_labels, const std::array<double, 3>& spacing,
                                                          int connectivity, int ndim, int num_threads,
                                                          const int32_t* values) {
  std::vector<LabelSurface> out(num_labels);
  const int64_t plane = shape[1] * shape[2], total = shape[0] * plane;
  const auto neighbours = detail::neighbour_offsets(connectivity, ndim);
  // per map: the voxel's label id where it is a border voxel of its label, else -1 (one load per
  // probe in the search below)
  std::unique_ptr<Edge[]> edge_ref(new Edge[total]), edge_pred(new Edge[total]);  // every entry written below
  const int threads = resolve_threads(num_threads, shape[0] * shape[1]);
  // per thread: counts and border voxel lists; static schedule = contiguous row ranges in thread
  // order, so concatenating the threads' lists in order keeps C order
  std::vector<std::vector<std::array<int64_t, 3>>> counts(threads, std::vector<std::array<int64_t, 3>>(num_labels));
  std::vector<std::vector<std::vector<int64_t>>> lists(threads, std::vector<std::vector<int64_t>>(2 * num_labels));
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num();
#else
    const int t = 0;
#endif
    auto& cnt = counts[t];
    auto& mine = lists[t];
    const bool faces = connectivity == 1;
    auto border = [&](const int32_t* map, int32_t value, int64_t x, int64_t y, int64_t z) -> bool {
      if (faces && x > 0 && y > 0 && z > 0 && x + 1 < shape[0] && y + 1 < shape[1] && z + 1 < shape[2]) {
        const int32_t* c = map + x * plane + y * shape[2] + z;  // the 6 face neighbours, no bounds to check
        return (c[-1] != value) | (c[1] != value) | (c[-shape[2]] != value) | (c[shape[2]] != value) |
               (c[-plane] != value) | (c[plane] != value);
      }
      for (const auto& o : neighbours) {
        const int64_t xx = x + o[0], yy = y + o[1], zz = z + o[2];
        if (xx < 0 || yy < 0 || zz < 0 || xx >= shape[0] || yy >= shape[1] || zz >= shape[2]) return true;
        if (map[(xx * shape[1] + yy) * shape[2] + zz] != value) return true;
      }
      return false;
    };
#pragma omp for schedule(static)
    for (int64_t row = 0; row < shape[0] * shape[1]; ++row)  // rows, not planes: a 2D map is one plane
      for (int64_t z = 0; z < shape[2]; ++z) {
        const int64_t x = row / shape[1], y = row % shape[1];
        const int64_t g = row * shape[2] + z;
        const int32_t rv = ref[g], pv = pred[g];
        const int32_t rid = lut(rv), pid = lut(pv);
        Edge er = -1, ep = -1;
        if (rid >= 0) {
          ++cnt[rid][0];
          if (rv == pv) ++cnt[rid][2];
          if (border(ref, rv, x, y, z)) er = static_cast<Edge>(rid), mine[rid].push_back(g);
        }
        if (pid >= 0) {
          ++cnt[pid][1];
          if (border(pred, pv, x, y, z)) ep = static_cast<Edge>(pid), mine[num_labels + pid].push_back(g);
        }
        edge_ref[g] = er, edge_pred[g] = ep;
      }
  }
  std::vector<std::vector<int64_t>> sets(2 * num_labels);  // [l]: ref border of l, [L + l]: pred's
  for (int64_t k = 0; k < 2 * num_labels; ++k) {
    size_t n = 0;
    for (int t = 0; t < threads; ++t) n += lists[t][k].size();
    sets[k].reserve(n);
    for (int t = 0; t < threads; ++t) {
      sets[k].insert(sets[k].end(), lists[t][k].begin(), lists[t][k].end());
      std::vector<int64_t>().swap(lists[t][k]);
    }
  }
  for (int64_t l = 0; l < num_labels; ++l) {
    LabelSurface& s = out[l];
    for (int t = 0; t < threads; ++t)
      s.count_ref += counts[t][l][0], s.count_pred += counts[t][l][1], s.intersection += counts[t][l][2];
    s.border_ref = static_cast<int64_t>(sets[l].size());
    s.border_pred = static_cast<int64_t>(sets[num_labels + l].size());
  }
  // each label's exact box over both maps: the box of its border voxels (a set's extreme voxels
  // are border voxels), for the fallbacks below
  std::vector<Box> boxes(num_labels);
  for (int64_t l = 0; l < num_labels; ++l) {
    Box& b = boxes[l];
    b.lo = {shape[0], shape[1], shape[2]};
    b.hi = {0, 0, 0};
    for (const auto* set : {&sets[l], &sets[num_labels + l]})
      for (const int64_t g : *set) {
        const std::array<int64_t, 3> at{g / plane, (g / shape[2]) % shape[1], g % shape[2]};
        for (int a = 0; a < 3; ++a) b.lo[a] = std::min(b.lo[a], at[a]), b.hi[a] = std::max(b.hi[a], at[a] + 1);
      }
  }
  auto volume_of = [](const Box& b) {
    return b.empty() ? int64_t{0} : (b.hi[0] - b.lo[0]) * (b.hi[1] - b.lo[1]) * (b.hi[2] - b.lo[2]);
  };
  const double min_sp = std::min({ndim == 3 ? spacing[0] : spacing[1], spacing[1], spacing[2]});
  const auto table = detail::sorted_offsets(spacing, ndim, kSearchRadiusVoxels * min_sp);
  std::vector<int64_t> delta(table.size());
  std::array<int64_t, 3> reach{0, 0, 0};  // the table's extent per axis
  for (size_t k = 0; k < table.size(); ++k) {
    delta[k] = table[k].dx * plane + table[k].dy * shape[2] + table[k].dz;
    reach[0] = std::max(reach[0], std::abs(table[k].dx));
    reach[1] = std::max(reach[1], std::abs(table[k].dy));
    reach[2] = std::max(reach[2], std::abs(table[k].dz));
  }
  // far[l]: bit 0 / 1 when direction ref->pred / pred->ref of label l has points beyond the table
  std::vector<uint8_t> far(num_labels, 0);
  const int search_threads = resolve_threads(num_threads, 2 * num_labels);
#pragma omp parallel for num_threads(search_threads) schedule(dynamic, 1)
  for (int64_t k = 0; k < 2 * num_labels; ++k) {
    const int dir = k % 2;  // 0: ref -> pred, 1: pred -> ref
    const int64_t l = k / 2;
    LabelSurface& s = out[l];
    if (s.border_ref == 0 || s.border_pred == 0) continue;
    const auto& src = sets[dir == 0 ? l : num_labels + l];
    const Edge* edge = dir == 0 ? edge_pred.get() : edge_ref.get();
    const Edge id = static_cast<Edge>(l);
    auto& dst = dir == 0 ? s.ref_to_pred : s.pred_to_ref;
    dst.assign(src.size(), detail::kInf);
    // a badly wrong prediction (a failed registration, a flipped map) leaves many points beyond the
    // table, each costing the whole table: past this budget the direction goes to the box EDT at once
    const size_t budget = std::max<size_t>(64, src.size() / 50);
    size_t n_far = 0;
    for (size_t i = 0; i < src.size(); ++i) {
      const int64_t g = src[i];
      if (edge[g] == id) {
        dst[i] = 0.0;
        continue;
      }
      const int64_t x = g / plane, y = (g / shape[2]) % shape[1], z = g % shape[2];
      const bool clear = x >= reach[0] && y >= reach[1] && z >= reach[2] && x + reach[0] < shape[0] &&
                         y + reach[1] < shape[1] && z + reach[2] < shape[2];  // no probe leaves the image
      for (size_t o = 0; o < table.size(); ++o) {
        if (!clear) {
          const detail::Offset& off = table[o];
          const int64_t xx = x + off.dx, yy = y + off.dy, zz = z + off.dz;
          if (xx < 0 || yy < 0 || zz < 0 || xx >= shape[0] || yy >= shape[1] || zz >= shape[2]) continue;
        }
        if (edge[g + delta[o]] == id) {
          dst[i] = table[o].d;
          break;
        }
      }
      if (dst[i] == detail::kInf && ++n_far > budget) break;
    }
    if (n_far == 0) continue;
    const auto& dst_set = sets[dir == 0 ? num_labels + l : l];
    const int64_t box_volume = volume_of(boxes[l]);
    if (n_far > budget) {
#pragma omp atomic
      far[l] |= static_cast<uint8_t>(1 << dir);
      continue;
    }
    // the few points beyond the table: brute force over the target border when that is cheaper
    // brute force while its pairs stay under 8 per box voxel (a box voxel costs a border test and two
    // EDT passes; 8 was the faster side on bench_surface_distances.py's pair)
    if (static_cast<int64_t>(n_far * dst_set.size()) <= 8 * box_volume) {
      std::vector<std::array<int64_t, 3>> targets(dst_set.size());
      for (size_t j = 0; j < dst_set.size(); ++j)
        targets[j] = {dst_set[j] / plane, (dst_set[j] / shape[2]) % shape[1], dst_set[j] % shape[2]};
      for (size_t i = 0; i < src.size(); ++i) {
        if (dst[i] != detail::kInf) continue;
        const int64_t g = src[i];
        const std::array<int64_t, 3> at{g / plane, (g / shape[2]) % shape[1], g % shape[2]};
        double best2 = detail::kInf;
        for (const auto& t : targets) {  // the EDT's terms: ((x - x') sp)^2, axis 0 added last
          const double ta = double(at[0] - t[0]) * spacing[0], tb = double(at[1] - t[1]) * spacing[1],
                       tc = double(at[2] - t[2]) * spacing[2];
          best2 = std::min(best2, ta * ta + (tb * tb + tc * tc));
        }
        dst[i] = std::sqrt(best2);
      }
    } else {
#pragma omp atomic
      far[l] |= static_cast<uint8_t>(1 << dir);
    }
  }
  // labels with many far points: that direction from the label's box EDT (same points, same order)
  std::vector<uint8_t> redo(num_labels);
  bool any = false;
  for (int64_t l = 0; l < num_labels; ++l) any |= (redo[l] = far[l] != 0);
  if (any) {
    auto again = surface_distances_boxes(ref, pred, shape, lut, values, num_labels, spacing, connectivity, ndim,
                                         num_threads, nullptr, boxes, &redo);
    for (int64_t l = 0; l < num_labels; ++l) {
      if (far[l] & 1) out[l].ref_to_pred = std::move(again[l].ref_to_pred);
      if (far[l] & 2) out[l].pred_to_ref = std::move(again[l].pred_to_ref);
    }
  }
  return out;
}

// Which strategy: 0 = auto, 1 = per-label boxes, 2 = whole-volume search (voxel borders only).
// auto takes the search when the labels' boxes add up to more than kSearchWhenBoxes of the volume
// (a parcellation), the boxes when a few labels sit in a small part of it (the crossover measured
// by bench_surface_distances.py --crossover, bench/RESULTS.md).
constexpr double kSearchWhenBoxes = 0.15;

// ref, pred: label maps of `shape` (C order); values[id] is the label value of id (lut inverse).
// corner_area == nullptr: border voxels (centres) within `connectivity`. Otherwise the corner-grid
// surface above with corner_area[code] per point (2^(2^ndim) entries); connectivity is unused.
inline std::vector<LabelSurface> surface_distances(const int32_t* ref, const int32_t* pred,
                                                   const std::array<int64_t, 3>& shape, const LabelLut& lut,
                                                   const int32_t* values, int64_t num_labels,
                                                   const std::array<double, 3>& spacing, int connectivity, int ndim,
                                                   int num_threads, const double* corner_area = nullptr,
                                                   int strategy = 0) {
  bool search = strategy == 2 && corner_area == nullptr;
  if (strategy == 0 && corner_area == nullptr) {
    // the labels' boxes from every 4th voxel per axis: enough to choose, 1/64 of a full pass
    const std::vector<Box> estimate = label_boxes(ref, pred, shape, num_labels, lut, num_threads, 4);
    double sum = 0;
    for (const Box& b : estimate)
      if (!b.empty()) sum += double(b.hi[0] - b.lo[0]) * double(b.hi[1] - b.lo[1]) * double(b.hi[2] - b.lo[2]);
    search = sum > kSearchWhenBoxes * double(shape[0] * shape[1] * shape[2]);
  }
  if (search) {
    if (num_labels < std::numeric_limits<int16_t>::max())
      return surface_distances_search<int16_t>(ref, pred, shape, lut, num_labels, spacing, connectivity, ndim,
                                               num_threads, values);
    return surface_distances_search<int32_t>(ref, pred, shape, lut, num_labels, spacing, connectivity, ndim,
                                             num_threads, values);
  }
  return surface_distances_boxes(ref, pred, shape, lut, values, num_labels, spacing, connectivity, ndim, num_threads,
                                 corner_area, label_boxes(ref, pred, shape, num_labels, lut, num_threads));
}

}  // namespace spatialseg
