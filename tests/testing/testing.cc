#include "tests/testing/testing.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>

#include "tests/testing/paths.h"

namespace gd::testing {

std::string SourceDir() { return GD_SOURCE_DIR; }

std::string FixturesDir() {
  if (const char* env = std::getenv("GD_FIXTURES"); env != nullptr && *env) return env;
  return GD_FIXTURES_DIR;
}

std::string Parity64Dir() {
  const std::filesystem::path dir = std::filesystem::path(FixturesDir()) / "parity-64";
  return std::filesystem::exists(dir / "tensors.pt") ? dir.string() : "";
}

double RelativeError(const torch::Tensor& actual, const torch::Tensor& expected) {
  const torch::Tensor a = actual.detach().to(torch::kCPU, torch::kFloat64);
  const torch::Tensor e = expected.detach().to(torch::kCPU, torch::kFloat64);
  if (a.numel() == 0) return 0.0;
  return ((a - e).abs() / e.abs().clamp_min(1.0)).max().item<double>();
}

::testing::AssertionResult TensorsClose(const torch::Tensor& actual,
                                        const torch::Tensor& expected, double tolerance) {
  if (actual.sizes() != expected.sizes()) {
    std::ostringstream msg;
    msg << "shape " << actual.sizes() << " differs from expected " << expected.sizes();
    return ::testing::AssertionFailure() << msg.str();
  }
  const double err = RelativeError(actual, expected);
  if (const char* report = std::getenv("GD_TEST_REPORT_ERRORS"); report != nullptr && *report) {
    const ::testing::TestInfo* test = ::testing::UnitTest::GetInstance()->current_test_info();
    std::fprintf(stderr, "[ rel err  ] %s.%s: relative error %.3g (tolerance %.3g)\n",
                 test ? test->test_suite_name() : "?", test ? test->name() : "?", err, tolerance);
  }
  if (!(err <= tolerance)) {
    return ::testing::AssertionFailure()
           << "relative error " << err << " exceeds " << tolerance << " (max |expected| "
           << expected.abs().max().item<double>() << ")";
  }
  return ::testing::AssertionSuccess() << "relative error " << err;
}

std::string TempDir(const std::string& tag) {
  const char* base = std::getenv("TEST_TMPDIR");
  std::filesystem::path root = base ? base : std::filesystem::temp_directory_path();
  std::string templ = (root / ("gd-" + tag + "-XXXXXX")).string();
  char* made = mkdtemp(templ.data());
  return made ? std::string(made) : (root / ("gd-" + tag)).string();
}

absl::StatusOr<JobResult> SampleAndWait(Engine& engine, const SampleJob& job) {
  class Waiter : public JobObserver {
   public:
    void OnFinished(absl::StatusOr<JobResult> r) override { done.set_value(std::move(r)); }
    std::promise<absl::StatusOr<JobResult>> done;
  };
  auto waiter = std::make_shared<Waiter>();
  std::future<absl::StatusOr<JobResult>> future = waiter->done.get_future();
  if (auto handle = engine.Submit(job, waiter); !handle.ok()) {
    return handle.status();
  }
  return future.get();
}

ModelSpec ParityFixture::Spec(bool with_classifier) const {
  const std::string dir = Parity64Dir();
  ModelSpec spec;
  spec.name = "parity";
  spec.model_flags = json["model_flags"].get<std::string>();
  spec.model_path = dir + "/model.pt";
  if (with_classifier) {
    spec.classifier_flags = json["classifier_flags"].get<std::string>();
    spec.classifier_path = dir + "/classifier.pt";
  }
  return spec;
}

namespace {

// Every tensor of a torch.save'd plain dict (name -> tensor).
std::map<std::string, torch::Tensor> ReadTensorDict(const std::string& path) {
  std::map<std::string, torch::Tensor> tensors;
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const auto& item : torch::pickle_load(bytes).toGenericDict()) {
    tensors[item.key().toStringRef()] = item.value().toTensor();
  }
  return tensors;
}

}  // namespace

const ParityFixture& Parity64() {
  static const ParityFixture* fixture = [] {
    auto* f = new ParityFixture;
    const std::string dir = Parity64Dir();
    std::ifstream(dir + "/fixture.json") >> f->json;
    f->tensors = ReadTensorDict(dir + "/tensors.pt");
    return f;
  }();
  return *fixture;
}

std::string Dpm64Dir() {
  const std::filesystem::path dir = std::filesystem::path(FixturesDir()) / "dpm-64";
  return std::filesystem::exists(dir / "dpm_tensors.pt") ? dir.string() : "";
}

const std::map<std::string, torch::Tensor>& Dpm64() {
  static const auto* tensors =
      new std::map<std::string, torch::Tensor>(ReadTensorDict(Dpm64Dir() + "/dpm_tensors.pt"));
  return *tensors;
}

}  // namespace gd::testing
