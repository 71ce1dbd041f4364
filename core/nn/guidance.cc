#include "core/nn/guidance.h"

#include <ATen/record_function.h>

namespace gd {

torch::Tensor ClassifierGradient(EncoderUNetModel& classifier, const torch::Tensor& x,
                                 const torch::Tensor& model_t, const torch::Tensor& y,
                                 const torch::Tensor& scale) {
  torch::AutoGradMode enable_grad(true);
  const torch::Tensor x_in = x.detach().to(torch::kFloat32).requires_grad_(true);
  torch::Tensor objective;
  {
    RECORD_FUNCTION("gd::classifier::forward", std::vector<c10::IValue>());
    const torch::Tensor log_probs = torch::log_softmax(classifier->forward(x_in, model_t), -1);
    objective = log_probs.gather(1, y.view({-1, 1}).to(torch::kInt64)).sum();
  }
  RECORD_FUNCTION("gd::classifier::input_gradient", std::vector<c10::IValue>());
  const torch::Tensor grad =
      torch::autograd::grad({objective}, {x_in}, /*grad_outputs=*/{},
                            /*retain_graph=*/false, /*create_graph=*/false)[0];
  torch::Tensor s = scale.to(grad.device(), torch::kFloat32);
  if (s.dim() == 1) s = s.view({-1, 1, 1, 1});
  return grad * s;
}

void FreezeForInference(torch::nn::Module& module) {
  module.eval();
  for (auto& p : module.parameters()) p.requires_grad_(false);
}

}  // namespace gd
