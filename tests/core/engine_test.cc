// core/engine: continuous batching, determinism, parity through the engine, validation,
// back-pressure, cancellation, deadlines and shutdown, on the parity fixture's model; and the
// allocator settings the engine's binaries run with.
#include <sys/resource.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <future>
#include <fstream>
#include <numeric>
#include <random>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/engine/allocator.h"
#include "core/engine/engine.h"
#include "core/engine/intra_op_threads.h"
#include "core/engine/lanes.h"
#include "core/nn/model_bundle.h"
#include "tests/testing/testing.h"

namespace gd {
namespace {

using std::chrono::milliseconds;

// Collects a job's events; OnFinished fulfils a future.
class Collector : public JobObserver {
 public:
  void OnAdmitted(int64_t total_steps) override { admitted_steps = total_steps; }
  void OnStep(const StepUpdate& update) override {
    std::lock_guard<std::mutex> lock(mu);
    steps.push_back(update);
    if (on_step) on_step(update);
  }
  void OnFinished(absl::StatusOr<JobResult> result) override { done.set_value(std::move(result)); }

  absl::StatusOr<JobResult> Wait() {
    auto future = done.get_future();
    if (future.wait_for(std::chrono::seconds(300)) != std::future_status::ready) {
      return absl::DeadlineExceededError("test timed out waiting for the engine");
    }
    return future.get();
  }

  std::mutex mu;
  std::vector<StepUpdate> steps;
  std::function<void(const StepUpdate&)> on_step;
  std::atomic<int64_t> admitted_steps{0};
  std::promise<absl::StatusOr<JobResult>> done;
};

struct Fixture {
  std::shared_ptr<ModelBundle> bundle;
  std::map<std::string, torch::Tensor> tensors;
  nlohmann::json json;
};

const Fixture& Load() {
  static const Fixture* f = [] {
    auto* fx = new Fixture;
    const testing::ParityFixture& fixture = testing::Parity64();
    fx->json = fixture.json;
    fx->tensors = fixture.tensors;
    auto bundle = LoadModelBundle(fixture.Spec(), torch::kCPU, Precision::kFloat32);
    if (bundle.ok()) fx->bundle = *bundle;
    return fx;
  }();
  return *f;
}

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GD_REQUIRE_PARITY_FIXTURES();
    ASSERT_NE(Load().bundle, nullptr);
  }
  std::unique_ptr<Engine> MakeEngine(EngineOptions options = {}) {
    auto engine = Engine::Create(Load().bundle, options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return std::move(*engine);
  }
  torch::Tensor T(const std::string& key) { return Load().tensors.at(key); }
  std::vector<int64_t> Labels() {
    const torch::Tensor y = T("y");
    return {y[0].item<int64_t>(), y[1].item<int64_t>()};
  }
  SampleJob GuidedDdim(double eta = 0) {
    SampleJob job;
    job.labels = Labels();
    job.classifier_scale = Load().json["classifier_scale"];
    job.sampler = SamplerKind::kDdim;
    job.eta = eta;
    job.timestep_respacing = Load().json["ddim_respacing"];
    job.noise = T("x_T");
    return job;
  }
};

TEST_F(EngineTest, DdimEta0WithNoiseEqualsTheReferenceStepByStep) {
  auto engine = MakeEngine();
  auto collector = std::make_shared<Collector>();
  SampleJob job = GuidedDdim();
  job.stream_every = 1;
  job.stream_x_t = true;
  job.stream_pred_xstart = true;
  ASSERT_TRUE(engine->Submit(job, collector).ok());
  auto result = collector->Wait();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(testing::TensorsClose(result->samples, T("ddim_eta0_guided_sample"), 1e-4));
  ASSERT_EQ(collector->steps.size(), 10u);
  std::vector<torch::Tensor> xs, x0s;
  for (size_t i = 0; i < collector->steps.size(); ++i) {
    const StepUpdate& s = collector->steps[i];
    EXPECT_EQ(s.step, static_cast<int64_t>(i));
    EXPECT_EQ(s.total_steps, 10);
    xs.push_back(s.x_t);
    x0s.push_back(s.pred_xstart);
  }
  EXPECT_EQ(collector->steps.front().timestep, 900);  // ddim10 over 1000 steps: 900, 800, ... 0
  EXPECT_EQ(collector->steps.back().timestep, 0);
  EXPECT_TRUE(testing::TensorsClose(torch::stack(xs), T("ddim_eta0_guided_traj_x"), 1e-4));
  EXPECT_TRUE(
      testing::TensorsClose(torch::stack(x0s), T("ddim_eta0_guided_traj_pred_xstart"), 1e-4));
  EXPECT_EQ(result->steps, 10);
}

TEST_F(EngineTest, UnguidedDdimWithNoiseEqualsTheReference) {
  auto engine = MakeEngine();
  auto collector = std::make_shared<Collector>();
  SampleJob job = GuidedDdim();
  job.classifier_scale = 0;
  ASSERT_TRUE(engine->Submit(job, collector).ok());
  auto result = collector->Wait();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(testing::TensorsClose(result->samples, T("ddim_eta0_unguided_sample"), 1e-4));
}

// Runs `jobs` one at a time on a fresh engine.
std::vector<torch::Tensor> RunAlone(EngineTest* test, const std::vector<SampleJob>& jobs) {
  std::vector<torch::Tensor> out;
  for (const auto& job : jobs) {
    auto engine = Engine::Create(Load().bundle, {});
    auto collector = std::make_shared<Collector>();
    EXPECT_TRUE((*engine)->Submit(job, collector).ok());
    auto result = collector->Wait();
    EXPECT_TRUE(result.ok()) << result.status();
    out.push_back(result.ok() ? result->samples : torch::Tensor());
  }
  return out;
}

TEST_F(EngineTest, MixedRequestsShareForwardsAndMatchTheirSoloRuns) {
  // Different samplers, respacings, scales, etas and clip settings in one batch. The respacings
  // are DDIM-strided: they skip t = 999, where the cosine schedule's alpha_bar ~ 1e-9 multiplies
  // the x_0 prediction's float rounding by ~3e4 (the fixture README's caveat), so that a
  // forward's last-bit differences between batch sizes cannot dominate the comparison.
  std::vector<SampleJob> jobs(4);
  jobs[0].labels = {3, 7};
  jobs[0].classifier_scale = 10;
  jobs[0].sampler = SamplerKind::kDdim;
  jobs[0].timestep_respacing = "ddim10";
  jobs[0].seed = 11;
  jobs[1].labels = {5};
  jobs[1].sampler = SamplerKind::kDdpm;
  jobs[1].timestep_respacing = "ddim8";
  jobs[1].seed = 12;
  jobs[2].labels = {999};
  jobs[2].classifier_scale = 2;
  jobs[2].sampler = SamplerKind::kDdpm;
  jobs[2].timestep_respacing = "ddim12";
  jobs[2].clip_denoised = false;
  jobs[2].seed = 13;
  jobs[3].labels = {1, 2};
  jobs[3].sampler = SamplerKind::kDdim;
  jobs[3].eta = 0.7;
  jobs[3].timestep_respacing = "ddim5";
  jobs[3].seed = 14;
  const std::vector<torch::Tensor> alone = RunAlone(this, jobs);

  // All four submitted before the worker takes the first, so they are admitted together.
  EngineOptions options;
  options.max_batch = 8;
  auto engine = MakeEngine(options);
  std::vector<std::shared_ptr<Collector>> collectors;
  for (const auto& job : jobs) {
    collectors.push_back(std::make_shared<Collector>());
    ASSERT_TRUE(engine->Submit(job, collectors.back()).ok());
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    auto result = collectors[i]->Wait();
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_TRUE(testing::TensorsClose(result->samples, alone[i], testing::kBatchTolerance)) << "job " << i;
  }
  const EngineStats stats = engine->stats();
  EXPECT_GE(stats.max_requests_in_batch, 2);
  EXPECT_GE(stats.max_batch_seen, 3);
  // Solo, the jobs need 10 + 8 + 12 + 5 forwards; together far fewer.
  EXPECT_LT(stats.iterations, 35);
  EXPECT_EQ(stats.slot_steps, 2 * 10 + 1 * 8 + 1 * 12 + 2 * 5);
  EXPECT_EQ(stats.images_completed, 6);
  EXPECT_GT(stats.classifier_calls, 0);
}

TEST_F(EngineTest, LanesSplitTheNetworksAndMatchOneLane) {
  // Two lanes of one thread each. Together the first four requests are five rows (guided,
  // unguided x 3, guided): lanes of guided and unguided rows; the last request alone is three
  // guided rows, split two and one. Every image matches its request run alone on one lane.
  std::vector<SampleJob> jobs(4);
  for (size_t i = 0; i < jobs.size(); ++i) {
    jobs[i].labels = {static_cast<int64_t>(3 * i)};
    jobs[i].classifier_scale = (i == 0 || i == 3) ? 4 : 0;
    jobs[i].sampler = SamplerKind::kDdim;
    jobs[i].timestep_respacing = "ddim4";
    jobs[i].seed = 20 + i;
  }
  jobs[1].labels = {1, 2};
  SampleJob three = jobs[0];
  three.labels = {4, 5, 6};
  three.seed = 30;
  jobs.push_back(three);
  const std::vector<torch::Tensor> alone = RunAlone(this, jobs);

  EngineOptions options;
  options.lanes = 2;
  options.threads = 2;
  auto engine = MakeEngine(options);
  ASSERT_NE(engine, nullptr);
  auto run = [&](size_t first, size_t end) {
    std::vector<std::shared_ptr<Collector>> collectors;
    for (size_t i = first; i < end; ++i) {
      collectors.push_back(std::make_shared<Collector>());
      ASSERT_TRUE(engine->Submit(jobs[i], collectors.back()).ok());
    }
    for (size_t i = first; i < end; ++i) {
      auto result = collectors[i - first]->Wait();
      ASSERT_TRUE(result.ok()) << result.status();
      EXPECT_TRUE(testing::TensorsClose(result->samples, alone[i], testing::kBatchTolerance))
          << "job " << i;
    }
  };
  run(0, 4);
  run(4, 5);
  const EngineStats stats = engine->stats();
  // Every batch of two or more rows split (the first request may have started alone).
  EXPECT_GT(stats.split_iterations, 0);
  EXPECT_EQ(stats.split_iterations, stats.iterations - stats.batch_size_counts[1]);
  // The lanes' time of those iterations is counted, and its idle part is a part of it.
  EXPECT_GT(stats.lane_seconds, 0);
  EXPECT_GE(stats.lane_idle_seconds, 0);
  EXPECT_LT(stats.lane_idle_seconds, stats.lane_seconds);
  EXPECT_EQ(stats.slot_steps, 8 * 4);
  EXPECT_EQ(stats.images_completed, 8);
}

TEST_F(EngineTest, OneLaneRunsNoSplit) {
  auto engine = MakeEngine();
  auto collector = std::make_shared<Collector>();
  SampleJob job = GuidedDdim();
  ASSERT_TRUE(engine->Submit(job, collector).ok());
  ASSERT_TRUE(collector->Wait().ok());
  EXPECT_EQ(engine->stats().split_iterations, 0);
  EXPECT_EQ(engine->stats().lane_seconds, 0);
}

TEST_F(EngineTest, LanesAreCheckedAtCreate) {
  EngineOptions options;
  options.lanes = 0;
  auto engine = Engine::Create(Load().bundle, options);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(engine.status().message().find("lanes = 0"), std::string::npos) << engine.status();
}

TEST(IntraOpThreads, AThreadsCountIsItsOwn) {
  ASSERT_TRUE(PerThreadIntraOpThreadsWork()) << "LibTorch without OpenMP: engine lanes refused";
  const int main_threads = at::get_num_threads();
  std::thread other([&] {
    EXPECT_TRUE(SetIntraOpThreadsOfThisThread(main_threads + 1));
    EXPECT_EQ(at::get_num_threads(), main_threads + 1);
  });
  other.join();
  EXPECT_EQ(at::get_num_threads(), main_threads);
}

TEST(IntraOpThreads, TwoLanesByDefaultOnACpuWithTwoThreads) {
  ASSERT_TRUE(PerThreadIntraOpThreadsWork()) << "LibTorch without OpenMP: engine lanes refused";
  EXPECT_EQ(DefaultLanes(/*on_cpu=*/true, 2), 2);
  EXPECT_EQ(DefaultLanes(/*on_cpu=*/true, 16), 2);
  EXPECT_EQ(DefaultLanes(/*on_cpu=*/true, 1), 1);  // nothing to split the threads into
  EXPECT_EQ(DefaultLanes(/*on_cpu=*/false, 16), 1);
}

TEST(DealRowsToLanes, SpreadsTheGuidedRowsAndTheRestEvenly) {
  using Lanes = std::vector<std::vector<int64_t>>;
  // A guided request of 4 ahead of an unguided one of 4: by position, one lane would get all
  // the classifier's work.
  EXPECT_EQ(DealRowsToLanes(8, {0, 1, 2, 3}, 2), (Lanes{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  EXPECT_EQ(DealRowsToLanes(5, {0, 4}, 2), (Lanes{{0, 1, 3}, {2, 4}}));
  EXPECT_EQ(DealRowsToLanes(7, {}, 3), (Lanes{{0, 3, 6}, {1, 4}, {2, 5}}));
  EXPECT_EQ(DealRowsToLanes(3, {1}, 1), (Lanes{{0, 1, 2}}));
  std::mt19937 random(7);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t rows = 1 + static_cast<int64_t>(random() % 40), lanes = 1 + static_cast<int64_t>(random() % 4);
    std::vector<int64_t> guided;
    for (int64_t r = 0; r < rows; ++r) {
      if (random() % 3 == 0) guided.push_back(r);
    }
    const Lanes dealt = DealRowsToLanes(rows, guided, lanes);
    ASSERT_EQ(static_cast<int64_t>(dealt.size()), lanes);
    std::vector<int64_t> seen, guided_per_lane, rows_per_lane;
    for (const auto& lane : dealt) {
      EXPECT_TRUE(std::is_sorted(lane.begin(), lane.end()));
      seen.insert(seen.end(), lane.begin(), lane.end());
      rows_per_lane.push_back(static_cast<int64_t>(lane.size()));
      guided_per_lane.push_back(std::count_if(lane.begin(), lane.end(), [&](int64_t r) {
        return std::binary_search(guided.begin(), guided.end(), r);
      }));
    }
    std::sort(seen.begin(), seen.end());
    std::vector<int64_t> all(static_cast<size_t>(rows));
    std::iota(all.begin(), all.end(), int64_t{0});
    EXPECT_EQ(seen, all) << "every row in exactly one lane";
    const auto spread = [](const std::vector<int64_t>& v) {
      return *std::max_element(v.begin(), v.end()) - *std::min_element(v.begin(), v.end());
    };
    EXPECT_LE(spread(rows_per_lane), 1);
    EXPECT_LE(spread(guided_per_lane), 1);
  }
}

TEST_F(EngineTest, SameSeedSameImagesDifferentSeedDifferentImages) {
  auto engine = MakeEngine();
  SampleJob job;
  job.labels = {1, 1};
  job.sampler = SamplerKind::kDdpm;
  job.timestep_respacing = "4";
  job.seed = 5;
  auto a = std::make_shared<Collector>(), b = std::make_shared<Collector>(),
       c = std::make_shared<Collector>();
  ASSERT_TRUE(engine->Submit(job, a).ok());
  ASSERT_TRUE(engine->Submit(job, b).ok());
  job.seed = 6;
  ASSERT_TRUE(engine->Submit(job, c).ok());
  auto ra = a->Wait(), rb = b->Wait(), rc = c->Wait();
  ASSERT_TRUE(ra.ok() && rb.ok() && rc.ok());
  // Two identical requests may share or not share a batch: equal within the documented tolerance.
  EXPECT_TRUE(testing::TensorsClose(ra->samples, rb->samples, testing::kBatchTolerance));
  EXPECT_GT(testing::RelativeError(ra->samples, rc->samples), 1e-2);
  // Images of one request use different streams.
  EXPECT_GT(testing::RelativeError(ra->samples[0], ra->samples[1]), 1e-2);
}

TEST_F(EngineTest, ValidationNamesTheFieldValueAndRange) {
  auto engine = MakeEngine();
  auto expect_invalid = [&](SampleJob job, const std::string& needle) {
    auto handle = engine->Submit(job, std::make_shared<Collector>());
    ASSERT_FALSE(handle.ok()) << needle;
    EXPECT_EQ(handle.status().code(), absl::StatusCode::kInvalidArgument) << handle.status();
    EXPECT_NE(handle.status().message().find(needle), std::string::npos) << handle.status();
  };
  SampleJob ok;
  ok.labels = {1, 2};
  SampleJob j = ok;
  j.labels = {1, 2, 1200};
  expect_invalid(j, "labels[2] = 1200 is outside [0, 1000) for model \"parity\"");
  j = ok;
  j.labels = {-1};
  expect_invalid(j, "labels[0] = -1");
  j = ok;
  j.num_samples = 3;
  expect_invalid(j, "num_samples = 3 does not match 2 labels");
  j = ok;
  j.labels.clear();
  j.num_samples = 2;
  expect_invalid(j, "class-conditional");
  j = ok;
  j.labels.clear();
  expect_invalid(j, "num_samples = 0");
  j = ok;
  j.classifier_scale = -1;
  expect_invalid(j, "classifier_scale = -1");
  j = ok;
  j.classifier_scale = std::nan("");
  expect_invalid(j, "classifier_scale = nan");
  j = ok;
  j.eta = 0.5;
  expect_invalid(j, "eta = 0.5 applies to DDIM only");
  j = ok;
  j.sampler = SamplerKind::kDdim;
  j.eta = 1.5;
  expect_invalid(j, "eta = 1.5 is outside [0, 1]");
  j = ok;
  j.timestep_respacing = "ddim7x";
  expect_invalid(j, "timestep_respacing");
  j = ok;
  j.timestep_respacing = "2000";
  expect_invalid(j, "cannot divide");
  j = ok;
  j.noise = torch::zeros({2, 3, 32, 32});
  expect_invalid(j, "noise has shape [2, 3, 32, 32]");
  j = ok;
  j.labels.assign(40, 1);
  expect_invalid(j, "40 images exceed max_images_per_request = 32");
  EXPECT_EQ(engine->stats().jobs_submitted, 0);
}

TEST_F(EngineTest, GuidanceWithoutClassifierIsRefused) {
  ModelBundle copy = *Load().bundle;
  copy.classifier = EncoderUNetModel(nullptr);
  copy.classifier_config.reset();
  auto engine = Engine::Create(std::make_shared<ModelBundle>(copy), {});
  ASSERT_TRUE(engine.ok());
  SampleJob job;
  job.labels = {1};
  job.classifier_scale = 1;
  auto handle = (*engine)->Submit(job, std::make_shared<Collector>());
  ASSERT_FALSE(handle.ok());
  EXPECT_NE(handle.status().message().find("needs a classifier"), std::string::npos);
}

TEST_F(EngineTest, AFullQueueIsResourceExhausted) {
  EngineOptions options;
  options.max_batch = 1;
  options.max_queue_images = 2;
  auto engine = MakeEngine(options);
  SampleJob job;
  job.labels = {1};
  job.timestep_respacing = "50";
  std::vector<std::shared_ptr<Collector>> collectors;
  std::vector<std::shared_ptr<JobHandle>> handles;
  absl::Status last;
  for (int i = 0; i < 6 && last.ok(); ++i) {
    collectors.push_back(std::make_shared<Collector>());
    auto handle = engine->Submit(job, collectors.back());
    if (handle.ok()) handles.push_back(*handle);
    last = handle.status();
  }
  EXPECT_EQ(last.code(), absl::StatusCode::kResourceExhausted) << last;
  EXPECT_NE(last.message().find("max_queue_images = 2"), std::string::npos);
  for (auto& h : handles) h->Cancel();
  for (size_t i = 0; i < handles.size(); ++i) {
    auto result = collectors[i]->Wait();
    EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  }
}

TEST_F(EngineTest, CancelledSlotsLeaveAndOthersFinish) {
  auto engine = MakeEngine();
  SampleJob slow;
  slow.labels = {1, 2};
  slow.timestep_respacing = "200";
  slow.stream_every = 1;
  SampleJob quick;
  quick.labels = {3};
  quick.timestep_respacing = "6";
  auto slow_collector = std::make_shared<Collector>();
  std::promise<void> third_step;
  std::atomic<bool> signalled{false};
  slow_collector->on_step = [&](const StepUpdate& u) {
    if (u.step == 2 && !signalled.exchange(true)) third_step.set_value();
  };
  auto handle = engine->Submit(slow, slow_collector);
  ASSERT_TRUE(handle.ok());
  auto quick_collector = std::make_shared<Collector>();
  ASSERT_TRUE(engine->Submit(quick, quick_collector).ok());
  third_step.get_future().wait();
  (*handle)->Cancel();
  auto slow_result = slow_collector->Wait();
  EXPECT_EQ(slow_result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_LT(slow_collector->steps.size(), 20u) << "cancelled slots leave at the next iteration";
  auto quick_result = quick_collector->Wait();
  EXPECT_TRUE(quick_result.ok()) << quick_result.status();
  // The engine keeps serving.
  auto again = std::make_shared<Collector>();
  ASSERT_TRUE(engine->Submit(quick, again).ok());
  EXPECT_TRUE(again->Wait().ok());
  EXPECT_EQ(engine->stats().jobs_cancelled, 1);
  EXPECT_EQ(engine->stats().active_slots, 0);
}

TEST_F(EngineTest, DeadlinesEndRequests) {
  auto engine = MakeEngine();
  SampleJob job;
  job.labels = {1};
  job.timestep_respacing = "500";
  job.deadline = std::chrono::steady_clock::now() + milliseconds(300);
  auto collector = std::make_shared<Collector>();
  ASSERT_TRUE(engine->Submit(job, collector).ok());
  auto result = collector->Wait();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded) << result.status();
}

TEST_F(EngineTest, ShutdownFailsWhatCannotFinish) {
  auto engine = MakeEngine();
  SampleJob job;
  job.labels = {1};
  job.timestep_respacing = "500";
  auto collector = std::make_shared<Collector>();
  ASSERT_TRUE(engine->Submit(job, collector).ok());
  engine->Shutdown(std::chrono::steady_clock::now() + milliseconds(200));
  auto result = collector->Wait();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
  auto refused = engine->Submit(job, std::make_shared<Collector>());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
}

// Minor page faults of this process so far.
long MinorFaults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

// What a sampling step does to the heap: allocates, writes and frees blocks of a few MB, 128 MB
// in all, and again at the next step. Returns the page faults of one such step.
constexpr size_t kStepBlock = 16 << 20;
constexpr int kStepBlocks = 8;
long FaultsOfOneStep() {
  const long before = MinorFaults();
  std::vector<void*> blocks;
  for (int i = 0; i < kStepBlocks; ++i) {
    blocks.push_back(std::malloc(kStepBlock));
    std::memset(blocks.back(), i, kStepBlock);
  }
  for (void* block : blocks) std::free(block);
  return MinorFaults() - before;
}

TEST(Allocator, FreedMemoryIsReusedWithoutFaultingItInAgain) {
  const std::string what = ConfigureAllocator();
#if defined(__GLIBC__)
  EXPECT_EQ(what, "freed memory kept for reuse (mmap threshold 32 MiB, no trimming)");
  FaultsOfOneStep();  // the first step maps its memory
  const long pages = static_cast<long>(kStepBlocks * kStepBlock / 4096);
  long later = 0;
  for (int step = 0; step < 4; ++step) later += FaultsOfOneStep();
  // glibc's defaults would unmap or trim all 128 MB after each step: ~32,768 faults per step.
  EXPECT_LT(later, pages / 10) << "page faults in 4 steps after the first";
#else
  GTEST_SKIP() << what;
#endif
}

}  // namespace
}  // namespace gd
