// The building blocks of guided-diffusion's UNet (unet.py, nn.py). Module and parameter names
// equal the checkpoint keys of the Python model: a child registered as "in_layers" with slots
// "0" and "2" yields "in_layers.0.weight" and "in_layers.2.weight", and slots that hold no weights
// in the reference (SiLU, Dropout, Identity) are simply absent, with a comment where they sit.
//
// Mixed precision follows the reference's convert_to_fp16: convolutions of the torso may hold
// float16/bfloat16 weights; GroupNorm always computes in float32 and returns the input's dtype;
// linear layers stay float32 and their outputs are cast to the activations' dtype.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace gd {

// [N] timesteps (may be fractional) -> [N x dim] sinusoidal embeddings (cos half, then sin half).
torch::Tensor TimestepEmbedding(const torch::Tensor& timesteps, int64_t dim,
                                double max_period = 10000.0);

// An empty module that only groups children under a name ("in_layers", "out", "input_blocks").
std::shared_ptr<torch::nn::Module> AddSlot(torch::nn::Module& parent, const std::string& name);

// nn.GroupNorm(32, channels) computed in float32 (GroupNorm32 of nn.py).
class GroupNorm32Impl : public torch::nn::Module {
 public:
  explicit GroupNorm32Impl(int64_t channels, int64_t groups = 32, double eps = 1e-5);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  int64_t groups_;
  double eps_;
  torch::Tensor weight_, bias_;
};
TORCH_MODULE(GroupNorm32);

// Nearest-neighbour 2x upsampling, optionally followed by a 3x3 convolution ("conv").
class UpsampleImpl : public torch::nn::Module {
 public:
  UpsampleImpl(int64_t channels, bool use_conv, int64_t out_channels = 0);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  int64_t channels_;
  torch::nn::Conv2d conv_{nullptr};
};
TORCH_MODULE(Upsample);

// 2x downsampling: a strided 3x3 convolution, or 2x2 average pooling ("op" either way).
class DownsampleImpl : public torch::nn::Module {
 public:
  DownsampleImpl(int64_t channels, bool use_conv, int64_t out_channels = 0);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  int64_t channels_;
  torch::nn::Conv2d conv_{nullptr};  // registered as "op" when use_conv
};
TORCH_MODULE(Downsample);

struct ResBlockOptions {
  int64_t channels = 0;
  int64_t emb_channels = 0;
  double dropout = 0.0;
  int64_t out_channels = 0;  // 0: same as channels
  bool use_conv = false;     // 3x3 skip convolution when the channel count changes
  bool use_scale_shift_norm = false;
  bool up = false;
  bool down = false;
};

// Residual block conditioned on the timestep embedding, optionally resampling.
class ResBlockImpl : public torch::nn::Module {
 public:
  explicit ResBlockImpl(const ResBlockOptions& options);
  // x [N x C x H x W], emb [N x emb_channels] -> [N x out_channels x H' x W'].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& emb);

 private:
  ResBlockOptions options_;
  GroupNorm32 in_norm_{nullptr};      // in_layers.0; in_layers.1 is SiLU
  torch::nn::Conv2d in_conv_{nullptr};  // in_layers.2
  torch::nn::Linear emb_linear_{nullptr};  // emb_layers.1; emb_layers.0 is SiLU
  GroupNorm32 out_norm_{nullptr};     // out_layers.0; .1 SiLU, .2 Dropout
  torch::nn::Dropout dropout_{nullptr};  // out_layers.2 (no weights)
  torch::nn::Conv2d out_conv_{nullptr};  // out_layers.3
  torch::nn::Conv2d skip_{nullptr};     // skip_connection, absent when it is Identity
};
TORCH_MODULE(ResBlock);

// softmax(q k^T / sqrt(ch)) v over heads. qkv [N x 3*H*C x T] -> [N x H*C x T].
// Legacy order (QKVAttentionLegacy) splits heads before q/k/v; the new order (QKVAttention)
// splits q/k/v first.
torch::Tensor QKVAttention(const torch::Tensor& qkv, int64_t num_heads, bool legacy_order);

// softmax(q^T k) applied to v: q [N x C x T], k and v [N x C x S] -> [N x C x T], computed by
// blocks of at most `max_rows` query positions and as many of the N heads as keep one block's
// float32 weights [heads x rows x S] within `block_bytes`. Each block's weights then stay in
// cache through both products and the softmax (and their backward), where the whole [N x T x S]
// matrix would stream through memory several times: with the defaults, measured on 2 cores, the
// 64x64 classifier's 32x32 attention (T = S = 1024) made the guided step at batch 8 twice as fast
// (docs/benchmarks.md). Every query row is computed as in one block, so results do not change.
torch::Tensor AttendInBlocks(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             int64_t max_rows = 128, int64_t block_bytes = int64_t{8} << 20);

// Self-attention over spatial positions.
class AttentionBlockImpl : public torch::nn::Module {
 public:
  AttentionBlockImpl(int64_t channels, int64_t num_heads, int64_t num_head_channels,
                     bool use_new_attention_order);
  torch::Tensor forward(const torch::Tensor& x);
  int64_t num_heads() const { return num_heads_; }

 private:
  int64_t num_heads_;
  bool legacy_order_;
  GroupNorm32 norm_{nullptr};
  torch::nn::Conv1d qkv_{nullptr};
  torch::nn::Conv1d proj_out_{nullptr};
};
TORCH_MODULE(AttentionBlock);

// CLIP's attention pooling: the mean position attends over all positions (new qkv order).
class AttentionPool2dImpl : public torch::nn::Module {
 public:
  AttentionPool2dImpl(int64_t spacial_dim, int64_t embed_dim, int64_t num_head_channels,
                      int64_t output_dim);
  torch::Tensor forward(const torch::Tensor& x);  // [N x C x H x W] -> [N x output_dim]

 private:
  int64_t num_heads_;
  torch::Tensor positional_embedding_;  // [C x H*W + 1]
  torch::nn::Conv1d qkv_proj_{nullptr};
  torch::nn::Conv1d c_proj_{nullptr};
};
TORCH_MODULE(AttentionPool2d);

// A sequence of layers where those that take the timestep embedding get it
// (TimestepEmbedSequential). Children are named "0", "1", ... in order.
class TimestepSequentialImpl : public torch::nn::Module {
 public:
  void Append(const ResBlock& block);
  void Append(const AttentionBlock& block);
  void Append(const torch::nn::Conv2d& conv);
  void Append(const Downsample& down);
  void Append(const Upsample& up);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& emb);

 private:
  std::string NextName() { return std::to_string(layers_.size()); }
  std::vector<std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>> layers_;
};
TORCH_MODULE(TimestepSequential);

// Converts the convolution weights under `module` to `dtype` (convert_module_to_f16).
void ConvertConvolutions(torch::nn::Module& module, torch::ScalarType dtype);

}  // namespace gd
