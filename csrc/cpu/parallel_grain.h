// Grain sizes for at::parallel_for, in one place: how much work a parallel
// region must hold before the kernels split it over threads.
//
// A parallel region is not free. Idle, it costs a few microseconds to wake
// the pool; on a machine where another process holds a core, the join waits
// for a descheduled partner thread: a scheduler slice, several milliseconds
// (issue 14 saw 4 us ops take 8 ms, and this repository's own measurements in
// benchmarks/NOTES.md, "Hardening", 40-90 ms spikes for 40 us calls). So work
// of well under a millisecond stays on the calling thread: it loses at most
// the 2x of a second core on something that is short anyway, and it no longer
// depends on the load.
//
// Work is counted in "element operations" (a load, compare or multiply-add of
// one value, roughly a nanosecond each): the kernels estimate theirs.
#pragma once
#include <algorithm>
#include <cstdint>

namespace pydetops {
namespace cpu {

// Below this many element operations a region runs inline (about 0.3-1 ms).
constexpr int64_t kMinParallelWork = int64_t(1) << 20;

// The at::parallel_for grain for `items` items whose total work is `total_work`:
// the whole range when the region is too small to pay (at::parallel_for then
// runs it on the calling thread), otherwise about kMinParallelWork per task.
inline int64_t grain_for_total(int64_t items, double total_work) {
  if (items <= 0) return 1;
  if (total_work < static_cast<double>(kMinParallelWork)) return items + 1;
  const double per_item = std::max(total_work / static_cast<double>(items), 1.0);
  const double g = static_cast<double>(kMinParallelWork) / per_item;
  return g < 1.0 ? 1 : static_cast<int64_t>(std::min(g, static_cast<double>(items)));
}

// The grain for items of `work_per_item` element operations each.
inline int64_t grain_for_item(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinParallelWork / std::max<int64_t>(1, work_per_item));
}

}  // namespace cpu
}  // namespace pydetops
