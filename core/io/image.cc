// Tensor wrappers over gd::formats' PNG and grids, plus the sample <-> pixel scalings.
#include "core/io/image.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/io/formats/formats.h"
#include "core/status_macros.h"

namespace gd {

torch::Tensor SamplesToUint8(const torch::Tensor& samples) {
  TORCH_CHECK(samples.dim() == 4 && samples.is_floating_point(),
              "SamplesToUint8 expects floating samples [N x C x H x W], got ", samples.sizes(), " ",
              samples.scalar_type());
  torch::Tensor x = samples.scalar_type() == torch::kDouble ? samples : samples.to(torch::kFloat);
  x = torch::nan_to_num(x, /*nan=*/-1.0);
  return ((x + 1) * 127.5).clamp(0, 255).to(torch::kUInt8).permute({0, 2, 3, 1}).contiguous();
}

torch::Tensor Uint8ToSamples(const torch::Tensor& images) {
  TORCH_CHECK(images.dim() == 4, "Uint8ToSamples expects images [N x H x W x C], got ",
              images.sizes());
  return images.to(torch::kFloat).div(127.5).sub(1).permute({0, 3, 1, 2}).contiguous();
}

absl::StatusOr<std::string> EncodePng(const torch::Tensor& image_hwc) {
  if (!image_hwc.defined() || image_hwc.dim() != 3 || image_hwc.scalar_type() != torch::kUInt8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EncodePng: expected a uint8 image [H x W x C], got ",
        image_hwc.defined() ? absl::StrCat(std::string(c10::toString(image_hwc.scalar_type())), " ",
                                           c10::str(image_hwc.sizes()))
                            : std::string("an undefined tensor")));
  }
  formats::Image image;
  image.height = image_hwc.size(0);
  image.width = image_hwc.size(1);
  image.channels = image_hwc.size(2);
  try {
    const torch::Tensor pixels = image_hwc.to(torch::kCPU).contiguous();
    if (pixels.numel() > 0) {
      image.pixels.assign(static_cast<const char*>(pixels.data_ptr()), pixels.numel());
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("EncodePng: ", e.what_without_backtrace()));
  }
  return formats::EncodePng(image);
}

absl::StatusOr<torch::Tensor> DecodePng(absl::string_view bytes, absl::string_view what) {
  ASSIGN_OR_RETURN(auto image, formats::DecodePng(bytes, what));
  try {
    torch::Tensor pixels =
        torch::empty({image.height, image.width, image.channels}, torch::kUInt8);
    if (pixels.numel() > 0) std::memcpy(pixels.data_ptr(), image.pixels.data(), pixels.numel());
    return pixels;
  } catch (const c10::Error& e) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": ", e.what_without_backtrace()));
  }
}

absl::Status WritePng(const std::string& path, const torch::Tensor& image_hwc) {
  absl::StatusOr<std::string> png = EncodePng(image_hwc);
  if (!png.ok()) {
    return absl::Status(png.status().code(), absl::StrCat(path, ": ", png.status().message()));
  }
  return formats::WriteFileBytes(path, *png);
}

absl::StatusOr<torch::Tensor> ReadPng(const std::string& path) {
  ASSIGN_OR_RETURN(auto bytes, formats::ReadFileBytes(path));
  return DecodePng(bytes, path);
}

torch::Tensor MakeGrid(const torch::Tensor& images_nhwc, int64_t columns, int64_t padding,
                       uint8_t pad_value) {
  TORCH_CHECK(images_nhwc.dim() == 4 && images_nhwc.scalar_type() == torch::kUInt8,
              "MakeGrid expects uint8 images [N x H x W x C], got ", images_nhwc.sizes(), " ",
              images_nhwc.scalar_type());
  TORCH_CHECK(columns >= 1, "MakeGrid: columns = ", columns, " must be at least 1");
  TORCH_CHECK(padding >= 0, "MakeGrid: padding = ", padding, " must not be negative");
  const int64_t height = images_nhwc.size(1);
  const int64_t width = images_nhwc.size(2);
  const formats::GridLayout layout =
      formats::LayOutGrid(images_nhwc.size(0), height, width, columns, padding);
  torch::Tensor grid = torch::full({layout.height, layout.width, images_nhwc.size(3)}, pad_value,
                                   images_nhwc.options());
  for (int64_t i = 0; i < images_nhwc.size(0); ++i) {
    grid.narrow(0, layout.TileTop(i), height)
        .narrow(1, layout.TileLeft(i), width)
        .copy_(images_nhwc[i]);
  }
  return grid;
}

}  // namespace gd
