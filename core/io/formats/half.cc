// IEEE 754 binary16 <-> binary32 on bits, so that float16 arrays (the wire's DTYPE_FLOAT16, numpy's
// '<f2') can be read and written without a compiler's _Float16.
#include <cstring>

#include "core/io/formats/formats.h"

namespace gd::formats {
namespace {

uint32_t FloatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

float BitsToFloat(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// Shifts `value` right by `shift` (1..31) bits, rounding to nearest, ties to even.
uint32_t ShiftRightRoundingToEven(uint32_t value, int shift) {
  const uint32_t kept = value >> shift;
  const uint32_t dropped = value & ((uint32_t{1} << shift) - 1);
  const uint32_t halfway = uint32_t{1} << (shift - 1);
  return kept + (dropped > halfway || (dropped == halfway && (kept & 1) != 0) ? 1 : 0);
}

}  // namespace

float HalfToFloat(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000) << 16;
  const uint32_t exponent = (half >> 10) & 0x1f;
  uint32_t mantissa = half & 0x3ff;
  if (exponent == 0x1f) return BitsToFloat(sign | 0x7f800000 | (mantissa << 13));  // inf, NaN
  if (exponent != 0) return BitsToFloat(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13));
  if (mantissa == 0) return BitsToFloat(sign);  // +-0
  // Subnormal, mantissa * 2^-24: normalise so that the leading 1 becomes the implicit bit.
  int shift = 0;
  while ((mantissa & 0x400) == 0) {
    mantissa <<= 1;
    ++shift;
  }
  return BitsToFloat(sign | (static_cast<uint32_t>(127 - 14 - shift) << 23) |
                     ((mantissa & 0x3ff) << 13));
}

uint16_t FloatToHalf(float value) {
  const uint32_t bits = FloatBits(value);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  const uint32_t magnitude = bits & 0x7fffffff;
  if (magnitude > 0x7f800000) {  // NaN: stays a NaN, quiet, with the payload's top bits
    return static_cast<uint16_t>(sign | 0x7e00 | ((magnitude >> 13) & 0x3ff));
  }
  // From halfway between 65504 (the largest half) and 2^16 up, rounding gives infinity.
  if (magnitude >= 0x477ff000) return static_cast<uint16_t>(sign | 0x7c00);
  if (magnitude >= 0x38800000) {  // 2^-14 and up: a normal half
    const uint32_t rebiased = magnitude - (uint32_t{127 - 15} << 23);
    // A mantissa that rounds up to 2^10 carries into the exponent, as it should.
    return static_cast<uint16_t>(sign | ShiftRightRoundingToEven(rebiased, 13));
  }
  // Subnormal halves count units of 2^-24; 2^-25 and below round to zero (2^-25 itself is a tie,
  // and 0 is even). A float's value is (2^23 | mantissa) * 2^(exponent - 150).
  if (magnitude <= 0x33000000) return sign;
  const uint32_t exponent = magnitude >> 23;  // 102..112 here
  const uint32_t mantissa = (magnitude & 0x7fffff) | 0x800000;
  return static_cast<uint16_t>(
      sign | ShiftRightRoundingToEven(mantissa, static_cast<int>(126 - exponent)));
}

}  // namespace gd::formats
