#include "core/io/dataset.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <map>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "core/io/image.h"
#include "core/io/npy.h"
#include "core/status_macros.h"

namespace gd {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string>& FashionMnistClassNames() {
  static const auto* names =
      new std::vector<std::string>{"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                   "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return *names;
}

const std::vector<std::string>& MnistClassNames() {
  static const auto* names =
      new std::vector<std::string>{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
  return *names;
}

std::string SizeText(const torch::Tensor& images_nchw) {
  return absl::StrCat(images_nchw.size(1), "x", images_nchw.size(2), "x", images_nchw.size(3));
}

std::string ClassesText(const ImageDataset& data) {
  return data.has_labels ? absl::StrCat(data.num_classes, " classes") : "unlabelled";
}

// ---- IDX ---------------------------------------------------------------------------------------

// A gzip bomb must not take the machine down: (Fashion-)MNIST is 47 MB unpacked.
constexpr uint64_t kMaxGunzipBytes = uint64_t{8} << 30;

bool IsGzip(absl::string_view bytes) {
  return bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x1f &&
         static_cast<unsigned char>(bytes[1]) == 0x8b;
}

// Inflates a gzip file (one member or several concatenated, as gzip -d does).
absl::StatusOr<std::string> Gunzip(absl::string_view compressed, const std::string& path) {
  z_stream stream{};
  if (inflateInit2(&stream, 16 + MAX_WBITS) != Z_OK) {
    return absl::InternalError(absl::StrCat(path, ": inflateInit2 failed"));
  }
  constexpr size_t kChunk = size_t{1} << 30;  // zlib counts in 32-bit uInt
  std::string out;
  size_t produced = 0;
  size_t in_pos = 0;
  absl::Status status;
  try {
    while (true) {
      if (stream.avail_in == 0 && in_pos < compressed.size()) {
        const size_t n = std::min(kChunk, compressed.size() - in_pos);
        stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data() + in_pos));
        stream.avail_in = static_cast<uInt>(n);
        in_pos += n;
      }
      if (produced == out.size()) {
        if (out.size() >= kMaxGunzipBytes) {
          status = absl::ResourceExhaustedError(absl::StrCat(
              path, ": unpacks to more than ", kMaxGunzipBytes >> 30, " GiB; refusing"));
          break;
        }
        out.resize(
            std::min<uint64_t>(std::max<size_t>(2 * out.size(), size_t{1} << 20), kMaxGunzipBytes));
      }
      const size_t room = std::min(kChunk, out.size() - produced);
      stream.next_out = reinterpret_cast<Bytef*>(&out[produced]);
      stream.avail_out = static_cast<uInt>(room);
      const int result = inflate(&stream, Z_NO_FLUSH);
      produced += room - stream.avail_out;
      if (result == Z_STREAM_END) {
        const size_t next =
            stream.avail_in > 0
                ? static_cast<size_t>(reinterpret_cast<const char*>(stream.next_in) -
                                      compressed.data())
                : in_pos;
        if (next == compressed.size()) break;
        if (IsGzip(compressed.substr(next))) {  // another gzip member follows
          stream.avail_in = 0;
          in_pos = next;
          inflateReset(&stream);
          continue;
        }
        status = absl::InvalidArgumentError(absl::StrCat(
            path, ": ", compressed.size() - next, " bytes of trailing data after the gzip stream"));
        break;
      }
      if (result == Z_BUF_ERROR && stream.avail_in == 0 && in_pos == compressed.size()) {
        status = absl::InvalidArgumentError(
            absl::StrCat(path, ": truncated gzip data (", produced, " bytes unpacked)"));
        break;
      }
      if (result != Z_OK && result != Z_BUF_ERROR) {
        status = absl::InvalidArgumentError(absl::StrCat(
            path, ": corrupt gzip data (", stream.msg != nullptr ? stream.msg : "?", ")"));
        break;
      }
    }
  } catch (const std::bad_alloc&) {
    status = absl::ResourceExhaustedError(absl::StrCat(path, ": out of memory while unpacking"));
  }
  inflateEnd(&stream);
  if (!status.ok()) return status;
  out.resize(produced);
  return out;
}

// The bytes of an IDX file, gunzipped if they start with the gzip magic.
absl::StatusOr<std::string> ReadIdxBytes(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFileBytes(path);
  if (!bytes.ok() || !IsGzip(*bytes)) return bytes;
  return Gunzip(*bytes, path);
}

// Checks an IDX header of unsigned bytes with `rank` dimensions against the data that follows.
// Returns the dimensions; the data starts at 4 + 4 * rank.
absl::StatusOr<std::vector<int64_t>> ParseIdxHeader(absl::string_view bytes,
                                                    const std::string& path, int rank,
                                                    absl::string_view kind) {
  auto big_endian = [&](size_t offset) {
    uint32_t value = 0;
    for (size_t i = 0; i < 4; ++i) {
      value = (value << 8) | static_cast<unsigned char>(bytes[offset + i]);
    }
    return value;
  };
  const uint32_t expected = 0x00000800u | static_cast<uint32_t>(rank);
  if (bytes.size() < 4) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", bytes.size(), " bytes is too short for an IDX ", kind, " file"));
  }
  const uint32_t magic = big_endian(0);
  if (magic != expected) {
    std::string hint;
    if ((magic >> 16) == 0 && ((magic >> 8) & 0xff) != 0x08) {
      hint =
          absl::StrFormat("; element type 0x%02x is not unsigned byte (0x08)", (magic >> 8) & 0xff);
    }
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: magic 0x%08x is not an IDX %s file (expected 0x%08x)%s", path, magic,
                        kind, expected, hint));
  }
  const size_t header_size = 4 + 4 * static_cast<size_t>(rank);
  if (bytes.size() < header_size) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": truncated IDX header (", bytes.size(),
                                                   " of ", header_size, " bytes)"));
  }
  std::vector<int64_t> dims;
  uint64_t total = 1;
  bool overflow = false;
  for (int d = 0; d < rank; ++d) {
    const uint32_t dim = big_endian(4 + 4 * static_cast<size_t>(d));
    dims.push_back(dim);
    if (dim != 0 && total > (uint64_t{1} << 62) / dim) overflow = true;
    if (!overflow) total *= dim;
  }
  const uint64_t available = bytes.size() - header_size;
  if (overflow || total > available) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": truncated: the header declares ", absl::StrJoin(dims, "x"), " = ",
                     overflow ? std::string("too many") : absl::StrCat(total), " bytes but ",
                     available, " follow"));
  }
  if (total < available) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", available - total,
                                                   " bytes of trailing data after the ",
                                                   absl::StrJoin(dims, "x"), " declared"));
  }
  return dims;
}

// Directory name containing "fashion" -> Fashion-MNIST, else MNIST.
bool LooksLikeFashionMnist(const fs::path& directory) {
  std::error_code error;
  fs::path normal = fs::absolute(directory, error).lexically_normal();
  if (!normal.has_filename()) normal = normal.parent_path();
  return absl::StrContains(absl::AsciiStrToLower(normal.filename().string()), "fashion");
}

// `split` is "train" or "test"; `prefix` the file prefix, "train" or "t10k".
absl::StatusOr<ImageDataset> LoadIdxDirectory(const fs::path& directory, const std::string& split,
                                              const std::string& prefix) {
  auto find = [&](absl::string_view what) -> std::string {
    for (const char* separator : {"-", "."}) {
      for (const char* suffix : {"", ".gz"}) {
        const fs::path candidate =
            directory / absl::StrCat(prefix, "-", what, separator,
                                     what == "images" ? "idx3" : "idx1", "-ubyte", suffix);
        std::error_code error;
        if (fs::is_regular_file(candidate, error)) return candidate.string();
      }
    }
    return "";
  };
  const std::string images = find("images");
  const std::string labels = find("labels");
  if (images.empty() || labels.empty()) {
    return absl::NotFoundError(absl::StrCat(
        directory.string(), ": holds IDX files but not ", prefix, "-",
        images.empty() ? "images-idx3" : "labels-idx1", "-ubyte[.gz] for split '", split, "'"));
  }
  ASSIGN_OR_RETURN(auto data, LoadIdx(images, labels));
  const bool fashion = LooksLikeFashionMnist(directory);
  data.class_names = fashion ? FashionMnistClassNames() : MnistClassNames();
  if (data.num_classes > 10) {
    const int64_t bad = data.labels.argmax().item<int64_t>();
    return absl::InvalidArgumentError(
        absl::StrCat(labels, ": labels[", bad, "] = ", data.labels[bad].item<int64_t>(),
                     " is outside [0, 10) for ", fashion ? "Fashion-MNIST" : "MNIST"));
  }
  data.num_classes = 10;
  data.description =
      absl::StrCat(fashion ? "fashion-mnist " : "mnist ", split, ", ", data.images.size(0),
                   " images ", SizeText(data.images), ", ", ClassesText(data));
  return data;
}

// ---- Image folders -----------------------------------------------------------------------------

constexpr int kMaxFolderDepth = 32;

// image_datasets.py's _list_image_files_recursively: entries in sorted order, files by extension,
// directories recursed into where they appear.
absl::Status ListImageFiles(const fs::path& directory, int depth, std::vector<std::string>* files) {
  if (depth > kMaxFolderDepth) {
    return absl::InvalidArgumentError(absl::StrCat(directory.string(), ": more than ",
                                                   kMaxFolderDepth,
                                                   " directory levels (a symlink loop?)"));
  }
  std::error_code error;
  std::vector<fs::path> entries;
  for (fs::directory_iterator it(directory, error), end; !error && it != end; it.increment(error)) {
    entries.push_back(it->path());
  }
  if (error) {
    return absl::InternalError(
        absl::StrCat(directory.string(), ": cannot list: ", error.message()));
  }
  std::sort(entries.begin(), entries.end(), [](const fs::path& a, const fs::path& b) {
    return a.filename().string() < b.filename().string();
  });
  for (const fs::path& entry : entries) {
    const std::string name = entry.filename().string();
    const size_t dot = name.rfind('.');
    const std::string extension =
        dot == std::string::npos ? "" : absl::AsciiStrToLower(name.substr(dot + 1));
    if (fs::is_directory(entry, error)) {
      absl::Status status = ListImageFiles(entry, depth + 1, files);
      if (!status.ok()) return status;
    } else if (extension == "png") {
      files->push_back(entry.string());
    } else if (extension == "jpg" || extension == "jpeg" || extension == "gif") {
      return absl::InvalidArgumentError(absl::StrCat(
          entry.string(), ": only PNG images can be read (convert ", extension, " files to PNG)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ImageDataset> LoadImageFolder(const fs::path& directory) {
  std::vector<std::string> files;
  absl::Status status = ListImageFiles(directory, 0, &files);
  if (!status.ok()) return status;
  if (files.empty()) {
    return absl::NotFoundError(absl::StrCat(
        directory.string(), ": no IDX files and no .png images (searched recursively)"));
  }
  // Class = file name up to the first '_', as image_datasets.py.
  std::vector<std::string> prefixes;
  const std::string* with_prefix = nullptr;
  const std::string* without_prefix = nullptr;
  for (const std::string& file : files) {
    const std::string name = fs::path(file).filename().string();
    const size_t underscore = name.find('_');
    (underscore == std::string::npos ? without_prefix : with_prefix) = &file;
    prefixes.push_back(name.substr(0, underscore));
  }
  if (with_prefix != nullptr && without_prefix != nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(*without_prefix, ": has no class prefix (\"CLASS_...\") while ", *with_prefix,
                     " has; name every image CLASS_NAME.png, or none"));
  }
  ImageDataset data;
  data.has_labels = with_prefix != nullptr;
  std::map<std::string, int64_t> class_index;
  if (data.has_labels) {
    for (const std::string& prefix : prefixes) class_index.emplace(prefix, 0);
    for (auto& [name, index] : class_index) {
      index = static_cast<int64_t>(data.class_names.size());
      data.class_names.push_back(name);
    }
    data.num_classes = static_cast<int64_t>(data.class_names.size());
  }
  const auto count = static_cast<int64_t>(files.size());
  data.labels = torch::zeros({count}, torch::kLong);
  auto* labels = data.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    ASSIGN_OR_RETURN(auto image, ReadPng(files[i]));
    torch::Tensor chw = image.permute({2, 0, 1});
    if (i == 0) {
      data.images = torch::empty({count, chw.size(0), chw.size(1), chw.size(2)}, torch::kUInt8);
    } else if (chw.sizes() != data.images.sizes().slice(1)) {
      return absl::InvalidArgumentError(
          absl::StrCat(files[i], ": is ", chw.size(0), "x", chw.size(1), "x", chw.size(2),
                       " (CxHxW) but ", files[0], " is ", SizeText(data.images),
                       "; all images must share one size and channel count"));
    }
    data.images[i].copy_(chw);
    if (data.has_labels) labels[i] = class_index.at(prefixes[i]);
  }
  data.description = absl::StrCat("image folder ", directory.string(), ", ", count, " images ",
                                  SizeText(data.images), ", ", ClassesText(data));
  return data;
}

// ---- .npz --------------------------------------------------------------------------------------

absl::StatusOr<ImageDataset> LoadNpzDataset(const std::string& path) {
  ASSIGN_OR_RETURN(auto arrays, ReadNpz(path));
  const torch::Tensor* images = nullptr;
  const torch::Tensor* labels = nullptr;
  std::vector<std::string> names;
  for (const auto& [name, array] : arrays) {
    names.push_back(name);
    if (name == "arr_0") images = &array;
    if (name == "arr_1") labels = &array;
  }
  if (images == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no arr_0 (images) array; it holds [",
                                                   absl::StrJoin(names, ", "), "]"));
  }
  const int64_t count = images->dim() > 0 ? images->size(0) : 0;
  if (images->scalar_type() != torch::kByte || (images->dim() != 3 && images->dim() != 4) ||
      count == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": arr_0 is ", c10::toString(images->scalar_type()), " ", c10::str(images->sizes()),
        "; expected uint8 [N x H x W x C] or [N x H x W] with N >= 1"));
  }
  ImageDataset data;
  torch::Tensor nhwc = images->dim() == 3 ? images->unsqueeze(3) : *images;
  data.images = nhwc.permute({0, 3, 1, 2}).contiguous();
  data.labels = torch::zeros({count}, torch::kLong);
  if (labels != nullptr) {
    const bool integral = c10::isIntegralType(labels->scalar_type(), /*includeBool=*/false);
    if (!integral || labels->dim() != 1 || labels->size(0) != count) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": arr_1 is ", c10::toString(labels->scalar_type()), " ", c10::str(labels->sizes()),
          "; expected integer labels [", count, "] (one per image)"));
    }
    data.labels = labels->to(torch::kLong);
    const int64_t lowest = data.labels.argmin().item<int64_t>();
    if (data.labels[lowest].item<int64_t>() < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": arr_1[", lowest, "] = ", data.labels[lowest].item<int64_t>(), " is negative"));
    }
    data.has_labels = true;
    data.num_classes = data.labels.max().item<int64_t>() + 1;
  }
  data.description =
      absl::StrCat(path, ", ", count, " images ", SizeText(data.images), ", ", ClassesText(data));
  return data;
}

}  // namespace

absl::StatusOr<ImageDataset> LoadIdx(const std::string& images_path,
                                     const std::string& labels_path) {
  ASSIGN_OR_RETURN(auto image_bytes, ReadIdxBytes(images_path));
  ASSIGN_OR_RETURN(const std::vector<int64_t> image_dims,
                   ParseIdxHeader(image_bytes, images_path, /*rank=*/3, "image"));
  ASSIGN_OR_RETURN(auto label_bytes, ReadIdxBytes(labels_path));
  ASSIGN_OR_RETURN(const std::vector<int64_t> label_dims,
                   ParseIdxHeader(label_bytes, labels_path, /*rank=*/1, "label"));
  const int64_t count = image_dims[0];
  const int64_t height = image_dims[1];
  const int64_t width = image_dims[2];
  if (count == 0 || height == 0 || width == 0) {
    return absl::InvalidArgumentError(absl::StrCat(images_path, ": holds no pixels (", count,
                                                   " images of ", height, "x", width, ")"));
  }
  if (label_dims[0] != count) {
    return absl::InvalidArgumentError(absl::StrCat(labels_path, ": ", label_dims[0],
                                                   " labels for the ", count, " images of ",
                                                   images_path));
  }
  ImageDataset data;
  try {
    data.images = torch::empty({count, 1, height, width}, torch::kUInt8);
    std::memcpy(data.images.data_ptr(), image_bytes.data() + 16, count * height * width);
    image_bytes.clear();
    data.labels = torch::empty({count}, torch::kLong);
    auto* labels = data.labels.data_ptr<int64_t>();
    int64_t max_label = 0;
    for (int64_t i = 0; i < count; ++i) {
      labels[i] = static_cast<unsigned char>((label_bytes)[8 + i]);
      max_label = std::max(max_label, labels[i]);
    }
    data.has_labels = true;
    data.num_classes = max_label + 1;
  } catch (const c10::Error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat(images_path, ": ", e.what_without_backtrace()));
  }
  data.description = absl::StrCat(images_path, ", ", count, " images ", SizeText(data.images), ", ",
                                  ClassesText(data));
  return data;
}

absl::StatusOr<ImageDataset> LoadDataset(const std::string& path, const std::string& split) {
  std::string idx_prefix;
  if (split == "train") {
    idx_prefix = "train";
  } else if (split == "test" || split == "t10k") {
    idx_prefix = "t10k";
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("split '", split, "' is not one of train, test, t10k"));
  }
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (error || !fs::exists(status)) {
    return absl::NotFoundError(absl::StrCat(path, ": does not exist",
                                            error ? absl::StrCat(" (", error.message(), ")") : ""));
  }
  try {
    if (fs::is_directory(status)) {
      bool has_idx = false;
      for (fs::directory_iterator it(path, error), end; !error && it != end; it.increment(error)) {
        const std::string name = it->path().filename().string();
        has_idx = has_idx || absl::StrContains(name, "idx3-ubyte") ||
                  absl::StrContains(name, "idx1-ubyte");
      }
      if (error) {
        return absl::InternalError(absl::StrCat(path, ": cannot list: ", error.message()));
      }
      if (!has_idx) return LoadImageFolder(path);
      return LoadIdxDirectory(path, idx_prefix == "t10k" ? "test" : "train", idx_prefix);
    }
    if (fs::is_regular_file(status)) {
      absl::StatusOr<ImageDataset> data = LoadNpzDataset(path);
      if (!data.ok() && absl::StrContains(data.status().message(), "not a valid zip archive")) {
        return absl::Status(data.status().code(),
                            absl::StrCat(data.status().message(),
                                         " (--data takes a directory of IDX files or PNG images, "
                                         "or an .npz)"));
      }
      return data;
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(path, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(path, ": ", e.what()));
  }
  return absl::InvalidArgumentError(absl::StrCat(path, ": neither a directory nor a regular file"));
}

Batch SampleBatch(const ImageDataset& data, int64_t batch_size, torch::Generator& generator,
                  bool random_flip) {
  TORCH_CHECK(data.images.defined() && data.images.dim() == 4 && data.images.size(0) > 0,
              "SampleBatch needs a dataset with at least one image [N x C x H x W]");
  TORCH_CHECK(batch_size >= 0, "SampleBatch: batch_size = ", batch_size, " is negative");
  const torch::Device device = data.images.device();
  const torch::Tensor index =
      torch::randint(data.images.size(0), {batch_size}, generator, torch::kLong).to(device);
  Batch batch;
  batch.images = Uint8ToSamples(data.images.index_select(0, index).permute({0, 2, 3, 1}));
  batch.labels = data.labels.index_select(0, index);
  if (random_flip) {
    const torch::Tensor flip =
        (torch::rand({batch_size}, generator) < 0.5).to(device).view({batch_size, 1, 1, 1});
    batch.images = torch::where(flip, batch.images.flip({3}), batch.images);
  }
  return batch;
}

}  // namespace gd
