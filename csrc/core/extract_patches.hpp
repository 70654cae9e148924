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
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define SPATIALSEG_SSE2 1
#endif

#include "landmark_distances.hpp"
#include "parallel.hpp"
#ifdef _OPENMP
#include <omp.h>
#endif

namespace spatialseg {

constexpr int kMaxScales = 8;
// Samples a thread must have in one slice before it copies the slice into a padded buffer.
constexpr int kPadMinPerSlice = 4;

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

// Bilinear blend of the taps (u0, v0), (u0, v0+1), (u0+1, v0), (u0+1, v0+1); the operation order
// is the one every path (and the torch reference) uses.
inline float bilerp(float t00, float t01, float t10, float t11, float wu, float wv) {
  const float top = t00 + wv * (t01 - t00);
  const float bot = t10 + wv * (t11 - t10);
  return top + wu * (bot - top);
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
    o[j] = bilerp(centre[k], centre[k + 1], centre[k + su], centre[k + su + 1], wu[j], wv[j]);
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
    o[j] = bilerp(t00, t01, t10, t11, wu[j], wv[j]);
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

#if SPATIALSEG_SSE2
// Copies n floats to dst with non-temporal stores (the outputs are far larger than the caches
// and are not read back here): no read-for-ownership of the destination lines.
inline void stream_copy(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15) != 0; ++i) {
    int32_t x;
    std::memcpy(&x, src + i, 4);
    _mm_stream_si32(reinterpret_cast<int*>(dst + i), x);
  }
  for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
  for (; i < n; ++i) {
    int32_t x;
    std::memcpy(&x, src + i, 4);
    _mm_stream_si32(reinterpret_cast<int*>(dst + i), x);
  }
}
inline void stream_fence() { _mm_sfence(); }
#else
inline void stream_copy(float* dst, const float* src, int64_t n) {
  std::memcpy(dst, src, sizeof(float) * n);
}
inline void stream_fence() {}
#endif

inline void copy_patch3d(const float* vol, const int64_t shape[3], const int64_t c[3], int Q,
                         float fill, float* __restrict out) {
  const int64_t h = (Q - 1) / 2;
  const int64_t s0 = shape[1] * shape[2], s1 = shape[2];
  const int64_t lo = c[2] - h;
  // The split of a row into [fill | copy | fill] is the same for every row.
  int k0 = lo < 0 ? static_cast<int>(-lo) : 0;
  int k1 = lo + Q > shape[2] ? static_cast<int>(shape[2] - lo) : Q;
  if (k1 < k0) k1 = k0;
  for (int a = 0; a < Q; ++a) {
    const int64_t x0 = c[0] - h + a;
    for (int b = 0; b < Q; ++b) {
      const int64_t x1 = c[1] - h + b;
      float* __restrict o = out + (static_cast<int64_t>(a) * Q + b) * Q;
      if (x0 < 0 || x0 >= shape[0] || x1 < 0 || x1 >= shape[1]) {
        for (int k = 0; k < Q; ++k) o[k] = fill;
        continue;
      }
      const float* __restrict row = vol + x0 * s0 + x1 * s1;  // row[lo + k] for k in [k0, k1)
      for (int k = 0; k < k0; ++k) o[k] = fill;
      int k = k0;
      // Explicit vector copy: a plain loop is turned into a memcpy call, which costs more than
      // the copy for rows this short.
#if SPATIALSEG_SSE2
      for (; k + 4 <= k1; k += 4) _mm_storeu_ps(o + k, _mm_loadu_ps(row + lo + k));
#endif
      for (; k < k1; ++k) o[k] = row[lo + k];
      for (k = k1; k < Q; ++k) o[k] = fill;
    }
  }
}

#if SPATIALSEG_SSE2
// low 32 bits of a * b per lane (SSE2 has no pmulld; the low half is the same for signed values)
inline __m128i mullo_epi32_sse2(__m128i a, __m128i b) {
  const __m128i even = _mm_mul_epu32(a, b);
  const __m128i odd = _mm_mul_epu32(_mm_srli_si128(a, 4), _mm_srli_si128(b, 4));
  return _mm_unpacklo_epi32(_mm_shuffle_epi32(even, _MM_SHUFFLE(0, 0, 2, 0)),
                            _mm_shuffle_epi32(odd, _MM_SHUFFLE(0, 0, 2, 0)));
}
#endif

// Rotated / scaled patch whose every tap is known to lie inside the plane, computed over all
// P*P samples at once (no per-row set-up). ta[k] = (i - h) s and tb[k] = (j - h) s for k = i P + j,
// so ru = cos_f ta - sin_f tb and rv = sin_f ta + cos_f tb are the very sums the row kernel forms.
inline void bilinear_patch_inside(const float* __restrict centre, int32_t su, int n,
                                  const float* __restrict ta, const float* __restrict tb,
                                  float cos_f, float sin_f, float* __restrict o) {
  int k = 0;
#if SPATIALSEG_SSE2
  const __m128 vsin = _mm_set1_ps(sin_f), vcos = _mm_set1_ps(cos_f);
  const __m128i vsu = _mm_set1_epi32(su);
  alignas(16) int32_t idx[4];
  for (; k + 4 <= n; k += 4) {
    const __m128 a = _mm_loadu_ps(ta + k), b = _mm_loadu_ps(tb + k);
    const __m128 ru = _mm_sub_ps(_mm_mul_ps(vcos, a), _mm_mul_ps(vsin, b));
    const __m128 rv = _mm_add_ps(_mm_mul_ps(vsin, a), _mm_mul_ps(vcos, b));
    __m128i iu = _mm_cvttps_epi32(ru), iv = _mm_cvttps_epi32(rv);
    iu = _mm_add_epi32(iu, _mm_castps_si128(_mm_cmplt_ps(ru, _mm_cvtepi32_ps(iu))));
    iv = _mm_add_epi32(iv, _mm_castps_si128(_mm_cmplt_ps(rv, _mm_cvtepi32_ps(iv))));
    const __m128 wu = _mm_sub_ps(ru, _mm_cvtepi32_ps(iu));
    const __m128 wv = _mm_sub_ps(rv, _mm_cvtepi32_ps(iv));
    _mm_store_si128(reinterpret_cast<__m128i*>(idx), _mm_add_epi32(mullo_epi32_sse2(iu, vsu), iv));
    const float* p0 = centre + idx[0];
    const float* p1 = centre + idx[1];
    const float* p2 = centre + idx[2];
    const float* p3 = centre + idx[3];
    const __m128 a01 = _mm_loadh_pi(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p0))),
                                    reinterpret_cast<const __m64*>(p1));
    const __m128 a23 = _mm_loadh_pi(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p2))),
                                    reinterpret_cast<const __m64*>(p3));
    const __m128 b01 = _mm_loadh_pi(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p0 + su))),
                                    reinterpret_cast<const __m64*>(p1 + su));
    const __m128 b23 = _mm_loadh_pi(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p2 + su))),
                                    reinterpret_cast<const __m64*>(p3 + su));
    const __m128 t00 = _mm_shuffle_ps(a01, a23, _MM_SHUFFLE(2, 0, 2, 0));
    const __m128 t01 = _mm_shuffle_ps(a01, a23, _MM_SHUFFLE(3, 1, 3, 1));
    const __m128 t10 = _mm_shuffle_ps(b01, b23, _MM_SHUFFLE(2, 0, 2, 0));
    const __m128 t11 = _mm_shuffle_ps(b01, b23, _MM_SHUFFLE(3, 1, 3, 1));
    const __m128 top = _mm_add_ps(t00, _mm_mul_ps(wv, _mm_sub_ps(t01, t00)));
    const __m128 bot = _mm_add_ps(t10, _mm_mul_ps(wv, _mm_sub_ps(t11, t10)));
    _mm_storeu_ps(o + k, _mm_add_ps(top, _mm_mul_ps(wu, _mm_sub_ps(bot, top))));
  }
#endif
  for (; k < n; ++k) {
    const float ru = cos_f * ta[k] - sin_f * tb[k];
    const float rv = sin_f * ta[k] + cos_f * tb[k];
    const int32_t iu = floor_small(ru), iv = floor_small(rv);
    const float wu = ru - static_cast<float>(iu);
    const float wv = rv - static_cast<float>(iv);
    const int32_t q = iu * su + iv;
    o[k] = bilerp(centre[q], centre[q + 1], centre[q + su], centre[q + su + 1], wu, wv);
  }
}

// A per-thread copy of one slice of every scale, framed by a border of `fill` wide enough for
// every tap of every patch: patches then never need bounds checks, and the slice is read from
// memory as one sequential stream (which the hardware prefetchers follow), not as the scattered
// rows of random patches, whose misses otherwise dominate the run time.
struct PaddedSlices {
  int S = 0;
  int64_t n_u = 0, n_v = 0;
  int64_t margin[kMaxScales] = {};
  int64_t pu[kMaxScales] = {}, pv[kMaxScales] = {};  // padded sizes
  int64_t offset[kMaxScales] = {};
  std::vector<float> buf;
  int64_t slice = -1;

  void init(int S_, int64_t n_u_, int64_t n_v_, const int64_t* margins, float fill) {
    S = S_;
    n_u = n_u_;
    n_v = n_v_;
    int64_t total = 0;
    for (int k = 0; k < S; ++k) {
      margin[k] = margins[k];
      pu[k] = n_u + 2 * margin[k];
      pv[k] = n_v + 2 * margin[k];
      offset[k] = total;
      total += pu[k] * pv[k];
    }
    buf.assign(total, fill);  // the border is written once; load() overwrites the interior
    slice = -1;
  }
  void load(const float* scales, int64_t voxels, int64_t w) {
    const int64_t plane = n_u * n_v;
    for (int k = 0; k < S; ++k) {
      const float* src = scales + k * voxels + w * plane;
      float* dst = buf.data() + offset[k] + margin[k] * pv[k] + margin[k];
      for (int64_t r = 0; r < n_u; ++r)
        std::memcpy(dst + r * pv[k], src + r * n_v, sizeof(float) * n_v);
    }
    slice = w;
  }
  Plane plane(int k, float fill) const {
    return Plane{buf.data() + offset[k], pu[k], pv[k], pv[k], 1, fill};
  }
};

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
  const float hf = (P - 1) / 2.0f;

  // Visit samples slice by slice (outputs keep their order): neighbouring samples then share
  // the slice they read, which stays in cache.
  std::vector<int64_t> order(n);
  for (int64_t p = 0; p < n; ++p) order[p] = p;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return centres[3 * a + w] < centres[3 * b + w];
  });

  // Per-sample rotation (cos, sin, both times the scale) and the largest patch extent, which
  // sizes the border of the padded slices.
  std::vector<float> cs(out2d != nullptr ? 2 * n : 0);
  float max_ext = 0.0f;
  if (out2d != nullptr) {
    for (int64_t p = 0; p < n; ++p) {
      const double t = rotation_deg ? rotation_deg[p] * deg : 0.0;
      const double f = scale ? static_cast<double>(scale[p]) : 1.0;
      cs[2 * p] = static_cast<float>(f * std::cos(t));
      cs[2 * p + 1] = static_cast<float>(f * std::sin(t));
      const float e = std::fabs(cs[2 * p]) + std::fabs(cs[2 * p + 1]);
      if (!(e <= max_ext)) max_ext = e;  // NaN propagates and disables padding below
    }
  }
  // Padded slices (see PaddedSlices): the border must hold every tap, |offset| <= max_ext h s,
  // plus the +1 tap and a voxel for rounding. Whether a slice is copied at all is decided per
  // slice below, by how many of a thread's samples share it.
  int64_t margins[kMaxScales] = {};
  bool pad = out2d != nullptr && std::isfinite(max_ext);
  for (int k = 0; pad && k < g.num_scales; ++k) {
    const double m = std::ceil(static_cast<double>(max_ext) * hf * g.strides[k]) + 3.0;
    if (m > 4.0 * (g.shape[u] + g.shape[v])) pad = false;  // absurd scales: keep the checked path
    margins[k] = static_cast<int64_t>(m);
  }

  // Flat (a, b) tables per scale for the all-inside patch kernel.
  std::vector<float> tab(out2d != nullptr ? 2 * g.num_scales * per2d : 0);
  for (int k = 0; k < (out2d != nullptr ? g.num_scales : 0); ++k) {
    float* ta = tab.data() + 2 * k * per2d;
    float* tb = ta + per2d;
    const int s = g.strides[k];
    for (int i = 0; i < P; ++i)
      for (int j = 0; j < P; ++j) {
        ta[i * P + j] = (i - hf) * s;
        tb[i * P + j] = (j - hf) * s;
      }
  }

#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
#else
    const int tid = 0, nth = 1;
#endif
    // Each thread takes a contiguous block of the sorted order (as schedule(static) would), so
    // its samples of one slice are adjacent.
    const int64_t q_lo = n * tid / nth, q_hi = n * (tid + 1) / nth;
    // Each sample is assembled in cache-resident scratch, then streamed to the output.
    std::vector<float> scratch(std::max(g.num_scales * per2d, per3d + perg));

    // Pass 1, the 2D patches (working set: the current slice of every scale). The 3D patches
    // come in pass 2 (working set: the volume rows around the current slice): together the two
    // exceed the L2 cache and evict each other; apart, each stays resident.
    if (out2d != nullptr) {
      detail::PaddedSlices ps;
      bool ps_ready = false;
      for (int64_t q = q_lo; q < q_hi; ++q) {
        const int64_t p = order[q];
        const int64_t* c = centres + 3 * p;
        const float cos_f = cs[2 * p], sin_f = cs[2 * p + 1];
        const bool aligned = (rotation_deg == nullptr || rotation_deg[p] == 0.0f) &&
                             (scale == nullptr || scale[p] == 1.0f);
        bool use_pad = false;
        if (pad) {
          if (ps_ready && ps.slice == c[w]) {
            use_pad = true;
          } else {
            // A slice copy reads the whole slice: worth it only for a run of samples sharing it.
            int64_t run = 1;
            while (q + run < q_hi && centres[3 * order[q + run] + w] == c[w]) ++run;
            if (run >= kPadMinPerSlice) {
              if (!ps_ready) {
                ps.init(g.num_scales, g.shape[u], g.shape[v], margins, g.fill);
                ps_ready = true;
              }
              ps.load(scales, voxels, c[w]);
              use_pad = true;
            }
          }
        }
        for (int k = 0; k < g.num_scales; ++k) {
          float* o = scratch.data() + k * per2d;
          const int s = g.strides[k];
          detail::Plane pl{scales + k * voxels + c[w] * plane, g.shape[u], g.shape[v], g.shape[v],
                           1, g.fill};
          int64_t cu = c[u], cv = c[v];
          if (use_pad) {
            pl = ps.plane(k, g.fill);
            cu += ps.margin[k];
            cv += ps.margin[k];
          }
          if (aligned) {
            detail::sample_plane_aligned(pl, cu, cv, P, s, o);
            continue;
          }
          const float e = (std::fabs(cos_f) + std::fabs(sin_f)) * hf * s + 1.0f;
          if (use_pad && cu - e >= 0 && cv - e >= 0 && cu + e + 1 <= pl.n_u - 1 &&
              cv + e + 1 <= pl.n_v - 1) {
            const float* ta = tab.data() + 2 * k * per2d;
            detail::bilinear_patch_inside(pl.base + cu * pl.s_u + cv, static_cast<int32_t>(pl.s_u),
                                          static_cast<int>(per2d), ta, ta + per2d, cos_f, sin_f, o);
          } else {
            detail::sample_plane_bilinear(pl, cu, cv, P, s, cos_f, sin_f, o);
          }
        }
        detail::stream_copy(out2d + p * g.num_scales * per2d, scratch.data(), g.num_scales * per2d);
      }
    }

    // Pass 2: 3D patch, landmark distances, atlas vector.
    std::vector<float> sq(3 * (G > 0 ? G : 1));
    float* o3 = scratch.data();
    float* od = o3 + per3d;
    for (int64_t q = q_lo; q < q_hi; ++q) {
      const int64_t p = order[q];
      const int64_t* c = centres + 3 * p;
      if (out3d != nullptr && Q > 0) {
        detail::copy_patch3d(volume, g.shape, c, Q, g.fill, o3);
        detail::stream_copy(out3d + p * per3d, o3, per3d);
      }
      if (out_dist != nullptr && G > 0) {
        landmark_distances_point(g.grid, static_cast<double>(c[0]), static_cast<double>(c[1]),
                                 static_cast<double>(c[2]), sq.data(), od);
        detail::stream_copy(out_dist + p * perg, od, perg);
      }
      if (out_atlas != nullptr && g.num_labels > 0) {
        const float* a = atlas + (c[0] * st[0] + c[1] * st[1] + c[2]) * g.num_labels;
        std::memcpy(out_atlas + p * g.num_labels, a, sizeof(float) * g.num_labels);
      }
    }
    detail::stream_fence();  // streaming stores are weakly ordered: complete them before the join
  }
}

}  // namespace spatialseg
