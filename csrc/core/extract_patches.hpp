// Fused multi-scale patch extraction (paper §2.1-2.3): for each centre voxel, in one pass,
//   * S in-plane 2D patches of P x P samples at strides s_0..s_{S-1}, each read from its own
//     pre-smoothed image (anti-aliasing is done once per volume, not per patch), optionally
//     rotated and scaled in the plane (bilinear sampling; the paper's augmentation),
//   * the Q^3 3D patch of the raw volume,
//   * the G^3 landmark-distance image of the centre,
//   * the atlas probability vector at the centre.
// Samples outside the volume read `fill` (bilinear taps individually).
//
// 2D sample (i, j) of a patch with stride s, rotation t and scale f sits, in voxel units of the
// two in-plane axes (u < v), at
//   u = c_u + f * ( cos t * a - sin t * b ),   v = c_v + f * ( sin t * a + cos t * b ),
//   a = (i - (P-1)/2) * s,  b = (j - (P-1)/2) * s.
#pragma once
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <vector>

#include "landmark_distances.hpp"
#include "parallel.hpp"

namespace spatialseg {

constexpr int kMaxScales = 8;

struct PatchGeometry {
  int64_t shape[3];
  int slice_axis;        // the axis normal to the 2D patches
  int patch2d;           // P
  int num_scales;        // S
  int strides[kMaxScales];
  int patch3d;           // Q (0: no 3D patch)
  float fill;
  LandmarkGrid grid;     // G = 0: no distances
  int64_t num_labels;    // L (0: no atlas)
};

namespace detail {


struct Plane {
  const float* base;  // first voxel of the slice through the centre
  int64_t n_u, n_v, s_u, s_v;
  float fill;
  float at(int64_t u, int64_t v) const {
    return (u >= 0 && u < n_u && v >= 0 && v < n_v) ? base[u * s_u + v * s_v] : fill;
  }
};

// Axis-aligned patch at integer positions: a plain strided copy.
inline void sample_plane_aligned(const Plane& pl, int64_t cu, int64_t cv, int P, int s,
                                 float* out) {
  const int64_t h = (P - 1) / 2;
  const int64_t u_lo = cu - h * s, v_lo = cv - h * s;
  const int64_t u_hi = cu + (P - 1 - h) * s, v_hi = cv + (P - 1 - h) * s;
  const bool inside = u_lo >= 0 && v_lo >= 0 && u_hi < pl.n_u && v_hi < pl.n_v;
  for (int i = 0; i < P; ++i) {
    const int64_t u = u_lo + static_cast<int64_t>(i) * s;
    float* o = out + static_cast<int64_t>(i) * P;
    if (inside) {
      const float* row = pl.base + u * pl.s_u + v_lo * pl.s_v;
      const int64_t step = s * pl.s_v;
      for (int j = 0; j < P; ++j) o[j] = row[j * step];
    } else {
      for (int j = 0; j < P; ++j) o[j] = pl.at(u, v_lo + static_cast<int64_t>(j) * s);
    }
  }
}

// Rotated / scaled patch: bilinear interpolation, each of the four taps reading fill outside.
// Positions are offsets from the centre (small numbers, so float keeps ~1e-5 voxel precision).
// floor() is computed as truncation corrected for negative values: baseline x86-64 has no
// round instruction, so std::floor would be a libm call per sample, and this form vectorises.
// The plane is v-contiguous.
constexpr int kMaxPatch = 255;

inline int32_t floor_small(float x) {
  const int32_t t = static_cast<int32_t>(x);
  return t - static_cast<int32_t>(x < static_cast<float>(t));
}

// One output row of a rotated / scaled patch. The row is split into an index/weight pass and a
// load + lerp pass; both vectorise with baseline SSE2 (AVX2 gathers measured no faster here).
// `centre` points at the patch centre; every tap of this row must lie inside the plane.
inline void bilinear_row_inside(const float* __restrict centre, int32_t su, int j0, int j1,
                                float h, int s, float au, float av, float cos_f, float sin_f,
                                float* __restrict o) {
  int32_t idx[kMaxPatch];
  float wu[kMaxPatch], wv[kMaxPatch];
  for (int j = j0; j < j1; ++j) {
    const float b = (j - h) * s;
    const float ru = au - sin_f * b;
    const float rv = av + cos_f * b;
    const int iu = floor_small(ru), iv = floor_small(rv);
    wu[j] = ru - static_cast<float>(iu);
    wv[j] = rv - static_cast<float>(iv);
    idx[j] = iu * su + iv;
  }
  for (int j = j0; j < j1; ++j) {
    const int32_t k = idx[j];
    const float t00 = centre[k], t01 = centre[k + 1], t10 = centre[k + su], t11 = centre[k + su + 1];
    const float top = t00 + wv[j] * (t01 - t00);
    const float bot = t10 + wv[j] * (t11 - t10);
    o[j] = top + wu[j] * (bot - top);
  }
}

// A row crossing the plane's edge: taps are clamped into the plane and replaced by `fill`
// where they fall outside; branch-free so it vectorises like the inside case.
inline void bilinear_row_checked(const float* __restrict plane, int32_t n_u, int32_t n_v,
                                 int32_t cu, int32_t cv, int j0, int j1, float h, int s,
                                 float au, float av, float cos_f, float sin_f, float fill,
                                 float* __restrict o) {
  int32_t k00[kMaxPatch], k01[kMaxPatch], k10[kMaxPatch], k11[kMaxPatch];
  int32_t m00[kMaxPatch], m01[kMaxPatch], m10[kMaxPatch], m11[kMaxPatch];
  float wu[kMaxPatch], wv[kMaxPatch];
  for (int j = j0; j < j1; ++j) {
    const float b = (j - h) * s;
    const float ru = au - sin_f * b;
    const float rv = av + cos_f * b;
    const int32_t iu = floor_small(ru), iv = floor_small(rv);
    wu[j] = ru - static_cast<float>(iu);
    wv[j] = rv - static_cast<float>(iv);
    const int32_t u0 = cu + iu, v0 = cv + iv, u1 = u0 + 1, v1 = v0 + 1;
    const int32_t in_u0 = u0 >= 0 && u0 < n_u, in_u1 = u1 >= 0 && u1 < n_u;
    const int32_t in_v0 = v0 >= 0 && v0 < n_v, in_v1 = v1 >= 0 && v1 < n_v;
    const int32_t cu0 = u0 < 0 ? 0 : (u0 >= n_u ? n_u - 1 : u0);
    const int32_t cu1 = u1 < 0 ? 0 : (u1 >= n_u ? n_u - 1 : u1);
    const int32_t cv0 = v0 < 0 ? 0 : (v0 >= n_v ? n_v - 1 : v0);
    const int32_t cv1 = v1 < 0 ? 0 : (v1 >= n_v ? n_v - 1 : v1);
    k00[j] = cu0 * n_v + cv0;
    k01[j] = cu0 * n_v + cv1;
    k10[j] = cu1 * n_v + cv0;
    k11[j] = cu1 * n_v + cv1;
    m00[j] = in_u0 & in_v0;
    m01[j] = in_u0 & in_v1;
    m10[j] = in_u1 & in_v0;
    m11[j] = in_u1 & in_v1;
  }
  for (int j = j0; j < j1; ++j) {
    // Clamped indices are always valid: load unconditionally, then select (vector blend).
    const float g00 = plane[k00[j]], g01 = plane[k01[j]];
    const float g10 = plane[k10[j]], g11 = plane[k11[j]];
    const float t00 = m00[j] ? g00 : fill, t01 = m01[j] ? g01 : fill;
    const float t10 = m10[j] ? g10 : fill, t11 = m11[j] ? g11 : fill;
    const float top = t00 + wv[j] * (t01 - t00);
    const float bot = t10 + wv[j] * (t11 - t10);
    o[j] = top + wu[j] * (bot - top);
  }
}

// Rotated / scaled patch, row by row. A row whose bounding box is inside the plane takes the
// unchecked path whole; one entirely outside is filled. Otherwise, as the sample positions of a
// row lie on a straight line, the samples whose four taps are all inside form one run [j0, j1):
// that run takes the unchecked path and the samples before and after it are checked tap by tap.
inline void sample_plane_bilinear(const Plane& pl, int64_t cu, int64_t cv, int P, int s,
                                  float cos_f, float sin_f, float* out) {
  const float h = (P - 1) / 2.0f;
  const int32_t n_u = static_cast<int32_t>(pl.n_u), n_v = static_cast<int32_t>(pl.n_v);
  const int32_t icu = static_cast<int32_t>(cu), icv = static_cast<int32_t>(cv);
  const float* centre = pl.base + cu * pl.s_u + cv;
  for (int i = 0; i < P; ++i) {
    const float a = (i - h) * s;
    const float au = cos_f * a, av = sin_f * a;
    float* o = out + static_cast<int64_t>(i) * P;
    const float du = std::fabs(sin_f) * h * s + 1.0f, dv = std::fabs(cos_f) * h * s + 1.0f;
    const float u_lo = cu + au - du, u_hi = cu + au + du;  // 1 voxel of margin for rounding
    const float v_lo = cv + av - dv, v_hi = cv + av + dv;
    if (u_lo >= 0 && v_lo >= 0 && u_hi + 1 <= n_u - 1 && v_hi + 1 <= n_v - 1) {
      bilinear_row_inside(centre, static_cast<int32_t>(pl.s_u), 0, P, h, s, au, av, cos_f, sin_f,
                          o);
      continue;
    }
    if (u_hi + 1 < 0 || v_hi + 1 < 0 || u_lo > n_u - 1 || v_lo > n_v - 1) {
      for (int j = 0; j < P; ++j) o[j] = pl.fill;
      continue;
    }
    int j0 = P, j1 = P;  // the inside run, found with the same arithmetic the kernels use
    for (int j = 0; j < P; ++j) {
      const float b = (j - h) * s;
      const int32_t u0 = icu + floor_small(au - sin_f * b);
      const int32_t v0 = icv + floor_small(av + cos_f * b);
      const bool inside = u0 >= 0 && u0 + 1 < n_u && v0 >= 0 && v0 + 1 < n_v;
      if (inside && j0 == P) j0 = j;
      if (!inside && j0 != P) {
        j1 = j;
        break;
      }
    }
    if (j0 > 0)
      bilinear_row_checked(pl.base, n_u, n_v, icu, icv, 0, j0, h, s, au, av, cos_f, sin_f,
                           pl.fill, o);
    if (j0 < j1)
      bilinear_row_inside(centre, static_cast<int32_t>(pl.s_u), j0, j1, h, s, au, av, cos_f,
                          sin_f, o);
    if (j1 < P)
      bilinear_row_checked(pl.base, n_u, n_v, icu, icv, j1, P, h, s, au, av, cos_f, sin_f,
                           pl.fill, o);
  }
}

inline void copy_patch3d(const float* vol, const int64_t shape[3], const int64_t c[3], int Q,
                         float fill, float* out) {
  const int64_t h = (Q - 1) / 2;
  const int64_t s0 = shape[1] * shape[2], s1 = shape[2];
  for (int a = 0; a < Q; ++a) {
    const int64_t x0 = c[0] - h + a;
    for (int b = 0; b < Q; ++b) {
      const int64_t x1 = c[1] - h + b;
      float* o = out + (static_cast<int64_t>(a) * Q + b) * Q;
      if (x0 < 0 || x0 >= shape[0] || x1 < 0 || x1 >= shape[1]) {
        for (int k = 0; k < Q; ++k) o[k] = fill;
        continue;
      }
      const float* row = vol + x0 * s0 + x1 * s1;
      const int64_t lo = c[2] - h;
      // Split the row into [fill | copy | fill] so the middle is a memcpy.
      int k0 = lo < 0 ? static_cast<int>(-lo) : 0;
      int k1 = lo + Q > shape[2] ? static_cast<int>(shape[2] - lo) : Q;
      if (k1 < k0) k1 = k0;
      for (int k = 0; k < k0; ++k) o[k] = fill;
      std::memcpy(o + k0, row + lo + k0, sizeof(float) * (k1 - k0));
      for (int k = k1; k < Q; ++k) o[k] = fill;
    }
  }
}

}  // namespace detail

// scales:  S x n_w x n_u x n_v smoothed images, plane-major (the slicing axis w first, then the
//          in-plane axes u < v), so every patch reads one contiguous slice; scale i is sampled
//          at stride strides[i]
// volume:  D x H x W raw volume for the 3D patch (may be null when patch3d == 0)
// atlas:   D x H x W x L channels-last probabilities (null when num_labels == 0)
// centres: n x 3 voxel indices, inside the volume (checked by the caller)
// rotation_deg, scale: n values each, or null for none
// outputs: out2d n x S x P x P, out3d n x Q^3, out_dist n x G^3, out_atlas n x L (null to skip)
inline void extract_patches(const float* scales, const float* volume, const float* atlas,
                            const int64_t* centres, int64_t n, const float* rotation_deg,
                            const float* scale, const PatchGeometry& g, float* out2d,
                            float* out3d, float* out_dist, float* out_atlas, int num_threads) {
  const int64_t st[3] = {g.shape[1] * g.shape[2], g.shape[2], 1};
  const int64_t voxels = g.shape[0] * st[0];
  const int w = g.slice_axis;
  const int u = w == 0 ? 1 : 0;
  const int v = w == 2 ? 1 : 2;
  const int P = g.patch2d, Q = g.patch3d, G = g.grid.grid;
  const int64_t per2d = static_cast<int64_t>(P) * P;
  const int64_t per3d = static_cast<int64_t>(Q) * Q * Q;
  const int64_t perg = static_cast<int64_t>(G) * G * G;
  const double deg = 3.14159265358979323846 / 180.0;
  const int nt = resolve_threads(num_threads, n);
  const int64_t plane = g.shape[u] * g.shape[v];

  // Visit samples slice by slice (outputs keep their order): neighbouring samples then share
  // the slice they read, which stays in cache.
  std::vector<int64_t> order(n);
  for (int64_t p = 0; p < n; ++p) order[p] = p;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return centres[3 * a + w] < centres[3 * b + w];
  });

#pragma omp parallel num_threads(nt)
  {
    std::vector<float> sq(3 * (G > 0 ? G : 1));
#pragma omp for schedule(static)
    for (int64_t q = 0; q < n; ++q) {
      const int64_t p = order[q];
      const int64_t* c = centres + 3 * p;
      if (out2d != nullptr) {
        const double t = rotation_deg ? rotation_deg[p] * deg : 0.0;
        const double f = scale ? static_cast<double>(scale[p]) : 1.0;
        const bool aligned = t == 0.0 && f == 1.0;
        const float cos_f = static_cast<float>(f * std::cos(t));
        const float sin_f = static_cast<float>(f * std::sin(t));
        for (int k = 0; k < g.num_scales; ++k) {
          detail::Plane pl{scales + k * voxels + c[w] * plane, g.shape[u], g.shape[v], g.shape[v], 1,
                           g.fill};
          float* o = out2d + (p * g.num_scales + k) * per2d;
          if (aligned)
            detail::sample_plane_aligned(pl, c[u], c[v], P, g.strides[k], o);
          else
            detail::sample_plane_bilinear(pl, c[u], c[v], P, g.strides[k], cos_f, sin_f, o);
        }
      }
      if (out3d != nullptr && Q > 0)
        detail::copy_patch3d(volume, g.shape, c, Q, g.fill, out3d + p * per3d);
      if (out_dist != nullptr && G > 0)
        landmark_distances_point(g.grid, static_cast<double>(c[0]), static_cast<double>(c[1]),
                                 static_cast<double>(c[2]), sq.data(), out_dist + p * perg);
      if (out_atlas != nullptr && g.num_labels > 0) {
        const float* a = atlas + (c[0] * st[0] + c[1] * st[1] + c[2]) * g.num_labels;
        std::memcpy(out_atlas + p * g.num_labels, a, sizeof(float) * g.num_labels);
      }
    }
  }
}

}  // namespace spatialseg
