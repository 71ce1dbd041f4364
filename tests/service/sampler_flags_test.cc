// Tests of the sampler flags (client/sampler_settings.h): DPM-Solver++ and dynamic thresholding
// reach the request, contradictions are refused before any call; of `gd sample` and `gd stream`
// with them against the fake; and of the run progress display (client/progress.h).
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "client/progress.h"
#include "client/sampler_settings.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/service/cli_runner.h"
#include "tests/service/fake_sampler.h"

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

SamplerSettings DpmSolver() {
  SamplerSettings settings;
  settings.sampler = "dpm++";
  settings.steps = 15;
  return settings;
}

TEST(SamplerSettingsTest, DpmSolverFieldsReachTheRequest) {
  SamplerSettings settings = DpmSolver();
  settings.solver_order = 3;
  settings.skip_type = "time_quadratic";
  settings.dynamic_thresholding_ratio = 0.995;
  v1::SampleRequest request;
  ASSERT_TRUE(ApplySamplerSettings(settings, request).ok());
  EXPECT_EQ(request.sampler(), v1::SAMPLER_KIND_DPM_SOLVER_PP);
  EXPECT_EQ(request.steps(), 15u);
  EXPECT_EQ(request.solver_order(), 3u);
  EXPECT_EQ(request.skip_type(), v1::SKIP_TYPE_TIME_QUADRATIC);
  EXPECT_EQ(request.dynamic_thresholding_ratio(), 0.995);
  EXPECT_FALSE(request.has_clip_denoised());
  EXPECT_TRUE(request.timestep_respacing().empty());

  settings.skip_type = "LOGSNR";  // any case
  ASSERT_TRUE(ApplySamplerSettings(settings, request).ok());
  EXPECT_EQ(request.skip_type(), v1::SKIP_TYPE_LOGSNR);
}

TEST(SamplerSettingsTest, DdimKeepsItsRespacingAndMayThreshold) {
  SamplerSettings settings;
  settings.sampler = "ddim";
  settings.eta = 0.5;
  settings.timestep_respacing = "ddim25";
  settings.dynamic_thresholding_ratio = 0.9;
  settings.clip_denoised = true;
  v1::SampleRequest request;
  ASSERT_TRUE(ApplySamplerSettings(settings, request).ok());
  EXPECT_EQ(request.sampler(), v1::SAMPLER_KIND_DDIM);
  EXPECT_EQ(request.eta(), 0.5);
  EXPECT_EQ(request.timestep_respacing(), "ddim25");
  EXPECT_EQ(request.steps(), 0u);
  EXPECT_EQ(request.dynamic_thresholding_ratio(), 0.9);
  EXPECT_TRUE(request.clip_denoised().value());
}

TEST(SamplerSettingsTest, ContradictionsAreRefusedWithTheFlagAndValue) {
  struct Case {
    SamplerSettings settings;
    std::string message;
  };
  std::vector<Case> cases;
  auto with = [](SamplerSettings settings, auto change) {
    change(settings);
    return settings;
  };
  SamplerSettings ddim;
  ddim.sampler = "ddim";
  cases.push_back({with(DpmSolver(), [](auto& s) { s.eta = 0.3; }),
                   "--eta = 0.3 needs --sampler ddim (dpm++ has no eta)"});
  cases.push_back({with(SamplerSettings(), [](auto& s) { s.eta = 0.3; }),
                   "--eta = 0.3 needs --sampler ddim (ddpm has no eta)"});
  cases.push_back({with(DpmSolver(), [](auto& s) { s.timestep_respacing = "ddim25"; }),
                   "--timestep_respacing = \"ddim25\" does not apply to --sampler dpm++"});
  cases.push_back({with(ddim, [](auto& s) { s.steps = 15; }),
                   "--steps applies to --sampler dpm++ only; ddim takes its steps from "
                   "--timestep_respacing"});
  cases.push_back({with(SamplerSettings(), [](auto& s) { s.solver_order = 2; }),
                   "--solver_order applies to --sampler dpm++ only"});
  cases.push_back({with(ddim, [](auto& s) { s.skip_type = "logSNR"; }),
                   "--skip_type applies to --sampler dpm++ only"});
  cases.push_back(
      {with(DpmSolver(), [](auto& s) { s.steps = 0; }), "--sampler dpm++ needs --steps N"});
  cases.push_back({with(DpmSolver(), [](auto& s) { s.solver_order = 4; }),
                   "--solver_order = 4 is not 1, 2 or 3"});
  cases.push_back({with(DpmSolver(), [](auto& s) { s.skip_type = "cosine"; }),
                   "--skip_type = \"cosine\" is not one of logSNR, time_uniform, time_quadratic"});
  cases.push_back({with(DpmSolver(), [](auto& s) { s.dynamic_thresholding_ratio = 1.5; }),
                   "--dynamic_thresholding_ratio = 1.5 is outside (0, 1]"});
  cases.push_back({with(DpmSolver(),
                        [](auto& s) {
                          s.dynamic_thresholding_ratio = 0.995;
                          s.clip_denoised = false;
                        }),
                   "--dynamic_thresholding_ratio = 0.995 corrects the predicted x_0, which "
                   "--clip_denoised=false asks to leave alone"});
  cases.push_back({with(SamplerSettings(), [](auto& s) { s.sampler = "dpm"; }),
                   "--sampler = \"dpm\" is not one of ddpm, ddim, dpm++"});
  cases.push_back({with(ddim, [](auto& s) { s.timestep_respacing = "ddim0"; }),
                   "--timestep_respacing = \"ddim0\" is not N, ddimN or N1,N2,..."});
  for (const Case& c : cases) {
    v1::SampleRequest request;
    const absl::Status status = ApplySamplerSettings(c.settings, request);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(status.message(), HasSubstr(c.message));
  }
}

TEST(SamplerSettingsTest, SamplerNames) {
  EXPECT_EQ(SamplerName(v1::SAMPLER_KIND_UNSPECIFIED), "ddpm");
  EXPECT_EQ(SamplerName(v1::SAMPLER_KIND_DDPM), "ddpm");
  EXPECT_EQ(SamplerName(v1::SAMPLER_KIND_DDIM), "ddim");
  EXPECT_EQ(SamplerName(v1::SAMPLER_KIND_DPM_SOLVER_PP), "dpm++");
  EXPECT_EQ(SamplerName(77), "sampler 77");
}

TEST(SamplerSettingsTest, DescribeRequestNamesEverySettingInOneLine) {
  v1::SampleRequest request;
  request.set_num_samples(1);
  request.set_timestep_respacing("ddim25");
  request.set_sampler(v1::SAMPLER_KIND_DDIM);
  request.set_classifier_scale(2.5);
  request.set_seed(7);
  EXPECT_EQ(DescribeRequest(request),
            "model \"(default)\", 1 image, ddim, steps \"ddim25\", scale 2.5, seed 7");
  request.set_model("fm");
  request.add_labels(1);
  request.add_labels(2);
  request.set_sampler(v1::SAMPLER_KIND_DPM_SOLVER_PP);
  request.set_steps(15);
  EXPECT_EQ(DescribeRequest(request),
            "model \"fm\", 2 images, dpm++ order 2, steps 15, scale 2.5, seed 7");
  request.set_solver_order(3);
  EXPECT_THAT(DescribeRequest(request), HasSubstr("dpm++ order 3, steps 15"));
}

// ---- The CLI ------------------------------------------------------------------------------------

TEST_F(CliTest, SampleSendsDpmSolverSettings) {
  CliResult result =
      Run({"sample", "--labels", "1,2", "--sampler", "dpm++", "--steps", "15", "--solver_order",
           "3", "--skip_type", "time_uniform", "--dynamic_thresholding_ratio", "0.995"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.out, HasSubstr("15 steps"));
  const v1::SampleRequest seen = server_.sampler().last_request();
  EXPECT_EQ(seen.sampler(), v1::SAMPLER_KIND_DPM_SOLVER_PP);
  EXPECT_EQ(seen.steps(), 15u);
  EXPECT_EQ(seen.solver_order(), 3u);
  EXPECT_EQ(seen.skip_type(), v1::SKIP_TYPE_TIME_UNIFORM);
  EXPECT_EQ(seen.dynamic_thresholding_ratio(), 0.995);
  EXPECT_EQ(seen.first_image_index(), 0u);
}

TEST_F(CliTest, SamplerContradictionsFailBeforeAnyCall) {
  ExpectUsageErrors({
      {{"sample", "--labels", "1", "--sampler", "dpm++", "--steps", "10", "--eta", "0.5"},
       "--eta = 0.5 needs --sampler ddim"},
      {{"stream", "--labels", "1", "--sampler", "ddim", "--steps", "10"},
       "--steps applies to --sampler dpm++ only"},
      {{"sample", "--labels", "1", "--sampler", "dpm++", "--steps", "10", "--timestep_respacing",
        "250"},
       "does not apply to --sampler dpm++"},
      {{"stream", "--labels", "1", "--sampler", "dpm++"}, "--sampler dpm++ needs --steps N"},
  });
}

// --dump_dir's steps.tsv carries each step's continuous timestep (DPM-Solver++'s are fractional).
TEST_F(CliTest, StreamIndexesTheContinuousTimesteps) {
  CliResult result = Run({"stream", "--labels", "3", "--sampler", "dpm++", "--steps", "3",
                          "--dump_dir", Path("steps")});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(server_.sampler().last_request().steps(), 3u);
  const std::vector<std::string> lines =
      absl::StrSplit(ReadFileOrEmpty(Path("steps/steps.tsv")), '\n', absl::SkipEmpty());
  EXPECT_THAT(lines, ElementsAre("step\ttimestep\tcontinuous_timestep", "0\t2\t2.25", "1\t1\t1.25",
                                 "2\t0\t0.25"));
}

// ---- Run progress -------------------------------------------------------------------------------

class RunProgressTest : public ::testing::Test {
 protected:
  void SetUp() override { file_ = std::tmpfile(); }
  void TearDown() override { std::fclose(file_); }

  std::string Written() {
    std::fflush(file_);
    std::string text(static_cast<size_t>(std::ftell(file_)), '\0');
    std::rewind(file_);
    text.resize(std::fread(text.data(), 1, text.size(), file_));
    return text;
  }

  static BulkProgress Progress(int64_t done, double partial = 0) {
    BulkProgress progress;
    progress.images_total = 100;
    progress.images_done = done;
    progress.images_resumed = 20;
    progress.images_partial = partial;
    progress.requests_in_flight = 2;
    return progress;
  }

  std::FILE* file_ = nullptr;
  const RunProgress::Clock::time_point start_{};
};

TEST_F(RunProgressTest, PlainLinesComeEveryIntervalOffATerminal) {
  {
    RunProgress progress(file_, /*terminal=*/false, std::chrono::seconds(10));
    progress.Update(Progress(20), start_);
    progress.Update(Progress(30), start_ + std::chrono::seconds(5));
    EXPECT_THAT(Written(), IsEmpty());
    // 40 images sampled (60 - 20 resumed) in 20 s: 2/s; 40 left: 20 s.
    progress.Update(Progress(60), start_ + std::chrono::seconds(20));
  }
  EXPECT_EQ(Written(), "gd: 60/100 images  2.00 images/s  ETA 0:20  2 in flight  (60%)\n");
}

TEST_F(RunProgressTest, RetriesGetALineWithTheirError) {
  RunProgress progress(file_, /*terminal=*/false, std::chrono::seconds(10));
  BulkProgress retried = Progress(20);
  retried.retries = 1;
  retried.last_retry = absl::UnavailableError("the server is shutting down");
  progress.Update(retried, start_);
  progress.Update(retried, start_ + std::chrono::seconds(1));  // the same retry: said once
  EXPECT_EQ(Written(),
            "gd: retrying a request (1 retry so far): UNAVAILABLE: the server is shutting down\n");
}

TEST_F(RunProgressTest, OnATerminalTheBarIsRedrawnInPlace) {
  {
    RunProgress progress(file_, /*terminal=*/true, std::chrono::seconds(10));
    progress.Update(Progress(20), start_);
    progress.Update(Progress(50, 5.0), start_ + std::chrono::seconds(7));  // partial images count
    progress.Update(Progress(100), start_ + std::chrono::seconds(16));
  }
  const std::string drawn = Written();
  EXPECT_THAT(drawn, HasSubstr("\r[######------------------------] 20/100 images"));
  EXPECT_THAT(drawn, HasSubstr("50/100 images  5.00 images/s  ETA 0:09"));  // 35 in 7 s, 45 left
  EXPECT_THAT(drawn, HasSubstr("\r[##############################] 100/100 images  5.00 images/s  "
                               "ETA 0:00"));
  EXPECT_EQ(drawn.substr(drawn.size() - 4), "\r\033[K");  // cleared at the end
}

}  // namespace
}  // namespace gd::client
