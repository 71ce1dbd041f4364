// gd-eval sweep's sampling (eval/sweep.h) against the client tests' fake Sampler: a run of N
// images is split into requests of the model's max_images_per_request, each with its
// first_image_index, labels cycling over the classes, and lands in the reference's .npz layout.
#include "eval/sweep.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "core/io/npy.h"
#include "tests/service/fake_sampler.h"
#include "tests/testing/testing.h"

namespace gd::eval {
namespace {

TEST(ParseSamplerPoints, ReadsSamplerStepPairs) {
  auto points = ParseSamplerPoints("ddim:ddim50,ddpm:250,dpm++:20");
  ASSERT_TRUE(points.ok()) << points.status();
  ASSERT_EQ(points->size(), 3u);
  EXPECT_EQ((*points)[1].sampler, "ddpm");
  EXPECT_EQ((*points)[2].steps, "20");
  EXPECT_FALSE(ParseSamplerPoints("ddim").ok());
  EXPECT_FALSE(ParseSamplerPoints("euler:20").ok());
  EXPECT_FALSE(ParseSamplerPoints("").ok());
}

TEST(DrawSamples, SplitsTheRunIntoIndexedRequestsWithCyclingLabels) {
  client::FakeServer server;
  ASSERT_TRUE(server.started());
  client::ClientOptions client_options;
  client_options.target = server.address();
  auto client = client::SamplerClient::Create(client_options);
  ASSERT_TRUE(client.ok());
  SweepOptions options;
  options.model = "tiny";  // 8x8 RGB, 10 classes, kTinyMaxImagesPerRequest images per request
  options.num_samples = 13;
  options.concurrency = 3;
  options.seed = 9;
  const std::string dir = testing::TempDir("sweep");
  const std::string path = dir + "/samples.npz";
  auto seconds = DrawSamples(**client, options, {"ddim", "ddim4"}, 3.0, path);
  ASSERT_TRUE(seconds.ok()) << seconds.status();
  const int64_t per_request = client::kTinyMaxImagesPerRequest;
  // GetModel, then one Sample per request of at most per_request images.
  EXPECT_EQ(server.sampler().calls(), 1 + (13 + per_request - 1) / per_request);
  const guided_diffusion::v1::SampleRequest last = server.sampler().last_request();
  EXPECT_EQ(last.seed(), 9u);
  EXPECT_EQ(last.classifier_scale(), 3.0);
  EXPECT_EQ(last.timestep_respacing(), "ddim4");
  EXPECT_EQ(last.labels(0) % 10, static_cast<int64_t>(last.first_image_index() % 10));

  auto npz = ReadNpz(path);
  ASSERT_TRUE(npz.ok()) << npz.status();
  ASSERT_EQ(npz->size(), 2u);
  EXPECT_EQ((*npz)[0].first, "arr_0");
  EXPECT_EQ((*npz)[0].second.sizes(), (std::vector<int64_t>{13, 8, 8, 3}));
  EXPECT_EQ((*npz)[0].second.scalar_type(), torch::kUInt8);
  EXPECT_TRUE(torch::equal((*npz)[1].second, torch::arange(13) % 10));
  std::filesystem::remove_all(dir);
}

TEST(DrawSamples, WritesNothingWhenTheModelIsUnknown) {
  client::FakeServer server;
  client::ClientOptions client_options;
  client_options.target = server.address();
  auto client = client::SamplerClient::Create(client_options);
  ASSERT_TRUE(client.ok());
  SweepOptions options;
  options.model = "absent";
  options.num_samples = 4;
  const std::string dir = testing::TempDir("sweep");
  auto seconds = DrawSamples(**client, options, {"ddpm", "250"}, 1.0, dir + "/x.npz");
  ASSERT_FALSE(seconds.ok());
  EXPECT_EQ(seconds.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(server.sampler().calls(), 1);  // GetModel only
  EXPECT_FALSE(std::filesystem::exists(dir + "/x.npz"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace gd::eval
