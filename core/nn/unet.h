// UNetModel (the diffusion model) and EncoderUNetModel (the noise-aware classifier) of
// guided_diffusion/unet.py, with the same constructor semantics and parameter names, so the
// reference's state_dicts load unchanged.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/nn/config.h"
#include "core/nn/layers.h"

namespace gd {

// The full UNet with attention and timestep (and optional class) embedding.
class UNetModelImpl : public torch::nn::Module {
 public:
  explicit UNetModelImpl(const UNetConfig& config);
  // x [N x in_channels x H x W], timesteps [N] (model scale), y [N] int64 labels when
  // class-conditional (else undefined) -> [N x out_channels x H x W] in x's dtype.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& timesteps,
                        const torch::Tensor& y = {});
  const UNetConfig& config() const { return config_; }
  // convert_to_fp16 / convert_to_fp32 of the reference: torso convolutions to `precision`.
  void SetPrecision(Precision precision);

 private:
  UNetConfig config_;
  torch::ScalarType torso_dtype_ = torch::kFloat32;
  torch::nn::Linear time_embed_0_{nullptr};  // time_embed.0; time_embed.1 is SiLU
  torch::nn::Linear time_embed_2_{nullptr};  // time_embed.2
  torch::nn::Embedding label_emb_{nullptr};
  std::vector<TimestepSequential> input_blocks_;
  TimestepSequential middle_block_{nullptr};
  std::vector<TimestepSequential> output_blocks_;
  std::shared_ptr<torch::nn::Module> input_slot_, output_slot_;
  GroupNorm32 out_norm_{nullptr};        // out.0; out.1 is SiLU
  torch::nn::Conv2d out_conv_{nullptr};  // out.2
};
TORCH_MODULE(UNetModel);

// The half UNet: the encoder and middle block, then a pooling head to `out_channels` logits.
class EncoderUNetModelImpl : public torch::nn::Module {
 public:
  explicit EncoderUNetModelImpl(const UNetConfig& config);
  // x [N x in_channels x H x W], timesteps [N] -> logits [N x out_channels], float32.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& timesteps);
  const UNetConfig& config() const { return config_; }
  void SetPrecision(Precision precision);

 private:
  UNetConfig config_;
  torch::ScalarType torso_dtype_ = torch::kFloat32;
  torch::nn::Linear time_embed_0_{nullptr};
  torch::nn::Linear time_embed_2_{nullptr};
  std::vector<TimestepSequential> input_blocks_;
  TimestepSequential middle_block_{nullptr};
  std::shared_ptr<torch::nn::Module> input_slot_;
  // The head, by pool type.
  GroupNorm32 out_norm_{nullptr};               // adaptive, attention: out.0
  torch::nn::Conv2d out_conv_{nullptr};         // adaptive: out.3 (1x1 after pooling)
  AttentionPool2d out_attention_{nullptr};      // attention: out.2
  torch::nn::Linear out_linear_0_{nullptr};     // spatial, spatial_v2: out.0
  GroupNorm32 out_norm_1_{nullptr};             // spatial_v2: out.1
  torch::nn::Linear out_linear_last_{nullptr};  // spatial: out.2, spatial_v2: out.3
};
TORCH_MODULE(EncoderUNetModel);

// Builds the networks, turning the reference's asserts (a channel count not divisible by the
// head width, an unknown pool...) into errors that say which setting is wrong.
absl::StatusOr<UNetModel> CreateUNet(const UNetConfig& config);
absl::StatusOr<EncoderUNetModel> CreateEncoderUNet(const UNetConfig& config);

// Parameter count of a module.
int64_t CountParameters(const torch::nn::Module& module);

}  // namespace gd
