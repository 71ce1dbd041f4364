// Tests of many samples in one call (client/bulk_sample.h, client/run_state.h) and of
// `gd sample --num_samples N` on top of it, against the fake server, whose image i of a request is
// canned image first_image_index + i: the run's images must come out the same however the run is
// split, retried or resumed.
#include "client/bulk_sample.h"

#include <signal.h>
#include <sys/types.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/run_state.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/service/cli_runner.h"
#include "tests/service/fake_sampler.h"

namespace gd::client {
namespace {

namespace fs = std::filesystem;
namespace v1 = ::guided_diffusion::v1;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// The run's images as the fake makes them: canned images 0 .. n-1, in the .npz layout.
std::string ExpectedPixels(int64_t n) { return SamplesToUint8(CannedSamples(n))->data; }

// Checks that the requests covered images 0 .. total-1 once each, in requests of at most
// `per_request` images, all with the same seed; returns the first images of the requests.
std::vector<uint64_t> CheckCoverage(const std::vector<v1::SampleRequest>& requests, int64_t total,
                                    int64_t per_request, uint64_t seed) {
  std::vector<int> seen(static_cast<size_t>(total), 0);
  std::vector<uint64_t> firsts;
  for (const v1::SampleRequest& request : requests) {
    const int64_t count = request.labels_size() > 0 ? request.labels_size() : request.num_samples();
    EXPECT_LE(count, per_request);
    EXPECT_EQ(request.seed(), seed);
    firsts.push_back(request.first_image_index());
    for (int64_t i = 0; i < count; ++i) {
      const uint64_t image = request.first_image_index() + i;
      if (image < seen.size()) ++seen[image];
    }
  }
  EXPECT_THAT(seen, ::testing::Each(1));
  std::sort(firsts.begin(), firsts.end());
  return firsts;
}

class BulkSampleTest : public ClientTest {
 protected:
  void SetUp() override {
    ClientTest::SetUp();
    std::string pattern = ::testing::TempDir() + "gd_bulk_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    client_ = Connect();
  }

  // Balanced labels over the tiny model, retries without waiting.
  static BulkSampleOptions Options(int64_t count, int64_t per_request, int concurrency) {
    BulkSampleOptions options;
    options.base.set_seed(7);
    options.base.set_classifier_scale(2);
    options.num_images = count;
    options.label_choice = LabelChoice::kBalanced;
    options.images_per_request = per_request;
    options.concurrency = concurrency;
    options.retry.initial_backoff_ms = 1;
    return options;
  }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  std::string dir_;
  std::unique_ptr<SamplerClient> client_;
};

TEST_F(BulkSampleTest, SameImagesWhateverTheSplitAndConcurrency) {
  constexpr int64_t kImages = 21;
  const std::pair<int64_t, int> splits[] = {{0, 1}, {3, 4}, {1, 2}, {8, 3}, {5, 1}};
  size_t requests_before = 0;
  for (const auto& [per_request, concurrency] : splits) {
    SCOPED_TRACE(absl::StrCat("K = ", per_request, ", concurrency ", concurrency));
    absl::StatusOr<BulkResult> result =
        BulkSample(*client_, Options(kImages, per_request, concurrency));
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_TRUE(result->samples.images.has_value());
    EXPECT_EQ(result->samples.images->shape,
              (std::vector<int64_t>{kImages, kImageSize, kImageSize, kChannels}));
    EXPECT_EQ(result->samples.images->data, ExpectedPixels(kImages));
    EXPECT_THAT(result->samples.labels, ElementsAreArray(BalancedLabels(kImages, kNumClasses)));
    const int64_t k = per_request == 0 ? kTinyMaxImagesPerRequest : per_request;  // 0: the model's
    EXPECT_EQ(result->images_per_request, k);
    EXPECT_EQ(result->requests, (kImages + k - 1) / k);
    std::vector<v1::SampleRequest> requests = server_.sampler().sample_requests();
    requests.erase(requests.begin(), requests.begin() + requests_before);
    requests_before += requests.size();
    CheckCoverage(requests, kImages, k, /*seed=*/7);
    for (const v1::SampleRequest& request : requests) {
      EXPECT_EQ(request.model(), "tiny");  // the resolved name
      EXPECT_EQ(request.classifier_scale(), 2);
      EXPECT_TRUE(request.output().uint8());
      EXPECT_FALSE(request.output().float32());
      EXPECT_TRUE(request.output().skip_png());
      for (int i = 0; i < request.labels_size(); ++i) {  // image j's label is j mod 10
        EXPECT_EQ(request.labels(i), static_cast<int64_t>(request.first_image_index() + i) % 10);
      }
    }
  }
}

TEST_F(BulkSampleTest, KeepsAsManyRequestsInFlightAsAsked) {
  server_.sampler().HoldUntilInFlight(3);  // each call waits until three are in flight
  absl::StatusOr<BulkResult> result = BulkSample(*client_, Options(24, 4, 3));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(server_.sampler().max_in_flight(), 3);
  EXPECT_EQ(result->samples.images->data, ExpectedPixels(24));
}

TEST_F(BulkSampleTest, OneRequestAtATimeWithConcurrencyOne) {
  server_.sampler().SetDelay(absl::Milliseconds(20));
  ASSERT_TRUE(BulkSample(*client_, Options(12, 2, 1)).ok());
  EXPECT_EQ(server_.sampler().max_in_flight(), 1);
}

TEST(LabelsTest, BalancedCyclesTheClasses) {
  EXPECT_THAT(BalancedLabels(7, 3), ElementsAreArray({0, 1, 2, 0, 1, 2, 0}));
  EXPECT_THAT(BalancedLabels(0, 3), IsEmpty());
}

TEST(LabelsTest, RandomLabelsDependOnTheSeedAndTheIndexOnly) {
  const std::vector<int64_t> labels = RandomLabels(/*seed=*/5, 1000, 10);
  EXPECT_EQ(RandomLabels(5, 1000, 10), labels);
  const std::vector<int64_t> prefix = RandomLabels(5, 100, 10);  // a shorter run: the same start
  EXPECT_TRUE(std::equal(prefix.begin(), prefix.end(), labels.begin()));
  EXPECT_NE(RandomLabels(6, 1000, 10), labels);
  std::vector<int> counts(10, 0);
  for (int64_t label : labels) {
    ASSERT_GE(label, 0);
    ASSERT_LT(label, 10);
    ++counts[label];
  }
  for (int count : counts) EXPECT_GT(count, 50) << "every class drawn (1000 draws, ~100 each)";
}

TEST_F(BulkSampleTest, RandomLabelsComeFromTheSeed) {
  BulkSampleOptions options = Options(12, 5, 2);
  options.label_choice = LabelChoice::kRandom;
  absl::StatusOr<BulkResult> result = BulkSample(*client_, options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->samples.labels, RandomLabels(7, 12, kNumClasses));
}

TEST_F(BulkSampleTest, RetriesUnavailableAndResourceExhaustedThenSucceeds) {
  for (grpc::StatusCode code :
       {grpc::StatusCode::UNAVAILABLE, grpc::StatusCode::RESOURCE_EXHAUSTED}) {
    SCOPED_TRACE(code);
    server_.sampler().FailNextCalls(2, code);
    std::vector<int64_t> retries_seen;
    absl::StatusOr<BulkResult> result =
        BulkSample(*client_, Options(6, 3, 1), [&](const BulkProgress& progress) {
          retries_seen.push_back(progress.retries);
          if (progress.retries > 0) {
            EXPECT_EQ(static_cast<int>(progress.last_retry.code()), static_cast<int>(code));
          }
        });
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->retries, 2);
    EXPECT_EQ(result->requests, 2);
    EXPECT_EQ(result->samples.images->data, ExpectedPixels(6));
    EXPECT_EQ(retries_seen.back(), 2);
  }
}

TEST_F(BulkSampleTest, GivesUpAfterTheRetryLimitWithAClearError) {
  server_.sampler().FailNextCalls(10, grpc::StatusCode::UNAVAILABLE);
  BulkSampleOptions options = Options(16, 8, 1);
  options.retry.max_retries = 2;
  const int calls_before = server_.sampler().calls();
  absl::StatusOr<BulkResult> result = BulkSample(*client_, options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(result.status().message(),
            "images 0..7: injected failure 3 of 10 (gave up after 2 retries, the limit)");
  EXPECT_EQ(server_.sampler().calls() - calls_before, 1 + 3);  // GetModel, then 3 attempts

  server_.sampler().FailNextCalls(1, grpc::StatusCode::UNAVAILABLE);
  options.retry.max_retries = 0;
  result = BulkSample(*client_, options);
  EXPECT_EQ(result.status().message(), "images 0..7: injected failure 1 of 1 (retries are off)");
}

TEST_F(BulkSampleTest, OtherErrorsAreNotRetried) {
  server_.sampler().FailNextCalls(1, grpc::StatusCode::INVALID_ARGUMENT);
  BulkSampleOptions options = Options(4, 4, 1);
  const int calls_before = server_.sampler().calls();
  absl::StatusOr<BulkResult> result = BulkSample(*client_, options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  // One request for the whole run: no word on which images.
  EXPECT_EQ(result.status().message(), "injected failure 1 of 1");
  EXPECT_EQ(server_.sampler().calls() - calls_before, 2);  // GetModel, one attempt
}

TEST_F(BulkSampleTest, BadOptionsFailBeforeAnySamplingCall) {
  struct Case {
    BulkSampleOptions options;
    std::string message;
  };
  std::vector<Case> cases;
  cases.push_back({Options(4, 9, 1), "images_per_request = 9 exceeds max_images_per_request = 8"});
  cases.push_back({Options(0, 1, 1), "num_images = 0"});
  cases.push_back({Options(4, 1, 0), "concurrency = 0 is outside [1, 64]"});
  BulkSampleOptions unconditional = Options(4, 1, 1);
  unconditional.base.set_model("uncond-big");
  cases.push_back({unconditional, "balanced labels need a model with classes"});
  BulkSampleOptions resume_in_memory = Options(4, 1, 1);
  resume_in_memory.resume = true;
  cases.push_back({resume_in_memory, "resume needs npz_path"});
  BulkSampleOptions bad_noise = Options(4, 1, 1);
  bad_noise.noise = CannedSamples(3);
  cases.push_back({bad_noise, "noise must be float32 [N, C, H, W] = [4, 3, 8, 8]"});
  for (const Case& c : cases) {
    absl::StatusOr<BulkResult> result = BulkSample(*client_, c.options);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(result.status().message(), HasSubstr(c.message));
  }
  EXPECT_THAT(server_.sampler().sample_requests(), IsEmpty());
}

TEST_F(BulkSampleTest, NoiseRowsGoWithTheirImages) {
  BulkSampleOptions options = Options(6, 4, 2);
  options.noise = CannedSamples(6, 0.5f);
  options.kept = {/*images=*/true, /*samples=*/true};
  absl::StatusOr<BulkResult> result = BulkSample(*client_, options);
  ASSERT_TRUE(result.ok()) << result.status();
  for (const v1::SampleRequest& request : server_.sampler().sample_requests()) {
    const int64_t first = static_cast<int64_t>(request.first_image_index());
    EXPECT_EQ(request.noise().data(), CannedSamples(request.labels_size(), 0.5f, first).data);
    EXPECT_TRUE(request.output().float32());
    EXPECT_FALSE(request.output().uint8());  // the images come from the samples
  }
  EXPECT_EQ(result->samples.samples->data, CannedSamples(6).data);
  EXPECT_EQ(result->samples.images->data, ExpectedPixels(6));
}

TEST_F(BulkSampleTest, StreamStepsReportProgressOnly) {
  BulkSampleOptions options = Options(9, 4, 2);
  options.stream_steps = true;
  int64_t last_done = -1;
  absl::StatusOr<BulkResult> result =
      BulkSample(*client_, options, [&](const BulkProgress& progress) {
        EXPECT_GE(progress.images_done, last_done);  // never backwards
        EXPECT_LE(progress.images_done + progress.images_partial, progress.images_total + 1e-9);
        last_done = progress.images_done;
      });
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(last_done, 9);
  EXPECT_EQ(server_.sampler().stream_calls(), 3);
  const v1::StreamOptions stream = server_.sampler().last_request().stream();
  EXPECT_EQ(stream.every(), 1u);
  EXPECT_FALSE(stream.x_t());
  EXPECT_FALSE(stream.pred_xstart());
}

// ---- Resuming -----------------------------------------------------------------------------------

// A run of 20 images in requests of 4 interrupted after its first two requests (non-retryable
// failures from the third on), so that images 0..7 are kept on disk.
class ResumeTest : public BulkSampleTest {
 protected:
  BulkSampleOptions Interrupted() {
    BulkSampleOptions options = Options(20, 4, 1);
    options.npz_path = Path("out.npz");
    server_.sampler().FailNextCalls(100, grpc::StatusCode::INTERNAL, /*after=*/2);
    absl::StatusOr<BulkResult> result = BulkSample(*client_, options);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInternal);
    EXPECT_THAT(
        result.status().message(),
        HasSubstr(absl::StrCat("the 8 images finished are kept in ", Path("out.npz.parts"))));
    server_.sampler().FailNextCalls(0, grpc::StatusCode::OK);
    requests_before_ = server_.sampler().sample_requests().size();
    return options;
  }

  std::vector<v1::SampleRequest> RequestsSince() {
    std::vector<v1::SampleRequest> requests = server_.sampler().sample_requests();
    requests.erase(requests.begin(), requests.begin() + requests_before_);
    return requests;
  }

  size_t requests_before_ = 0;
};

TEST_F(ResumeTest, SamplesOnlyTheMissingImages) {
  BulkSampleOptions options = Interrupted();
  std::set<std::string> files;
  for (const auto& entry : fs::directory_iterator(Path("out.npz.parts"))) {
    files.insert(entry.path().filename().string());
  }
  EXPECT_EQ(files, (std::set<std::string>{"run.textproto", "images_000000000_000004.npz",
                                          "images_000000004_000004.npz"}));
  // A write a kill -9 cut short: ignored and deleted.
  ASSERT_TRUE(
      formats::WriteFileBytes(Path("out.npz.parts/images_000000008_000004.npz.tmp"), "PK").ok());

  options.resume = true;
  options.images_per_request = 5;  // resuming with another split is fine: images are per index
  absl::StatusOr<BulkResult> result = BulkSample(*client_, options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->images_resumed, 8);
  EXPECT_EQ(result->requests, 3);  // 8..12, 13..17, 18..19
  std::vector<uint64_t> firsts;
  for (const v1::SampleRequest& request : RequestsSince())
    firsts.push_back(request.first_image_index());
  std::sort(firsts.begin(), firsts.end());
  EXPECT_THAT(firsts, ElementsAreArray({8, 13, 18}));
  EXPECT_EQ(result->samples.images->data, ExpectedPixels(20));

  absl::StatusOr<SampleSet> written = ReadSampleSetNpz(Path("out.npz"));
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(written->images->data, ExpectedPixels(20));
  EXPECT_THAT(written->labels, ElementsAreArray(BalancedLabels(20, kNumClasses)));
  EXPECT_FALSE(written->samples.has_value());
  EXPECT_FALSE(fs::exists(Path("out.npz.parts")));
}

// As if killed after the last request, before the .npz was written: nothing left to ask for.
TEST_F(ResumeTest, AllPartsThereNeedsNoRequest) {
  BulkSampleOptions options = Interrupted();
  SampleSet rest;  // images 8..19, as the server would have made them
  const std::vector<int64_t> labels = BalancedLabels(20, kNumClasses);
  rest.labels.assign(labels.begin() + 8, labels.end());
  rest.images = *SamplesToUint8(CannedSamples(12, 0, /*first_image=*/8));
  ASSERT_TRUE(WriteSampleSetNpz(Path("out.npz.parts/images_000000008_000012.npz"), rest,
                                /*with_samples=*/true)
                  .ok());
  options.resume = true;
  absl::StatusOr<BulkResult> result = BulkSample(*client_, options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->requests, 0);
  EXPECT_EQ(result->images_resumed, 20);
  EXPECT_THAT(RequestsSince(), IsEmpty());
  EXPECT_EQ(ReadSampleSetNpz(Path("out.npz"))->images->data, ExpectedPixels(20));
  EXPECT_FALSE(fs::exists(Path("out.npz.parts")));
}

TEST_F(ResumeTest, LeftoversOfAnUnfinishedRunNeedResume) {
  BulkSampleOptions options = Interrupted();
  absl::StatusOr<BulkResult> result = BulkSample(*client_, options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(result.status().message(),
              HasSubstr("holds an unfinished run (8 of 20 images done): resume it, or delete"));
  EXPECT_THAT(RequestsSince(), IsEmpty());
}

TEST_F(ResumeTest, ADifferentRunIsRefused) {
  BulkSampleOptions options = Interrupted();
  options.resume = true;
  options.base.set_classifier_scale(4);
  absl::StatusOr<BulkResult> result = BulkSample(*client_, options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(result.status().message(), HasSubstr("holds a different run ("));
  EXPECT_THAT(result.status().message(), HasSubstr("classifier_scale: 2 -> 4"));

  options.base.set_classifier_scale(2);
  options.num_images = 30;  // more images: the labels differ
  result = BulkSample(*client_, options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(result.status().message(), HasSubstr("added: labels[20]"));
  EXPECT_THAT(result.status().message(), HasSubstr("more"));  // the list is cut short
  EXPECT_THAT(RequestsSince(), IsEmpty());
}

TEST_F(ResumeTest, AnUnreadablePartIsAnErrorNamingIt) {
  BulkSampleOptions options = Interrupted();
  const std::string part = Path("out.npz.parts/images_000000004_000004.npz");
  ASSERT_TRUE(formats::WriteFileBytes(part, "not a zip").ok());
  options.resume = true;
  absl::StatusOr<BulkResult> result = BulkSample(*client_, options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(result.status().message(), HasSubstr(absl::StrCat("delete \"", part, "\"")));
}

// ---- gd sample --num_samples --------------------------------------------------------------------

using BulkCliTest = CliTest;

absl::StatusOr<SampleSet> ReadNpz(const std::string& path) { return ReadSampleSetNpz(path); }

TEST_F(BulkCliTest, ManyImagesInRequestsSideBySide) {
  CliResult result =
      Run({"sample", "--num_samples", "20", "--balanced_labels", "--images_per_request", "3",
           "--concurrency", "4", "--seed", "11", "--npz", Path("out.npz")});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.out, HasSubstr("20 images 3x8x8 from \"tiny\""));
  EXPECT_THAT(result.out, HasSubstr("7 requests in"));
  EXPECT_THAT(result.out, HasSubstr(absl::StrCat("wrote ", Path("out.npz"))));
  EXPECT_THAT(result.err, IsEmpty());  // no terminal, and quicker than a progress line
  absl::StatusOr<SampleSet> npz = ReadNpz(Path("out.npz"));
  ASSERT_TRUE(npz.ok()) << npz.status();
  EXPECT_EQ(npz->images->data, ExpectedPixels(20));
  EXPECT_THAT(npz->labels, ElementsAreArray(BalancedLabels(20, kNumClasses)));
  CheckCoverage(server_.sampler().sample_requests(), 20, 3, /*seed=*/11);
}

TEST_F(BulkCliTest, RandomLabelsFollowTheSeed) {
  std::vector<int64_t> labels[3];
  const char* seeds[] = {"3", "3", "4"};
  for (int run = 0; run < 3; ++run) {
    CliResult result = Run({"sample", "--num_samples", "30", "--random_labels", "--seed",
                            seeds[run], "--npz", Path("out.npz")});
    ASSERT_EQ(result.exit_code, 0) << result.err;
    labels[run] = ReadNpz(Path("out.npz"))->labels;
  }
  EXPECT_EQ(labels[0], RandomLabels(3, 30, kNumClasses));
  EXPECT_EQ(labels[1], labels[0]);
  EXPECT_NE(labels[2], labels[0]);
}

TEST_F(BulkCliTest, RetriesAreReportedAndBounded) {
  server_.sampler().FailNextCalls(1, grpc::StatusCode::UNAVAILABLE);
  CliResult result =
      Run({"sample", "--labels", "1,2", "--retry_backoff_s", "0", "--npz", Path("a.npz")});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.err,
              HasSubstr("gd: retrying a request (1 retry so far): UNAVAILABLE: injected failure"));
  EXPECT_THAT(result.out, HasSubstr("1 retried"));

  server_.sampler().FailNextCalls(5, grpc::StatusCode::RESOURCE_EXHAUSTED);
  result = Run({"sample", "--labels", "1,2", "--max_retries", "1", "--retry_backoff_s", "0",
                "--npz", Path("b.npz")});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr("gd: RESOURCE_EXHAUSTED: injected failure 2 of 5 (gave up "
                                    "after 1 retry, the limit); the 0 images finished are kept"));
  EXPECT_THAT(result.err, HasSubstr("the same command with --resume"));
}

// kill -9 in the middle of a run, then --resume: what was written stays, only the rest is asked.
TEST_F(BulkCliTest, ResumeAfterKillNineSamplesOnlyWhatIsMissing) {
  server_.sampler().SetDelay(absl::Milliseconds(100));
  const std::vector<std::string> args = {"sample",
                                         "--num_samples",
                                         "40",
                                         "--balanced_labels",
                                         "--images_per_request",
                                         "2",
                                         "--concurrency",
                                         "1",
                                         "--npz",
                                         Path("out.npz")};
  const pid_t pid = Start(args, /*with_server=*/true);
  ASSERT_GT(pid, 0);
  const std::string parts = Path("out.npz.parts");
  auto part_count = [&] {
    int count = 0;
    std::error_code error;
    for (const auto& entry : fs::directory_iterator(parts, error)) {
      count += entry.path().extension() == ".npz";
    }
    return count;
  };
  for (int i = 0; i < 3000 && part_count() < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  EXPECT_EQ(WaitForExit(pid), 128 + SIGKILL);
  const int kept = part_count();
  ASSERT_GE(kept, 3);
  ASSERT_LT(kept, 20) << "the run finished before it could be interrupted";
  EXPECT_FALSE(fs::exists(Path("out.npz")));

  server_.sampler().SetDelay(absl::ZeroDuration());
  const size_t requests_before = server_.sampler().sample_requests().size();
  std::vector<std::string> resume = args;
  resume.push_back("--resume");
  CliResult result = Run(resume);
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.out, HasSubstr(absl::StrCat(2 * kept, " resumed")));
  std::vector<v1::SampleRequest> requests = server_.sampler().sample_requests();
  requests.erase(requests.begin(), requests.begin() + requests_before);
  EXPECT_EQ(requests.size(), static_cast<size_t>(20 - kept));
  for (const v1::SampleRequest& request : requests) {
    EXPECT_GE(request.first_image_index(), 2u * kept);  // parts are written in order here
  }
  absl::StatusOr<SampleSet> npz = ReadNpz(Path("out.npz"));
  ASSERT_TRUE(npz.ok()) << npz.status();
  EXPECT_EQ(npz->images->data, ExpectedPixels(40));
  EXPECT_FALSE(fs::exists(parts));
}

TEST_F(BulkCliTest, BadRunFlagsFailBeforeAnyCall) {
  ExpectUsageErrors({
      {{"sample", "--num_samples", "4", "--resume"}, "--resume needs --npz"},
      {{"sample", "--labels", "1", "--balanced_labels", "--num_samples", "1"},
       "give one of --labels, --balanced_labels and --random_labels"},
      {{"sample", "--balanced_labels"}, "--balanced_labels needs --num_samples N"},
      {{"sample", "--num_samples", "4", "--concurrency", "0"}, "--concurrency = 0 is outside"},
      {{"sample", "--num_samples", "4", "--max_retries", "101"}, "--max_retries = 101"},
      {{"sample", "--num_samples", "4", "--retry_backoff_s", "-1"}, "--retry_backoff_s = -1"},
      {{"sample", "--num_samples", "4", "--min_tile_px", "5000"}, "--min_tile_px = 5000"},
      {{"stream", "--num_samples", "4", "--concurrency", "3"},
       "--concurrency does not apply to `gd stream` (it is for gd sample"},
      {{"stream", "--num_samples", "4", "--random_labels"},
       "--random_labels does not apply to `gd stream`"},
  });
}

}  // namespace
}  // namespace gd::client
