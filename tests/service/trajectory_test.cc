// Tests of the trajectory pictures (client/trajectory.h): the strip's step choice, step images
// from PNGs and tensors, the recorder, `gd stream --strip/--gif` against the fake server, and the
// progress bar staying silent off a terminal. The GIF encoder itself is tested, pixel for pixel,
// in tests/core/formats_gif_test.cc; here the CLI's GIF is checked for its structure.
#include "client/trajectory.h"

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/progress.h"
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

// Image `i` of float32 samples [N, C, H, W], as the pixels a PNG of it holds.
formats::Image ImageOf(const formats::Array& samples, size_t i) {
  return (*Uint8ToImages(*SamplesToUint8(samples)))[i];
}

// The pixels of tile `index` of a MakeGrid of 8x8 RGB tiles (padding 2).
std::string Tile(const formats::Image& grid, int64_t columns, int64_t index) {
  const formats::GridLayout layout =
      formats::LayOutGrid(grid.width > 0 ? 1000 : 0, kImageSize, kImageSize, columns, 2);
  std::string pixels;
  for (int64_t y = 0; y < kImageSize; ++y) {
    const int64_t offset =
        ((layout.TileTop(index) + y) * grid.width + layout.TileLeft(index)) * grid.channels;
    pixels += grid.pixels.substr(offset, kImageSize * grid.channels);
  }
  return pixels;
}

v1::SampleEvent Accepted(uint32_t total_steps) {
  v1::SampleEvent event;
  event.mutable_accepted()->set_total_steps(total_steps);
  return event;
}

// A step event carrying pred_xstart (and x_t) of `n` images as float32 tensors.
v1::SampleEvent TensorStep(uint32_t step, uint32_t total_steps, int64_t n) {
  v1::SampleEvent event;
  v1::StepEvent* s = event.mutable_step();
  s->set_step(step);
  s->set_total_steps(total_steps);
  *s->mutable_x_t() = ToTensor(CannedXt(n, step));
  *s->mutable_pred_xstart() = ToTensor(CannedPredXstart(n, step));
  return event;
}

// ---- The structure of a GIF: screen size, frames and their delays ------------------------------

struct GifOutline {
  bool valid = false;
  int width = 0;
  int height = 0;
  std::vector<int> delays_cs;  // one per frame
};

GifOutline Outline(const std::string& gif) {
  GifOutline outline;
  size_t pos = 13;
  auto byte = [&](size_t at) { return static_cast<uint8_t>(at < gif.size() ? gif[at] : 0); };
  if (gif.size() < 14 || gif.substr(0, 6) != "GIF89a") return outline;
  outline.width = byte(6) | (byte(7) << 8);
  outline.height = byte(8) | (byte(9) << 8);
  if (byte(10) & 0x80) pos += 3 * (size_t{2} << (byte(10) & 7));
  // Skips data sub-blocks; the position after the terminator.
  auto skip_blocks = [&](size_t at) {
    while (at < gif.size() && byte(at) != 0) at += 1 + byte(at);
    return at + 1;
  };
  while (pos < gif.size()) {
    const uint8_t introducer = byte(pos);
    if (introducer == 0x3b) {
      outline.valid = pos + 1 == gif.size();
      break;
    }
    if (introducer == 0x21) {
      if (byte(pos + 1) == 0xf9) outline.delays_cs.push_back(byte(pos + 4) | (byte(pos + 5) << 8));
      pos = skip_blocks(pos + 2);
    } else if (introducer == 0x2c) {
      const uint8_t flags = byte(pos + 9);
      pos += 10;
      if (flags & 0x80) pos += 3 * (size_t{2} << (flags & 7));
      pos = skip_blocks(pos + 1);  // after the LZW minimum code size
    } else {
      break;
    }
  }
  return outline;
}

// ---- Units --------------------------------------------------------------------------------------

TEST(StripTargetsTest, FirstLastAndEvenlySpacedBetween) {
  EXPECT_THAT(StripTargets(20, 8), ElementsAre(0, 3, 5, 8, 11, 14, 16, 19));
  EXPECT_THAT(StripTargets(1000, 2), ElementsAre(0, 999));
  EXPECT_THAT(StripTargets(5, 1), ElementsAre(4));
  EXPECT_THAT(StripTargets(3, 8), ElementsAre(0, 0, 1, 1, 1, 1, 2, 2));
  EXPECT_THAT(StripTargets(0, 8), IsEmpty());
  EXPECT_THAT(StripTargets(10, 0), IsEmpty());
}

TEST(StepImagesTest, FromPngsOrTensors) {
  v1::StepEvent step;
  step.set_step(3);
  for (const std::string& png : SamplesToPngs(CannedPredXstart(2, 3)))
    step.add_pred_xstart_png(png);
  absl::StatusOr<std::vector<formats::Image>> images = StepImages(step, StepField::kPredXstart);
  ASSERT_TRUE(images.ok()) << images.status();
  ASSERT_EQ(images->size(), 2u);
  EXPECT_EQ((*images)[1].pixels, ImageOf(CannedPredXstart(2, 3), 1).pixels);
  // The server sends empty tensor messages next to PNGs: no x_t here.
  step.mutable_x_t();
  images = StepImages(step, StepField::kXt);
  ASSERT_TRUE(images.ok()) << images.status();
  EXPECT_THAT(*images, IsEmpty());

  for (bool half : {false, true}) {
    v1::StepEvent tensors;
    const formats::Array x_t = CannedXt(3, 2);
    *tensors.mutable_x_t() = ToTensor(half ? ToHalf(x_t) : x_t);
    images = StepImages(tensors, StepField::kXt);
    ASSERT_TRUE(images.ok()) << images.status();
    ASSERT_EQ(images->size(), 3u);
    if (!half) {
      EXPECT_EQ((*images)[2].pixels, ImageOf(x_t, 2).pixels);
    }
    EXPECT_EQ((*images)[2].channels, kChannels);
  }

  v1::StepEvent broken;
  broken.set_step(3);
  broken.add_pred_xstart_png("not a png");
  images = StepImages(broken, StepField::kPredXstart);
  EXPECT_FALSE(images.ok());
  EXPECT_THAT(images.status().message(), HasSubstr("step 3 pred_xstart image 0"));
}

// With every 3rd step streamed, each column takes the streamed step nearest to its target and a
// step chosen twice in a row is shown once.
TEST(TrajectoryRecorderTest, StripTakesTheNearestStreamedSteps) {
  const std::string dir = ::testing::TempDir();
  TrajectoryOptions options;
  options.strip_path = absl::StrCat(dir, "/nearest_strip.png");
  options.strip_columns = 5;  // targets 0, 2, 5, 7, 9 -> streamed 0, 3, 6, 6, 9
  TrajectoryRecorder recorder(options);
  EXPECT_TRUE(recorder.needs_pred_xstart());
  EXPECT_FALSE(recorder.needs_x_t());
  ASSERT_TRUE(recorder.OnEvent(Accepted(10)).ok());
  for (uint32_t step : {0, 3, 6, 9}) ASSERT_TRUE(recorder.OnEvent(TensorStep(step, 10, 2)).ok());
  ASSERT_TRUE(recorder.Finish().ok());

  absl::StatusOr<std::string> png = formats::ReadFileBytes(options.strip_path);
  ASSERT_TRUE(png.ok()) << png.status();
  absl::StatusOr<formats::Image> strip = formats::DecodePng(*png, "strip");
  ASSERT_TRUE(strip.ok()) << strip.status();
  EXPECT_EQ(strip->width, 4 * (kImageSize + 2) + 2);   // 4 distinct steps
  EXPECT_EQ(strip->height, 2 * (kImageSize + 2) + 2);  // 2 images
  const uint32_t steps[] = {0, 3, 6, 9};
  for (int image = 0; image < 2; ++image) {
    for (int column = 0; column < 4; ++column) {
      EXPECT_EQ(Tile(*strip, 4, image * 4 + column),
                ImageOf(CannedPredXstart(2, steps[column]), image).pixels)
          << "image " << image << ", column " << column;
    }
  }
}

TEST(TrajectoryRecorderTest, NothingStreamedIsAnError) {
  TrajectoryOptions options;
  options.strip_path = absl::StrCat(::testing::TempDir(), "/never.png");
  options.gif_path = absl::StrCat(::testing::TempDir(), "/never.gif");
  TrajectoryRecorder recorder(options);
  ASSERT_TRUE(recorder.OnEvent(Accepted(4)).ok());
  const absl::Status status = recorder.Finish();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("no pred_xstart"));
}

TEST(ProgressBarTest, SilentWhenNotATerminal) {
  std::FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  {
    ProgressBar progress(file);
    EXPECT_FALSE(progress.enabled());
    progress.OnEvent(Accepted(3));
    for (uint32_t step = 0; step < 3; ++step) progress.OnEvent(TensorStep(step, 3, 1));
    progress.Clear();
  }
  EXPECT_EQ(std::ftell(file), 0);  // not a byte
  std::fclose(file);
}

// ---- gd stream --strip / --gif ------------------------------------------------------------------

TEST_F(CliTest, StreamWritesADenoisingStrip) {
  CliResult result = Run({"stream", "--labels", "1,2", "--timestep_respacing", "9", "--strip",
                          Path("strip.png"), "--strip_columns", "3"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.err, IsEmpty());  // piped: no progress bar
  EXPECT_THAT(result.out, HasSubstr(absl::StrCat("wrote ", Path("strip.png"),
                                                 " (pred_xstart at steps 0,4,8 of 9)")));
  // Only pred_xstart, as the server's PNGs.
  const v1::StreamOptions stream = server_.sampler().last_request().stream();
  EXPECT_TRUE(stream.pred_xstart());
  EXPECT_FALSE(stream.x_t());
  EXPECT_EQ(stream.format(), v1::StreamOptions::FORMAT_PNG);

  absl::StatusOr<formats::Image> strip =
      formats::DecodePng(ReadFileOrEmpty(Path("strip.png")), "strip");
  ASSERT_TRUE(strip.ok()) << strip.status();
  EXPECT_EQ(strip->width, 3 * (kImageSize + 2) + 2);
  EXPECT_EQ(strip->height, 2 * (kImageSize + 2) + 2);
  const uint32_t steps[] = {0, 4, 8};
  for (int image = 0; image < 2; ++image) {
    for (int column = 0; column < 3; ++column) {
      EXPECT_EQ(Tile(*strip, 3, image * 3 + column),
                ImageOf(CannedPredXstart(2, steps[column]), image).pixels)
          << "image " << image << ", column " << column;
    }
  }
}

TEST_F(CliTest, StreamWritesAGifOfTheTrajectory) {
  CliResult result =
      Run({"stream", "--labels", "1,2,3", "--timestep_respacing", "6", "--gif", Path("x_t.gif"),
           "--gif_frame_ms", "50", "--columns", "2", "--out", Path("final.png")});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.out, HasSubstr("(6 frames of x_t)"));
  const v1::StreamOptions stream = server_.sampler().last_request().stream();
  EXPECT_TRUE(stream.x_t());
  EXPECT_FALSE(stream.pred_xstart());
  EXPECT_EQ(stream.format(), v1::StreamOptions::FORMAT_PNG);

  const GifOutline gif = Outline(ReadFileOrEmpty(Path("x_t.gif")));
  ASSERT_TRUE(gif.valid);
  EXPECT_EQ(gif.width, 2 * (kImageSize + 2) + 2);   // --columns 2
  EXPECT_EQ(gif.height, 2 * (kImageSize + 2) + 2);  // 3 images: 2 rows
  // One frame per step; the last (the final samples) held longer.
  EXPECT_THAT(gif.delays_cs, ElementsAre(5, 5, 5, 5, 5, kGifFinalFrameCs));
  EXPECT_EQ(ReadFileOrEmpty(Path("final.png")).substr(0, 4), "\x89PNG");
}

// --dump_dir needs tensors: the pictures are then made from them, with --every honoured.
TEST_F(CliTest, StripAndGifFromTensorsWithDumpDir) {
  CliResult result = Run({"stream", "--labels", "4", "--timestep_respacing", "7", "--every", "3",
                          "--dump_dir", Path("steps"), "--strip", Path("strip.png"),
                          "--strip_columns", "4", "--gif", Path("x_t.gif")});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(server_.sampler().last_request().stream().format(),
            v1::StreamOptions::FORMAT_TENSOR_FLOAT32);
  // Streamed: 0, 3, 6. Targets 0, 2, 4, 6 -> 0, 3, 3, 6: three distinct columns.
  EXPECT_THAT(result.out, HasSubstr("(pred_xstart at steps 0,3,6 of 7)"));
  const GifOutline gif = Outline(ReadFileOrEmpty(Path("x_t.gif")));
  ASSERT_TRUE(gif.valid);
  EXPECT_EQ(gif.delays_cs.size(), 3u);
  EXPECT_FALSE(ReadFileOrEmpty(Path("steps/x_t_0003.npy")).empty());
}

TEST_F(CliTest, BadPictureFlagsFailBeforeAnyCall) {
  ExpectUsageErrors({
      {{"stream", "--labels", "1", "--strip", Path("s.png"), "--strip_columns", "0"},
       "--strip_columns = 0 is outside [1, 1000]"},
      {{"stream", "--labels", "1", "--strip_columns", "4"}, "--strip_columns needs --strip"},
      {{"stream", "--labels", "1", "--gif", Path("a.gif"), "--gif_frame_ms", "5"},
       "--gif_frame_ms = 5 is outside [10, 65000]"},
      {{"stream", "--labels", "1", "--gif_frame_ms", "50"}, "--gif_frame_ms needs --gif"},
      {{"stream", "--labels", "1", "--gif", "/nonexistent/dir/a.gif"}, "does not exist"},
      {{"sample", "--labels", "1", "--strip", Path("s.png")},
       "--strip does not apply to `gd sample`"},
  });
}

}  // namespace
}  // namespace gd::client
