// core/engine on the bundled model (no fixtures needed): DPM-Solver++ sharing batches with DDPM
// and DDIM, per-image streams across requests, the queue's count under cancellation and
// deadlines, the classifier-scale bound, faults in the networks, and the number of tensor
// operations an iteration dispatches outside the networks.
#include <atomic>
#include <future>
#include <set>

#include <ATen/record_function.h>
#include <gtest/gtest.h>

#include "core/engine/engine.h"
#include "core/nn/model_bundle.h"
#include "tests/testing/testing.h"

namespace gd {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

std::shared_ptr<ModelBundle> Bundled() {
  static std::shared_ptr<ModelBundle> bundle = [] {
    auto spec = ReadModelDir(testing::SourceDir() + "/models/fashion-mnist");
    EXPECT_TRUE(spec.ok()) << spec.status();
    auto b = LoadModelBundle(*spec, torch::kCPU, Precision::kFloat32);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? *b : nullptr;
  }();
  return bundle;
}

// Records every event; counts OnFinished calls (the contract is exactly one).
class Recorder : public JobObserver {
 public:
  void OnStep(const StepUpdate& update) override {
    std::lock_guard<std::mutex> lock(mu);
    steps.push_back(update);
  }
  void OnFinished(absl::StatusOr<JobResult> result) override {
    if (finished.fetch_add(1) == 0) done.set_value(std::move(result));
  }
  absl::StatusOr<JobResult> Wait(seconds limit = seconds(300)) {
    auto future = done.get_future();
    if (future.wait_for(limit) != std::future_status::ready) {
      return absl::DeadlineExceededError("test timed out waiting for the engine");
    }
    return future.get();
  }
  std::mutex mu;
  std::vector<StepUpdate> steps;
  std::atomic<int> finished{0};
  std::promise<absl::StatusOr<JobResult>> done;
};

std::unique_ptr<Engine> MakeEngine(EngineOptions options = {}) {
  auto engine = Engine::Create(Bundled(), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

SampleJob Dpm(std::vector<int64_t> labels, int64_t order, int64_t steps, double scale,
              uint64_t seed) {
  SampleJob job;
  job.labels = std::move(labels);
  job.sampler = SamplerKind::kDpmSolverPP;
  job.solver_order = order;
  job.steps = steps;
  job.classifier_scale = scale;
  job.seed = seed;
  return job;
}

absl::StatusOr<JobResult> RunAlone(const SampleJob& job) {
  auto engine = MakeEngine();
  auto recorder = std::make_shared<Recorder>();
  auto handle = engine->Submit(job, recorder);
  if (!handle.ok()) return handle.status();
  return recorder->Wait();
}

double MaxAbs(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

TEST(EngineLifecycleTest, AMixedBatchGivesEachRequestWhatItGetsAlone) {
  ASSERT_NE(Bundled(), nullptr);
  std::vector<SampleJob> jobs = {Dpm({1, 2}, 1, 6, 3, 1), Dpm({3}, 2, 10, 0, 2),
                                 Dpm({4, 5}, 3, 8, 5, 3)};
  SampleJob ddim;
  ddim.labels = {6};
  ddim.sampler = SamplerKind::kDdim;
  ddim.timestep_respacing = "ddim7";
  ddim.classifier_scale = 2;
  ddim.seed = 4;
  jobs.push_back(ddim);
  SampleJob ddpm;
  ddpm.num_samples = 2;
  ddpm.timestep_respacing = "9";
  ddpm.seed = 5;
  jobs.push_back(ddpm);
  jobs[1].dynamic_thresholding_ratio = 0.995;
  jobs[4].dynamic_thresholding_ratio = 0.9;

  std::vector<torch::Tensor> alone;
  for (const auto& job : jobs) {
    auto r = RunAlone(job);
    ASSERT_TRUE(r.ok()) << r.status();
    alone.push_back(r->samples);
  }
  auto engine = MakeEngine();
  std::vector<std::shared_ptr<Recorder>> recorders;
  for (const auto& job : jobs) {
    recorders.push_back(std::make_shared<Recorder>());
    ASSERT_TRUE(engine->Submit(job, recorders.back()).ok());
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    auto r = recorders[i]->Wait();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_LE(MaxAbs(r->samples, alone[i]), testing::kBatchTolerance) << "job " << i;
    EXPECT_LE(r->samples.abs().max().item<float>(), 1.0f) << "job " << i;
    EXPECT_EQ(recorders[i]->finished.load(), 1);
  }
  const EngineStats stats = engine->stats();
  EXPECT_GE(stats.max_requests_in_batch, 4);
  EXPECT_EQ(stats.slot_steps, 2 * 6 + 1 * 10 + 2 * 8 + 1 * 7 + 2 * 9);
  EXPECT_LT(stats.iterations, 6 + 10 + 8 + 7 + 9);
}

TEST(EngineLifecycleTest, ImageIDrawsFromStreamSeedIWhateverTheRequestSplit) {
  SampleJob whole;
  whole.num_samples = 4;
  whole.sampler = SamplerKind::kDdpm;  // draws noise at every step, not only x_T
  whole.timestep_respacing = "6";
  whole.seed = 77;
  auto all = RunAlone(whole);
  ASSERT_TRUE(all.ok()) << all.status();
  SampleJob tail = whole;
  tail.num_samples = 2;
  tail.first_image_index = 2;
  auto part = RunAlone(tail);
  ASSERT_TRUE(part.ok()) << part.status();
  EXPECT_LE(MaxAbs(part->samples, all->samples.narrow(0, 2, 2)), testing::kBatchTolerance);
  EXPECT_GT(MaxAbs(part->samples, all->samples.narrow(0, 0, 2)), 0.1);
}

TEST(EngineLifecycleTest, DpmSolverStreamsContinuousTimesAndItsOwnValidation) {
  auto engine = MakeEngine();
  auto recorder = std::make_shared<Recorder>();
  SampleJob job = Dpm({7}, 2, 5, 3, 9);
  job.stream_every = 1;
  job.stream_pred_xstart = true;
  ASSERT_TRUE(engine->Submit(job, recorder).ok());
  auto result = recorder->Wait();
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(recorder->steps.size(), 5u);
  EXPECT_NEAR(recorder->steps.front().timestep, 1000.0 * 995 / 996, 1e-4);  // (1 - 1/996) * 1000
  for (size_t k = 1; k < 5; ++k) {
    EXPECT_LT(recorder->steps[k].timestep, recorder->steps[k - 1].timestep);
    EXPECT_NE(recorder->steps[k].timestep, std::round(recorder->steps[k].timestep));
  }
  // Clipped data predictions.
  EXPECT_LE(recorder->steps.back().pred_xstart.abs().max().item<float>(), 1.0f);

  auto refused = [&](SampleJob j, const std::string& fragment) {
    const absl::Status s = engine->Validate(j);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << fragment;
    EXPECT_NE(std::string(s.message()).find(fragment), std::string::npos) << s.message();
  };
  refused(Dpm({1}, 4, 10, 0, 0), "solver_order = 4 is not 1, 2 or 3");
  refused(Dpm({1}, 2, 0, 0, 0), "steps = 0 is outside [1, ");
  refused(Dpm({1}, 3, 2, 0, 0), "steps = 2 is below solver_order = 3");
  SampleJob eta = Dpm({1}, 2, 10, 0, 0);
  eta.eta = 0.5;
  refused(eta, "eta = 0.5 applies to DDIM only");
  SampleJob respaced = Dpm({1}, 2, 10, 0, 0);
  respaced.timestep_respacing = "ddim10";
  refused(respaced, "timestep_respacing \"ddim10\" applies to DDPM and DDIM");
  SampleJob ratio = Dpm({1}, 2, 10, 0, 0);
  ratio.dynamic_thresholding_ratio = 1.5;
  refused(ratio, "dynamic_thresholding_ratio = 1.5 is outside (0, 1]");
  ratio.dynamic_thresholding_ratio = 0.99;
  ratio.clip_denoised = false;
  refused(ratio, "clip_denoised = false asks for no correction");
  SampleJob ddim;
  ddim.labels = {1};
  ddim.sampler = SamplerKind::kDdim;
  ddim.timestep_respacing = "ddim10";
  ddim.steps = 15;
  refused(ddim, "steps = 15 applies to DPM-Solver++ only");
  ddim.steps = 0;
  ddim.solver_order = 2;
  refused(ddim, "solver_order = 2 applies to DPM-Solver++ only");
  ddim.solver_order = 0;
  ddim.skip_type = SkipType::kTimeUniform;
  refused(ddim, "skip_type = time_uniform applies to DPM-Solver++ only");
  EXPECT_EQ(engine->samplers(), (std::vector<SamplerKind>{SamplerKind::kDdpm, SamplerKind::kDdim,
                                                          SamplerKind::kDpmSolverPP}));
}

TEST(EngineLifecycleTest, StepLimitsAndTheScaleBound) {
  EngineOptions options;
  options.max_steps = 50;
  options.max_classifier_scale = 100;
  auto engine = MakeEngine(options);
  SampleJob job = Dpm({1}, 2, 51, 0, 0);
  EXPECT_NE(std::string(engine->Validate(job).message()).find("steps = 51 is outside [1, 50]"),
            std::string::npos);
  SampleJob ddpm;
  ddpm.num_samples = 1;  // the model's own process: 250 steps
  const absl::Status own = engine->Validate(ddpm);
  EXPECT_EQ(own.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(own.message()).find("the model's own process runs 250 steps; this server "
                                            "allows at most 50"),
            std::string::npos)
      << own.message();
  SampleJob huge = Dpm({1}, 2, 10, 1e30, 0);
  const absl::Status scale = engine->Validate(huge);
  EXPECT_EQ(scale.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(scale.message()).find("exceeds this server's max_classifier_scale = 100"),
            std::string::npos)
      << scale.message();
  EXPECT_TRUE(engine->Validate(Dpm({1}, 2, 10, 100, 0)).ok());
}

// A long request holds the only slots while others queue behind it.
struct Blocked {
  std::unique_ptr<Engine> engine;
  std::shared_ptr<Recorder> head;
  std::shared_ptr<JobHandle> head_handle;
};

Blocked BlockTheBatch(int64_t max_queue_images = 64) {
  EngineOptions options;
  options.max_batch = 4;
  options.max_queue_images = max_queue_images;
  Blocked b{MakeEngine(options), std::make_shared<Recorder>(), nullptr};
  SampleJob head;
  head.num_samples = 4;
  head.timestep_respacing = "250";
  auto handle = b.engine->Submit(head, b.head);
  EXPECT_TRUE(handle.ok());
  b.head_handle = *handle;
  // Wait until it holds the slots, so that what follows queues.
  for (int i = 0; i < 600 && b.engine->stats().active_slots < 4; ++i) {
    std::this_thread::sleep_for(milliseconds(50));
  }
  EXPECT_EQ(b.engine->stats().active_slots, 4);
  return b;
}

TEST(EngineLifecycleTest, DeadRequestsLeaveTheQueueAndItsCountAtOnce) {
  Blocked b = BlockTheBatch(/*max_queue_images=*/16);
  SampleJob job;
  job.num_samples = 4;
  job.timestep_respacing = "ddim5";
  // A live request that does not fit, then dead ones behind it (the defect: admission stopped at
  // the live head, so the dead behind it stayed counted).
  auto live = std::make_shared<Recorder>();
  ASSERT_TRUE(b.engine->Submit(job, live).ok());
  std::vector<std::shared_ptr<Recorder>> cancelled, expired;
  for (int i = 0; i < 2; ++i) {
    cancelled.push_back(std::make_shared<Recorder>());
    auto handle = b.engine->Submit(job, cancelled.back());
    ASSERT_TRUE(handle.ok());
    (*handle)->Cancel();
  }
  SampleJob short_deadline = job;
  short_deadline.deadline = Clock::now() + milliseconds(300);
  expired.push_back(std::make_shared<Recorder>());
  ASSERT_TRUE(b.engine->Submit(short_deadline, expired.back()).ok());
  // Cancelled ones stop counting at once; their observers hear CANCELLED.
  for (auto& r : cancelled) {
    auto status = r->Wait(seconds(10));
    EXPECT_EQ(status.status().code(), absl::StatusCode::kCancelled) << status.status();
  }
  // The expired one leaves at its deadline, as DEADLINE_EXCEEDED, while the head still runs.
  auto late = expired.back()->Wait(seconds(10));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kDeadlineExceeded) << late.status();
  EXPECT_NE(std::string(late.status().message()).find("while queued"), std::string::npos);
  EXPECT_EQ(b.engine->stats().queued_images, 4);  // only the live one
  // So a new request fits the queue again.
  auto another = std::make_shared<Recorder>();
  EXPECT_TRUE(b.engine->Submit(job, another).ok());
  EXPECT_EQ(b.engine->stats().queued_images, 8);
  b.head_handle->Cancel();
  EXPECT_TRUE(live->Wait().ok());
  EXPECT_TRUE(another->Wait().ok());
  EXPECT_EQ(b.engine->stats().jobs_cancelled, 4);  // 2 cancelled, 1 expired, the head
}

// How a 200-step run with the given deadline ends when its submitter cancels it `cancel_after`
// the submission (as gRPC does at the caller's deadline).
absl::Status StatusOfACancel(Engine& engine, milliseconds deadline_in, milliseconds cancel_after) {
  auto recorder = std::make_shared<Recorder>();
  SampleJob job = Dpm({1, 2}, 2, 200, 0, 0);
  job.deadline = Clock::now() + deadline_in;
  auto handle = engine.Submit(job, recorder);
  if (!handle.ok()) return handle.status();
  std::this_thread::sleep_for(cancel_after);
  (*handle)->Cancel();
  return recorder->Wait().status();
}

TEST(EngineLifecycleTest, ACancelledRequestThatPassedItsDeadlineIsDeadlineExceeded) {
  // What gRPC does at a deadline: it cancels the call. The engine reports why.
  auto engine = MakeEngine();
  const absl::Status status = StatusOfACancel(*engine, milliseconds(400), milliseconds(500));
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_NE(std::string(status.message()).find("steps"), std::string::npos);
}

TEST(EngineLifecycleTest, ACancelJustBeforeTheDeadlineIsTheCallersDeadline) {
  // The caller's deadline runs ahead of the server's copy by the call's transit time, so the
  // caller's transport can cancel a little before the server's deadline; a cancel well before it
  // is the caller's choice.
  auto engine = MakeEngine();
  for (const auto [left, code] : {std::pair{milliseconds(500), absl::StatusCode::kDeadlineExceeded},
                                  std::pair{milliseconds(30000), absl::StatusCode::kCancelled}}) {
    const absl::Status status =
        StatusOfACancel(*engine, milliseconds(200) + left, milliseconds(200));
    EXPECT_EQ(status.code(), code) << left.count() << " ms left: " << status;
  }
}

TEST(EngineLifecycleTest, CancellingAMultistepRunFreesItsSlots) {
  auto engine = MakeEngine();
  auto recorder = std::make_shared<Recorder>();
  SampleJob job = Dpm({1, 2, 3}, 3, 200, 2, 0);
  job.stream_every = 1;
  auto handle = engine->Submit(job, recorder);
  ASSERT_TRUE(handle.ok());
  for (int i = 0; i < 600; ++i) {
    {
      std::lock_guard<std::mutex> lock(recorder->mu);
      if (recorder->steps.size() >= 4) break;  // past the warm-up: history held
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  (*handle)->Cancel();
  auto r = recorder->Wait();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(engine->stats().active_slots, 0);
  EXPECT_EQ(recorder->finished.load(), 1);
  // The slots serve the next request.
  EXPECT_TRUE(RunAlone(Dpm({4}, 2, 4, 1, 0)).ok());
}

TEST(EngineLifecycleTest, ANetworkThatThrowsFailsOnlyItsIterationsRequestsOnce) {
  EngineOptions options;
  std::atomic<int64_t> throw_at{3};
  options.unet_output_hook = [&](int64_t iteration, torch::Tensor output) {
    if (iteration == throw_at.load()) throw std::runtime_error("injected fault in the UNet");
    return output;
  };
  auto engine = MakeEngine(options);
  // One request finishes exactly at the iteration before the fault; two are still running.
  auto done_first = std::make_shared<Recorder>();
  auto a = std::make_shared<Recorder>(), b = std::make_shared<Recorder>();
  ASSERT_TRUE(engine->Submit(Dpm({1}, 2, 3, 0, 0), done_first).ok());
  ASSERT_TRUE(engine->Submit(Dpm({2}, 2, 10, 1, 0), a).ok());
  ASSERT_TRUE(engine->Submit(Dpm({3}, 2, 10, 0, 0), b).ok());
  EXPECT_TRUE(done_first->Wait().ok());
  for (auto& r : {a, b}) {
    auto result = r->Wait();
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInternal);
    EXPECT_NE(std::string(result.status().message()).find("injected fault in the UNet"),
              std::string::npos)
        << result.status();
  }
  // The engine carries on.
  throw_at = -1;
  auto later = std::make_shared<Recorder>();
  ASSERT_TRUE(engine->Submit(Dpm({4}, 2, 3, 1, 0), later).ok());
  EXPECT_TRUE(later->Wait().ok());
  std::this_thread::sleep_for(milliseconds(100));
  for (auto& r : {done_first, a, b, later}) EXPECT_EQ(r->finished.load(), 1);
  EXPECT_EQ(engine->stats().jobs_failed, 2);
  EXPECT_EQ(engine->stats().active_slots, 0);
}

TEST(EngineLifecycleTest, NonFiniteRowsFailTheirRequestOnlyAtThatStep) {
  EngineOptions options;
  // Poison row 0 of iteration 1: the first request admitted (rows are grouped by sampler; both
  // requests are DPM-Solver++, the first admitted comes first).
  options.unet_output_hook = [](int64_t iteration, torch::Tensor output) {
    if (iteration != 1) return output;
    output = output.clone();
    output[0].fill_(std::numeric_limits<float>::quiet_NaN());
    return output;
  };
  auto engine = MakeEngine(options);
  auto poisoned = std::make_shared<Recorder>(), healthy = std::make_shared<Recorder>();
  const SampleJob first = Dpm({1}, 2, 6, 0, 0), second = Dpm({2, 3}, 2, 6, 2, 1);
  ASSERT_TRUE(engine->Submit(first, poisoned).ok());
  ASSERT_TRUE(engine->Submit(second, healthy).ok());
  auto bad = poisoned->Wait();
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(std::string(bad.status().message()).find("NaN or infinite values at step 1 of 6"),
            std::string::npos)
      << bad.status();
  auto good = healthy->Wait();
  ASSERT_TRUE(good.ok()) << good.status();
  auto alone = RunAlone(second);
  ASSERT_TRUE(alone.ok());
  EXPECT_LE(MaxAbs(good->samples, alone->samples), testing::kBatchTolerance);
}

// ---- Operations per iteration -------------------------------------------------------------------

// Counts the ATen operators the engine calls directly inside each iteration, leaving out those
// inside the networks and inside completing a finished request (once per request, not per step)
// and operators nested in other operators. Views (narrow, select, ...) launch no kernels and are
// counted apart.
class OpCounter {
 public:
  OpCounter() {
    handle_ = at::addGlobalCallback(at::RecordFunctionCallback(&OpCounter::Start, &OpCounter::End));
  }
  ~OpCounter() { at::removeCallback(handle_); }
  struct Counts {
    int64_t ops = 0, views = 0;
    bool operator==(const Counts& o) const { return ops == o.ops && views == o.views; }
    friend std::ostream& operator<<(std::ostream& out, const Counts& c) {
      return out << c.ops << " operators and " << c.views << " views";
    }
  };
  // One entry per iteration, in order (the engine's worker is the only thread that iterates).
  static std::vector<Counts> iterations() {
    std::lock_guard<std::mutex> lock(mu_);
    return iterations_;
  }
  static void Reset() {
    std::lock_guard<std::mutex> lock(mu_);
    iterations_.clear();
  }

 private:
  struct Depth {
    int in_iteration = 0;  // nesting inside gd::engine::iteration
    int excluded = 0;      // nesting inside gd::engine::networks or ::complete
    int op_depth = 0;      // nesting of ordinary operators
  };
  static Depth& depth() {
    static thread_local Depth d;
    return d;
  }
  static bool Excluded(const std::string& name) {
    return name == "gd::engine::networks" || name == "gd::engine::complete";
  }
  static bool IsPhase(const std::string& name) { return name.rfind("gd::", 0) == 0; }
  static bool IsView(const std::string& name) {
    static const std::set<std::string> views = {"aten::narrow", "aten::slice", "aten::select",
                                                "aten::view", "aten::as_strided", "aten::alias",
                                                "aten::expand", "aten::unsqueeze", "aten::squeeze",
                                                "aten::detach"};
    return views.count(name) > 0;
  }
  static std::unique_ptr<at::ObserverContext> Start(const at::RecordFunction& fn) {
    Depth& d = depth();
    const std::string name = fn.name();
    if (name == "gd::engine::iteration") {
      ++d.in_iteration;
      std::lock_guard<std::mutex> lock(mu_);
      iterations_.emplace_back();
    } else if (Excluded(name)) {
      ++d.excluded;
    } else if (IsPhase(name)) {
      // The engine's other scopes (gather, update, report) only mark phases for profiles.
    } else {
      if (d.in_iteration > 0 && d.excluded == 0 && d.op_depth == 0) {
        std::lock_guard<std::mutex> lock(mu_);
        ++(IsView(name) ? iterations_.back().views : iterations_.back().ops);
      }
      ++d.op_depth;
    }
    return nullptr;
  }
  static void End(const at::RecordFunction& fn, at::ObserverContext*) {
    Depth& d = depth();
    const std::string name = fn.name();
    if (name == "gd::engine::iteration") {
      --d.in_iteration;
    } else if (Excluded(name)) {
      --d.excluded;
    } else if (!IsPhase(name)) {
      --d.op_depth;
    }
  }
  at::CallbackHandle handle_;
  static inline std::mutex mu_;
  static inline std::vector<Counts> iterations_;
};

// Operators in each iteration of `requests` requests of `images` images each (half guided), all
// in one batch from their first step to their last.
OpCounter::Counts OpsPerIteration(int64_t requests, int64_t images, SamplerKind kind) {
  EngineOptions options;
  options.max_batch = 64;
  auto engine = MakeEngine(options);
  std::vector<SampleJob> jobs;
  for (int64_t r = 0; r < requests; ++r) {
    SampleJob job;
    job.labels.assign(static_cast<size_t>(images), r % 10);
    job.classifier_scale = r % 2 == 0 ? 2 : 0;
    job.sampler = kind;
    job.seed = static_cast<uint64_t>(r);
    if (kind == SamplerKind::kDpmSolverPP) {
      job.steps = 4;
      job.solver_order = 3;
    } else {
      job.timestep_respacing = "4";
    }
    jobs.push_back(job);
  }
  OpCounter counter;
  OpCounter::Reset();
  // A request that fills the batch for its 2 steps holds the others in the queue, so that they
  // are admitted together when it leaves.
  SampleJob blocker;
  blocker.num_samples = options.max_batch;
  blocker.timestep_respacing = "2";
  auto blocking = std::make_shared<Recorder>();
  EXPECT_TRUE(engine->Submit(blocker, blocking).ok());
  std::vector<std::shared_ptr<Recorder>> recorders;
  for (const auto& job : jobs) {
    recorders.push_back(std::make_shared<Recorder>());
    EXPECT_TRUE(engine->Submit(job, recorders.back()).ok());
  }
  EXPECT_TRUE(blocking->Wait().ok());
  for (auto& r : recorders) EXPECT_TRUE(r->Wait().ok());
  EXPECT_EQ(engine->stats().iterations, 2 + 4);
  const std::vector<OpCounter::Counts> counts = OpCounter::iterations();
  EXPECT_EQ(counts.size(), 6u);
  if (counts.size() != 6u) return {};
  // Steps 2 and 3 of the run (before, a multistep run's history is still filling).
  EXPECT_EQ(counts[4], counts[5]);
  return counts[4];
}

TEST(EngineLifecycleTest, OperationsOutsideTheNetworksDoNotGrowWithTheBatch) {
  for (SamplerKind kind : {SamplerKind::kDdpm, SamplerKind::kDdim, SamplerKind::kDpmSolverPP}) {
    // Two requests of one image against two requests of 32 images: a batch of 2 and of 64.
    const OpCounter::Counts small = OpsPerIteration(2, 1, kind);
    const OpCounter::Counts large = OpsPerIteration(2, 32, kind);
    EXPECT_GT(small.ops, 10) << ToString(kind) << ": the counter saw nothing";
    EXPECT_EQ(small.ops, large.ops) << ToString(kind) << ": batch 2 vs batch 64";
    EXPECT_EQ(small.views, large.views) << ToString(kind);
  }
}

TEST(EngineLifecycleTest, OperationsThatLaunchKernelsDoNotGrowWithTheRequestCount) {
  // 2 against 32 single-image requests: only views of the batch (each request's rows) scale.
  for (SamplerKind kind : {SamplerKind::kDdpm, SamplerKind::kDpmSolverPP}) {
    const OpCounter::Counts two = OpsPerIteration(2, 1, kind);
    const OpCounter::Counts many = OpsPerIteration(32, 1, kind);
    EXPECT_EQ(two.ops, many.ops) << ToString(kind) << ": 2 requests vs 32";
    EXPECT_GT(many.views, two.views) << ToString(kind);
  }
}

}  // namespace
}  // namespace gd
