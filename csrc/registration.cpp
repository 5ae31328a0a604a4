// Every op's schema, in one place, and the Python module that loads them.
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(mdm_ext, m) {
  // Draw one index per row of scores [..., V]: kind 0 = logits (softmax(logits / temperature),
  // temperature 0 = argmax), kind 1 = unnormalised probabilities. exclude = -1 for none.
  m.def("sample_categorical(Tensor scores, int kind, float temperature, int exclude, int seed, "
        "int offset, bool legacy_float32) -> Tensor");
  m.def("masked_log_softmax(Tensor logits, int mask_id) -> Tensor");
  m.def("masked_log_softmax_backward(Tensor grad_out, Tensor out, int mask_id) -> Tensor");
  // Returns (loss [...], logsumexp [N]); the logsumexp feeds the backward.
  m.def("masked_cross_entropy(Tensor logits, Tensor target, Tensor? weight, int mask_id, "
        "int ignore_index) -> (Tensor, Tensor)");
  m.def("masked_cross_entropy_backward(Tensor grad_loss, Tensor logits, Tensor target, "
        "Tensor? weight, Tensor lse, int mask_id, int ignore_index) -> Tensor");
  // schedule: a name of mdm_ext/schedules.py; schedule_params: (eps, 0) or (sigma_min, sigma_max).
  m.def("first_hit_times(Tensor t, Tensor n_masked, str schedule, float[] schedule_params, int seed, "
        "int offset) -> Tensor");
  m.def("choose_masked(Tensor x, int mask_id, Tensor k, int seed, int offset) -> Tensor");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "mdm_ext kernels; the ops live in torch.ops.mdm_ext";
  module.def("built_with_cuda", [] {
#ifdef MDM_EXT_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  module.def("cuda_version", [] {
#ifdef MDM_EXT_CUDA_VERSION
    return std::string(MDM_EXT_CUDA_VERSION);
#else
    return std::string();
#endif
  });
}
