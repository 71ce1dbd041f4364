// Classifier guidance (Dhariwal & Nichol 2021, sec. 4): the gradient of the noisy classifier's
// log-probability of the wanted class with respect to the noisy image. The only place where
// autograd is on during sampling.
#pragma once

#include <torch/torch.h>

#include "core/nn/unet.h"

namespace gd {

// d/dx sum_i log_softmax(classifier(x, t))[i, y_i], times `scale` (a scalar or [N] per-element
// scales), in float32: [N x C x H x W]. Only the input gets a gradient; parameter gradients are
// neither computed nor kept. `model_t` are the classifier's (original-scale) timesteps.
torch::Tensor ClassifierGradient(EncoderUNetModel& classifier, const torch::Tensor& x,
                                 const torch::Tensor& model_t, const torch::Tensor& y,
                                 const torch::Tensor& scale);

// Freezes a network for serving: eval mode and no parameter requires grad.
void FreezeForInference(torch::nn::Module& module);

}  // namespace gd
