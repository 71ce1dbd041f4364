#include "core/nn/unet.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/nn/flops.h"
#include "core/status_macros.h"

namespace gd {
namespace {

bool HasAttention(const UNetConfig& c, int64_t ds) {
  return std::find(c.attention_ds.begin(), c.attention_ds.end(), ds) != c.attention_ds.end();
}

ResBlock MakeResBlock(const UNetConfig& c, int64_t ch, int64_t emb_dim, int64_t out_ch,
                      bool up = false, bool down = false) {
  ResBlockOptions o;
  o.channels = ch;
  o.emb_channels = emb_dim;
  o.dropout = c.dropout;
  o.out_channels = out_ch;
  o.use_scale_shift_norm = c.use_scale_shift_norm;
  o.up = up;
  o.down = down;
  return ResBlock(o);
}

int64_t Channels(const UNetConfig& c, double mult) {
  return static_cast<int64_t>(mult * static_cast<double>(c.model_channels));
}

// The shared encoder: input_blocks and middle_block of both networks. Returns the channel
// count at the bottom, the downsample rate reached, the channels of every input block (for the
// decoder's skips) and their total (the spatial pools' feature size).
struct Encoder {
  int64_t ch = 0;
  int64_t ds = 1;
  std::vector<int64_t> block_channels;
  int64_t feature_size = 0;
};

Encoder BuildEncoder(const UNetConfig& c, int64_t emb_dim, torch::nn::Module& input_slot,
                     std::vector<TimestepSequential>& input_blocks,
                     TimestepSequential& middle_block, torch::nn::Module& owner) {
  Encoder e;
  e.ch = Channels(c, c.channel_mult[0]);
  auto add_block = [&](TimestepSequential block) {
    input_slot.register_module(std::to_string(input_blocks.size()), block);
    input_blocks.push_back(block);
  };
  {
    TimestepSequential first;
    first->Append(torch::nn::Conv2d(
        torch::nn::Conv2dOptions(c.in_channels, e.ch, /*kernel_size=*/3).padding(1)));
    add_block(first);
  }
  e.block_channels.push_back(e.ch);
  e.feature_size = e.ch;
  const int64_t levels = static_cast<int64_t>(c.channel_mult.size());
  for (int64_t level = 0; level < levels; ++level) {
    for (int64_t i = 0; i < c.num_res_blocks; ++i) {
      TimestepSequential block;
      const int64_t out_ch = Channels(c, c.channel_mult[level]);
      block->Append(MakeResBlock(c, e.ch, emb_dim, out_ch));
      e.ch = out_ch;
      if (HasAttention(c, e.ds)) {
        block->Append(AttentionBlock(e.ch, c.num_heads, c.num_head_channels,
                                     c.use_new_attention_order));
      }
      add_block(block);
      e.feature_size += e.ch;
      e.block_channels.push_back(e.ch);
    }
    if (level != levels - 1) {
      TimestepSequential block;
      if (c.resblock_updown) {
        block->Append(MakeResBlock(c, e.ch, emb_dim, e.ch, /*up=*/false, /*down=*/true));
      } else {
        block->Append(Downsample(e.ch, c.conv_resample, e.ch));
      }
      add_block(block);
      e.block_channels.push_back(e.ch);
      e.ds *= 2;
      e.feature_size += e.ch;
    }
  }
  middle_block = TimestepSequential();
  middle_block->Append(MakeResBlock(c, e.ch, emb_dim, e.ch));
  middle_block->Append(
      AttentionBlock(e.ch, c.num_heads, c.num_head_channels, c.use_new_attention_order));
  middle_block->Append(MakeResBlock(c, e.ch, emb_dim, e.ch));
  owner.register_module("middle_block", middle_block);
  e.feature_size += e.ch;
  return e;
}

absl::Status CheckCommon(const UNetConfig& c, const char* what) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", why));
  };
  if (c.image_size < 1 || c.in_channels < 1 || c.model_channels < 1 || c.num_res_blocks < 0 ||
      c.out_channels < 1) {
    return bad("image size, channel counts and out_channels must be positive");
  }
  if (c.channel_mult.empty()) return bad("channel_mult is empty");
  for (double m : c.channel_mult) {
    const int64_t ch = Channels(c, m);
    if (ch < 32 || ch % 32 != 0) {
      return bad(absl::StrCat("level width ", ch, " (", c.model_channels, " x ", m,
                              ") must be a positive multiple of 32 (GroupNorm uses 32 groups)"));
    }
  }
  const int64_t downsamples = static_cast<int64_t>(c.channel_mult.size()) - 1;
  if (downsamples >= 63 || (c.image_size >> downsamples) < 1) {
    return bad(absl::StrCat("image_size ", c.image_size, " is too small for ", downsamples,
                            " downsamplings"));
  }
  return absl::OkStatus();
}

}  // namespace

// ---- UNetModel ---------------------------------------------------------------------------------

UNetModelImpl::UNetModelImpl(const UNetConfig& config) : config_(config) {
  const UNetConfig& c = config_;
  const int64_t emb_dim = c.model_channels * 4;
  auto time_embed = AddSlot(*this, "time_embed");
  time_embed_0_ = time_embed->register_module("0", torch::nn::Linear(c.model_channels, emb_dim));
  time_embed_2_ = time_embed->register_module("2", torch::nn::Linear(emb_dim, emb_dim));
  if (c.num_classes > 0) {
    label_emb_ = register_module("label_emb", torch::nn::Embedding(c.num_classes, emb_dim));
  }
  input_slot_ = AddSlot(*this, "input_blocks");
  Encoder e = BuildEncoder(c, emb_dim, *input_slot_, input_blocks_, middle_block_, *this);

  output_slot_ = AddSlot(*this, "output_blocks");
  const int64_t num_heads_upsample = c.num_heads_upsample == -1 ? c.num_heads : c.num_heads_upsample;
  int64_t ch = e.ch;
  int64_t ds = e.ds;
  const int64_t levels = static_cast<int64_t>(c.channel_mult.size());
  for (int64_t level = levels - 1; level >= 0; --level) {
    for (int64_t i = 0; i <= c.num_res_blocks; ++i) {
      const int64_t skip_ch = e.block_channels.back();
      e.block_channels.pop_back();
      TimestepSequential block;
      const int64_t out_ch = Channels(c, c.channel_mult[level]);
      block->Append(MakeResBlock(c, ch + skip_ch, emb_dim, out_ch));
      ch = out_ch;
      if (HasAttention(c, ds)) {
        block->Append(
            AttentionBlock(ch, num_heads_upsample, c.num_head_channels, c.use_new_attention_order));
      }
      if (level > 0 && i == c.num_res_blocks) {
        if (c.resblock_updown) {
          block->Append(MakeResBlock(c, ch, emb_dim, ch, /*up=*/true));
        } else {
          block->Append(Upsample(ch, c.conv_resample, ch));
        }
        ds /= 2;
      }
      output_slot_->register_module(std::to_string(output_blocks_.size()), block);
      output_blocks_.push_back(block);
    }
  }
  auto out = AddSlot(*this, "out");
  out_norm_ = out->register_module("0", GroupNorm32(ch));
  out_conv_ = out->register_module(
      "2", torch::nn::Conv2d(
               torch::nn::Conv2dOptions(Channels(c, c.channel_mult[0]), c.out_channels, 3).padding(1)));
  SetPrecision(c.precision);
}

void UNetModelImpl::SetPrecision(Precision precision) {
  config_.precision = precision;
  torso_dtype_ = TorsoDtype(precision);
  ConvertConvolutions(*input_slot_, torso_dtype_);
  ConvertConvolutions(*middle_block_, torso_dtype_);
  ConvertConvolutions(*output_slot_, torso_dtype_);
}

torch::Tensor UNetModelImpl::forward(const torch::Tensor& x, const torch::Tensor& timesteps,
                                     const torch::Tensor& y) {
  TORCH_CHECK(y.defined() == (config_.num_classes > 0),
              "labels must be given if and only if the model is class-conditional");
  torch::Tensor emb = CountedLinear(*time_embed_2_, 
      torch::silu(CountedLinear(*time_embed_0_, TimestepEmbedding(timesteps, config_.model_channels))));
  if (config_.num_classes > 0) {
    TORCH_CHECK(y.dim() == 1 && y.size(0) == x.size(0), "labels ", y.sizes(), " for a batch of ",
                x.size(0));
    emb = emb + label_emb_->forward(y);
  }
  std::vector<torch::Tensor> hs;
  hs.reserve(input_blocks_.size());
  torch::Tensor h = x.to(torso_dtype_);
  for (auto& block : input_blocks_) {
    h = block->forward(h, emb);
    hs.push_back(h);
  }
  h = middle_block_->forward(h, emb);
  for (auto& block : output_blocks_) {
    h = block->forward(torch::cat({h, hs.back()}, 1), emb);
    hs.pop_back();
  }
  h = h.to(x.scalar_type());
  return CountedConv(*out_conv_, torch::silu(out_norm_->forward(h)));
}

// ---- EncoderUNetModel --------------------------------------------------------------------------

EncoderUNetModelImpl::EncoderUNetModelImpl(const UNetConfig& config) : config_(config) {
  const UNetConfig& c = config_;
  const int64_t emb_dim = c.model_channels * 4;
  auto time_embed = AddSlot(*this, "time_embed");
  time_embed_0_ = time_embed->register_module("0", torch::nn::Linear(c.model_channels, emb_dim));
  time_embed_2_ = time_embed->register_module("2", torch::nn::Linear(emb_dim, emb_dim));
  input_slot_ = AddSlot(*this, "input_blocks");
  Encoder e = BuildEncoder(c, emb_dim, *input_slot_, input_blocks_, middle_block_, *this);

  auto out = AddSlot(*this, "out");
  if (c.pool == "adaptive") {
    out_norm_ = out->register_module("0", GroupNorm32(e.ch));
    // out.1 SiLU, out.2 AdaptiveAvgPool2d((1, 1)), out.4 Flatten
    out_conv_ = out->register_module(
        "3", torch::nn::Conv2d(torch::nn::Conv2dOptions(e.ch, c.out_channels, /*kernel_size=*/1)));
  } else if (c.pool == "attention") {
    TORCH_CHECK(c.num_head_channels != -1, "attention pooling needs num_head_channels");
    out_norm_ = out->register_module("0", GroupNorm32(e.ch));
    // out.1 SiLU
    out_attention_ = out->register_module(
        "2", AttentionPool2d(c.image_size / e.ds, e.ch, c.num_head_channels, c.out_channels));
  } else if (c.pool == "spatial") {
    out_linear_0_ = out->register_module("0", torch::nn::Linear(e.feature_size, 2048));
    // out.1 ReLU
    out_linear_last_ = out->register_module("2", torch::nn::Linear(2048, c.out_channels));
  } else if (c.pool == "spatial_v2") {
    out_linear_0_ = out->register_module("0", torch::nn::Linear(e.feature_size, 2048));
    out_norm_1_ = out->register_module("1", GroupNorm32(2048));
    // out.2 SiLU
    out_linear_last_ = out->register_module("3", torch::nn::Linear(2048, c.out_channels));
  } else {
    TORCH_CHECK(false, "unexpected pool \"", c.pool, "\"");
  }
  SetPrecision(c.precision);
}

void EncoderUNetModelImpl::SetPrecision(Precision precision) {
  config_.precision = precision;
  torso_dtype_ = TorsoDtype(precision);
  ConvertConvolutions(*input_slot_, torso_dtype_);
  ConvertConvolutions(*middle_block_, torso_dtype_);
}

torch::Tensor EncoderUNetModelImpl::forward(const torch::Tensor& x,
                                            const torch::Tensor& timesteps) {
  const torch::Tensor emb = CountedLinear(*time_embed_2_, 
      torch::silu(CountedLinear(*time_embed_0_, TimestepEmbedding(timesteps, config_.model_channels))));
  const bool spatial = !out_linear_0_.is_empty();
  std::vector<torch::Tensor> results;
  torch::Tensor h = x.to(torso_dtype_);
  for (auto& block : input_blocks_) {
    h = block->forward(h, emb);
    if (spatial) results.push_back(h.to(x.scalar_type()).mean({2, 3}));
  }
  h = middle_block_->forward(h, emb);
  if (spatial) {
    results.push_back(h.to(x.scalar_type()).mean({2, 3}));
    torch::Tensor features = CountedLinear(*out_linear_0_, torch::cat(results, -1));
    features = out_norm_1_ ? torch::silu(out_norm_1_->forward(features)) : torch::relu(features);
    return CountedLinear(*out_linear_last_, features);
  }
  h = torch::silu(out_norm_->forward(h.to(x.scalar_type())));
  if (out_attention_) return out_attention_->forward(h);
  return CountedConv(*out_conv_, torch::adaptive_avg_pool2d(h, {1, 1})).flatten(1);
}

// ---- Factories ---------------------------------------------------------------------------------

absl::StatusOr<UNetModel> CreateUNet(const UNetConfig& config) {
  RETURN_IF_ERROR(CheckCommon(config, "UNet"));
  try {
    return UNetModel(config);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat("UNet: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<EncoderUNetModel> CreateEncoderUNet(const UNetConfig& config) {
  RETURN_IF_ERROR(CheckCommon(config, "classifier"));
  const std::vector<std::string> pools = {"adaptive", "attention", "spatial", "spatial_v2"};
  if (std::find(pools.begin(), pools.end(), config.pool) == pools.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "classifier_pool \"", config.pool, "\" is unknown (allowed: adaptive, attention, spatial, "
        "spatial_v2)"));
  }
  if (config.pool == "attention" && config.num_head_channels < 1) {
    return absl::InvalidArgumentError(
        "classifier_pool attention needs a positive classifier_num_head_channels");
  }
  try {
    return EncoderUNetModel(config);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat("classifier: ", e.what_without_backtrace()));
  }
}

int64_t CountParameters(const torch::nn::Module& module) {
  int64_t total = 0;
  for (const auto& p : module.parameters()) total += p.numel();
  return total;
}

}  // namespace gd
