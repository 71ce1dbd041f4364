#include "core/nn/layers.h"

#include "core/nn/flops.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace gd {

torch::Tensor TimestepEmbedding(const torch::Tensor& timesteps, int64_t dim, double max_period) {
  const int64_t half = dim / 2;
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(timesteps.device());
  const torch::Tensor freqs =
      torch::exp(-std::log(max_period) * torch::arange(0, half, f32) / static_cast<double>(half));
  const torch::Tensor args = timesteps.index({torch::indexing::Slice(), torch::indexing::None})
                                 .to(torch::kFloat32) *
                             freqs.unsqueeze(0);
  torch::Tensor embedding = torch::cat({torch::cos(args), torch::sin(args)}, -1);
  if (dim % 2) {
    embedding = torch::cat({embedding, torch::zeros_like(embedding.narrow(1, 0, 1))}, -1);
  }
  return embedding;
}

std::shared_ptr<torch::nn::Module> AddSlot(torch::nn::Module& parent, const std::string& name) {
  return parent.register_module(name, std::make_shared<torch::nn::Module>());
}

// ---- GroupNorm32 -------------------------------------------------------------------------------

GroupNorm32Impl::GroupNorm32Impl(int64_t channels, int64_t groups, double eps)
    : groups_(groups), eps_(eps) {
  TORCH_CHECK(channels % groups == 0, "GroupNorm: ", channels, " channels are not divisible into ",
              groups, " groups");
  weight_ = register_parameter("weight", torch::ones({channels}));
  bias_ = register_parameter("bias", torch::zeros({channels}));
}

torch::Tensor GroupNorm32Impl::forward(const torch::Tensor& x) {
  return torch::group_norm(x.to(torch::kFloat32), groups_, weight_, bias_, eps_).to(x.scalar_type());
}

// ---- Upsample / Downsample ---------------------------------------------------------------------

UpsampleImpl::UpsampleImpl(int64_t channels, bool use_conv, int64_t out_channels)
    : channels_(channels) {
  if (use_conv) {
    conv_ = register_module(
        "conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, out_channels ? out_channels
                                                                                  : channels,
                                                           /*kernel_size=*/3)
                                      .padding(1)));
  }
}

torch::Tensor UpsampleImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.size(1) == channels_, "Upsample expects ", channels_, " channels, got ", x.size(1));
  torch::Tensor h = torch::upsample_nearest2d(x, {x.size(2) * 2, x.size(3) * 2});
  return conv_ ? CountedConv(*conv_, h) : h;
}

DownsampleImpl::DownsampleImpl(int64_t channels, bool use_conv, int64_t out_channels)
    : channels_(channels) {
  const int64_t out = out_channels ? out_channels : channels;
  if (use_conv) {
    conv_ = register_module(
        "op", torch::nn::Conv2d(
                  torch::nn::Conv2dOptions(channels, out, /*kernel_size=*/3).stride(2).padding(1)));
  } else {
    TORCH_CHECK(out == channels, "Downsample without a convolution cannot change channels");
  }
}

torch::Tensor DownsampleImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.size(1) == channels_, "Downsample expects ", channels_, " channels, got ",
              x.size(1));
  if (conv_) return CountedConv(*conv_, x);
  return torch::avg_pool2d(x, /*kernel_size=*/{2, 2}, /*stride=*/{2, 2});
}

// ---- ResBlock ----------------------------------------------------------------------------------

ResBlockImpl::ResBlockImpl(const ResBlockOptions& options) : options_(options) {
  const int64_t ch = options.channels;
  const int64_t out = options.out_channels ? options.out_channels : ch;
  options_.out_channels = out;
  auto in_layers = AddSlot(*this, "in_layers");
  in_norm_ = in_layers->register_module("0", GroupNorm32(ch));
  in_conv_ = in_layers->register_module(
      "2", torch::nn::Conv2d(torch::nn::Conv2dOptions(ch, out, /*kernel_size=*/3).padding(1)));
  // h_upd / x_upd (Upsample / Downsample without convolution) hold no weights.
  auto emb_layers = AddSlot(*this, "emb_layers");
  emb_linear_ = emb_layers->register_module(
      "1", torch::nn::Linear(options.emb_channels, options.use_scale_shift_norm ? 2 * out : out));
  auto out_layers = AddSlot(*this, "out_layers");
  out_norm_ = out_layers->register_module("0", GroupNorm32(out));
  dropout_ = out_layers->register_module("2", torch::nn::Dropout(options.dropout));
  out_conv_ = out_layers->register_module(
      "3", torch::nn::Conv2d(torch::nn::Conv2dOptions(out, out, /*kernel_size=*/3).padding(1)));
  if (out != ch) {
    skip_ = register_module(
        "skip_connection",
        torch::nn::Conv2d(torch::nn::Conv2dOptions(ch, out, /*kernel_size=*/options.use_conv ? 3 : 1)
                              .padding(options.use_conv ? 1 : 0)));
  }
}

torch::Tensor ResBlockImpl::forward(const torch::Tensor& x_in, const torch::Tensor& emb) {
  auto resample = [&](const torch::Tensor& t) {
    if (options_.up) return torch::upsample_nearest2d(t, {t.size(2) * 2, t.size(3) * 2});
    if (options_.down) return torch::avg_pool2d(t, {2, 2}, {2, 2});
    return t;
  };
  torch::Tensor h = torch::silu(in_norm_->forward(x_in));
  const torch::Tensor x = resample(x_in);
  h = CountedConv(*in_conv_, resample(h));
  torch::Tensor emb_out = CountedLinear(*emb_linear_, torch::silu(emb)).to(h.scalar_type());
  emb_out = emb_out.view({emb_out.size(0), emb_out.size(1), 1, 1});
  if (options_.use_scale_shift_norm) {
    auto chunks = emb_out.chunk(2, 1);
    h = out_norm_->forward(h) * (1 + chunks[0]) + chunks[1];
  } else {
    h = out_norm_->forward(h + emb_out);
  }
  h = CountedConv(*out_conv_, dropout_->forward(torch::silu(h)));
  return (skip_ ? CountedConv(*skip_, x) : x) + h;
}

// ---- Attention ---------------------------------------------------------------------------------

torch::Tensor AttendInBlocks(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             int64_t max_rows, int64_t block_bytes) {
  const int64_t n = q.size(0), t = q.size(2), s = k.size(2);
  const int64_t rows = std::min(max_rows, t);
  const int64_t heads = std::clamp<int64_t>(block_bytes / (rows * s * 4), 1, n);
  std::vector<torch::Tensor> per_group;
  for (int64_t first = 0; first < n; first += heads) {
    const int64_t count = std::min(heads, n - first);
    const torch::Tensor kg = k.narrow(0, first, count), vg = v.narrow(0, first, count);
    std::vector<torch::Tensor> per_block;
    for (const torch::Tensor& q_block : q.narrow(0, first, count).split(rows, 2)) {
      torch::Tensor weight = torch::bmm(q_block.transpose(1, 2), kg);  // [heads x rows x S]
      // Half-precision weights are normalised in float32, as the reference does.
      const auto type = weight.scalar_type();
      if (weight.element_size() < 4) weight = weight.to(torch::kFloat32);
      weight = torch::softmax(weight, -1).to(type);
      per_block.push_back(torch::bmm(vg, weight.transpose(1, 2)));  // [heads x C x rows]
    }
    per_group.push_back(per_block.size() == 1 ? per_block[0] : torch::cat(per_block, 2));
  }
  return per_group.size() == 1 ? per_group[0] : torch::cat(per_group, 0);
}

torch::Tensor QKVAttention(const torch::Tensor& qkv, int64_t num_heads, bool legacy_order) {
  const int64_t bs = qkv.size(0), width = qkv.size(1), length = qkv.size(2);
  TORCH_CHECK(width % (3 * num_heads) == 0, "qkv width ", width, " is not divisible by 3 x ",
              num_heads, " heads");
  const int64_t ch = width / (3 * num_heads);
  torch::Tensor q, k, v;
  if (legacy_order) {
    auto parts = qkv.reshape({bs * num_heads, ch * 3, length}).split(ch, 1);
    q = parts[0], k = parts[1], v = parts[2];
  } else {
    auto parts = qkv.chunk(3, 1);
    q = parts[0].reshape({bs * num_heads, ch, length});
    k = parts[1].reshape({bs * num_heads, ch, length});
    v = parts[2].reshape({bs * num_heads, ch, length});
  }
  // Scaling q and k by ch^-1/4 each is more stable in float16 than dividing afterwards.
  const double scale = 1.0 / std::sqrt(std::sqrt(static_cast<double>(ch)));
  FlopCounter::Bmm(bs * num_heads, length, ch, length);
  FlopCounter::Bmm(bs * num_heads, ch, length, length);
  return AttendInBlocks(q * scale, k * scale, v).reshape({bs, -1, length});
}

AttentionBlockImpl::AttentionBlockImpl(int64_t channels, int64_t num_heads,
                                       int64_t num_head_channels, bool use_new_attention_order)
    : legacy_order_(!use_new_attention_order) {
  if (num_head_channels == -1) {
    num_heads_ = num_heads;
  } else {
    TORCH_CHECK(num_head_channels > 0 && channels % num_head_channels == 0, "attention: ",
                channels, " channels are not divisible by num_head_channels ", num_head_channels);
    num_heads_ = channels / num_head_channels;
  }
  TORCH_CHECK(num_heads_ > 0 && channels % num_heads_ == 0, "attention: ", channels,
              " channels are not divisible into ", num_heads_, " heads");
  norm_ = register_module("norm", GroupNorm32(channels));
  qkv_ = register_module("qkv", torch::nn::Conv1d(torch::nn::Conv1dOptions(
                                    channels, channels * 3, /*kernel_size=*/1)));
  proj_out_ = register_module(
      "proj_out", torch::nn::Conv1d(torch::nn::Conv1dOptions(channels, channels, /*kernel_size=*/1)));
}

torch::Tensor AttentionBlockImpl::forward(const torch::Tensor& x) {
  const auto shape = x.sizes().vec();
  const torch::Tensor flat = x.reshape({shape[0], shape[1], -1});
  const torch::Tensor qkv = CountedConv(*qkv_, norm_->forward(flat));
  const torch::Tensor h = CountedConv(*proj_out_, QKVAttention(qkv, num_heads_, legacy_order_));
  return (flat + h).reshape(shape);
}

AttentionPool2dImpl::AttentionPool2dImpl(int64_t spacial_dim, int64_t embed_dim,
                                         int64_t num_head_channels, int64_t output_dim) {
  TORCH_CHECK(num_head_channels > 0 && embed_dim % num_head_channels == 0, "attention pool: ",
              embed_dim, " channels are not divisible by num_head_channels ", num_head_channels);
  num_heads_ = embed_dim / num_head_channels;
  positional_embedding_ = register_parameter(
      "positional_embedding",
      torch::randn({embed_dim, spacial_dim * spacial_dim + 1}) / std::sqrt(static_cast<double>(embed_dim)));
  qkv_proj_ = register_module("qkv_proj", torch::nn::Conv1d(torch::nn::Conv1dOptions(
                                              embed_dim, 3 * embed_dim, /*kernel_size=*/1)));
  c_proj_ = register_module(
      "c_proj", torch::nn::Conv1d(torch::nn::Conv1dOptions(
                    embed_dim, output_dim ? output_dim : embed_dim, /*kernel_size=*/1)));
}

torch::Tensor AttentionPool2dImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = x.reshape({x.size(0), x.size(1), -1});          // N x C x HW
  h = torch::cat({h.mean(-1, /*keepdim=*/true), h}, -1);            // N x C x HW+1
  TORCH_CHECK(h.size(2) == positional_embedding_.size(1), "attention pool built for ",
              positional_embedding_.size(1) - 1, " positions, got ", h.size(2) - 1);
  h = h + positional_embedding_.unsqueeze(0).to(h.scalar_type());
  h = CountedConv(*c_proj_, QKVAttention(CountedConv(*qkv_proj_, h), num_heads_, /*legacy_order=*/false));
  return h.select(2, 0);
}

// ---- TimestepSequential ------------------------------------------------------------------------

void TimestepSequentialImpl::Append(const ResBlock& block) {
  register_module(NextName(), block);
  layers_.push_back([block = block.ptr()](const torch::Tensor& x, const torch::Tensor& emb) {
    return block->forward(x, emb);
  });
}

void TimestepSequentialImpl::Append(const AttentionBlock& block) {
  register_module(NextName(), block);
  layers_.push_back(
      [block = block.ptr()](const torch::Tensor& x, const torch::Tensor&) { return block->forward(x); });
}

void TimestepSequentialImpl::Append(const torch::nn::Conv2d& conv) {
  register_module(NextName(), conv);
  layers_.push_back(
      [conv = conv.ptr()](const torch::Tensor& x, const torch::Tensor&) { return CountedConv(*conv, x); });
}

void TimestepSequentialImpl::Append(const Downsample& down) {
  register_module(NextName(), down);
  layers_.push_back(
      [down = down.ptr()](const torch::Tensor& x, const torch::Tensor&) { return down->forward(x); });
}

void TimestepSequentialImpl::Append(const Upsample& up) {
  register_module(NextName(), up);
  layers_.push_back([up = up.ptr()](const torch::Tensor& x, const torch::Tensor&) { return up->forward(x); });
}

torch::Tensor TimestepSequentialImpl::forward(const torch::Tensor& x, const torch::Tensor& emb) {
  torch::Tensor h = x;
  for (const auto& layer : layers_) h = layer(h, emb);
  return h;
}

void ConvertConvolutions(torch::nn::Module& module, torch::ScalarType dtype) {
  for (const auto& m : module.modules(/*include_self=*/true)) {
    if (auto* conv = m->as<torch::nn::Conv2dImpl>()) conv->to(dtype);
    if (auto* conv = m->as<torch::nn::Conv1dImpl>()) conv->to(dtype);
  }
}

}  // namespace gd
