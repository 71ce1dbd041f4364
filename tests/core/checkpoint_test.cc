// Tests for core/nn/checkpoint: the restricted torch.save reader against the parity fixtures and
// the files of scripts/make_test_checkpoints.py (expected values from PyTorch itself), refusal of
// hostile pickles and legacy files, truncated and corrupt inputs, safetensors, and strict loading.
#include "core/nn/checkpoint.h"

#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "tests/testing/testing.h"

namespace gd {
namespace {

namespace fs = std::filesystem;

::testing::AssertionResult Contains(absl::string_view text, absl::string_view part) {
  if (absl::StrContains(text, part)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" does not contain \"" << part << "\"";
}

// The repository and the fixtures, as every suite finds them (tests/testing).
using testing::FixturesDir;
using testing::SourceDir;

std::string TestDataPath(const std::string& name) {
  return SourceDir() + "/tests/data/checkpoints/" + name;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// data.pkl and the data/<key> records of a torch.save zip.
struct TorchArchive {
  std::string pickle;
  std::vector<std::pair<std::string, std::string>> storages;  // key -> raw bytes
};

TorchArchive ReadArchive(const std::string& path) {
  caffe2::serialize::PyTorchStreamReader reader(path);
  TorchArchive archive;
  auto record_bytes = [&reader](const std::string& name) {
    auto [data, size] = reader.getRecord(name);
    return std::string(static_cast<const char*>(data.get()), size);
  };
  archive.pickle = record_bytes("data.pkl");
  for (const std::string& name : reader.getAllRecords()) {
    if (absl::StartsWith(name, "data/")) {
      archive.storages.emplace_back(name.substr(5), record_bytes(name));
    }
  }
  return archive;
}

void WriteArchive(const std::string& path, const std::string& pickle,
                  const std::vector<std::pair<std::string, std::string>>& storages,
                  const std::string& byteorder = "") {
  caffe2::serialize::PyTorchStreamWriter writer(path);
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  if (!byteorder.empty()) writer.writeRecord("byteorder", byteorder.data(), byteorder.size());
  for (const auto& [key, bytes] : storages) {
    writer.writeRecord("data/" + key, bytes.data(), bytes.size());
  }
  writer.writeEndOfFile();
}

double SumAsDouble(const torch::Tensor& tensor) {
  return tensor.to(torch::kFloat64).sum().item<double>();
}

const torch::Tensor* Find(const StateDict& state, const std::string& name) {
  for (const auto& [key, tensor] : state) {
    if (key == name) return &tensor;
  }
  return nullptr;
}

// Each test gets a fresh scratch directory.
class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = absl::StrCat("checkpoint_test_", ::getpid(), "_", info->test_suite_name(),
                                    "_", info->name());
    std::replace(name.begin(), name.end(), '/', '_');
    scratch_dir_ = fs::path(::testing::TempDir()) / name;
    fs::remove_all(scratch_dir_);
    fs::create_directories(scratch_dir_);
  }
  void TearDown() override { fs::remove_all(scratch_dir_); }

  std::string Scratch(const std::string& name) const { return (scratch_dir_ / name).string(); }

  // A new path on every call, for loops that write many variants: rewriting one file in place
  // makes ext4 flush it to disk at every close, which is slow.
  std::string FreshScratch(const std::string& name) {
    return Scratch(absl::StrCat(fresh_files_++, "_", name));
  }

  fs::path scratch_dir_;
  int fresh_files_ = 0;
};

// ---------------------------------------------------------------------------------------------
// The parity fixtures: state_dicts that LibTorch's pickle_load cannot read. Expected figures were
// computed once by Debian's PyTorch 1.13 (torch.load) from the same files.

class ParityFixtureTest : public CheckpointTest {
 protected:
  std::string Fixture(const std::string& name) {
    const std::string path = FixturesDir() + "/parity-64/" + name;
    if (!fs::exists(path)) return "";
    return path;
  }
};

TEST_F(ParityFixtureTest, ReadsModelStateDict) {
  const std::string path = Fixture("model.pt");
  if (path.empty()) GTEST_SKIP() << "parity fixtures not found under " << FixturesDir();
  absl::StatusOr<StateDict> state = ReadTorchCheckpoint(path);
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_EQ(state->size(), 275u);
  EXPECT_EQ(state->front().first, "time_embed.0.weight");
  EXPECT_EQ((*state)[1].first, "time_embed.0.bias");
  EXPECT_EQ((*state)[100].first, "middle_block.0.emb_layers.1.bias");
  EXPECT_EQ(state->back().first, "out.2.bias");

  const torch::Tensor& first = state->front().second;
  EXPECT_EQ(first.sizes(), torch::IntArrayRef({128, 32}));
  EXPECT_EQ(first.scalar_type(), torch::kFloat32);
  EXPECT_NEAR(SumAsDouble(first), -14.005047471116995, 1e-9);
  EXPECT_EQ(first.flatten()[0].item<float>(), -0.019749239087104797f);
  EXPECT_EQ(first.flatten()[1].item<float>(), -0.08778555691242218f);
  EXPECT_EQ(first.flatten()[-1].item<float>(), -0.04867592453956604f);

  const torch::Tensor* out_weight = Find(*state, "out.2.weight");
  ASSERT_NE(out_weight, nullptr);
  EXPECT_EQ(out_weight->sizes(), torch::IntArrayRef({6, 32, 3, 3}));
  EXPECT_NEAR(SumAsDouble(*out_weight), -24.509268900728785, 1e-9);
  EXPECT_EQ(out_weight->flatten()[0].item<float>(), 0.3677089214324951f);

  const torch::Tensor* in_layers = Find(*state, "input_blocks.1.0.in_layers.2.weight");
  ASSERT_NE(in_layers, nullptr);
  EXPECT_EQ(in_layers->sizes(), torch::IntArrayRef({32, 32, 3, 3}));
  EXPECT_NEAR(SumAsDouble((*state)[100].second), -0.3963193456438603, 1e-9);

  int64_t parameters = 0;
  double abs_sum = 0;
  for (const auto& [name, tensor] : *state) {
    EXPECT_TRUE(tensor.is_contiguous()) << name;
    EXPECT_FALSE(tensor.requires_grad()) << name;
    parameters += tensor.numel();
    abs_sum += tensor.to(torch::kFloat64).abs().sum().item<double>();
  }
  EXPECT_EQ(parameters, 4602662);
  EXPECT_NEAR(abs_sum, 168114.0692838129, 1e-6);
}

TEST_F(ParityFixtureTest, ReadsClassifierStateDict) {
  const std::string path = Fixture("classifier.pt");
  if (path.empty()) GTEST_SKIP() << "parity fixtures not found under " << FixturesDir();
  absl::StatusOr<StateDict> state = ReadCheckpoint(path);
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_EQ(state->size(), 133u);
  EXPECT_EQ(state->back().first, "out.2.c_proj.bias");
  const torch::Tensor* proj = Find(*state, "out.2.c_proj.weight");
  ASSERT_NE(proj, nullptr);
  EXPECT_EQ(proj->sizes(), torch::IntArrayRef({1000, 256, 1}));
  EXPECT_NEAR(SumAsDouble(*proj), 2326.813923447867, 1e-8);
  EXPECT_EQ(proj->flatten()[0].item<float>(), 2.076805353164673f);
  EXPECT_EQ(proj->flatten()[2].item<float>(), 5.15929651260376f);
  EXPECT_NEAR(SumAsDouble(state->back().second), 155.60200328804785, 1e-9);
  const torch::Tensor* norm = Find(*state, "middle_block.0.in_layers.0.weight");
  ASSERT_NE(norm, nullptr);
  EXPECT_NEAR(SumAsDouble(*norm), 251.60494953393936, 1e-9);
  int64_t parameters = 0;
  double abs_sum = 0;
  for (const auto& entry : *state) {
    parameters += entry.second.numel();
    abs_sum += entry.second.to(torch::kFloat64).abs().sum().item<double>();
  }
  EXPECT_EQ(parameters, 7450408);
  EXPECT_NEAR(abs_sum, 972531.2909464969, 1e-5);
}

TEST_F(ParityFixtureTest, ReadsPlainDictWithLongAndDoubleStorages) {
  const std::string path = Fixture("tensors.pt");
  if (path.empty()) GTEST_SKIP() << "parity fixtures not found under " << FixturesDir();
  absl::StatusOr<StateDict> state = ReadTorchCheckpoint(path);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->size(), 38u);
  const torch::Tensor* betas = Find(*state, "betas_linear_1000");
  ASSERT_NE(betas, nullptr);
  EXPECT_EQ(betas->scalar_type(), torch::kFloat64);
  EXPECT_EQ(betas->sizes(), torch::IntArrayRef({1000}));
  EXPECT_EQ((*betas)[0].item<double>(), 0.0001);
  EXPECT_EQ((*betas)[999].item<double>(), 0.02);
  const torch::Tensor* t = Find(*state, "t");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->scalar_type(), torch::kInt64);
  EXPECT_EQ((*t)[0].item<int64_t>(), 911);
  EXPECT_EQ((*t)[1].item<int64_t>(), 31);
}

// Truncating the archive anywhere (in a local header, in data.pkl, in a storage, in the central
// directory or its end record) is an error, never a crash.
TEST_F(ParityFixtureTest, TruncatedModelFailsCleanly) {
  const std::string path = Fixture("model.pt");
  if (path.empty()) GTEST_SKIP() << "parity fixtures not found under " << FixturesDir();
  const std::string bytes = ReadBytes(path);
  const size_t end_record = bytes.rfind(std::string("PK\x05\x06", 4));
  ASSERT_NE(end_record, std::string::npos);
  uint32_t directory = 0;  // offset of the central directory, from the end record
  for (int i = 3; i >= 0; --i) {
    directory = (directory << 8) | static_cast<uint8_t>(bytes[end_record + 16 + i]);
  }
  ASSERT_LT(directory, end_record);
  const std::vector<size_t> lengths = {0,
                                       1,
                                       3,
                                       4,
                                       30,
                                       200,
                                       20000,
                                       bytes.size() / 2,
                                       directory,
                                       directory + 100,
                                       end_record - 1,
                                       end_record + 10,
                                       bytes.size() - 1};
  for (size_t length : lengths) {
    const std::string truncated = FreshScratch("model.pt");
    WriteBytes(truncated, bytes.substr(0, length));
    absl::StatusOr<StateDict> state = ReadCheckpoint(truncated);
    EXPECT_FALSE(state.ok()) << "truncated at " << length;
    state = ReadTorchCheckpoint(truncated);
    EXPECT_FALSE(state.ok()) << "truncated at " << length;
    fs::remove(truncated);
  }
}

// ---------------------------------------------------------------------------------------------
// Files written by scripts/make_test_checkpoints.py, against the exact values PyTorch saved.

nlohmann::ordered_json ExpectedValues() {
  std::ifstream in(TestDataPath("expected.json"));
  return nlohmann::ordered_json::parse(in, /*cb=*/nullptr, /*allow_exceptions=*/false);
}

const std::map<std::string, torch::ScalarType>& DtypesByName() {
  static const auto* dtypes = new std::map<std::string, torch::ScalarType>{
      {"float64", torch::kFloat64},   {"float32", torch::kFloat32}, {"float16", torch::kFloat16},
      {"bfloat16", torch::kBFloat16}, {"int64", torch::kInt64},     {"int32", torch::kInt32},
      {"int16", torch::kInt16},       {"int8", torch::kInt8},       {"uint8", torch::kUInt8},
      {"bool", torch::kBool}};
  return *dtypes;
}

class ExpectedValuesTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ExpectedValuesTest, MatchesPyTorchExactly) {
  const std::string file = GetParam();
  const nlohmann::ordered_json all = ExpectedValues();
  ASSERT_FALSE(all.is_discarded()) << "cannot parse " << TestDataPath("expected.json");
  ASSERT_TRUE(all.contains(file)) << file;
  const nlohmann::ordered_json& expected = all[file];

  absl::StatusOr<StateDict> state = ReadCheckpoint(TestDataPath(file));
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_EQ(state->size(), expected.size());
  size_t index = 0;
  for (const auto& [name, info] : expected.items()) {
    SCOPED_TRACE(name);
    const auto& [key, tensor] = (*state)[index++];
    EXPECT_EQ(key, name);
    EXPECT_EQ(tensor.scalar_type(), DtypesByName().at(info["dtype"].get<std::string>()));
    EXPECT_EQ(tensor.sizes().vec(), info["shape"].get<std::vector<int64_t>>());
    EXPECT_TRUE(tensor.is_contiguous());
    const auto& values = info["values"];
    ASSERT_EQ(static_cast<size_t>(tensor.numel()), values.size());
    if (tensor.is_floating_point()) {
      const torch::Tensor as_double = tensor.to(torch::kFloat64).contiguous();
      for (size_t i = 0; i < values.size(); ++i) {
        EXPECT_EQ(as_double.data_ptr<double>()[i], values[i].get<double>()) << "element " << i;
      }
    } else {
      const torch::Tensor as_long = tensor.to(torch::kInt64).contiguous();
      for (size_t i = 0; i < values.size(); ++i) {
        EXPECT_EQ(as_long.data_ptr<int64_t>()[i], values[i].get<int64_t>()) << "element " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(TestFiles, ExpectedValuesTest,
                         ::testing::Values("fp16.pt", "bf16.pt", "shared_storage.pt",
                                           "parameter.pt", "parameter_with_state.pt",
                                           "protocol4.pt", "opcodes.pt", "reference.safetensors"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '.', '_');
                           return name;
                         });

// Views of one storage come back as separate tensors: writing one leaves the others alone.
TEST(TorchCheckpointTest, SharedStorageViewsDoNotAlias) {
  for (const std::string file : {"shared_storage.pt", "opcodes.pt"}) {
    SCOPED_TRACE(file);
    absl::StatusOr<StateDict> state = ReadTorchCheckpoint(TestDataPath(file));
    ASSERT_TRUE(state.ok()) << state.status();
    std::vector<torch::Tensor> before;
    for (const auto& entry : *state) before.push_back(entry.second.clone());
    (*state)[0].second.fill_(1234);
    for (size_t i = 1; i < state->size(); ++i) {
      EXPECT_TRUE(torch::equal((*state)[i].second, before[i])) << (*state)[i].first;
    }
  }
}

TEST(TorchCheckpointTest, RefusesForbiddenGlobalNamingIt) {
  absl::StatusOr<StateDict> state = ReadTorchCheckpoint(TestDataPath("forbidden_global.pt"));
  ASSERT_FALSE(state.ok());
  EXPECT_EQ(state.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(state.status().message(), "refusing pickle global \"os system\""));
  EXPECT_TRUE(Contains(state.status().message(), "forbidden_global.pt"));

  state = ReadCheckpoint(TestDataPath("forbidden_stack_global.pt"));
  ASSERT_FALSE(state.ok());
  EXPECT_EQ(state.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(state.status().message(), "refusing pickle global \"builtins eval\""));
}

TEST(TorchCheckpointTest, RefusesLegacyFormatClearly) {
  for (auto* read : {&ReadCheckpoint, &ReadTorchCheckpoint}) {
    absl::StatusOr<StateDict> state = read(TestDataPath("legacy.pt"));
    ASSERT_FALSE(state.ok());
    EXPECT_EQ(state.status().code(), absl::StatusCode::kUnimplemented);
    EXPECT_TRUE(Contains(state.status().message(), "legacy torch.save format"));
    EXPECT_TRUE(Contains(state.status().message(), "PyTorch >= 1.6"));
  }
}

TEST(TorchCheckpointTest, RejectsPicklesThatAreNotFlatStateDicts) {
  absl::StatusOr<StateDict> state = ReadTorchCheckpoint(TestDataPath("list.pt"));
  ASSERT_FALSE(state.ok());
  EXPECT_TRUE(Contains(state.status().message(), "is a list, not a state_dict"));
  state = ReadTorchCheckpoint(TestDataPath("nested.pt"));
  ASSERT_FALSE(state.ok());
  EXPECT_TRUE(Contains(state.status().message(), "entry \"model\" is a dict"));
}

TEST(TorchCheckpointTest, MissingFileIsNotFound) {
  absl::StatusOr<StateDict> state = ReadCheckpoint(TestDataPath("no_such_file.pt"));
  ASSERT_FALSE(state.ok());
  EXPECT_EQ(state.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(state.status().message(), "no_such_file.pt"));
}

// ReadCheckpoint goes by content: a torch file named .safetensors and the reverse still load.
TEST_F(CheckpointTest, ReadCheckpointIgnoresTheExtension) {
  const std::string torch_named_safetensors = Scratch("fp16.safetensors");
  const std::string safetensors_named_pt = Scratch("reference.pt");
  WriteBytes(torch_named_safetensors, ReadBytes(TestDataPath("fp16.pt")));
  WriteBytes(safetensors_named_pt, ReadBytes(TestDataPath("reference.safetensors")));
  absl::StatusOr<StateDict> torch_state = ReadCheckpoint(torch_named_safetensors);
  ASSERT_TRUE(torch_state.ok()) << torch_state.status();
  EXPECT_EQ(torch_state->front().first, "0.weight");
  absl::StatusOr<StateDict> safetensors_state = ReadCheckpoint(safetensors_named_pt);
  ASSERT_TRUE(safetensors_state.ok()) << safetensors_state.status();
  EXPECT_EQ(safetensors_state->front().first, "f64");
}

// ---------------------------------------------------------------------------------------------
// Truncated and corrupt inputs: always a Status, never a crash (run under ASan/UBSan too).

const char* const kTorchTestFiles[] = {
    "fp16.pt",      "bf16.pt",    "shared_storage.pt", "parameter.pt",
    "protocol4.pt", "opcodes.pt", "legacy.pt",         "forbidden_global.pt"};

TEST_F(CheckpointTest, TruncatedTestFilesFailCleanly) {
  std::vector<std::string> files(std::begin(kTorchTestFiles), std::end(kTorchTestFiles));
  files.push_back("reference.safetensors");
  for (const std::string& file : files) {
    const std::string bytes = ReadBytes(TestDataPath(file));
    ASSERT_FALSE(bytes.empty()) << file;
    // Every length near the start (headers, data.pkl) and the end (central directory), and a
    // stride through the middle.
    for (size_t length = 0; length < bytes.size();
         length += (length < 96 || length + 96 > bytes.size()) ? 1 : 23) {
      const std::string truncated = FreshScratch(file);
      WriteBytes(truncated, bytes.substr(0, length));
      EXPECT_FALSE(ReadCheckpoint(truncated).ok()) << file << " truncated at " << length;
      fs::remove(truncated);
    }
  }
}

// A zip that is intact but whose data.pkl is cut short, at every length: the pickle interpreter
// must notice (it never reaches STOP) and say DATA_LOSS.
TEST_F(CheckpointTest, TruncatedPickleFailsCleanly) {
  for (const std::string file :
       {"fp16.pt", "shared_storage.pt", "protocol4.pt", "opcodes.pt", "parameter_with_state.pt"}) {
    const TorchArchive archive = ReadArchive(TestDataPath(file));
    ASSERT_FALSE(archive.pickle.empty());
    const std::string intact = FreshScratch("intact.pt");
    WriteArchive(intact, archive.pickle, archive.storages);
    ASSERT_TRUE(ReadTorchCheckpoint(intact).ok()) << "rewritten " << file << " must still load";
    for (size_t length = 0; length < archive.pickle.size(); ++length) {
      const std::string path = FreshScratch("cut.pt");
      WriteArchive(path, archive.pickle.substr(0, length), archive.storages);
      absl::StatusOr<StateDict> state = ReadTorchCheckpoint(path);
      fs::remove(path);
      ASSERT_FALSE(state.ok()) << file << " data.pkl cut at " << length;
      EXPECT_EQ(state.status().code(), absl::StatusCode::kDataLoss)
          << file << " data.pkl cut at " << length << ": " << state.status();
    }
  }
}

// Storages shorter than their persistent id says, or missing: DATA_LOSS naming the record.
TEST_F(CheckpointTest, ShortOrMissingStorageFails) {
  const TorchArchive archive = ReadArchive(TestDataPath("shared_storage.pt"));
  ASSERT_EQ(archive.storages.size(), 2u);
  auto storages = archive.storages;
  storages[0].second.resize(storages[0].second.size() - 4);
  std::string path = Scratch("short.pt");
  WriteArchive(path, archive.pickle, storages);
  absl::StatusOr<StateDict> state = ReadTorchCheckpoint(path);
  ASSERT_FALSE(state.ok());
  EXPECT_EQ(state.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(state.status().message(), "data/0"));

  path = Scratch("missing.pt");
  WriteArchive(path, archive.pickle, {archive.storages[1]});
  state = ReadTorchCheckpoint(path);
  ASSERT_FALSE(state.ok());
  EXPECT_TRUE(Contains(state.status().message(), "is missing"));
}

TEST_F(CheckpointTest, RefusesTorchScriptAndOtherZips) {
  const std::string script = Scratch("script.pt");
  {
    caffe2::serialize::PyTorchStreamWriter writer(script);
    const std::string pickle = "\x80\x02}.";
    writer.writeRecord("data.pkl", pickle.data(), pickle.size());
    writer.writeRecord("constants.pkl", pickle.data(), pickle.size());
    writer.writeEndOfFile();
  }
  absl::StatusOr<StateDict> state = ReadCheckpoint(script);
  ASSERT_FALSE(state.ok());
  EXPECT_TRUE(Contains(state.status().message(), "TorchScript archive"));

  const std::string other = Scratch("other.zip");
  {
    caffe2::serialize::PyTorchStreamWriter writer(other);
    writer.writeRecord("readme.txt", "hello", 5);
    writer.writeEndOfFile();
  }
  state = ReadCheckpoint(other);
  ASSERT_FALSE(state.ok());
  EXPECT_TRUE(Contains(state.status().message(), "without data.pkl"));
}

// PyTorch >= 2.1 records the storages' byte order: "little" loads, anything else is refused.
TEST_F(CheckpointTest, BigEndianArchiveIsRefused) {
  const TorchArchive archive = ReadArchive(TestDataPath("parameter.pt"));
  std::string path = Scratch("little.pt");
  WriteArchive(path, archive.pickle, archive.storages, "little");
  EXPECT_TRUE(ReadTorchCheckpoint(path).ok());
  path = Scratch("big.pt");
  WriteArchive(path, archive.pickle, archive.storages, "big");
  absl::StatusOr<StateDict> state = ReadTorchCheckpoint(path);
  ASSERT_FALSE(state.ok());
  EXPECT_EQ(state.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_TRUE(Contains(state.status().message(), "byteorder \"big\""));
}

// Every byte of data.pkl altered, then many random multi-byte corruptions: whatever comes back,
// nothing crashes, and what loads is well formed.
TEST_F(CheckpointTest, CorruptedPickleNeverCrashes) {
  std::mt19937 random(20261129);
  for (const std::string file : {"opcodes.pt", "shared_storage.pt", "protocol4.pt"}) {
    const TorchArchive archive = ReadArchive(TestDataPath(file));
    auto check = [&](const std::string& pickle) {
      const std::string path = FreshScratch("corrupt.pt");
      WriteArchive(path, pickle, archive.storages);
      absl::StatusOr<StateDict> state = ReadTorchCheckpoint(path);
      fs::remove(path);
      if (state.ok()) {
        for (const auto& entry : *state) EXPECT_TRUE(entry.second.defined());
      }
    };
    const uint8_t replacements[] = {0x00, 0xff, 0x7f, 0x80, 'K', 'J', 'h', '(', '.'};
    for (size_t i = 0; i < archive.pickle.size(); ++i) {
      std::string pickle = archive.pickle;
      pickle[i] = static_cast<char>(replacements[i % std::size(replacements)]);
      check(pickle);
    }
    for (int round = 0; round < 300; ++round) {
      std::string pickle = archive.pickle;
      for (int flips = 0; flips < 4; ++flips) {
        pickle[random() % pickle.size()] = static_cast<char>(random() & 0xff);
      }
      check(pickle);
    }
  }
}

TEST_F(CheckpointTest, RandomBytesFail) {
  std::mt19937 random(7);
  std::string noise(4096, '\0');
  for (char& byte : noise) byte = static_cast<char>(random() & 0xff);
  const std::vector<std::pair<std::string, std::string>> files = {
      {"empty", ""},
      {"noise", noise},
      {"zip_magic_then_noise", std::string("PK\x03\x04", 4) + noise},
      {"small_header_then_noise", std::string("\x20\0\0\0\0\0\0\0{", 9) + noise},
      {"pickle_then_noise", "\x80\x02" + noise},
  };
  for (const auto& [name, bytes] : files) {
    const std::string path = Scratch(name);
    WriteBytes(path, bytes);
    EXPECT_FALSE(ReadCheckpoint(path).ok()) << name;
    EXPECT_FALSE(ReadTorchCheckpoint(path).ok()) << name;
    EXPECT_FALSE(ReadSafetensors(path).ok()) << name;
  }
}

// ---------------------------------------------------------------------------------------------
// safetensors.

TEST_F(CheckpointTest, SafetensorsRoundTripsEveryDtype) {
  torch::manual_seed(3);
  const torch::Tensor floats = torch::randn({3, 4}, torch::kFloat64) * 100;
  StateDict tensors = {
      {"f64", floats},
      {"f32", floats.to(torch::kFloat32).t()},  // not contiguous: written contiguous
      {"f16", floats.to(torch::kFloat16)[1]},
      {"bf16", floats.to(torch::kBFloat16)},
      {"i64", torch::tensor({int64_t{-(int64_t{1} << 62)}, int64_t{7}, int64_t{1} << 40})},
      {"i32", torch::tensor({-2147483647 - 1, 2147483647}, torch::kInt32)},
      {"i16", torch::tensor({-32768, 32767}, torch::kInt16)},
      {"i8", torch::tensor({-128, 127}, torch::kInt8)},
      {"u8", torch::tensor({0, 255}, torch::kUInt8)},
      {"bool", floats > 0},
      {"scalar", torch::tensor(2.5)},
      {"empty", torch::zeros({0, 5}, torch::kInt16)},
      {"zeta_written_last", torch::ones({2})},
  };
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "ünïcode"}};
  const std::string path = Scratch("all.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors, metadata).ok());
  const std::string bytes = ReadBytes(path);
  ASSERT_GE(bytes.size(), 8u);
  EXPECT_EQ(static_cast<uint8_t>(bytes[0]) % 8, 0) << "header padded to 8 bytes";

  std::map<std::string, std::string> read_metadata = {{"stale", "entry"}};
  absl::StatusOr<StateDict> state = ReadSafetensors(path, &read_metadata);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(read_metadata, metadata);
  ASSERT_EQ(state->size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    SCOPED_TRACE(tensors[i].first);
    EXPECT_EQ((*state)[i].first, tensors[i].first);
    EXPECT_EQ((*state)[i].second.scalar_type(), tensors[i].second.scalar_type());
    EXPECT_EQ((*state)[i].second.sizes(), tensors[i].second.sizes());
    EXPECT_TRUE(torch::equal((*state)[i].second, tensors[i].second));
  }
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  // Without metadata, and through ReadCheckpoint.
  ASSERT_TRUE(WriteSafetensors(path, {{"x", torch::ones({2, 2})}}).ok());
  state = ReadCheckpoint(path);
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_EQ(state->size(), 1u);
  EXPECT_TRUE(torch::equal(state->front().second, torch::ones({2, 2})));
}

TEST_F(CheckpointTest, WriteSafetensorsRejectsBadInput) {
  const std::string path = Scratch("bad.safetensors");
  EXPECT_FALSE(WriteSafetensors(path, {{"a", torch::ones(1)}, {"a", torch::ones(1)}}).ok());
  EXPECT_FALSE(WriteSafetensors(path, {{"__metadata__", torch::ones(1)}}).ok());
  EXPECT_FALSE(WriteSafetensors(path, {{"u", torch::Tensor()}}).ok());
  absl::Status status = WriteSafetensors(path, {{"c", torch::zeros({2}, torch::kComplexFloat)}});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "\"c\""));
  status = WriteSafetensors(path, {{std::string("bad\xff", 4), torch::ones(1)}});
  EXPECT_FALSE(status.ok()) << "names must be UTF-8";
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

// A file from a header and data, with the header length filled in.
std::string SafetensorsBytes(const std::string& header, const std::string& data) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i)
    bytes[i] = static_cast<char>((uint64_t{header.size()} >> (8 * i)) & 0xff);
  return bytes + header + data;
}

TEST_F(CheckpointTest, CorruptSafetensorsFailCleanly) {
  const std::string eight_bytes(8, '\x01');
  struct Case {
    std::string name;
    std::string bytes;
    std::string message;  // a part of the expected error
  };
  std::string header_too_long = SafetensorsBytes("{}", "");
  header_too_long[0] = 100;
  const std::vector<Case> cases = {
      {"header_too_long", header_too_long, "exceeds"},
      {"not_json", SafetensorsBytes("{\"a\": [", ""), "not valid JSON"},
      {"json_array", SafetensorsBytes("[1, 2]", ""), "not an object"},
      {"offsets_beyond_data",
       SafetensorsBytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", eight_bytes),
       "\"w\""},
      {"size_mismatch",
       SafetensorsBytes(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight_bytes),
       "needs 12"},
      {"begin_after_end",
       SafetensorsBytes(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[8,4]}})", eight_bytes),
       "\"w\""},
      {"overlap",
       SafetensorsBytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"I32","shape":[1],"data_offsets":[4,8]}})",
                        eight_bytes),
       "overlap"},
      {"unknown_dtype",
       SafetensorsBytes(R"({"w":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})",
                        eight_bytes),
       "F8_E4M3"},
      {"negative_dim",
       SafetensorsBytes(R"({"w":{"dtype":"U8","shape":[-8],"data_offsets":[0,8]}})", eight_bytes),
       "non-negative"},
      {"fractional_dim",
       SafetensorsBytes(R"({"w":{"dtype":"U8","shape":[8.0],"data_offsets":[0,8]}})", eight_bytes),
       "non-negative"},
      {"overflowing_shape",
       SafetensorsBytes(R"({"w":{"dtype":"F64","shape":[4611686018427387904,4611686018427387904],)"
                        R"("data_offsets":[0,8]}})",
                        eight_bytes),
       "more than 2^64"},
      {"missing_fields", SafetensorsBytes(R"({"w":{"dtype":"U8"}})", ""), "data_offsets"},
      {"metadata_not_strings", SafetensorsBytes(R"({"__metadata__":{"epoch":3}})", ""), "epoch"},
      {"bool_not_0_or_1",
       SafetensorsBytes(R"({"w":{"dtype":"BOOL","shape":[8],"data_offsets":[0,8]}})",
                        eight_bytes.substr(0, 7) + "\x02"),
       "other than 0 and 1"},
  };
  for (const Case& test_case : cases) {
    const std::string path = Scratch(test_case.name + ".safetensors");
    WriteBytes(path, test_case.bytes);
    absl::StatusOr<StateDict> state = ReadSafetensors(path);
    ASSERT_FALSE(state.ok()) << test_case.name;
    EXPECT_TRUE(Contains(state.status().message(), test_case.message)) << test_case.name;
    EXPECT_TRUE(Contains(state.status().message(), path)) << test_case.name;
  }
}

// ---------------------------------------------------------------------------------------------
// LoadStateDict and ModuleStateDict.

torch::nn::Sequential SmallNet() {
  return torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, /*kernel_size=*/3)),
                               torch::nn::BatchNorm2d(4), torch::nn::Flatten(),
                               torch::nn::Linear(4, 2));
}

std::vector<std::string> Names(const StateDict& state) {
  std::vector<std::string> names;
  for (const auto& entry : state) names.push_back(entry.first);
  return names;
}

TEST(ModuleStateDictTest, ParametersThenBuffersDetached) {
  torch::nn::Sequential net = SmallNet();
  const StateDict state = ModuleStateDict(*net);
  EXPECT_EQ(Names(state), (std::vector<std::string>{"0.weight", "0.bias", "1.weight", "1.bias",
                                                    "3.weight", "3.bias", "1.running_mean",
                                                    "1.running_var", "1.num_batches_tracked"}));
  EXPECT_FALSE(state[0].second.requires_grad());
  EXPECT_EQ(state[0].second.data_ptr(), net->named_parameters()["0.weight"].data_ptr());
}

TEST(LoadStateDictTest, LoadsAnotherModulesStateDict) {
  torch::manual_seed(1);
  torch::nn::Sequential source = SmallNet();
  {
    torch::NoGradGuard no_grad;
    for (auto& buffer : source->buffers()) buffer.fill_(3);
  }
  torch::manual_seed(2);
  torch::nn::Sequential target = SmallNet();
  // Through a file and in float64: values are converted to the parameters' dtype.
  StateDict state;
  for (const auto& [name, tensor] : ModuleStateDict(*source)) {
    state.emplace_back(
        name, tensor.to(tensor.is_floating_point() ? torch::kFloat64 : tensor.scalar_type()));
  }
  const std::string path = ::testing::TempDir() + "/load_state_dict_test.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, state).ok());
  absl::StatusOr<StateDict> read = ReadCheckpoint(path);
  std::remove(path.c_str());
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_TRUE(LoadStateDict(*target, *read, "small", path).ok());
  const StateDict loaded = ModuleStateDict(*target);
  const StateDict expected = ModuleStateDict(*source);
  for (size_t i = 0; i < loaded.size(); ++i) {
    EXPECT_EQ(loaded[i].second.scalar_type(), expected[i].second.scalar_type()) << loaded[i].first;
    EXPECT_TRUE(torch::equal(loaded[i].second, expected[i].second)) << loaded[i].first;
  }
  EXPECT_TRUE(target->named_parameters()["0.weight"].requires_grad());
}

class LoadStateDictErrorTest : public ::testing::Test {
 protected:
  absl::Status Load(const StateDict& state) { return LoadStateDict(*net_, state, "small", "x.pt"); }
  StateDict Without(const std::string& name) {
    StateDict state = ModuleStateDict(*net_);
    state.erase(std::remove_if(state.begin(), state.end(),
                               [&](const auto& entry) { return entry.first == name; }),
                state.end());
    return state;
  }
  torch::nn::Sequential net_ = SmallNet();
};

TEST_F(LoadStateDictErrorTest, MissingKeyIsNamedAndNothingLoads) {
  StateDict state = Without("3.bias");
  for (auto& entry : state) entry.second = torch::zeros_like(entry.second);
  const torch::Tensor before = net_->named_parameters()["0.weight"].clone();
  absl::Status status = Load(state);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "checkpoint \"x.pt\" for model \"small\": missing key \"3.bias\"");
  EXPECT_TRUE(torch::equal(net_->named_parameters()["0.weight"], before));
}

TEST_F(LoadStateDictErrorTest, UnexpectedKeyIsNamed) {
  StateDict state = ModuleStateDict(*net_);
  state.emplace_back("extra.weight", torch::zeros({1}));
  absl::Status status = Load(state);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "unexpected key \"extra.weight\""));
}

TEST_F(LoadStateDictErrorTest, WrongShapeNamesKeyAndBothShapes) {
  StateDict state = ModuleStateDict(*net_);
  state[0].second = torch::zeros({6, 3, 3, 3});
  absl::Status status = Load(state);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "checkpoint \"x.pt\" for model \"small\": key \"0.weight\" has shape [6, 3, 3, 3], "
            "the model expects [4, 3, 3, 3]");
}

TEST_F(LoadStateDictErrorTest, ManyProblemsAreCountedNotAllListed) {
  torch::nn::Sequential wide;
  for (int i = 0; i < 15; ++i) wide->push_back(torch::nn::Linear(2, 2));
  StateDict state = {{"stray", torch::zeros({1})}};
  absl::Status status = LoadStateDict(*wide, state, "wide", "y.pt");
  ASSERT_FALSE(status.ok());
  const std::string message(status.message());
  EXPECT_TRUE(Contains(message, "30 missing keys: \"0.weight\", \"0.bias\""));
  EXPECT_TRUE(Contains(message, "and 20 more"));
  EXPECT_TRUE(Contains(message, "unexpected key \"stray\""));
  EXPECT_FALSE(absl::StrContains(message, "14.bias"));
}

TEST(LoadStateDictTest, LoadsIntoCudaModule) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::nn::Sequential source = SmallNet();
  torch::nn::Sequential target = SmallNet();
  target->to(torch::kCUDA);
  ASSERT_TRUE(LoadStateDict(*target, ModuleStateDict(*source), "small", "cuda.pt").ok());
  const StateDict loaded = ModuleStateDict(*target);
  const StateDict expected = ModuleStateDict(*source);
  for (size_t i = 0; i < loaded.size(); ++i) {
    EXPECT_TRUE(loaded[i].second.is_cuda());
    EXPECT_TRUE(torch::equal(loaded[i].second.cpu(), expected[i].second)) << loaded[i].first;
  }
}

}  // namespace
}  // namespace gd
