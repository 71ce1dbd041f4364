// Training data: what gd-train's --data points at, loaded whole into memory as uint8, and random
// batches drawn from it in the model's [-1, 1] NCHW form (image_datasets.py's scaling).
//
// Sources: (Fashion-)MNIST IDX files, a folder of PNGs named as image_datasets.py expects, or an
// .npz in the reference's sample-dump layout. Knows nothing of models or diffusion; images are
// used at their stored size (no resizing or cropping: the reference's center crop is the
// caller's business).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace gd {

struct ImageDataset {
  torch::Tensor images;  // uint8 [N x C x H x W], CPU, contiguous, N >= 1
  torch::Tensor labels;  // int64 [N]; all zero when the source has none (has_labels false)
  bool has_labels = false;
  int64_t num_classes = 0;  // the known count (10 for (Fashion-)MNIST), else max label + 1;
                            // 0 without labels
  // Known names (Fashion-MNIST: "T-shirt/top" .. "Ankle boot"; MNIST: "0".."9"), or an image
  // folder's class prefixes in sorted order (label i is class_names[i]); empty otherwise.
  std::vector<std::string> class_names;
  std::string description;  // e.g. "fashion-mnist train, 60000 images 1x28x28, 10 classes"
};

// An IDX image file (magic 0x00000803: unsigned bytes [N x H x W]) and its IDX label file (magic
// 0x00000801: unsigned bytes [N]), gzipped or not (told apart by the gzip magic, not the name).
// Images become [N x 1 x H x W]; num_classes is max label + 1; no class names. Errors name the
// file: missing, wrong magic, another element type, truncated or trailing data, corrupt gzip
// (or gzip unpacking past 8 GiB), label count != image count, no images.
absl::StatusOr<ImageDataset> LoadIdx(const std::string& images_path,
                                     const std::string& labels_path);

// What --data accepts:
//  - A directory holding IDX files: {train,t10k}-{images-idx3,labels-idx1}-ubyte, each
//    optionally gzipped (".gz"), '.' also accepted before "idx" (Kaggle's names). `split` "train"
//    picks train-*, "test" (or "t10k") picks t10k-*. If the directory's own name contains
//    "fashion" (any case), it is Fashion-MNIST and gets its class names, else MNIST's digits;
//    either way labels must be < 10. Takes precedence over PNGs in the same directory.
//  - A directory of PNG images, searched recursively in sorted order (image_datasets.py's
//    _list_image_files_recursively; symlinks followed, at most 32 levels deep). The class of a
//    file is its name's prefix before the first '_' ("cat_0001.png" -> "cat"); labels index the
//    sorted unique prefixes. If no file name has a '_' the set is unlabelled; if only some have,
//    that is an error naming a file without one. Every image must decode to the first one's size
//    and channel count (see DecodePng for grey/RGB/RGBA), else an error names the first file that
//    differs. .jpg/.jpeg/.gif files are an error (no decoder here); other files are ignored.
//  - An .npz (any regular file is read as one) with arr_0 uint8 [N x H x W x C] or [N x H x W]
//    (grey) and optionally arr_1, integer labels [N] >= 0 (num_classes = max + 1).
// `split` must be "train", "test" or "t10k"; it only matters for IDX directories.
absl::StatusOr<ImageDataset> LoadDataset(const std::string& path,
                                         const std::string& split = "train");

// A random batch. images: float32 [B x C x H x W] in [-1, 1] (Uint8ToSamples), labels: int64 [B],
// both on the dataset's device. Indices are drawn uniformly with replacement, by
// torch::randint(N, {B}, generator); then, if random_flip, each image is mirrored left-right with
// probability 1/2 by torch::rand({B}, generator) < 0.5. The same generator state gives the same
// batch. `generator` must be a CPU generator. Preconditions (c10::Error): data.images holds at
// least one image, batch_size >= 0.
struct Batch {
  torch::Tensor images;
  torch::Tensor labels;
};
Batch SampleBatch(const ImageDataset& data, int64_t batch_size, torch::Generator& generator,
                  bool random_flip);

}  // namespace gd
