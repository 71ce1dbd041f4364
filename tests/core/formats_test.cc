// Tests for core/io/formats: PNG, .npy/.npz, grids, float16 and files on plain bytes, without
// LibTorch (core/io's tensor wrappers over them are tested in io_test.cc). Every input is built at
// test time; the numpy byte strings below were produced by numpy 1.24 (np.save, np.savez,
// np.savez_compressed) when the tests were written. One test runs numpy itself, where Debian's
// python3-numpy is installed, to check that numpy reads what we write.
#include "core/io/formats/formats.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace gd::formats {
namespace {

using ::testing::HasSubstr;

// ---- Helpers ------------------------------------------------------------------------------------

std::string Message(const absl::Status& status) { return std::string(status.message()); }

std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

void PutBig32(std::string* out, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(static_cast<char>(value >> shift));
}

void PutLittle(std::string* out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>(value >> (8 * i)));
}

uint32_t Crc(const std::string& bytes) {
  return static_cast<uint32_t>(
      crc32(0, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(bytes.size())));
}

// A zlib stream (PNG's IDAT), compression level 6.
std::string Zlib(const std::string& data) {
  uLongf size = compressBound(data.size());
  std::string out(size, '\0');
  EXPECT_EQ(compress2(reinterpret_cast<Bytef*>(out.data()), &size,
                      reinterpret_cast<const Bytef*>(data.data()), data.size(), 6),
            Z_OK);
  out.resize(size);
  return out;
}

// Raw deflate (zip members): the zlib stream without its 2-byte header and 4-byte Adler-32.
std::string RawDeflate(const std::string& data) {
  const std::string stream = Zlib(data);
  return stream.substr(2, stream.size() - 6);
}

// An Array of `dtype` holding `values` (of the C type that matches it).
template <typename T>
Array MakeArray(DType dtype, std::vector<int64_t> shape, const std::vector<T>& values) {
  Array array;
  array.dtype = dtype;
  array.shape = std::move(shape);
  array.data.assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
  return array;
}

template <typename T>
std::vector<T> Values(const Array& array) {
  std::vector<T> values(array.data.size() / sizeof(T));
  std::memcpy(values.data(), array.data.data(), values.size() * sizeof(T));
  return values;
}

std::string RandomBytes(size_t count, uint32_t seed) {
  std::mt19937 generator(seed);
  std::string out(count, '\0');
  for (char& byte : out) byte = static_cast<char>(generator() & 0xff);
  return out;
}

Image MakeImage(int64_t height, int64_t width, int64_t channels, std::string pixels) {
  Image image;
  image.height = height;
  image.width = width;
  image.channels = channels;
  image.pixels = std::move(pixels);
  return image;
}

void ExpectSameImage(const Image& actual, const Image& expected) {
  EXPECT_EQ(actual.height, expected.height);
  EXPECT_EQ(actual.width, expected.width);
  EXPECT_EQ(actual.channels, expected.channels);
  EXPECT_EQ(actual.pixels, expected.pixels);
}

void ExpectSameArray(const Array& actual, const Array& expected) {
  EXPECT_EQ(actual.dtype, expected.dtype);
  EXPECT_EQ(actual.shape, expected.shape);
  EXPECT_EQ(actual.data, expected.data);
}

// A scratch file in gtest's temporary directory, unique to this process; removed on destruction.
class ScratchFile {
 public:
  explicit ScratchFile(const std::string& name)
      : path_(absl::StrCat(::testing::TempDir(), "gd_formats_test_", getpid(), "_", name)) {}
  ~ScratchFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

bool FileExists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// ---- PNG builder: any colour type and bit depth, scanlines given with their filter bytes -------

std::string PngChunk(const std::string& type, const std::string& data) {
  std::string out;
  PutBig32(&out, static_cast<uint32_t>(data.size()));
  out += type + data;
  PutBig32(&out, Crc(type + data));
  return out;
}

std::string MakePng(uint32_t width, uint32_t height, int bit_depth, int color_type,
                    const std::string& scanlines, const std::string& extra_chunks = "") {
  std::string header;
  PutBig32(&header, width);
  PutBig32(&header, height);
  header += {static_cast<char>(bit_depth), static_cast<char>(color_type), 0, 0, 0};
  return std::string("\x89PNG\r\n\x1a\n", 8) + PngChunk("IHDR", header) + extra_chunks +
         PngChunk("IDAT", Zlib(scanlines)) + PngChunk("IEND", "");
}

std::string Bytes(std::initializer_list<int> values) {
  std::string out;
  for (int v : values) out.push_back(static_cast<char>(v));
  return out;
}

// ---- Zip builder: stored or deflated members, optionally with ZIP64 records --------------------

struct TestMember {
  std::string name;
  std::string data;
  bool deflate = false;
  size_t cut_stored_bytes = 0;  // drop this many bytes from the end of the stored stream
  int64_t claimed_size = -1;    // the uncompressed size written, if not the real one
  int method = -1;              // the compression method written, if not 0 or 8 as `deflate` says
};

std::string BuildZip(const std::vector<TestMember>& members, bool zip64) {
  std::string file;
  std::string central;
  for (const TestMember& member : members) {
    std::string stored = member.deflate ? RawDeflate(member.data) : member.data;
    stored.resize(stored.size() - member.cut_stored_bytes);
    const uint64_t size = member.claimed_size >= 0 ? member.claimed_size : member.data.size();
    const int method = member.method >= 0 ? member.method : member.deflate ? 8 : 0;
    const uint64_t offset = file.size();
    PutLittle(&file, 0x04034b50, 4);
    PutLittle(&file, zip64 ? 45 : 20, 2);
    PutLittle(&file, 0, 2);
    PutLittle(&file, method, 2);
    PutLittle(&file, 0, 2);
    PutLittle(&file, 0x21, 2);
    PutLittle(&file, Crc(member.data), 4);
    PutLittle(&file, zip64 ? 0xffffffff : stored.size(), 4);
    PutLittle(&file, zip64 ? 0xffffffff : size, 4);
    PutLittle(&file, member.name.size(), 2);
    PutLittle(&file, zip64 ? 20 : 0, 2);
    file += member.name;
    if (zip64) {
      PutLittle(&file, 1, 2);
      PutLittle(&file, 16, 2);
      PutLittle(&file, size, 8);
      PutLittle(&file, stored.size(), 8);
    }
    file += stored;

    PutLittle(&central, 0x02014b50, 4);
    PutLittle(&central, 0x0314, 2);
    PutLittle(&central, zip64 ? 45 : 20, 2);
    PutLittle(&central, 0, 2);
    PutLittle(&central, method, 2);
    PutLittle(&central, 0, 2);
    PutLittle(&central, 0x21, 2);
    PutLittle(&central, Crc(member.data), 4);
    PutLittle(&central, zip64 ? 0xffffffff : stored.size(), 4);
    PutLittle(&central, zip64 ? 0xffffffff : size, 4);
    PutLittle(&central, member.name.size(), 2);
    PutLittle(&central, zip64 ? 28 : 0, 2);
    PutLittle(&central, 0, 2);
    PutLittle(&central, 0, 2);
    PutLittle(&central, 0, 2);
    PutLittle(&central, 0, 4);
    PutLittle(&central, zip64 ? 0xffffffff : offset, 4);
    central += member.name;
    if (zip64) {  // order: uncompressed size, compressed size, local header offset
      PutLittle(&central, 1, 2);
      PutLittle(&central, 24, 2);
      PutLittle(&central, size, 8);
      PutLittle(&central, stored.size(), 8);
      PutLittle(&central, offset, 8);
    }
  }
  const uint64_t central_offset = file.size();
  file += central;
  if (zip64) {
    const uint64_t record = file.size();
    PutLittle(&file, 0x06064b50, 4);
    PutLittle(&file, 44, 8);
    PutLittle(&file, 45, 2);
    PutLittle(&file, 45, 2);
    PutLittle(&file, 0, 4);
    PutLittle(&file, 0, 4);
    PutLittle(&file, members.size(), 8);
    PutLittle(&file, members.size(), 8);
    PutLittle(&file, central.size(), 8);
    PutLittle(&file, central_offset, 8);
    PutLittle(&file, 0x07064b50, 4);
    PutLittle(&file, 0, 4);
    PutLittle(&file, record, 8);
    PutLittle(&file, 1, 4);
  }
  PutLittle(&file, 0x06054b50, 4);
  PutLittle(&file, 0, 2);
  PutLittle(&file, 0, 2);
  PutLittle(&file, zip64 ? 0xffff : members.size(), 2);
  PutLittle(&file, zip64 ? 0xffff : members.size(), 2);
  PutLittle(&file, zip64 ? 0xffffffff : central.size(), 4);
  PutLittle(&file, zip64 ? 0xffffffff : central_offset, 4);
  PutLittle(&file, 0, 2);
  return file;
}

// A hand-built .npy: version 1 (or 2/3 with a 4-byte length), header text as given.
std::string NpyBytes(const std::string& dict, const std::string& data, int version = 1) {
  std::string out("\x93NUMPY", 6);
  out.push_back(static_cast<char>(version));
  out.push_back(0);
  const std::string header = dict + "\n";
  PutLittle(&out, header.size(), version == 1 ? 2 : 4);
  return out + header + data;
}

// ---- numpy goldens (numpy 1.24, generated when these tests were written) -----------------------

// np.arange(6, dtype='<f4').reshape(2, 3) * 0.5 - 1
const char kNpyFloat32Hex[] =
    "934e554d5059010076007b276465736372273a20273c6634272c2027666f727472616e5f6f72646572273a204661"
    "6c73652c20277368617065273a2028322c2033292c207d2020202020202020202020202020202020202020202020"
    "20202020202020202020202020202020202020202020202020202020202020202020200a000080bf000000bf0000"
    "00000000003f0000803f0000c03f";

// np.array(-7, dtype='<i8')
const char kNpyInt64ScalarHex[] =
    "934e554d5059010076007b276465736372273a20273c6938272c2027666f727472616e5f6f72646572273a204661"
    "6c73652c20277368617065273a2028292c207d202020202020202020202020202020202020202020202020202020"
    "20202020202020202020202020202020202020202020202020202020202020202020200af9ffffffffffffff";

// np.array([[True, False], [False, True]])
const char kNpyBoolHex[] =
    "934e554d5059010076007b276465736372273a20277c6231272c2027666f727472616e5f6f72646572273a204661"
    "6c73652c20277368617065273a2028322c2032292c207d2020202020202020202020202020202020202020202020"
    "20202020202020202020202020202020202020202020202020202020202020202020200a01000001";

// np.array([1.5, -2, 65504], dtype='<f2')
const char kNpyFloat16Hex[] =
    "934e554d5059010076007b276465736372273a20273c6632272c2027666f727472616e5f6f72646572273a204661"
    "6c73652c20277368617065273a2028332c292c207d20202020202020202020202020202020202020202020202020"
    "20202020202020202020202020202020202020202020202020202020202020202020200a003e00c0ff7b";

// np.zeros((12345678901, 0), dtype='<f4')
const char kNpyWideEmptyHex[] =
    "934e554d5059010076007b276465736372273a20273c6634272c2027666f727472616e5f6f72646572273a204661"
    "6c73652c20277368617065273a202831323334353637383930312c2030292c207d20202020202020202020202020"
    "20202020202020202020202020202020202020202020202020202020202020202020200a";

// np.asfortranarray(np.arange(6, dtype='>i4').reshape(2, 3))
const char kNpyFortranBigEndianHex[] =
    "934e554d5059010076007b276465736372273a20273e6934272c2027666f727472616e5f6f72646572273a205472"
    "75652c20277368617065273a2028322c2033292c207d202020202020202020202020202020202020202020202020"
    "20202020202020202020202020202020202020202020202020202020202020202020200a00000000000000030000"
    "0001000000040000000200000005";

// np.savez(f, arr_0=np.arange(4, dtype=np.uint8).reshape(1, 2, 2, 1),
//          arr_1=np.array([3]))
const char kNumpySavezHex[] =
    "504b030414000000000000002100d4e1b6708400000084000000090014006172725f302e6e707901001000840000"
    "00000000008400000000000000934e554d5059010076007b276465736372273a20277c7531272c2027666f727472"
    "616e5f6f72646572273a2046616c73652c20277368617065273a2028312c20322c20322c2031292c207d20202020"
    "20202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020"
    "20200a00010203504b030414000000000000002100439d311c8800000088000000090014006172725f312e6e7079"
    "0100100088000000000000008800000000000000934e554d5059010076007b276465736372273a20273c6938272c"
    "2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028312c292c207d2020202020"
    "20202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020"
    "2020202020202020200a0300000000000000504b0102140314000000000000002100d4e1b6708400000084000000"
    "0900000000000000000000008001000000006172725f302e6e7079504b0102140314000000000000002100439d31"
    "1c88000000880000000900000000000000000000008001bf0000006172725f312e6e7079504b0506000000000200"
    "02006e000000820100000000";

// np.savez_compressed(f, arr_0=np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3),
//                     arr_1=np.array([1, 0]))
const char kNumpySavezCompressedHex[] =
    "504b030414000000080000002100853a8f536000000098000000090014006172725f302e6e707901001000980000"
    "000000000060000000000000009bec17ea1b10c9c850c650ad9e925a9c5ca46ea5a05e536aa8aea3a09e965f5452"
    "9498179f5f94920a12774bcc294e058a17672416a402f91a463a0a1064aca9a350ab4006e06260646266616563e7"
    "e0e4e2e6e1e5e317101412161115130700504b03041400000008000000210071fb39ab4800000090000000090014"
    "006172725f312e6e707901001000900000000000000048000000000000009bec17ea1b10c9c850c650ad9e925a9c"
    "5ca46ea5a06e9369a1aea3a09e965f54529498179f5f94920a12774bcc294e058a17672416a402f91a463a9a3a0a"
    "b50a14002e4606540000504b0102140314000000080000002100853a8f5360000000980000000900000000000000"
    "000000008001000000006172725f302e6e7079504b010214031400000008000000210071fb39ab48000000900000"
    "0009000000000000000000000080019b0000006172725f312e6e7079504b050600000000020002006e0000001e01"
    "00000000";

// ---- float16 ------------------------------------------------------------------------------------

// A finite binary16 value by definition: 2^(e - 15) * (1 + m / 1024), or 2^-14 * m / 1024 when
// e = 0. Computed in double, independently of HalfToFloat's bit manipulation.
double HalfValue(uint16_t half) {
  const int exponent = (half >> 10) & 0x1f;
  const int mantissa = half & 0x3ff;
  const double magnitude =
      exponent == 0 ? std::ldexp(mantissa, -24) : std::ldexp(1024 + mantissa, exponent - 25);
  return (half & 0x8000) != 0 ? -magnitude : magnitude;
}

// FloatToHalf by search: the finite half nearest to `value`, ties to the even bit pattern;
// infinity from 65520 (halfway between 65504, the largest half, and 2^16) up.
uint16_t NearestHalf(float value) {
  const double magnitude = std::fabs(static_cast<double>(value));
  uint16_t bits = 0x7c00;
  if (magnitude < 65520.0) {
    uint16_t low = 0;  // the largest positive half <= magnitude: halves ascend with their bits
    uint16_t high = 0x7bff;
    while (low < high) {
      const auto middle = static_cast<uint16_t>((low + high + 1) / 2);
      if (HalfValue(middle) <= magnitude) {
        low = middle;
      } else {
        high = static_cast<uint16_t>(middle - 1);
      }
    }
    bits = low;
    if (low < 0x7bff) {
      const double below = magnitude - HalfValue(low);
      const double above = HalfValue(static_cast<uint16_t>(low + 1)) - magnitude;
      if (above < below || (above == below && (low & 1) != 0))
        bits = static_cast<uint16_t>(low + 1);
    }
  }
  return std::signbit(value) ? static_cast<uint16_t>(bits | 0x8000) : bits;
}

std::string HalfText(uint16_t half) {
  return absl::StrCat("half 0x", absl::Hex(half, absl::kZeroPad4));
}

float FloatFromBits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

TEST(Half, HalfToFloatMatchesTheDefinitionForEveryHalf) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto half = static_cast<uint16_t>(bits);
    const float value = HalfToFloat(half);
    SCOPED_TRACE(HalfText(half));
    ASSERT_EQ(std::signbit(value), (half & 0x8000) != 0);
    if ((half & 0x7c00) == 0x7c00) {
      ASSERT_EQ(std::isinf(value), (half & 0x3ff) == 0);
      ASSERT_EQ(std::isnan(value), (half & 0x3ff) != 0);
    } else {
      ASSERT_EQ(static_cast<double>(value), HalfValue(half));  // every half is exact in float
    }
  }
}

TEST(Half, FloatToHalfRoundTripsEveryHalfAndQuietsNans) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto half = static_cast<uint16_t>(bits);
    const bool nan = (half & 0x7c00) == 0x7c00 && (half & 0x3ff) != 0;
    // A NaN keeps its sign and payload and becomes quiet (mantissa bit 9 set).
    ASSERT_EQ(FloatToHalf(HalfToFloat(half)), nan ? (half | 0x200) : half) << HalfText(half);
  }
}

TEST(Half, FloatToHalfOnEdgeValues) {
  const float inf = std::numeric_limits<float>::infinity();
  const struct {
    float value;
    uint16_t half;
  } cases[] = {
      {0.0f, 0x0000},
      {-0.0f, 0x8000},
      {1.0f, 0x3c00},
      {-2.0f, 0xc000},
      {65504.0f, 0x7bff},                        // the largest half
      {std::nextafter(65520.0f, 0.0f), 0x7bff},  // just under the tie with 2^16
      {65520.0f, 0x7c00},                        // the tie: 0x7bff is odd, so up, to infinity
      {1e10f, 0x7c00},
      {inf, 0x7c00},
      {-inf, 0xfc00},
      {std::ldexp(1.0f, -14), 0x0400},     // the smallest normal
      {std::ldexp(1023.0f, -24), 0x03ff},  // the largest subnormal
      {std::ldexp(1023.5f, -24), 0x0400},  // tie: to the even 0x0400, a normal
      {std::ldexp(1.0f, -24), 0x0001},     // the smallest subnormal
      {-std::ldexp(1.0f, -24), 0x8001},
      {std::ldexp(1.0f, -25), 0x0000},  // tie between 0 and 2^-24: to 0 (even)
      {std::nextafter(std::ldexp(1.0f, -25), 1.0f), 0x0001},
      {std::ldexp(3.0f, -25), 0x0002},         // tie between 1 and 2 units: to 2
      {std::ldexp(5.0f, -25), 0x0002},         // tie between 2 and 3 units: to 2
      {std::ldexp(1.0f, -30), 0x0000},         // underflow
      {-std::ldexp(1.0f, -30), 0x8000},        // keeps its sign
      {FloatFromBits(0x00000001), 0x0000},     // a float subnormal
      {1.0f + std::ldexp(1.0f, -11), 0x3c00},  // tie between 1 and 1 + 2^-10: to 1
      {1.0f + std::ldexp(3.0f, -11), 0x3c02},  // tie between 0x3c01 and 0x3c02: to 0x3c02
      {std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f), 0x3c01},
      {std::ldexp(4095.0f, -12), 0x3c00},  // tie between 0x3bff and 1: up, into the exponent
  };
  for (const auto& c : cases) {
    EXPECT_EQ(FloatToHalf(c.value), c.half) << "value " << c.value;
    EXPECT_EQ(NearestHalf(c.value), c.half) << "the reference, value " << c.value;
  }
  const uint16_t nan = FloatToHalf(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7e00, 0x7e00) << "a quiet NaN";
  // A signalling NaN whose payload lies only in the low 13 bits, which float16 drops: still NaN.
  const uint16_t signalling = FloatToHalf(FloatFromBits(0xff800001));
  EXPECT_EQ(signalling & 0xfe00, 0xfe00);
  EXPECT_TRUE(std::isnan(HalfToFloat(signalling)));
}

TEST(Half, FloatToHalfRoundsToNearestEvenEverywhere) {
  std::vector<float> values;
  // Between every two adjacent finite halves: the midpoint (a tie, exact in float) and the floats
  // either side of it.
  for (uint16_t half = 0; half < 0x7bff; ++half) {
    const auto midpoint =
        static_cast<float>((HalfValue(half) + HalfValue(static_cast<uint16_t>(half + 1))) / 2);
    for (float value : {midpoint, std::nextafter(midpoint, 0.0f), std::nextafter(midpoint, 1e9f)}) {
      values.push_back(value);
      values.push_back(-value);
    }
  }
  std::mt19937 generator(16);
  for (int i = 0; i < (1 << 20); ++i) {
    const float value = FloatFromBits(static_cast<uint32_t>(generator()));
    if (!std::isnan(value)) values.push_back(value);
  }
  int mismatches = 0;
  for (float value : values) {
    const uint16_t expected = NearestHalf(value);
    if (FloatToHalf(value) != expected && ++mismatches <= 10) {
      ADD_FAILURE() << "FloatToHalf(" << value << ") = " << HalfText(FloatToHalf(value))
                    << ", expected " << HalfText(expected);
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << values.size();
}

// ---- PNG ---------------------------------------------------------------------------------------

TEST(FormatsPng, RoundTripsGreyRgbRgbaAtOddSizes) {
  uint32_t seed = 1;
  for (int64_t channels : {1, 3, 4}) {
    for (auto [height, width] :
         std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {7, 13}, {3, 1}, {64, 33}}) {
      SCOPED_TRACE(absl::StrCat(height, "x", width, "x", channels));
      const Image image =
          MakeImage(height, width, channels, RandomBytes(height * width * channels, seed++));
      absl::StatusOr<std::string> png = EncodePng(image);
      ASSERT_TRUE(png.ok()) << png.status();
      absl::StatusOr<Image> decoded = DecodePng(*png, "mem");
      ASSERT_TRUE(decoded.ok()) << decoded.status();
      ExpectSameImage(*decoded, image);
    }
  }
}

TEST(FormatsPng, EncodeRejectsWhatPngCannotHold) {
  EXPECT_THAT(Message(EncodePng(MakeImage(2, 2, 2, std::string(8, 0))).status()),
              HasSubstr("C = 2 channels; allowed are 1 (grey), 3 (RGB), 4 (RGBA)"));
  EXPECT_THAT(Message(EncodePng(MakeImage(0, 2, 1, "")).status()),
              HasSubstr("image size 0x2 is outside [1, 2^31 - 1] per side"));
  EXPECT_THAT(Message(EncodePng(MakeImage(1, int64_t{1} << 31, 1, "")).status()),
              HasSubstr("outside [1, 2^31 - 1]"));
  EXPECT_THAT(Message(EncodePng(MakeImage(2, 3, 1, std::string(5, 0))).status()),
              HasSubstr("5 bytes of pixels for a 2x3x1 image"));
  EXPECT_FALSE(EncodePng(MakeImage(2, 3, 1, std::string(7, 0))).ok());
  EXPECT_FALSE(EncodePng(Image{}).ok());
}

TEST(FormatsPng, DecodeFailsCleanlyOnEveryTruncationAndCorruption) {
  absl::StatusOr<std::string> png = EncodePng(MakeImage(9, 11, 3, RandomBytes(9 * 11 * 3, 5)));
  ASSERT_TRUE(png.ok());
  for (size_t length = 0; length < png->size(); ++length) {
    absl::StatusOr<Image> decoded = DecodePng(png->substr(0, length), "cut.png");
    ASSERT_FALSE(decoded.ok()) << "decoded a PNG cut to " << length << " bytes";
    EXPECT_THAT(Message(decoded.status()), HasSubstr("cut.png"));
  }
  // A flipped byte anywhere after the signature: an error (bad CRC, bad zlib data) or, in an
  // ancillary byte, an image; never a crash.
  for (size_t i = 8; i < png->size(); ++i) {
    std::string corrupt = *png;
    corrupt[i] = static_cast<char>(corrupt[i] ^ 0x5a);
    (void)DecodePng(corrupt, "corrupt.png");
  }
  std::string bad_idat = *png;
  bad_idat[bad_idat.size() - 20] ^= 0x01;  // inside IDAT: its CRC no longer matches
  EXPECT_THAT(Message(DecodePng(bad_idat, "idat.png").status()),
              HasSubstr("idat.png: invalid PNG"));
  EXPECT_THAT(Message(DecodePng("GIF89a........", "x.gif").status()),
              HasSubstr("x.gif: not a PNG file"));
}

TEST(FormatsPng, DecodeRefusesSizesTheFileCannotHold) {
  // A valid header claiming 60000 x 60000 RGBA pixels, followed by a tiny IDAT.
  const std::string png = MakePng(60000, 60000, 8, 6, Bytes({0, 1, 2, 3, 4}));
  absl::StatusOr<Image> decoded = DecodePng(png, "huge.png");
  ASSERT_FALSE(decoded.ok());
  EXPECT_THAT(Message(decoded.status()), HasSubstr("huge.png: the header declares 60000x60000"));
}

TEST(FormatsPng, DecodeConvertsGreyAlphaPaletteAndSixteenBit) {
  struct Case {
    const char* name;
    std::string png;
    Image expected;
  };
  const std::vector<Case> cases = {
      {"grey 1-bit", MakePng(3, 2, 1, 0, Bytes({0, 0xa0, 0, 0x40})),
       MakeImage(2, 3, 1, Bytes({255, 0, 255, 0, 255, 0}))},
      {"grey 16-bit keeps the high byte", MakePng(2, 1, 16, 0, Bytes({0, 0x12, 0x34, 0xff, 0xff})),
       MakeImage(1, 2, 1, Bytes({0x12, 0xff}))},
      {"grey+alpha -> RGBA", MakePng(2, 1, 8, 4, Bytes({0, 10, 200, 30, 40})),
       MakeImage(1, 2, 4, Bytes({10, 10, 10, 200, 30, 30, 30, 40}))},
      {"grey + tRNS -> RGBA",
       MakePng(2, 1, 8, 0, Bytes({0, 7, 9}), PngChunk("tRNS", Bytes({0, 7}))),
       MakeImage(1, 2, 4, Bytes({7, 7, 7, 0, 9, 9, 9, 255}))},
      {"palette -> RGB",
       MakePng(2, 1, 8, 3, Bytes({0, 1, 0}), PngChunk("PLTE", Bytes({1, 2, 3, 4, 5, 6}))),
       MakeImage(1, 2, 3, Bytes({4, 5, 6, 1, 2, 3}))},
      {"palette + tRNS -> RGBA",
       MakePng(2, 1, 8, 3, Bytes({0, 1, 0}),
               PngChunk("PLTE", Bytes({1, 2, 3, 4, 5, 6})) + PngChunk("tRNS", Bytes({128}))),
       MakeImage(1, 2, 4, Bytes({4, 5, 6, 255, 1, 2, 3, 128}))},
      {"RGB 16-bit", MakePng(1, 1, 16, 2, Bytes({0, 0x01, 0x02, 0xa0, 0xb0, 0xff, 0xff})),
       MakeImage(1, 1, 3, Bytes({0x01, 0xa0, 0xff}))},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<Image> decoded = DecodePng(c.png, c.name);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    ExpectSameImage(*decoded, c.expected);
  }
}

// ---- Grids --------------------------------------------------------------------------------------

TEST(FormatsGrid, LayOutGridAsTorchvision) {
  const GridLayout layout = LayOutGrid(/*count=*/5, /*tile_height=*/2, /*tile_width=*/3,
                                       /*columns=*/3, /*padding=*/1);
  EXPECT_EQ(layout.columns, 3);
  EXPECT_EQ(layout.rows, 2);
  EXPECT_EQ(layout.height, 2 * (2 + 1) + 1);
  EXPECT_EQ(layout.width, 3 * (3 + 1) + 1);
  EXPECT_EQ(layout.TileTop(4), 1 * 3 + 1);
  EXPECT_EQ(layout.TileLeft(4), 1 * 4 + 1);
  EXPECT_EQ(layout.TileLeft(3), 1);
  // Fewer tiles than columns: only as wide as the tiles; none: just the padding.
  EXPECT_EQ(LayOutGrid(2, 2, 3, 8, 2).width, 2 * 5 + 2);
  const GridLayout empty = LayOutGrid(0, 2, 3, 4, 2);
  EXPECT_EQ(empty.columns, 0);
  EXPECT_EQ(empty.rows, 0);
  EXPECT_EQ(empty.height, 2);
  EXPECT_EQ(empty.width, 2);
}

TEST(FormatsGrid, MakeGridPlacesTilesWithPadding) {
  // 5 images of 2 x 3, image i filled with 10 * (i + 1); 3 columns, padding 1 of value 7.
  std::vector<Image> images;
  for (int i = 0; i < 5; ++i) images.push_back(MakeImage(2, 3, 1, std::string(6, 10 * (i + 1))));
  const Image grid = MakeGrid(images, /*columns=*/3, /*padding=*/1, /*pad_value=*/7);
  ASSERT_EQ(grid.height, 7);
  ASSERT_EQ(grid.width, 13);
  ASSERT_EQ(grid.channels, 1);
  ASSERT_EQ(grid.pixels.size(), 7u * 13u);
  auto at = [&](int64_t y, int64_t x) { return static_cast<uint8_t>(grid.pixels[y * 13 + x]); };
  for (int64_t i = 0; i < 5; ++i) {
    const int64_t top = (i / 3) * 3 + 1;
    const int64_t left = (i % 3) * 4 + 1;
    EXPECT_EQ(at(top, left), 10 * (i + 1)) << i;
    EXPECT_EQ(at(top + 1, left + 2), 10 * (i + 1)) << i;  // bottom-right pixel of the tile
    EXPECT_EQ(at(top - 1, left), 7) << i;                 // padding above
    EXPECT_EQ(at(top, left - 1), 7) << i;                 // padding left
  }
  EXPECT_EQ(at(4, 9), 7);  // the empty sixth cell
  EXPECT_EQ(at(6, 12), 7);
  int64_t sum = 0;
  for (char value : grid.pixels) sum += static_cast<uint8_t>(value);
  EXPECT_EQ(sum, (2 * 3) * (10 + 20 + 30 + 40 + 50) + 7 * (7 * 13 - 5 * 6));

  EXPECT_EQ(MakeGrid(images, 5, 0).width, 15);
  ExpectSameImage(MakeGrid({}, 4), Image{});
}

TEST(FormatsGrid, MakeGridKeepsEachPixelsChannelsTogether) {
  // Two RGB tiles of 2 x 2 with distinct bytes; one column, no padding: the grid is the two
  // images stacked, byte for byte.
  const Image a = MakeImage(2, 2, 3, RandomBytes(12, 1));
  const Image b = MakeImage(2, 2, 3, RandomBytes(12, 2));
  ExpectSameImage(MakeGrid({a, b}, /*columns=*/1, /*padding=*/0),
                  MakeImage(4, 2, 3, a.pixels + b.pixels));
  // Side by side: each grid row is a row of a then a row of b.
  const Image wide = MakeGrid({a, b}, /*columns=*/2, /*padding=*/0);
  EXPECT_EQ(wide.pixels, a.pixels.substr(0, 6) + b.pixels.substr(0, 6) + a.pixels.substr(6) +
                             b.pixels.substr(6));
}

TEST(FormatsGridDeathTest, MakeGridAbortsOnBrokenPreconditions) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const Image tile = MakeImage(2, 2, 1, std::string(4, 0));
  EXPECT_DEATH(MakeGrid({tile}, 0), "columns = 0");
  EXPECT_DEATH(MakeGrid({tile, MakeImage(2, 3, 1, std::string(6, 0))}, 2),
               "images\\[1\\] is 2x3x1 with 6 bytes of pixels; images\\[0\\] is 2x2x1");
  EXPECT_DEATH(MakeGrid({MakeImage(2, 2, 1, std::string(3, 0))}, 2),
               "images\\[0\\] is 2x2x1 with 3");
}

// ---- .npy --------------------------------------------------------------------------------------

TEST(FormatsNpy, DTypesAreNumpys) {
  const struct {
    DType dtype;
    size_t size;
    const char* name;
  } cases[] = {
      {DType::kFloat16, 2, "<f2"}, {DType::kFloat32, 4, "<f4"}, {DType::kFloat64, 8, "<f8"},
      {DType::kInt8, 1, "|i1"},    {DType::kInt16, 2, "<i2"},   {DType::kInt32, 4, "<i4"},
      {DType::kInt64, 8, "<i8"},   {DType::kUInt8, 1, "|u1"},   {DType::kBool, 1, "|b1"},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(DTypeSize(c.dtype), c.size) << c.name;
    EXPECT_STREQ(DTypeName(c.dtype), c.name);
    EXPECT_EQ(NpyTypeOf(c.dtype), (NpyType{c.name[1], static_cast<int>(c.size)})) << c.name;
  }
  EXPECT_EQ(MakeArray<float>(DType::kFloat32, {2, 3}, std::vector<float>(6)).numel(), 6);
  EXPECT_EQ(Array{}.numel(), 1);  // a scalar
  EXPECT_EQ(MakeArray<float>(DType::kFloat32, {12345678901, 0}, {}).numel(), 0);
}

TEST(FormatsNpy, SerializesExactlyAsNumpySave) {
  const std::vector<std::pair<Array, const char*>> cases = {
      {MakeArray<float>(DType::kFloat32, {2, 3}, {-1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f}),
       kNpyFloat32Hex},
      {MakeArray<int64_t>(DType::kInt64, {}, {-7}), kNpyInt64ScalarHex},
      {MakeArray<uint8_t>(DType::kBool, {2, 2}, {1, 0, 0, 1}), kNpyBoolHex},
      {MakeArray<uint16_t>(DType::kFloat16, {3},
                           {FloatToHalf(1.5f), FloatToHalf(-2.0f), FloatToHalf(65504.0f)}),
       kNpyFloat16Hex},
      // The first axis's 11 digits eat into numpy's spare header room.
      {MakeArray<float>(DType::kFloat32, {12345678901, 0}, {}), kNpyWideEmptyHex},
  };
  for (const auto& [array, hex] : cases) {
    SCOPED_TRACE(DTypeName(array.dtype));
    EXPECT_EQ(SerializeNpy(array), FromHex(hex));
    absl::StatusOr<Array> parsed = ParseNpy(FromHex(hex), "golden");
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    ExpectSameArray(*parsed, array);
  }
}

TEST(FormatsNpy, RoundTripsEveryDType) {
  uint32_t seed = 3;
  for (DType dtype : {DType::kFloat16, DType::kFloat32, DType::kFloat64, DType::kInt8,
                      DType::kInt16, DType::kInt32, DType::kInt64, DType::kUInt8, DType::kBool}) {
    for (const std::vector<int64_t>& shape :
         std::vector<std::vector<int64_t>>{{}, {0}, {5}, {2, 3, 4}, {1, 1, 3, 1}}) {
      SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " of ", shape.size(), " dimensions"));
      Array array;
      array.dtype = dtype;
      array.shape = shape;
      array.data = RandomBytes(array.numel() * DTypeSize(dtype), seed++);  // NaNs too
      if (dtype == DType::kBool) {
        for (char& value : array.data) value = static_cast<char>(value & 1);
      }
      absl::StatusOr<Array> parsed = ParseNpy(SerializeNpy(array), "mem");
      ASSERT_TRUE(parsed.ok()) << parsed.status();
      ExpectSameArray(*parsed, array);
    }
  }
}

TEST(FormatsNpy, ParsesBigEndianFortranAndOtherVersions) {
  // numpy's own bytes: F order is written as such, and '>i4' stays big-endian.
  absl::StatusOr<Array> parsed = ParseNpy(FromHex(kNpyFortranBigEndianHex), "f.npy");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ExpectSameArray(*parsed, MakeArray<int32_t>(DType::kInt32, {2, 3}, {0, 1, 2, 3, 4, 5}));

  // Hand-built: big-endian float64 with Python 2's long suffix, version 2.0.
  parsed = ParseNpy(NpyBytes("{'descr': '>f8', 'fortran_order': False, 'shape': (2L,), }",
                             Bytes({0x3f, 0xf8, 0, 0, 0, 0, 0, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0}),
                             /*version=*/2),
                    "be.npy");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ExpectSameArray(*parsed, MakeArray<double>(DType::kFloat64, {2}, {1.5, -2.0}));

  // uint16 widened to int32 (both byte orders), uint32 to int64, version 3.0.
  parsed = ParseNpy(NpyBytes("{'descr': '>u2', 'fortran_order': False, 'shape': (2,)}",
                             Bytes({0xff, 0xff, 0x01, 0x02}), 3),
                    "u2");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ExpectSameArray(*parsed, MakeArray<int32_t>(DType::kInt32, {2}, {65535, 258}));
  parsed = ParseNpy(
      NpyBytes("{'descr': '<u2', 'fortran_order': False, 'shape': (1,)}", Bytes({0x01, 0x02})),
      "u2");
  ASSERT_TRUE(parsed.ok());
  ExpectSameArray(*parsed, MakeArray<int32_t>(DType::kInt32, {1}, {0x0201}));
  parsed = ParseNpy(NpyBytes("{\"descr\": \"<u4\", \"fortran_order\": False, \"shape\": (1,)}",
                             Bytes({0xff, 0xff, 0xff, 0xff})),
                    "u4");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ExpectSameArray(*parsed, MakeArray<int64_t>(DType::kInt64, {1}, {4294967295LL}));

  // Fortran order in 3-D, little-endian float32: element (i, j, k) at i + 2 j + 6 k.
  std::string data;
  std::vector<float> c_order(24);
  for (int k = 0; k < 4; ++k) {
    for (int j = 0; j < 3; ++j) {
      for (int i = 0; i < 2; ++i) {
        const float value = static_cast<float>(100 * i + 10 * j + k);
        data.append(reinterpret_cast<const char*>(&value), sizeof(value));
        c_order[(i * 3 + j) * 4 + k] = value;
      }
    }
  }
  parsed = ParseNpy(NpyBytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3, 4), }", data),
                    "f3");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ExpectSameArray(*parsed, MakeArray<float>(DType::kFloat32, {2, 3, 4}, c_order));
  EXPECT_EQ(Values<float>(*parsed)[(1 * 3 + 2) * 4 + 3], 123.0f);

  // All at once: big-endian uint16 in Fortran order, [[1, 2, 3], [4, 5, 65535]].
  parsed = ParseNpy(NpyBytes("{'descr': '>u2', 'fortran_order': True, 'shape': (2, 3), }",
                             Bytes({0, 1, 0, 4, 0, 2, 0, 5, 0, 3, 0xff, 0xff})),
                    "all");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ExpectSameArray(*parsed, MakeArray<int32_t>(DType::kInt32, {2, 3}, {1, 2, 3, 4, 5, 65535}));

  // Bool: any non-zero byte is true, and reads as 1.
  parsed = ParseNpy(
      NpyBytes("{'descr': '|b1', 'fortran_order': False, 'shape': (3,)}", Bytes({0, 2, 1})), "b1");
  ASSERT_TRUE(parsed.ok());
  ExpectSameArray(*parsed, MakeArray<uint8_t>(DType::kBool, {3}, {0, 1, 1}));
}

TEST(FormatsNpy, ComplexArraysParseAsNpyArraysOnly) {
  // Big-endian complex64: each float swapped on its own.
  const std::string npy = NpyBytes("{'descr': '>c8', 'fortran_order': False, 'shape': (1,)}",
                                   Bytes({0x3f, 0x80, 0, 0, 0xc0, 0, 0, 0}));
  absl::StatusOr<NpyArray> parsed = ParseNpyArray(npy, "c8");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->type, (NpyType{'c', 8}));
  EXPECT_EQ(parsed->shape, std::vector<int64_t>{1});
  EXPECT_EQ(parsed->numel(), 1);
  const std::vector<float> parts = {1.0f, -2.0f};
  EXPECT_EQ(parsed->data, std::string(reinterpret_cast<const char*>(parts.data()), 8));
  // Written back little-endian, and read again the same.
  absl::StatusOr<NpyArray> again =
      ParseNpyArray(SerializeNpy(parsed->type, parsed->shape, parsed->data), "again");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->data, parsed->data);
  EXPECT_THAT(Message(ParseNpy(npy, "c8.npy").status()),
              HasSubstr("c8.npy: dtype '<c8' cannot be held by gd::formats::Array"));
}

TEST(FormatsNpy, RejectsMalformedHeadersAndTruncatedData) {
  const std::string valid =
      SerializeNpy(MakeArray<float>(DType::kFloat32, {3, 4}, std::vector<float>(12, 0.5f)));
  for (size_t length = 0; length < valid.size(); ++length) {
    absl::StatusOr<Array> parsed = ParseNpy(valid.substr(0, length), "cut.npy");
    ASSERT_FALSE(parsed.ok()) << "parsed " << length << " bytes";
    EXPECT_THAT(Message(parsed.status()), HasSubstr("cut.npy"));
  }
  EXPECT_THAT(Message(ParseNpy(valid.substr(0, valid.size() - 1), "x").status()),
              HasSubstr("truncated .npy data: shape (3, 4)"));
  EXPECT_THAT(Message(ParseNpy(valid.substr(0, 40), "x").status()),
              HasSubstr("truncated .npy header"));

  auto error = [](const std::string& dict, const std::string& data = "") {
    return Message(ParseNpy(NpyBytes(dict, data), "bad.npy").status());
  };
  EXPECT_THAT(error("{'descr': '|O', 'fortran_order': False, 'shape': (1,)}", std::string(8, 0)),
              HasSubstr("pickles"));
  EXPECT_THAT(error("{'descr': '<U5', 'fortran_order': False, 'shape': (1,)}"),
              HasSubstr("not supported"));
  EXPECT_THAT(error("{'descr': '<u8', 'fortran_order': False, 'shape': (1,)}"), HasSubstr("'<u8'"));
  EXPECT_THAT(error("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}"),
              HasSubstr("structured"));
  EXPECT_THAT(error("{'descr': '<f4', 'shape': (1,)}"), HasSubstr("needs the keys"));
  EXPECT_THAT(error("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}"),
              HasSubstr("unexpected key 'x'"));
  EXPECT_THAT(error("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}"),
              HasSubstr("shape"));
  EXPECT_THAT(error("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, "
                    "99999999999)}"),
              HasSubstr("overflows"));
  EXPECT_THAT(error("{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1,1,1,"
                    "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1)}"),
              HasSubstr("at most 32"));
  EXPECT_THAT(error("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (1,)}"),
              HasSubstr("fortran_order"));
  EXPECT_THAT(error("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} extra"),
              HasSubstr("after the dict"));
  EXPECT_THAT(error("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", "abcd"),
              HasSubstr("truncated"));
  EXPECT_THAT(Message(ParseNpy(std::string("\x93NUMPY\x04\x00\x00\x00", 10), "v4").status()),
              HasSubstr("version 4.0"));
  EXPECT_THAT(Message(ParseNpy("PK\x03\x04", "zip").status()), HasSubstr("not a .npy file"));
  // A header length pointing past the end of the file.
  std::string long_header = valid;
  long_header[8] = '\xff';
  long_header[9] = '\xff';
  EXPECT_THAT(Message(ParseNpy(long_header, "x").status()), HasSubstr("truncated .npy header"));
}

// ---- .npz --------------------------------------------------------------------------------------

// np.savez's arrays in kNumpySavezHex.
std::vector<std::pair<std::string, Array>> SavezArrays() {
  return {{"arr_0", MakeArray<uint8_t>(DType::kUInt8, {1, 2, 2, 1}, {0, 1, 2, 3})},
          {"arr_1", MakeArray<int64_t>(DType::kInt64, {1}, {3})}};
}

void ExpectSameArrays(const std::vector<std::pair<std::string, Array>>& actual,
                      const std::vector<std::pair<std::string, Array>>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    SCOPED_TRACE(expected[i].first);
    EXPECT_EQ(actual[i].first, expected[i].first);
    ExpectSameArray(actual[i].second, expected[i].second);
  }
}

TEST(FormatsNpz, WritesExactlyWhatNumpySavezWrites) {
  EXPECT_EQ(SerializeNpz(SavezArrays()), FromHex(kNumpySavezHex));
  ScratchFile file("dump.npz");
  const absl::Status status = WriteNpz(file.path(), SavezArrays());
  ASSERT_TRUE(status.ok()) << status;
  absl::StatusOr<std::string> written = ReadFileBytes(file.path());
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(*written, FromHex(kNumpySavezHex));
  // The empty archive is valid too (np.savez with no arrays).
  absl::StatusOr<std::vector<std::pair<std::string, Array>>> empty =
      ParseNpz(SerializeNpz({}), "empty.npz");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->empty());
}

TEST(FormatsNpz, ReadsNumpySavezAndSavezCompressed) {
  absl::StatusOr<std::vector<std::pair<std::string, Array>>> stored =
      ParseNpz(FromHex(kNumpySavezHex), "stored.npz");
  ASSERT_TRUE(stored.ok()) << stored.status();
  ExpectSameArrays(*stored, SavezArrays());

  std::vector<uint8_t> pixels(24);
  for (int i = 0; i < 24; ++i) pixels[i] = static_cast<uint8_t>(i);
  absl::StatusOr<std::vector<std::pair<std::string, Array>>> deflated =
      ParseNpz(FromHex(kNumpySavezCompressedHex), "deflated.npz");
  ASSERT_TRUE(deflated.ok()) << deflated.status();
  ExpectSameArrays(*deflated, {{"arr_0", MakeArray<uint8_t>(DType::kUInt8, {2, 2, 2, 3}, pixels)},
                               {"arr_1", MakeArray<int64_t>(DType::kInt64, {2}, {1, 0})}});
}

// numpy itself, both ways: np.load reads what WriteNpz wrote (values printed by Python, compared
// as text), and what np.savez_compressed writes from them reads back bit for bit. Debian's
// /usr/bin/python3 has numpy (python3-numpy); another python3 on PATH may not: that one is named.
TEST(FormatsNpz, NumpyLoadsWhatWeWriteAndWeReadWhatItWrites) {
  constexpr char kPython[] = "/usr/bin/python3";
  if (std::system(absl::StrCat(kPython, " -c 'import numpy' >/dev/null 2>&1").c_str()) != 0) {
    GTEST_SKIP() << kPython << " with numpy is missing (Debian: apt-get install python3-numpy)";
  }
  const std::vector<std::pair<std::string, Array>> arrays = {
      {"arr_0", MakeArray<uint8_t>(DType::kUInt8, {2, 2, 2, 1}, {0, 1, 2, 3, 4, 5, 6, 255})},
      {"arr_1", MakeArray<int64_t>(DType::kInt64, {2}, {-1, int64_t{1} << 40})},
      {"weights", MakeArray<float>(DType::kFloat32, {3, 1}, {0.5f, -1.25f, 3.0f})},
      {"half", MakeArray<uint16_t>(DType::kFloat16, {2}, {0x3e00, 0xc000})},  // 1.5, -2
      {"mask", MakeArray<uint8_t>(DType::kBool, {3}, {1, 0, 1})},
      {"\xc3\xa9t\xc3\xa9", MakeArray<double>(DType::kFloat64, {}, {2.5})},  // "été", UTF-8
      {"empty", MakeArray<int32_t>(DType::kInt32, {0, 4}, {})}};
  ScratchFile ours("ours.npz");
  ScratchFile theirs("theirs.npz");
  ASSERT_TRUE(WriteNpz(ours.path(), arrays).ok());
  const std::string script =
      "import sys, numpy as np\n"
      "with np.load(sys.argv[1]) as z:\n"
      "    loaded = {name: z[name] for name in z.files}\n"
      "for name, a in loaded.items():\n"
      "    print(name, a.dtype.str, list(a.shape), a.ravel().tolist())\n"
      "np.savez_compressed(sys.argv[2], **loaded)\n";
  const std::string command = absl::StrCat("PYTHONIOENCODING=utf-8 ", kPython, " -c '", script,
                                           "' ", ours.path(), " ", theirs.path(), " 2>&1");
  std::FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  for (size_t n; (n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0;) output.append(buffer, n);
  ASSERT_EQ(pclose(pipe), 0) << output;
  EXPECT_EQ(output,
            "arr_0 |u1 [2, 2, 2, 1] [0, 1, 2, 3, 4, 5, 6, 255]\n"
            "arr_1 <i8 [2] [-1, 1099511627776]\n"
            "weights <f4 [3, 1] [0.5, -1.25, 3.0]\n"
            "half <f2 [2] [1.5, -2.0]\n"
            "mask |b1 [3] [True, False, True]\n"
            "\xc3\xa9t\xc3\xa9 <f8 [] [2.5]\n"
            "empty <i4 [0, 4] []\n");

  absl::StatusOr<std::string> compressed = ReadFileBytes(theirs.path());
  ASSERT_TRUE(compressed.ok()) << compressed.status();
  absl::StatusOr<std::vector<std::pair<std::string, Array>>> parsed =
      ParseNpz(*compressed, "theirs.npz");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ExpectSameArrays(*parsed, arrays);
}

TEST(FormatsNpz, ReadsDeflatedMembersBuiltWithZlibAndZip64Archives) {
  Array images;
  images.dtype = DType::kUInt8;
  images.shape = {4, 6, 5, 3};
  images.data = RandomBytes(4 * 6 * 5 * 3, 11);
  const std::vector<std::pair<std::string, Array>> arrays = {
      {"arr_0", images}, {"arr_1", MakeArray<int64_t>(DType::kInt64, {4}, {0, 7, 2, 999})}};
  for (bool zip64 : {false, true}) {
    SCOPED_TRACE(zip64 ? "zip64" : "zip");
    const std::string zip =
        BuildZip({{"arr_0.npy", SerializeNpy(arrays[0].second), /*deflate=*/true},
                  {"arr_1.npy", SerializeNpy(arrays[1].second), /*deflate=*/false}},
                 zip64);
    absl::StatusOr<std::vector<std::pair<std::string, Array>>> parsed = ParseNpz(zip, "z.npz");
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    ExpectSameArrays(*parsed, arrays);
  }
}

TEST(FormatsNpz, RejectsCorruptArchives) {
  const std::string good = FromHex(kNumpySavezHex);
  auto error = [&](const std::string& bytes) {
    auto arrays = ParseNpz(bytes, "bad.npz");
    EXPECT_FALSE(arrays.ok());
    return arrays.ok() ? std::string("(no error)") : Message(arrays.status());
  };
  for (size_t length = 0; length < good.size(); ++length) {
    EXPECT_THAT(error(good.substr(0, length)), HasSubstr("bad.npz")) << length;
  }
  // Every single-byte corruption errors or reads; none crashes.
  for (size_t i = 0; i < good.size(); ++i) {
    std::string corrupt = good;
    corrupt[i] = static_cast<char>(corrupt[i] ^ 0xa5);
    (void)ParseNpz(corrupt, "corrupt.npz");
  }
  EXPECT_THAT(error(""), HasSubstr("bad.npz: not a valid zip archive: the file is empty"));
  EXPECT_THAT(error("just some text that is not a zip archive at all"),
              HasSubstr("bad.npz: not a valid zip archive"));
  std::string flipped = good;
  flipped[0x80] ^= 0x01;  // inside arr_0's header text
  EXPECT_THAT(error(flipped), HasSubstr("bad.npz:arr_0.npy: CRC-32 mismatch"));
  const size_t end = good.size() - 22;
  std::string bad_offset = good;
  bad_offset[end + 17] = '\x02';  // the central directory offset, now 0x282: past the end
  EXPECT_THAT(error(bad_offset), HasSubstr("bad.npz: not a valid zip archive"));
  std::string too_many = good;
  too_many[end + 8] = too_many[end + 10] = '\x03';  // 3 entries in a directory that holds 2
  EXPECT_THAT(error(too_many), HasSubstr("bad.npz: not a valid zip archive"));
  const size_t central = 0x182;
  std::string bad_local = good;
  bad_local[central + 42] = '\x05';  // arr_0's local header offset
  EXPECT_THAT(error(bad_local), HasSubstr("bad.npz: not a valid zip archive"));
  std::string local_disagrees = good;
  local_disagrees[central + 10] = '\x08';  // arr_0 deflated says the directory, stored its header
  EXPECT_THAT(error(local_disagrees),
              HasSubstr("the central directory disagrees with the file or with a local header"));
  std::string encrypted = good;
  encrypted[central + 8] = '\x01';
  EXPECT_THAT(error(encrypted), HasSubstr("bad.npz:arr_0.npy: is encrypted"));

  const std::string npy = SerializeNpy(MakeArray<float>(DType::kFloat32, {3}, {0, 0, 0}));
  TestMember bzip2{"a.npy", npy};
  bzip2.method = 12;
  EXPECT_THAT(error(BuildZip({bzip2}, false)),
              HasSubstr("bad.npz:a.npy: uses compression method 12 (only 0, stored, and 8"));
  EXPECT_THAT(error(BuildZip({{"notes.txt", "hello"}}, false)), HasSubstr("not a .npy member"));
  EXPECT_THAT(error(BuildZip({{"a.npy", npy}, {"a.npy", npy}}, false)),
              HasSubstr("two members have the same name"));
  // Deflated members cut short, or inflating to more or less than the directory says.
  EXPECT_THAT(error(BuildZip({{"a.npy", npy, true, /*cut_stored_bytes=*/3}}, false)),
              HasSubstr("bad.npz:a.npy: CRC-32 mismatch, or the data is cut short"));
  EXPECT_THAT(error(BuildZip({{"a.npy", npy, true, 0, /*claimed_size=*/100}}, false)),
              HasSubstr("a.npy: inflates to more than the directory's 100 bytes"));
  EXPECT_THAT(error(BuildZip({{"a.npy", npy, true, 0, /*claimed_size=*/1000}}, false)),
              HasSubstr("a.npy: inflates to 140 bytes, the directory says 1000"));
  EXPECT_THAT(error(BuildZip({{"a.npy", npy, false, 0, /*claimed_size=*/100}}, false)),
              HasSubstr("a.npy: stored member with size 100 != compressed size 140"));
  // A member that is not a valid .npy, and one Array cannot hold.
  EXPECT_THAT(error(BuildZip({{"a.npy", "not npy"}}, false)), HasSubstr("a.npy: not a .npy file"));
  const std::string complex = SerializeNpy(NpyType{'c', 16}, {1}, std::string(16, '\0'));
  EXPECT_THAT(error(BuildZip({{"z.npy", complex}}, false)),
              HasSubstr("bad.npz:z.npy: dtype '<c16' cannot be held"));
}

// The reader's limits (core/io/formats/zip.h), each at its edge: a zip bomb's claimed size is
// refused before anything is allocated for it.
TEST(FormatsNpz, EnforcesTheZipReadersLimits) {
  auto error = [&](const std::string& bytes) {
    auto arrays = ParseNpz(bytes, "bomb.npz");
    return arrays.ok() ? std::string("(no error)") : Message(arrays.status());
  };
  // 100,000 bytes of 'x' deflate to ~100 bytes: the real ratio is ~1000:1, under the limit.
  const std::string xs = std::string(100000, 'x');
  const size_t compressed = RawDeflate(xs).size();
  EXPECT_THAT(error(BuildZip({{"a.npy", xs, true}}, false)), HasSubstr("a.npy: not a .npy file"));
  // Claims up to kMaxDeflateRatio * compressed + 1024 get as far as inflating; one more is a bomb.
  const int64_t ratio_edge = 1100 * static_cast<int64_t>(compressed) + 1024;
  EXPECT_THAT(error(BuildZip({{"a.npy", xs, true, 0, ratio_edge}}, false)),
              HasSubstr(absl::StrCat("inflates to 100000 bytes, the directory says ", ratio_edge)));
  EXPECT_THAT(error(BuildZip({{"a.npy", xs, true, 0, ratio_edge + 1}}, false)),
              HasSubstr(absl::StrCat("bomb.npz:a.npy: claims to inflate ", compressed, " bytes to ",
                                     ratio_edge + 1, ", more than deflate can (at most 1100:1)")));
  EXPECT_THAT(error(BuildZip({{"a.npy", xs, true, 0, int64_t{2} << 30}}, false)),
              HasSubstr("more than deflate can"));
  // Over 16 GiB per member, whatever the ratio (a ZIP64 archive can claim it).
  EXPECT_THAT(error(BuildZip({{"a.npy", xs, true, 0, (int64_t{16} << 30) + 1}}, true)),
              HasSubstr("bomb.npz:a.npy: claims 17179869185 bytes, over the limit of 17179869184 "
                        "bytes per member"));
}

TEST(FormatsNpz, VisitNpzHandsOverEachMemberAndStopsAtTheVisitorsError) {
  const std::string complex = SerializeNpy(NpyType{'c', 8}, {2}, std::string(16, '\x01'));
  const std::string zip = BuildZip(
      {{"z.npy", complex}, {"arr_1.npy", SerializeNpy(SavezArrays()[1].second), true}}, false);
  std::vector<std::string> names;
  absl::Status status = VisitNpz(zip, "v.npz", [&](const std::string& name, NpyArray array) {
    names.push_back(name);
    if (name == "z") {
      EXPECT_EQ(array.type, (NpyType{'c', 8}));
      EXPECT_EQ(array.shape, std::vector<int64_t>{2});
      EXPECT_EQ(array.data, std::string(16, '\x01'));
    }
    return absl::OkStatus();
  });
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(names, (std::vector<std::string>{"z", "arr_1"}));

  names.clear();
  status = VisitNpz(zip, "v.npz", [&](const std::string& name, NpyArray) {
    names.push_back(name);
    return absl::CancelledError("enough");
  });
  EXPECT_EQ(status, absl::CancelledError("enough"));
  EXPECT_EQ(names, std::vector<std::string>{"z"});
}

TEST(FormatsNpz, WriteNpzChecksNamesFirstAndRemovesPartialFiles) {
  ScratchFile file("names.npz");
  const Array one = MakeArray<float>(DType::kFloat32, {1}, {1.0f});
  ASSERT_TRUE(WriteFileBytes(file.path(), "old").ok());
  // Bad names: an error before the file is opened, so it keeps what it held.
  EXPECT_THAT(Message(WriteNpz(file.path(), {{"", one}})),
              HasSubstr(file.path() + ": array name '' is empty, too long or contains NUL"));
  EXPECT_THAT(Message(WriteNpz(file.path(), {{"x", one}, {"x", one}})),
              HasSubstr("array name 'x' repeats"));
  EXPECT_THAT(Message(WriteNpz(file.path(), {{std::string("a\0b", 3), one}})),
              HasSubstr("contains NUL"));
  EXPECT_EQ(*ReadFileBytes(file.path()), "old");
  // A member that fails half way: the error names it, and the partial file is removed.
  const absl::Status failed =
      WriteNpz(file.path(), {"a", "b"}, [&](size_t index) -> absl::StatusOr<std::string> {
        if (index == 0) return SerializeNpy(one);
        return absl::DataLossError("no data for b");
      });
  EXPECT_EQ(failed.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(failed), HasSubstr(file.path() + ":b.npy: no data for b"));
  EXPECT_FALSE(FileExists(file.path()));
  EXPECT_THAT(Message(WriteNpz("/nonexistent-dir/c.npz", {{"x", one}})),
              HasSubstr("/nonexistent-dir/c.npz"));
}

TEST(FormatsNpzDeathTest, SerializeNpzAbortsOnBrokenPreconditions) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const Array one = MakeArray<float>(DType::kFloat32, {1}, {1.0f});
  EXPECT_DEATH(SerializeNpz({{"x", one}, {"x", one}}), "SerializeNpz: .*array name 'x' repeats");
  Array short_data = one;
  short_data.data.pop_back();
  EXPECT_DEATH(SerializeNpy(short_data), "SerializeNpy: shape \\(1,\\) of '<f4' does not match 3");
}

// ---- Files --------------------------------------------------------------------------------------

TEST(FormatsFiles, WriteThenReadBytes) {
  ScratchFile file("bytes.bin");
  const std::string bytes = RandomBytes(200000, 7) + std::string(3, '\0');
  ASSERT_TRUE(WriteFileBytes(file.path(), bytes).ok());
  EXPECT_EQ(*ReadFileBytes(file.path()), bytes);
  ASSERT_TRUE(WriteFileBytes(file.path(), "short").ok());  // truncates
  EXPECT_EQ(*ReadFileBytes(file.path()), "short");
  ASSERT_TRUE(WriteFileBytes(file.path(), "").ok());
  EXPECT_EQ(*ReadFileBytes(file.path()), "");
}

TEST(FormatsFiles, ErrorsNameThePathAndTheReason) {
  const absl::Status missing = ReadFileBytes("/nonexistent-dir/missing.npy").status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(missing), HasSubstr("/nonexistent-dir/missing.npy: cannot open: No such"));
  const absl::Status directory = ReadFileBytes(::testing::TempDir()).status();
  EXPECT_EQ(directory.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(directory), HasSubstr("is a directory"));
  EXPECT_THAT(Message(WriteFileBytes("/nonexistent-dir/x.png", "x")),
              HasSubstr("/nonexistent-dir/x.png: cannot open for writing"));
}

}  // namespace
}  // namespace gd::formats
