// Thread-count helpers shared by the kernels. Torch-free and usable without OpenMP.
#pragma once
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace spatialseg {

inline bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// num_threads <= 0 means "the OpenMP default"; never more threads than work items.
inline int resolve_threads(int num_threads, int64_t work_items) {
  int t = num_threads > 0 ? num_threads : max_threads();
  if (work_items < t) t = static_cast<int>(work_items > 0 ? work_items : 1);
  return t < 1 ? 1 : t;
}

}  // namespace spatialseg
