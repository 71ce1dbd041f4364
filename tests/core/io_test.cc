// Tests for core/io: the tensor wrappers over gd::formats (PNG, npy/npz, grids), the sample <->
// pixel scalings and the dataset loaders. The byte-level formats themselves, with numpy's own bytes
// as goldens, are tested in formats_test.cc. Every input file is built at test time in a temporary
// directory.
#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <torch/torch.h>
#include <zlib.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/io/bundled_model.h"
#include "core/io/dataset.h"
#include "core/io/formats/formats.h"
#include "core/io/image.h"
#include "core/io/npy.h"

namespace gd {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// ---- Helpers ------------------------------------------------------------------------------------

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "gd_io_test_XXXXXX").string();
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    std::error_code error;
    fs::remove_all(path_, error);
  }
  std::string Path(const std::string& name) const {
    const fs::path path = path_ / name;
    fs::create_directories(path.parent_path());
    return path.string();
  }
  std::string path() const { return path_.string(); }

 private:
  fs::path path_;
};

void WriteRaw(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string ReadRaw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string Message(const absl::Status& status) {
  return std::string(status.message().data(), status.message().size());
}

void PutBig32(std::string* out, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(static_cast<char>(value >> shift));
}

// windowBits 31: gzip (IDX files).
std::string Deflate(const std::string& data, int window_bits) {
  z_stream stream{};
  EXPECT_EQ(deflateInit2(&stream, 6, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&stream, data.size()) + 64, '\0');
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  stream.avail_in = static_cast<uInt>(data.size());
  stream.next_out = reinterpret_cast<Bytef*>(out.data());
  stream.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&stream, Z_FINISH), Z_STREAM_END);
  out.resize(stream.total_out);
  deflateEnd(&stream);
  return out;
}

torch::Tensor RandomBytes(const std::vector<int64_t>& shape, uint64_t seed) {
  torch::Generator generator = at::detail::createCPUGenerator(seed);
  return torch::randint(0, 256, shape, generator, torch::kByte);
}

std::string Bytes(std::initializer_list<int> values) {
  std::string out;
  for (int v : values) out.push_back(static_cast<char>(v));
  return out;
}

torch::Tensor Longs(std::initializer_list<int64_t> values) {
  return torch::tensor(std::vector<int64_t>(values.begin(), values.end()));
}

// ---- Samples <-> pixels -------------------------------------------------------------------------

TEST(SamplesToUint8, MatchesReferenceFormulaOnEdgeValues) {
  // ((x + 1) * 127.5).clamp(0, 255).to(uint8): truncation, so 0 -> 127 and 0.999 -> 254.
  const std::vector<float> x = {-1.0f,
                                1.0f,
                                -1.0001f,
                                1.5f,
                                0.0f,
                                0.999f,
                                -0.5f,
                                0.5f,
                                std::numeric_limits<float>::infinity(),
                                -std::numeric_limits<float>::infinity(),
                                std::nanf("")};
  const std::vector<int> expected = {0, 255, 0, 255, 127, 254, 63, 191, 255, 0, 0};
  const torch::Tensor samples = torch::tensor(x).view({1, 1, 1, static_cast<int64_t>(x.size())});
  const torch::Tensor pixels = SamplesToUint8(samples);
  ASSERT_EQ(pixels.scalar_type(), torch::kUInt8);
  ASSERT_EQ(pixels.sizes(), (std::vector<int64_t>{1, 1, static_cast<int64_t>(x.size()), 1}));
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(pixels.view(-1)[i].item<int>(), expected[i]) << "x = " << x[i];
  }
}

TEST(SamplesToUint8, PermutesNchwToNhwc) {
  // [1 x 3 x 1 x 2]: channel c, column w holds (c * 2 + w) / 10.
  const torch::Tensor samples =
      torch::tensor({0.0f, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f}).view({1, 3, 1, 2});
  const torch::Tensor pixels = SamplesToUint8(samples);
  ASSERT_EQ(pixels.sizes(), (std::vector<int64_t>{1, 1, 2, 3}));
  ASSERT_TRUE(pixels.is_contiguous());
  EXPECT_EQ(pixels[0][0][1][2].item<int>(), static_cast<int>((0.5f + 1) * 127.5f));  // c=2, w=1
  EXPECT_EQ(pixels[0][0][0][1].item<int>(), static_cast<int>((0.2f + 1) * 127.5f));  // c=1, w=0
}

TEST(Uint8ToSamples, MatchesImageDatasetsScalingForAllValues) {
  const torch::Tensor all = torch::arange(256, torch::kLong).to(torch::kByte).view({1, 16, 16, 1});
  const torch::Tensor samples = Uint8ToSamples(all);
  ASSERT_EQ(samples.scalar_type(), torch::kFloat);
  ASSERT_EQ(samples.sizes(), (std::vector<int64_t>{1, 1, 16, 16}));
  for (int v = 0; v < 256; ++v) {
    // numpy: arr.astype(np.float32) / 127.5 - 1, in float32.
    EXPECT_EQ(samples.view(-1)[v].item<float>(), static_cast<float>(v) / 127.5f - 1.0f) << v;
  }
  // Truncation makes the round trip lossy for some values: never up, at most one down.
  const torch::Tensor back = SamplesToUint8(samples).to(torch::kLong);
  const torch::Tensor difference = all.to(torch::kLong) - back;
  EXPECT_GE(difference.min().item<int64_t>(), 0);
  EXPECT_LE(difference.max().item<int64_t>(), 1);
}

// ---- PNG ---------------------------------------------------------------------------------------

TEST(Png, RoundTripsGreyRgbRgbaAtOddSizes) {
  TempDir dir;
  uint64_t seed = 1;
  for (int64_t channels : {1, 3, 4}) {
    for (auto [height, width] :
         std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {7, 13}, {3, 1}, {64, 33}}) {
      SCOPED_TRACE(absl::StrCat(height, "x", width, "x", channels));
      const torch::Tensor image = RandomBytes({height, width, channels}, seed++);
      absl::StatusOr<std::string> png = EncodePng(image);
      ASSERT_TRUE(png.ok()) << png.status();
      absl::StatusOr<torch::Tensor> decoded = DecodePng(*png);
      ASSERT_TRUE(decoded.ok()) << decoded.status();
      EXPECT_TRUE(torch::equal(*decoded, image));
      const std::string path = dir.Path(absl::StrCat("image_", seed, ".png"));
      ASSERT_TRUE(WritePng(path, image).ok());
      absl::StatusOr<torch::Tensor> read = ReadPng(path);
      ASSERT_TRUE(read.ok()) << read.status();
      EXPECT_TRUE(torch::equal(*read, image));
    }
  }
}

TEST(Png, EncodesNonContiguousInput) {
  const torch::Tensor image = RandomBytes({5, 6, 3}, 9).transpose(0, 1);  // [6 x 5 x 3] view
  absl::StatusOr<std::string> png = EncodePng(image);
  ASSERT_TRUE(png.ok()) << png.status();
  absl::StatusOr<torch::Tensor> decoded = DecodePng(*png);
  ASSERT_TRUE(decoded.ok());
  EXPECT_TRUE(torch::equal(*decoded, image));
}

TEST(Png, EncodeRejectsWhatPngCannotHold) {
  EXPECT_THAT(Message(EncodePng(torch::zeros({2, 2, 3})).status()), HasSubstr("uint8"));
  EXPECT_THAT(Message(EncodePng(torch::zeros({2, 2, 2}, torch::kByte)).status()),
              HasSubstr("C = 2"));
  EXPECT_FALSE(EncodePng(torch::zeros({2, 2}, torch::kByte)).ok());
  EXPECT_FALSE(EncodePng(torch::zeros({0, 2, 1}, torch::kByte)).ok());
  EXPECT_FALSE(EncodePng(torch::Tensor()).ok());
  EXPECT_THAT(Message(WritePng("/nonexistent-dir/x.png", torch::zeros({1, 1, 1}, torch::kByte))),
              HasSubstr("/nonexistent-dir/x.png"));
}

TEST(Png, DecodeErrorsNameTheSource) {
  // formats_test.cc covers every way a PNG can be broken; here, that the errors arrive named.
  absl::StatusOr<std::string> png = EncodePng(RandomBytes({9, 11, 3}, 5));
  ASSERT_TRUE(png.ok());
  for (size_t length : {size_t{0}, size_t{20}, png->size() - 1}) {
    absl::StatusOr<torch::Tensor> decoded = DecodePng(png->substr(0, length), "cut.png");
    ASSERT_FALSE(decoded.ok()) << length;
    EXPECT_THAT(Message(decoded.status()), HasSubstr("cut.png"));
  }
  EXPECT_THAT(Message(DecodePng("GIF89a........", "x.gif").status()),
              HasSubstr("x.gif: not a PNG file"));
  EXPECT_THAT(Message(DecodePng("GIF89a........").status()), HasSubstr("PNG: not a PNG file"));
  EXPECT_THAT(Message(ReadPng("/nonexistent/y.png").status()), HasSubstr("/nonexistent/y.png"));
}

// ---- Grids --------------------------------------------------------------------------------------

TEST(MakeGrid, TilesAsFormatsMakeGridDoes) {
  // formats_test.cc checks where formats::MakeGrid puts tiles (torchvision's layout); the tensor
  // version shares its geometry and must agree with it pixel for pixel.
  const torch::Tensor images = RandomBytes({5, 2, 3, 3}, 41);
  std::vector<formats::Image> tiles;
  for (int64_t i = 0; i < images.size(0); ++i) {
    const torch::Tensor tile = images[i].contiguous();
    tiles.push_back({2, 3, 3, std::string(static_cast<const char*>(tile.data_ptr()), 18)});
  }
  for (auto [columns, padding, pad_value] : std::vector<std::tuple<int64_t, int64_t, int>>{
           {3, 1, 7}, {8, 2, 255}, {5, 0, 0}, {1, 3, 9}}) {
    SCOPED_TRACE(absl::StrCat(columns, " columns, padding ", padding));
    const formats::Image expected = formats::MakeGrid(tiles, columns, padding, pad_value);
    const torch::Tensor grid = MakeGrid(images, columns, padding, pad_value);
    ASSERT_EQ(grid.sizes(),
              (std::vector<int64_t>{expected.height, expected.width, expected.channels}));
    ASSERT_TRUE(grid.is_contiguous());
    EXPECT_EQ(std::string(static_cast<const char*>(grid.data_ptr()), grid.numel()),
              expected.pixels);
  }
  // A broadcast view tiles like its values; no images leave just the padding, in C channels.
  const torch::Tensor view = images.narrow(0, 0, 1).expand({4, 2, 3, 3});
  EXPECT_TRUE(torch::equal(MakeGrid(view, 2), MakeGrid(view.contiguous(), 2)));
  EXPECT_TRUE(torch::equal(MakeGrid(images.narrow(0, 0, 0), 4, 2, 5),
                           torch::full({2, 2, 3}, 5, torch::kByte)));
  EXPECT_THROW(MakeGrid(images, 0), c10::Error);
  EXPECT_THROW(MakeGrid(images, 2, -1), c10::Error);
  EXPECT_THROW(MakeGrid(images.to(torch::kFloat), 2), c10::Error);
}

// ---- .npy --------------------------------------------------------------------------------------

TEST(Npy, RoundTripsEveryDtype) {
  torch::Generator generator = at::detail::createCPUGenerator(3);
  const std::vector<torch::ScalarType> types = {
      torch::kHalf,  torch::kFloat,        torch::kDouble,       torch::kChar,
      torch::kShort, torch::kInt,          torch::kLong,         torch::kByte,
      torch::kBool,  torch::kComplexFloat, torch::kComplexDouble};
  for (torch::ScalarType type : types) {
    SCOPED_TRACE(c10::toString(type));
    for (const std::vector<int64_t>& shape :
         std::vector<std::vector<int64_t>>{{}, {0}, {5}, {2, 3, 4}, {1, 1, 3, 1}}) {
      torch::Tensor tensor;
      if (c10::isComplexType(type)) {
        tensor = torch::complex(torch::randn(shape, generator, torch::kDouble),
                                torch::randn(shape, generator, torch::kDouble))
                     .to(type);
      } else if (c10::isFloatingType(type)) {
        tensor = (torch::randn(shape, generator, torch::kDouble) * 100).to(type);
      } else if (type == torch::kBool) {
        tensor = torch::randint(0, 2, shape, generator, torch::kLong).to(type);
      } else {
        tensor = torch::randint(-128, 128, shape, generator, torch::kLong).to(type);
        if (type == torch::kLong) tensor = tensor * (int64_t{1} << 50);
      }
      absl::StatusOr<torch::Tensor> parsed = ParseNpy(SerializeNpy(tensor), "mem");
      ASSERT_TRUE(parsed.ok()) << parsed.status();
      EXPECT_EQ(parsed->scalar_type(), type);
      EXPECT_EQ(parsed->sizes(), tensor.sizes());
      EXPECT_TRUE(torch::equal(*parsed, tensor));
    }
  }
  // A transposed view is written in its logical (C) order.
  const torch::Tensor transposed = torch::arange(6, torch::kInt).view({2, 3}).t();
  absl::StatusOr<torch::Tensor> parsed = ParseNpy(SerializeNpy(transposed), "mem");
  ASSERT_TRUE(parsed.ok());
  EXPECT_TRUE(torch::equal(*parsed, transposed));
  // bfloat16 has no numpy dtype: written as float32, exactly.
  const torch::Tensor bf16 = torch::tensor({1.5f, -3.25f}).to(torch::kBFloat16);
  parsed = ParseNpy(SerializeNpy(bf16), "mem");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(*parsed, bf16.to(torch::kFloat)));
}

TEST(Npy, TensorsAreWrittenAsTheirNumpyTypes) {
  // formats_test.cc checks formats::SerializeNpy byte for byte against numpy's np.save; here, that
  // each tensor dtype is written as its numpy type, with the tensor's values in C order.
  const std::vector<std::pair<torch::ScalarType, formats::NpyType>> types = {
      {torch::kHalf, {'f', 2}},          {torch::kFloat, {'f', 4}},
      {torch::kDouble, {'f', 8}},        {torch::kChar, {'i', 1}},
      {torch::kShort, {'i', 2}},         {torch::kInt, {'i', 4}},
      {torch::kLong, {'i', 8}},          {torch::kByte, {'u', 1}},
      {torch::kBool, {'b', 1}},          {torch::kComplexFloat, {'c', 8}},
      {torch::kComplexDouble, {'c', 16}}};
  for (const auto& [type, npy_type] : types) {
    SCOPED_TRACE(c10::toString(type));
    const torch::Tensor view = torch::arange(6, torch::kDouble).view({3, 2}).t().to(type);
    const torch::Tensor values = view.contiguous();
    const std::string bytes(static_cast<const char*>(values.data_ptr()),
                            values.numel() * values.element_size());
    EXPECT_EQ(SerializeNpy(view), formats::SerializeNpy(npy_type, {2, 3}, bytes));
  }
}

TEST(Npy, WidenedAndComplexTypesBecomeTensors) {
  absl::StatusOr<torch::Tensor> parsed =
      ParseNpy(formats::SerializeNpy({'u', 2}, {2}, Bytes({0xff, 0xff, 0x02, 0x01})), "u2");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->scalar_type(), torch::kInt);
  EXPECT_TRUE(torch::equal(*parsed, torch::tensor({65535, 258}, torch::kInt)));
  parsed = ParseNpy(formats::SerializeNpy({'u', 4}, {1}, Bytes({0xff, 0xff, 0xff, 0xff})), "u4");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->scalar_type(), torch::kLong);
  EXPECT_EQ(parsed->item<int64_t>(), 4294967295LL);
  const float parts[] = {1.0f, -2.0f};
  parsed = ParseNpy(
      formats::SerializeNpy({'c', 8}, {1}, std::string(reinterpret_cast<const char*>(parts), 8)),
      "c8");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->item<c10::complex<float>>(), c10::complex<float>(1.0f, -2.0f));
  parsed = ParseNpy(formats::SerializeNpy({'b', 1}, {3}, Bytes({0, 1, 1})), "b1");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(torch::equal(*parsed, torch::tensor({false, true, true})));
  EXPECT_THAT(Message(ParseNpy("PK\x03\x04", "zip.npy").status()),
              HasSubstr("zip.npy: not a .npy file"));
}

TEST(Npy, WritesAndReadsFiles) {
  TempDir dir;
  const torch::Tensor tensor = torch::randn({3, 5}, at::detail::createCPUGenerator(4));
  ASSERT_TRUE(WriteNpy(dir.Path("a.npy"), tensor).ok());
  absl::StatusOr<torch::Tensor> read = ReadNpy(dir.Path("a.npy"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(torch::equal(*read, tensor));
  const absl::Status missing = ReadNpy(dir.Path("missing.npy")).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(missing), HasSubstr("missing.npy"));
  EXPECT_THAT(Message(ReadNpy(dir.path()).status()), HasSubstr("is a directory"));
}

// ---- .npz --------------------------------------------------------------------------------------

TEST(Npz, SampleDumpLayoutRoundTrips) {
  TempDir dir;
  const torch::Tensor samples = RandomBytes({5, 8, 6, 3}, 12);
  const torch::Tensor labels = Longs({1, 0, 999, 4, 4});
  const std::string path = dir.Path("samples_5x8x6x3.npz");
  ASSERT_TRUE(
      WriteNpz(path, {{"arr_0", samples}, {"arr_1", labels}, {"extra", torch::ones({2})}}).ok());
  auto arrays = ReadNpz(path);
  ASSERT_TRUE(arrays.ok()) << arrays.status();
  ASSERT_EQ(arrays->size(), 3u);
  EXPECT_EQ((*arrays)[0].first, "arr_0");
  EXPECT_EQ((*arrays)[1].first, "arr_1");
  EXPECT_EQ((*arrays)[2].first, "extra");
  EXPECT_EQ((*arrays)[0].second.scalar_type(), torch::kByte);
  EXPECT_TRUE(torch::equal((*arrays)[0].second, samples));
  EXPECT_EQ((*arrays)[1].second.scalar_type(), torch::kLong);
  EXPECT_TRUE(torch::equal((*arrays)[1].second, labels));
  // The empty archive is valid too (np.savez with no arrays).
  ASSERT_TRUE(WriteNpz(dir.Path("empty.npz"), {}).ok());
  auto empty = ReadNpz(dir.Path("empty.npz"));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->empty());
}

TEST(Npz, WritesWhatFormatsSerializeNpzWrites) {
  // formats_test.cc checks formats::SerializeNpz byte for byte against numpy's np.savez.
  TempDir dir;
  const std::string path = dir.Path("dump.npz");
  const absl::Status status =
      WriteNpz(path, {{"arr_0", torch::arange(4, torch::kLong).to(torch::kByte).view({1, 2, 2, 1})},
                      {"arr_1", Longs({3})}});
  ASSERT_TRUE(status.ok()) << status;
  const formats::Array pixels{formats::DType::kUInt8, {1, 2, 2, 1}, Bytes({0, 1, 2, 3})};
  const formats::Array label{formats::DType::kInt64, {1}, Bytes({3, 0, 0, 0, 0, 0, 0, 0})};
  EXPECT_EQ(ReadRaw(path), formats::SerializeNpz({{"arr_0", pixels}, {"arr_1", label}}));
}

TEST(Npz, RoundTripsTypesArrayCannotHoldAndNamesTheFileInErrors) {
  TempDir dir;
  const std::string path = dir.Path("types.npz");
  const torch::Tensor complex =
      torch::complex(torch::tensor({1.0, -2.0}), torch::tensor({0.5, 3.0}))
          .to(torch::kComplexFloat);
  const torch::Tensor half = torch::tensor({1.5f, -65504.0f}).to(torch::kHalf);
  ASSERT_TRUE(WriteNpz(path, {{"complex", complex}, {"half", half}}).ok());
  auto arrays = ReadNpz(path);
  ASSERT_TRUE(arrays.ok()) << arrays.status();
  ASSERT_EQ(arrays->size(), 2u);
  EXPECT_TRUE(torch::equal((*arrays)[0].second, complex));
  EXPECT_TRUE(torch::equal((*arrays)[1].second, half));

  WriteRaw(dir.Path("text.npz"), "just some text that is not a zip archive at all");
  EXPECT_THAT(Message(ReadNpz(dir.Path("text.npz")).status()),
              HasSubstr(dir.Path("text.npz") + ": not a valid zip archive"));
  EXPECT_EQ(ReadNpz(dir.Path("missing.npz")).status().code(), absl::StatusCode::kNotFound);
}

TEST(Npz, WriteRejectsBadNames) {
  TempDir dir;
  EXPECT_THAT(Message(WriteNpz(dir.Path("a.npz"), {{"", torch::zeros({1})}})), HasSubstr("empty"));
  EXPECT_THAT(
      Message(WriteNpz(dir.Path("b.npz"), {{"x", torch::zeros({1})}, {"x", torch::zeros({1})}})),
      HasSubstr("repeats"));
  EXPECT_THAT(Message(WriteNpz("/nonexistent-dir/c.npz", {{"x", torch::zeros({1})}})),
              HasSubstr("/nonexistent-dir/c.npz"));
}

// ---- IDX ---------------------------------------------------------------------------------------

std::string Idx(uint32_t magic, const std::vector<uint32_t>& dims, const std::string& data) {
  std::string out;
  PutBig32(&out, magic);
  for (uint32_t dim : dims) PutBig32(&out, dim);
  return out + data;
}

// Three 2 x 4 images, image i filled with 10 * i + pixel index; labels 3, 0, 7.
std::string TestIdxPixels() {
  std::string pixels;
  for (int i = 0; i < 3; ++i) {
    for (int p = 0; p < 8; ++p) pixels.push_back(static_cast<char>(10 * i + p));
  }
  return pixels;
}
std::string TestLabels() { return Bytes({3, 0, 7}); }

void ExpectTestIdx(const ImageDataset& data) {
  ASSERT_EQ(data.images.sizes(), (std::vector<int64_t>{3, 1, 2, 4}));
  EXPECT_EQ(data.images.scalar_type(), torch::kByte);
  EXPECT_EQ(data.images[2][0][1][3].item<int>(), 27);
  EXPECT_TRUE(torch::equal(data.labels, Longs({3, 0, 7})));
  EXPECT_TRUE(data.has_labels);
}

TEST(Idx, LoadsRawAndGzippedFiles) {
  TempDir dir;
  const std::string images = Idx(0x803, {3, 2, 4}, TestIdxPixels());
  const std::string labels = Idx(0x801, {3}, TestLabels());
  WriteRaw(dir.Path("images"), images);
  WriteRaw(dir.Path("labels"), labels);
  WriteRaw(dir.Path("images.gz"), Deflate(images, 31));
  WriteRaw(dir.Path("labels.gz"), Deflate(labels, 31));
  // Two concatenated gzip members unpack as one file, as gzip -d does.
  WriteRaw(dir.Path("images2.gz"),
           Deflate(images.substr(0, 10), 31) + Deflate(images.substr(10), 31));
  for (auto [image_file, label_file] : std::vector<std::pair<std::string, std::string>>{
           {"images", "labels"}, {"images.gz", "labels.gz"}, {"images2.gz", "labels"}}) {
    SCOPED_TRACE(image_file);
    absl::StatusOr<ImageDataset> data = LoadIdx(dir.Path(image_file), dir.Path(label_file));
    ASSERT_TRUE(data.ok()) << data.status();
    ExpectTestIdx(*data);
    EXPECT_EQ(data->num_classes, 8);
    EXPECT_TRUE(data->class_names.empty());
  }
}

TEST(Idx, ErrorsNameTheFileAndTheProblem) {
  TempDir dir;
  const std::string images = Idx(0x803, {3, 2, 4}, TestIdxPixels());
  const std::string labels = Idx(0x801, {3}, TestLabels());
  WriteRaw(dir.Path("images"), images);
  WriteRaw(dir.Path("labels"), labels);
  auto error = [&](const std::string& image_bytes, const std::string& label_bytes) {
    WriteRaw(dir.Path("i"), image_bytes);
    WriteRaw(dir.Path("l"), label_bytes);
    absl::StatusOr<ImageDataset> data = LoadIdx(dir.Path("i"), dir.Path("l"));
    EXPECT_FALSE(data.ok());
    return data.ok() ? std::string("(no error)") : Message(data.status());
  };
  EXPECT_THAT(error(labels, labels),
              HasSubstr(dir.Path("i") +
                        ": magic 0x00000801 is not an IDX image file (expected 0x00000803)"));
  EXPECT_THAT(error(images, images), HasSubstr("is not an IDX label file (expected 0x00000801)"));
  EXPECT_THAT(error(Idx(0xd03, {3, 2, 4}, TestIdxPixels()), labels),
              HasSubstr("element type 0x0d is not unsigned byte"));
  EXPECT_THAT(
      error(images.substr(0, images.size() - 1), labels),
      HasSubstr(dir.Path("i") + ": truncated: the header declares 3x2x4 = 24 bytes but 23"));
  EXPECT_THAT(error(images + "x", labels), HasSubstr("1 bytes of trailing data"));
  EXPECT_THAT(error(images.substr(0, 9), labels), HasSubstr("truncated IDX header"));
  EXPECT_THAT(error(Idx(0x803, {0xffffffff, 0xffffffff, 0xffffffff}, ""), labels),
              HasSubstr("truncated"));
  EXPECT_THAT(error(images, Idx(0x801, {2}, Bytes({1, 2}))),
              HasSubstr(dir.Path("l") + ": 2 labels for the 3 images of " + dir.Path("i")));
  EXPECT_THAT(error(Idx(0x803, {0, 28, 28}, ""), Idx(0x801, {0}, "")), HasSubstr("no pixels"));
  const std::string gz = Deflate(images, 31);
  EXPECT_THAT(error(gz.substr(0, gz.size() - 6), labels), HasSubstr("truncated gzip"));
  std::string corrupt_gz = gz;
  corrupt_gz[gz.size() - 5] ^= 0x01;  // the CRC-32 in the gzip trailer
  EXPECT_THAT(error(corrupt_gz, labels), HasSubstr("corrupt gzip"));
  EXPECT_THAT(error(gz + "junk", labels), HasSubstr("trailing data after the gzip stream"));
  const absl::Status missing = LoadIdx(dir.Path("nope"), dir.Path("labels")).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(missing), HasSubstr(dir.Path("nope")));
  // Every truncation of the gzip file: an error, never a crash.
  for (size_t length = 0; length < gz.size(); ++length) error(gz.substr(0, length), labels);
}

TEST(LoadDataset, IdxDirectoryPicksSplitAndNames) {
  TempDir dir;
  const std::string fashion = dir.Path("My-Fashion-Set/x");  // creates the directory
  const std::string digits = dir.Path("digits/x");
  for (const std::string& root :
       {fs::path(fashion).parent_path().string(), fs::path(digits).parent_path().string()}) {
    WriteRaw(root + "/train-images-idx3-ubyte.gz",
             Deflate(Idx(0x803, {3, 2, 4}, TestIdxPixels()), 31));
    WriteRaw(root + "/train-labels-idx1-ubyte", Idx(0x801, {3}, TestLabels()));
    WriteRaw(root + "/t10k-images-idx3-ubyte", Idx(0x803, {1, 2, 4}, std::string(8, '\x05')));
    WriteRaw(root + "/t10k-labels-idx1-ubyte.gz", Deflate(Idx(0x801, {1}, Bytes({9})), 31));
  }
  const std::string fashion_dir = fs::path(fashion).parent_path().string();
  absl::StatusOr<ImageDataset> train = LoadDataset(fashion_dir + "/");
  ASSERT_TRUE(train.ok()) << train.status();
  ExpectTestIdx(*train);
  EXPECT_EQ(train->num_classes, 10);
  ASSERT_EQ(train->class_names.size(), 10u);
  EXPECT_EQ(train->class_names[0], "T-shirt/top");
  EXPECT_EQ(train->description, "fashion-mnist train, 3 images 1x2x4, 10 classes");
  absl::StatusOr<ImageDataset> test = LoadDataset(fashion_dir, "test");
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_EQ(test->images.size(0), 1);
  EXPECT_EQ(test->labels[0].item<int64_t>(), 9);
  EXPECT_EQ(test->description, "fashion-mnist test, 1 images 1x2x4, 10 classes");

  absl::StatusOr<ImageDataset> mnist = LoadDataset(fs::path(digits).parent_path().string());
  ASSERT_TRUE(mnist.ok()) << mnist.status();
  EXPECT_EQ(mnist->class_names[9], "9");
  EXPECT_THAT(mnist->description, HasSubstr("mnist train"));

  EXPECT_THAT(Message(LoadDataset(fashion_dir, "validation").status()),
              HasSubstr("split 'validation' is not one of train, test, t10k"));
  fs::remove(fashion_dir + "/t10k-labels-idx1-ubyte.gz");
  EXPECT_THAT(Message(LoadDataset(fashion_dir, "test").status()),
              HasSubstr("not t10k-labels-idx1-ubyte[.gz] for split 'test'"));
  WriteRaw(fashion_dir + "/train-labels-idx1-ubyte", Idx(0x801, {3}, Bytes({1, 12, 2})));
  EXPECT_THAT(Message(LoadDataset(fashion_dir).status()),
              HasSubstr("labels[1] = 12 is outside [0, 10) for Fashion-MNIST"));
  EXPECT_EQ(LoadDataset(dir.Path("absent")).status().code(), absl::StatusCode::kNotFound);
}

TEST(LoadDataset, RealFashionMnistTrainSet) {
  const std::string root = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(root + "/train-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << root << " is absent (Debian package dataset-fashion-mnist)";
  }
  absl::StatusOr<ImageDataset> data = LoadDataset(root, "train");
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->images.sizes(), (std::vector<int64_t>{60000, 1, 28, 28}));
  EXPECT_EQ(data->labels.sizes(), (std::vector<int64_t>{60000}));
  EXPECT_EQ(data->num_classes, 10);
  EXPECT_EQ(data->labels[0].item<int64_t>(), 9);
  EXPECT_EQ(data->class_names[9], "Ankle boot");
  EXPECT_EQ(data->description, "fashion-mnist train, 60000 images 1x28x28, 10 classes");
  // Fashion-MNIST is balanced: 6000 images of each class.
  EXPECT_TRUE(torch::equal(torch::bincount(data->labels), torch::full({10}, 6000, torch::kLong)));
}

// ---- Image folders and .npz datasets -----------------------------------------------------------

TEST(LoadDataset, ImageFolderWithTwoClasses) {
  TempDir dir;
  const torch::Tensor cat1 = RandomBytes({4, 5, 3}, 21);
  const torch::Tensor cat2 = RandomBytes({4, 5, 3}, 22);
  const torch::Tensor dog1 = RandomBytes({4, 5, 3}, 23);
  ASSERT_TRUE(WritePng(dir.Path("set/sub/dog_0001.png"), dog1).ok());
  ASSERT_TRUE(WritePng(dir.Path("set/cat_0002.png"), cat2).ok());
  ASSERT_TRUE(WritePng(dir.Path("set/cat_0001.PNG"), cat1).ok());
  WriteRaw(dir.Path("set/readme.txt"), "not an image");
  absl::StatusOr<ImageDataset> data = LoadDataset(dir.Path("set"));
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_EQ(data->images.sizes(), (std::vector<int64_t>{3, 3, 4, 5}));
  EXPECT_TRUE(torch::equal(data->images[0], cat1.permute({2, 0, 1})));
  EXPECT_TRUE(torch::equal(data->images[1], cat2.permute({2, 0, 1})));
  EXPECT_TRUE(torch::equal(data->images[2], dog1.permute({2, 0, 1})));
  EXPECT_TRUE(torch::equal(data->labels, Longs({0, 0, 1})));
  EXPECT_TRUE(data->has_labels);
  EXPECT_EQ(data->num_classes, 2);
  EXPECT_EQ(data->class_names, (std::vector<std::string>{"cat", "dog"}));
  EXPECT_THAT(data->description, HasSubstr("3 images 3x4x5, 2 classes"));

  // A size mismatch names the first file that differs.
  ASSERT_TRUE(WritePng(dir.Path("set/sub/dog_0002.png"), RandomBytes({4, 6, 3}, 24)).ok());
  ASSERT_TRUE(WritePng(dir.Path("set/sub/dog_0003.png"), RandomBytes({4, 7, 3}, 25)).ok());
  EXPECT_THAT(Message(LoadDataset(dir.Path("set")).status()),
              HasSubstr(dir.Path("set/sub/dog_0002.png") + ": is 3x4x6 (CxHxW) but"));
  fs::remove(dir.Path("set/sub/dog_0002.png"));
  fs::remove(dir.Path("set/sub/dog_0003.png"));
  ASSERT_TRUE(WritePng(dir.Path("set/sub/dog_0002.png"), RandomBytes({4, 5, 1}, 26)).ok());
  EXPECT_THAT(Message(LoadDataset(dir.Path("set")).status()),
              HasSubstr("dog_0002.png: is 1x4x5 (CxHxW)"));
  fs::remove(dir.Path("set/sub/dog_0002.png"));

  ASSERT_TRUE(WritePng(dir.Path("set/plain.png"), cat1).ok());
  EXPECT_THAT(Message(LoadDataset(dir.Path("set")).status()),
              HasSubstr(dir.Path("set/plain.png") + ": has no class prefix"));
  fs::remove(dir.Path("set/plain.png"));
  WriteRaw(dir.Path("set/photo_1.jpg"), "jpeg");
  EXPECT_THAT(Message(LoadDataset(dir.Path("set")).status()), HasSubstr("only PNG images"));
  fs::remove(dir.Path("set/photo_1.jpg"));
  WriteRaw(dir.Path("set/cat_0003.png"), "broken");
  EXPECT_THAT(Message(LoadDataset(dir.Path("set")).status()),
              HasSubstr(dir.Path("set/cat_0003.png") + ": not a PNG file"));
}

TEST(LoadDataset, UnlabelledAndEmptyImageFolders) {
  TempDir dir;
  ASSERT_TRUE(WritePng(dir.Path("plain/a.png"), RandomBytes({2, 2, 1}, 1)).ok());
  ASSERT_TRUE(WritePng(dir.Path("plain/b.png"), RandomBytes({2, 2, 1}, 2)).ok());
  absl::StatusOr<ImageDataset> data = LoadDataset(dir.Path("plain"));
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_FALSE(data->has_labels);
  EXPECT_EQ(data->num_classes, 0);
  EXPECT_TRUE(torch::equal(data->labels, torch::zeros({2}, torch::kLong)));
  EXPECT_THAT(data->description, HasSubstr("unlabelled"));
  fs::create_directories(dir.Path("empty/sub"));
  EXPECT_THAT(Message(LoadDataset(dir.Path("empty")).status()), HasSubstr("no .png images"));
}

TEST(LoadDataset, NpzSampleDumps) {
  TempDir dir;
  const torch::Tensor rgb = RandomBytes({4, 3, 2, 3}, 31);
  const torch::Tensor labels = torch::tensor({2, 0, 5, 1}, torch::kInt);
  ASSERT_TRUE(WriteNpz(dir.Path("rgb.npz"), {{"arr_0", rgb}, {"arr_1", labels}}).ok());
  absl::StatusOr<ImageDataset> data = LoadDataset(dir.Path("rgb.npz"));
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_TRUE(torch::equal(data->images, rgb.permute({0, 3, 1, 2})));
  EXPECT_TRUE(data->images.is_contiguous());
  EXPECT_TRUE(torch::equal(data->labels, labels.to(torch::kLong)));
  EXPECT_EQ(data->num_classes, 6);
  EXPECT_TRUE(data->has_labels);

  const torch::Tensor grey = RandomBytes({2, 3, 4}, 32);
  ASSERT_TRUE(WriteNpz(dir.Path("grey.npz"), {{"arr_0", grey}}).ok());
  data = LoadDataset(dir.Path("grey.npz"));
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_TRUE(torch::equal(data->images, grey.unsqueeze(1)));
  EXPECT_FALSE(data->has_labels);

  auto error = [&](const std::vector<std::pair<std::string, torch::Tensor>>& arrays) {
    EXPECT_TRUE(WriteNpz(dir.Path("bad.npz"), arrays).ok());
    return Message(LoadDataset(dir.Path("bad.npz")).status());
  };
  EXPECT_THAT(error({{"images", grey}}), HasSubstr("no arr_0 (images) array; it holds [images]"));
  EXPECT_THAT(error({{"arr_0", grey.to(torch::kFloat)}}), HasSubstr("expected uint8"));
  EXPECT_THAT(error({{"arr_0", grey}, {"arr_1", torch::tensor({1})}}),
              HasSubstr("expected integer labels [2]"));
  EXPECT_THAT(error({{"arr_0", grey}, {"arr_1", torch::tensor({1, -3})}}),
              HasSubstr("arr_1[1] = -3 is negative"));
  WriteRaw(dir.Path("text.npz"), "hello");
  EXPECT_THAT(Message(LoadDataset(dir.Path("text.npz")).status()),
              HasSubstr("--data takes a directory"));
}

// ---- Batches -----------------------------------------------------------------------------------

TEST(SampleBatch, ShapeRangeLabelsAndSeededDeterminism) {
  // Image i is a left-to-right ramp offset by 16 i, labelled i % 3: every batch element can be
  // traced back to its source image and to whether it was flipped.
  const int64_t count = 10;
  ImageDataset data;
  data.images = (torch::arange(count, torch::kLong).view({count, 1, 1, 1}) * 16 +
                 torch::arange(6, torch::kLong).view({1, 1, 1, 6}))
                    .expand({count, 2, 3, 6})
                    .to(torch::kByte)
                    .contiguous();
  data.labels = torch::arange(count, torch::kLong) % 3;
  data.has_labels = true;
  data.num_classes = 3;

  torch::Generator first = at::detail::createCPUGenerator(1234);
  torch::Generator second = at::detail::createCPUGenerator(1234);
  const Batch a = SampleBatch(data, 64, first, /*random_flip=*/true);
  const Batch b = SampleBatch(data, 64, second, /*random_flip=*/true);
  ASSERT_EQ(a.images.sizes(), (std::vector<int64_t>{64, 2, 3, 6}));
  EXPECT_EQ(a.images.scalar_type(), torch::kFloat);
  EXPECT_EQ(a.labels.sizes(), (std::vector<int64_t>{64}));
  EXPECT_EQ(a.labels.scalar_type(), torch::kLong);
  EXPECT_GE(a.images.min().item<float>(), -1.0f);
  EXPECT_LE(a.images.max().item<float>(), 1.0f);
  EXPECT_TRUE(torch::equal(a.images, b.images));
  EXPECT_TRUE(torch::equal(a.labels, b.labels));

  int flipped = 0;
  for (int64_t i = 0; i < 64; ++i) {
    const torch::Tensor pixels = SamplesToUint8(a.images.narrow(0, i, 1)).to(torch::kLong);
    const bool is_flipped = pixels[0][0][0][0].item<int64_t>() > pixels[0][0][5][0].item<int64_t>();
    const int64_t source = pixels.max().item<int64_t>() / 16;  // 16 i + 5, maybe one less
    flipped += is_flipped;
    // Scaling back may truncate one level (see Uint8ToSamples' test); compare at that tolerance.
    torch::Tensor expected = data.images[source].permute({1, 2, 0}).to(torch::kLong);
    if (is_flipped) expected = expected.flip({1});
    EXPECT_LE((pixels[0] - expected).abs().max().item<int64_t>(), 1) << i;
    EXPECT_EQ(a.labels[i].item<int64_t>(), source % 3) << i;
  }
  EXPECT_GT(flipped, 10);
  EXPECT_LT(flipped, 54);

  torch::Generator other = at::detail::createCPUGenerator(99);
  EXPECT_FALSE(torch::equal(SampleBatch(data, 64, other, true).images, a.images));
  torch::Generator no_flip = at::detail::createCPUGenerator(7);
  const Batch plain = SampleBatch(data, 32, no_flip, /*random_flip=*/false);
  const torch::Tensor plain_pixels = SamplesToUint8(plain.images).to(torch::kLong);
  // Without flips every ramp rises left to right.
  EXPECT_TRUE((plain_pixels.select(2, 5) > plain_pixels.select(2, 0)).all().item<bool>());
  EXPECT_EQ(SampleBatch(data, 0, no_flip, true).images.size(0), 0);
}

// ---- FindBundledModelDir ------------------------------------------------------------------------

// Sets an environment variable for one test and restores it after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_, old_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(FindBundledModelDir, PrefersGdBundledModelWhenItHoldsTheFile) {
  TempDir dir;
  WriteRaw(dir.Path("model.json"), "{}");
  ScopedEnv env("GD_BUNDLED_MODEL", dir.path());
  EXPECT_EQ(FindBundledModelDir("model.json"), fs::weakly_canonical(dir.path()).string());
}

TEST(FindBundledModelDir, SkipsAFolderWithoutTheFileAndFindsTheSourceTreesModel) {
  TempDir dir;
  WriteRaw(dir.Path("model.json"), "{}");
  ScopedEnv env("GD_BUNDLED_MODEL", dir.path());
  // The test binary lives in build/bin, so the source tree's models/fashion-mnist is found next.
  const std::string found = FindBundledModelDir("evaluator.json");
  ASSERT_FALSE(found.empty());
  EXPECT_NE(found, fs::weakly_canonical(dir.path()).string());
  EXPECT_TRUE(fs::exists(fs::path(found) / "evaluator.json")) << found;
  EXPECT_EQ(fs::path(found).filename(), "fashion-mnist");
  EXPECT_EQ(FindBundledModelDir("no-such-file.json"), "");
}

}  // namespace
}  // namespace gd
