// CPU kernels of the first-hitting sampler's bookkeeping: next unmask times and the choice of
// masked positions to unmask.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "../unmasking.h"

namespace mdm_ext {
namespace {

at::Tensor first_hit_times_cpu(const at::Tensor& t, const at::Tensor& n_masked, std::string_view schedule_name,
                               c10::ArrayRef<double> schedule_params, int64_t seed, int64_t offset) {
  const Schedule schedule = check_first_hit_args(t, n_masked, schedule_name, schedule_params, seed, offset);
  const at::Tensor t_in = t.contiguous(), n_in = n_masked.contiguous();
  at::Tensor out = at::empty_like(t_in);
  AT_DISPATCH_FLOATING_TYPES(t_in.scalar_type(), "first_hit_times", [&] {
    const scalar_t* tp = t_in.const_data_ptr<scalar_t>();
    const int64_t* np = n_in.const_data_ptr<int64_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for (int64_t b = 0; b < t_in.size(0); ++b) {
      const double u = uniform53(random_bits(uint64_t(seed), uint64_t(offset), kFirstHitNoise, b, 0));
      op[b] = np[b] > 0 ? scalar_t(first_hit_time(schedule, double(tp[b]), np[b], u)) : tp[b];
    }
  });
  return out;
}

at::Tensor choose_masked_cpu(const at::Tensor& x, int64_t mask_id, const at::Tensor& k, int64_t seed,
                             int64_t offset) {
  check_choose_args(x, mask_id, k, seed, offset);
  const at::Tensor tokens = x.contiguous(), counts = k.contiguous();
  const int64_t batch = tokens.size(0), length = tokens.size(1);
  at::Tensor chosen = at::zeros({batch, length}, x.options().dtype(at::kBool));
  const int64_t* xp = tokens.const_data_ptr<int64_t>();
  const int64_t* kp = counts.const_data_ptr<int64_t>();
  bool* cp = chosen.data_ptr<bool>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<std::pair<uint64_t, int64_t>> keyed;  // (key, position) of masked positions
    for (int64_t b = begin; b < end; ++b) {
      keyed.clear();
      for (int64_t pos = 0; pos < length; ++pos)
        if (xp[b * length + pos] == mask_id)
          keyed.emplace_back(position_key(uint64_t(seed), uint64_t(offset), b, pos), pos);
      const int64_t take = std::min<int64_t>(std::max<int64_t>(kp[b], 0), int64_t(keyed.size()));
      std::nth_element(keyed.begin(), keyed.begin() + take, keyed.end());
      for (int64_t j = 0; j < take; ++j) cp[b * length + keyed[j].second] = true;
    }
  });
  return chosen;
}

}  // namespace

TORCH_LIBRARY_IMPL(mdm_ext, CPU, m) {
  m.impl("first_hit_times", &first_hit_times_cpu);
  m.impl("choose_masked", &choose_masked_cpu);
}

}  // namespace mdm_ext
