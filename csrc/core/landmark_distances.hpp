// Distances from voxels to a G x G x G grid of landmarks laid evenly over the volume (paper §2.2).
//
// Landmark k along an axis of n voxels sits at the centre of the k-th of G equal bins:
//   c_k = (k + 0.5) * n / G - 0.5        (voxel-index units)
// and distances are Euclidean in millimetres: sqrt(sum_a ((x_a - c_{k_a}) * spacing_a)^2).
// Output for one point is G^3 floats in C order (k0, k1, k2).
//
// The squared per-axis terms separate, so each point costs 3G squares and G^3 adds + sqrts.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "parallel.hpp"

namespace spatialseg {

struct LandmarkGrid {
  int64_t shape[3];
  double spacing[3];
  int grid;

  double landmark(int axis, int k) const {
    return (k + 0.5) * static_cast<double>(shape[axis]) / grid - 0.5;
  }
};

// Writes the G^3 distances of the point (x0, x1, x2) (voxel units) to out.
// `sq` is scratch of 3G floats.
inline void landmark_distances_point(const LandmarkGrid& g, double x0, double x1, double x2,
                                     float* sq, float* out) {
  const int G = g.grid;
  const double x[3] = {x0, x1, x2};
  for (int a = 0; a < 3; ++a) {
    for (int k = 0; k < G; ++k) {
      const double d = (x[a] - g.landmark(a, k)) * g.spacing[a];
      sq[a * G + k] = static_cast<float>(d * d);
    }
  }
  const float* s0 = sq;
  const float* s1 = sq + G;
  const float* s2 = sq + 2 * G;
  for (int i = 0; i < G; ++i) {
    for (int j = 0; j < G; ++j) {
      const float base = s0[i] + s1[j];
      float* o = out + (static_cast<int64_t>(i) * G + j) * G;
      for (int k = 0; k < G; ++k) o[k] = std::sqrt(base + s2[k]);
    }
  }
}

// Points given explicitly: coords is n x 3 (voxel units, any real position); out is n x G^3.
inline void landmark_distances(const double* coords, int64_t n, const LandmarkGrid& g, float* out,
                               int num_threads) {
  const int G = g.grid;
  const int64_t per_point = static_cast<int64_t>(G) * G * G;
  const int nt = resolve_threads(num_threads, n);
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> sq(3 * G);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < n; ++p) {
      landmark_distances_point(g, coords[3 * p], coords[3 * p + 1], coords[3 * p + 2], sq.data(),
                               out + p * per_point);
    }
  }
}

// Every voxel of the box [start, stop) in C order, without materialising coordinates
// (the dense engine's slab mode); out is prod(stop - start) x G^3.
inline void landmark_distances_box(const int64_t start[3], const int64_t stop[3],
                                   const LandmarkGrid& g, float* out, int num_threads) {
  const int G = g.grid;
  const int64_t per_point = static_cast<int64_t>(G) * G * G;
  const int64_t n1 = stop[1] - start[1], n2 = stop[2] - start[2];
  const int64_t rows = (stop[0] - start[0]) * n1;  // parallel over (x0, x1) rows
  const int nt = resolve_threads(num_threads, rows);
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> sq(3 * G);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t x0 = start[0] + r / n1, x1 = start[1] + r % n1;
      for (int64_t c = 0; c < n2; ++c) {
        landmark_distances_point(g, static_cast<double>(x0), static_cast<double>(x1),
                                 static_cast<double>(start[2] + c), sq.data(),
                                 out + (r * n2 + c) * per_point);
      }
    }
  }
}

}  // namespace spatialseg
