// .npy (numpy/lib/format.py): header parsing and writing, dtypes, and the data's byte order and
// Fortran-order transposition. Object (pickled) arrays are refused, never loaded.
#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/io/formats/formats.h"
#include "core/io/formats/internal.h"
#include "core/status_macros.h"

namespace gd::formats {
namespace {

using internal::LoadLittle;
using internal::PutLittle;

constexpr char kNpyMagic[] = "\x93NUMPY";
constexpr size_t kNpyMagicSize = 6;
constexpr int kMaxNpyDims = 32;
constexpr int64_t kMaxNpyElements = int64_t{1} << 62;

struct DTypeEntry {
  DType dtype;
  NpyType type;
  const char* name;  // numpy's descr, little-endian
};
constexpr DTypeEntry kDTypes[] = {
    {DType::kFloat16, {'f', 2}, "<f2"}, {DType::kFloat32, {'f', 4}, "<f4"},
    {DType::kFloat64, {'f', 8}, "<f8"}, {DType::kInt8, {'i', 1}, "|i1"},
    {DType::kInt16, {'i', 2}, "<i2"},   {DType::kInt32, {'i', 4}, "<i4"},
    {DType::kInt64, {'i', 8}, "<i8"},   {DType::kUInt8, {'u', 1}, "|u1"},
    {DType::kBool, {'b', 1}, "|b1"},
};

// What .npy files may hold here: DType's types, complex, and unsigned types that are widened.
constexpr NpyType kOtherNpyTypes[] = {{'c', 8}, {'c', 16}, {'u', 2}, {'u', 4}};

bool IsKnownType(NpyType type) {
  return std::any_of(std::begin(kDTypes), std::end(kDTypes),
                     [&](const DTypeEntry& entry) { return entry.type == type; }) ||
         std::find(std::begin(kOtherNpyTypes), std::end(kOtherNpyTypes), type) !=
             std::end(kOtherNpyTypes);
}

const DTypeEntry& Entry(DType dtype) {
  for (const DTypeEntry& entry : kDTypes) {
    if (entry.dtype == dtype) return entry;
  }
  internal::PreconditionFailed("DType", absl::StrCat(static_cast<int>(dtype), " is not a DType"));
}

// numpy's descr string: byte order ('|' when it does not apply), kind, item size.
std::string NpyDescr(NpyType type) {
  return absl::StrCat(type.item_size == 1 ? "|" : "<", std::string(1, type.kind), type.item_size);
}

// The product of the dimensions: 0 if one is 0, INT64_MAX if the product overflows (parsed
// headers are checked to stay within 2^62; a negative dimension is the caller's error).
int64_t ElementCount(const std::vector<int64_t>& shape) {
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  int64_t elements = 1;
  for (int64_t dim : shape) {
    if (__builtin_mul_overflow(elements, dim, &elements)) {
      return std::numeric_limits<int64_t>::max();
    }
  }
  return elements;
}

struct NpyHeader {
  NpyType type{};
  bool big_endian = false;
  bool fortran_order = false;
  std::vector<int64_t> shape;
  size_t data_offset = 0;
};

// A cursor over the header's Python dict literal, e.g.
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
class HeaderParser {
 public:
  explicit HeaderParser(absl::string_view text) : text_(text) {}

  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool Consume(char c) {
    SkipSpace();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool Peek(char c) {
    SkipSpace();
    return pos_ < text_.size() && text_[pos_] == c;
  }
  bool AtEnd() {
    SkipSpace();
    return pos_ == text_.size();
  }
  // A '...' or "..." literal without escapes.
  bool String(std::string* out) {
    SkipSpace();
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"')) return false;
    const char quote = text_[pos_++];
    const size_t end = text_.find(quote, pos_);
    if (end == absl::string_view::npos) return false;
    out->assign(text_.data() + pos_, end - pos_);
    if (out->find('\\') != std::string::npos) return false;
    pos_ = end + 1;
    return true;
  }
  bool Bool(bool* out) {
    SkipSpace();
    for (const auto& [word, value] : {std::pair<absl::string_view, bool>{"True", true},
                                      std::pair<absl::string_view, bool>{"False", false}}) {
      if (text_.substr(pos_, word.size()) == word) {
        pos_ += word.size();
        *out = value;
        return true;
      }
    }
    return false;
  }
  // A non-negative integer, optionally with Python 2's 'L' suffix.
  bool Int(int64_t* out) {
    SkipSpace();
    const size_t start = pos_;
    int64_t value = 0;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      if (value > (kMaxNpyElements - 9) / 10) return false;
      value = value * 10 + (text_[pos_++] - '0');
    }
    if (pos_ == start) return false;
    if (pos_ < text_.size() && text_[pos_] == 'L') ++pos_;
    *out = value;
    return true;
  }
  // (), (3,), (2, 3) or (2, 3,)
  bool Tuple(std::vector<int64_t>* out) {
    if (!Consume('(')) return false;
    out->clear();
    while (!Consume(')')) {
      int64_t dim = 0;
      if (!Int(&dim) || out->size() >= static_cast<size_t>(kMaxNpyDims)) return false;
      out->push_back(dim);
      if (!Consume(',') && !Peek(')')) return false;
    }
    return true;
  }

 private:
  absl::string_view text_;
  size_t pos_ = 0;
};

absl::Status ParseDescr(const std::string& descr, NpyHeader* header, absl::string_view what) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": dtype '", descr, "' ", why));
  };
  if (descr.size() >= 2 && descr[1] == 'O') {
    return bad("holds Python objects (pickles), which are never loaded");
  }
  if (descr.size() < 3) return bad("is not a supported dtype");
  const char order = descr[0];
  const char kind = descr[1];
  int64_t size = 0;
  for (size_t i = 2; i < descr.size(); ++i) {
    if (descr[i] < '0' || descr[i] > '9' || size > 1000) return bad("is not a supported dtype");
    size = size * 10 + (descr[i] - '0');
  }
  if (order != '<' && order != '>' && order != '|' && order != '=') {
    return bad("has an unknown byte order");
  }
  const NpyType type{kind, static_cast<int>(size)};
  if (!IsKnownType(type)) {
    return bad(
        "is not supported (allowed: f2 f4 f8 i1 i2 i4 i8 u1 u2 u4 b1 c8 c16; "
        "uint64, strings, datetimes and structured dtypes are not)");
  }
  header->type = type;
  header->big_endian = order == '>';
  return absl::OkStatus();
}

absl::StatusOr<NpyHeader> ParseNpyHeader(absl::string_view bytes, absl::string_view what) {
  if (bytes.size() < kNpyMagicSize + 2 || bytes.substr(0, kNpyMagicSize) != kNpyMagic) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": not a .npy file (the \\x93NUMPY magic is missing)"));
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  const int minor = static_cast<unsigned char>(bytes[7]);
  if (major < 1 || major > 3 || minor != 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": .npy format version ", major, ".",
                                                   minor, " is not supported (1.0, 2.0, 3.0)"));
  }
  const size_t length_bytes = major == 1 ? 2 : 4;
  const size_t prefix = kNpyMagicSize + 2 + length_bytes;
  if (bytes.size() < prefix) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": truncated .npy header"));
  }
  const uint64_t header_length = LoadLittle(bytes.data() + 8, static_cast<int>(length_bytes));
  if (header_length > bytes.size() - prefix) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": truncated .npy header (", header_length,
                                                   " bytes declared, ", bytes.size() - prefix,
                                                   " present)"));
  }
  NpyHeader header;
  header.data_offset = prefix + header_length;
  const absl::string_view dict = bytes.substr(prefix, header_length);
  auto malformed = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": malformed .npy header (", why, "): ", dict.substr(0, 200)));
  };
  HeaderParser parser(dict);
  if (!parser.Consume('{')) return malformed("not a dict");
  std::set<std::string> seen;
  std::string descr;
  while (!parser.Consume('}')) {
    std::string key;
    if (!parser.String(&key) || !parser.Consume(':')) return malformed("expected 'key':");
    if (!seen.insert(key).second) return malformed(absl::StrCat("repeated key '", key, "'"));
    if (key == "descr") {
      if (parser.Peek('[')) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": structured (record) dtypes are not supported"));
      }
      if (!parser.String(&descr)) return malformed("descr is not a string");
    } else if (key == "fortran_order") {
      if (!parser.Bool(&header.fortran_order)) return malformed("fortran_order is not a bool");
    } else if (key == "shape") {
      if (!parser.Tuple(&header.shape)) {
        return malformed(absl::StrCat("shape is not a tuple of at most ", kMaxNpyDims,
                                      " non-negative integers"));
      }
    } else {
      return malformed(absl::StrCat("unexpected key '", key, "'"));
    }
    if (!parser.Consume(',') && !parser.Peek('}')) return malformed("expected ',' or '}'");
  }
  if (!parser.AtEnd()) return malformed("text after the dict");
  if (seen.size() != 3) return malformed("needs the keys descr, fortran_order and shape");
  absl::Status descr_status = ParseDescr(descr, &header, what);
  if (!descr_status.ok()) return descr_status;
  int64_t elements = 1;
  for (int64_t dim : header.shape) {
    if (dim > 0 && elements > kMaxNpyElements / dim) {
      return malformed("the shape's element count overflows");
    }
    elements *= std::max<int64_t>(dim, 1);
  }
  return header;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("(", absl::StrJoin(shape, ", "), shape.size() == 1 ? ",)" : ")");
}

// Reverses the bytes of each `word`-byte word: big-endian data to the host's order.
void SwapWords(char* data, size_t bytes, int word) {
  for (size_t i = 0; i + word <= bytes; i += word) std::reverse(data + i, data + i + word);
}

// Fortran-order data (the C order of the reversed shape) -> C order of `shape`.
std::string FortranToC(const std::string& data, const std::vector<int64_t>& shape, int item_size) {
  const int rank = static_cast<int>(shape.size());
  std::vector<int64_t> fortran_stride(rank, 1);  // in elements
  for (int d = 1; d < rank; ++d) fortran_stride[d] = fortran_stride[d - 1] * shape[d - 1];
  const int64_t elements = ElementCount(shape);
  std::string out(data.size(), '\0');
  std::vector<int64_t> index(rank, 0);  // the C-order position of element i
  int64_t source = 0;                   // its element offset in the Fortran-order data
  for (int64_t i = 0; i < elements; ++i) {
    std::memcpy(&out[i * item_size], &data[source * item_size], item_size);
    for (int d = rank - 1; d >= 0; --d) {
      if (++index[d] < shape[d]) {
        source += fortran_stride[d];
        break;
      }
      source -= (shape[d] - 1) * fortran_stride[d];
      index[d] = 0;
    }
  }
  return out;
}

// The `elements` items after a parsed header as a C-order, little-endian array: bytes swapped,
// u2/u4 widened to i4/i8, bools made 0/1, Fortran order transposed.
NpyArray DecodeNpyData(const NpyHeader& header, absl::string_view data, int64_t elements) {
  const int item_size = header.type.item_size;
  NpyArray array;
  array.type = header.type;
  array.shape = header.shape;
  array.data.assign(data.data(), static_cast<size_t>(elements) * item_size);
  if (header.big_endian && item_size > 1) {  // complex: real and imaginary parts swap alone
    SwapWords(array.data.data(), array.data.size(),
              header.type.kind == 'c' ? item_size / 2 : item_size);
  }
  if (header.type.kind == 'u' && item_size > 1) {
    const int wide_size = 2 * item_size;
    std::string wide(static_cast<size_t>(elements) * wide_size, '\0');
    for (int64_t i = 0; i < elements; ++i) {
      const uint64_t value = LoadLittle(&array.data[i * item_size], item_size);
      std::memcpy(&wide[i * wide_size], &value, wide_size);  // little-endian: the low bytes
    }
    array.type = {'i', wide_size};
    array.data = std::move(wide);
  } else if (header.type.kind == 'b') {  // any non-zero byte is true, as numpy reads it
    for (char& value : array.data) value = value != 0 ? 1 : 0;
  }
  if (header.fortran_order && array.shape.size() > 1) {
    array.data = FortranToC(array.data, array.shape, array.type.item_size);
  }
  return array;
}

}  // namespace

size_t DTypeSize(DType dtype) { return static_cast<size_t>(Entry(dtype).type.item_size); }
const char* DTypeName(DType dtype) { return Entry(dtype).name; }
NpyType NpyTypeOf(DType dtype) { return Entry(dtype).type; }

int64_t Array::numel() const { return ElementCount(shape); }
int64_t NpyArray::numel() const { return ElementCount(shape); }

absl::StatusOr<NpyArray> ParseNpyArray(absl::string_view bytes, absl::string_view what) {
  ASSIGN_OR_RETURN(auto header, ParseNpyHeader(bytes, what));
  const int64_t elements = ElementCount(header.shape);
  const size_t available = bytes.size() - header.data_offset;
  if (static_cast<uint64_t>(elements) > available / header.type.item_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": truncated .npy data: shape ", ShapeText(header.shape), " of ",
                     header.type.item_size, "-byte items needs ", static_cast<uint64_t>(elements),
                     " items but only ", available, " bytes follow the header"));
  }
  try {
    return DecodeNpyData(header, bytes.substr(header.data_offset), elements);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(
        what, ": out of memory for ", elements, " items of ", header.type.item_size, " bytes"));
  }
}

absl::StatusOr<Array> internal::ArrayFromNpy(NpyArray npy, absl::string_view what) {
  for (const DTypeEntry& entry : kDTypes) {
    if (entry.type == npy.type) {
      return Array{entry.dtype, std::move(npy.shape), std::move(npy.data)};
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      what, ": dtype '", NpyDescr(npy.type),
      "' cannot be held by gd::formats::Array (f2 f4 f8 i1 i2 i4 i8 u1 b1, and u2 u4 widened)"));
}

absl::StatusOr<Array> ParseNpy(absl::string_view bytes, absl::string_view what) {
  ASSIGN_OR_RETURN(auto parsed, ParseNpyArray(bytes, what));
  return internal::ArrayFromNpy(std::move(parsed), what);
}

std::string SerializeNpy(NpyType type, const std::vector<int64_t>& shape, absl::string_view data) {
  if (!IsKnownType(type)) {
    internal::PreconditionFailed("SerializeNpy",
                                 absl::StrCat("no numpy type '", NpyDescr(type), "' here"));
  }
  if (std::any_of(shape.begin(), shape.end(), [](int64_t dim) { return dim < 0; }) ||
      static_cast<uint64_t>(ElementCount(shape)) * type.item_size != data.size()) {
    internal::PreconditionFailed("SerializeNpy",
                                 absl::StrCat("shape ", ShapeText(shape), " of '", NpyDescr(type),
                                              "' does not match ", data.size(), " bytes of data"));
  }
  // np.lib.format._write_array_header: the dict (keys sorted), spare room for the first axis to
  // grow to 21 digits, then spaces and '\n' so that the data starts at a multiple of 64.
  std::string dict = absl::StrCat("{'descr': '", NpyDescr(type),
                                  "', 'fortran_order': False, 'shape': ", ShapeText(shape), ", }");
  if (!shape.empty()) dict.append(21 - absl::StrCat(shape[0]).size(), ' ');
  const size_t text_length = dict.size() + 1;
  size_t length_bytes = 2;
  size_t padding = 64 - (kNpyMagicSize + 2 + length_bytes + text_length) % 64;
  if (text_length + padding > 0xffff) {  // version 2.0: a 4-byte header length
    length_bytes = 4;
    padding = 64 - (kNpyMagicSize + 2 + length_bytes + text_length) % 64;
  }
  std::string out(kNpyMagic, kNpyMagicSize);
  out.reserve(kNpyMagicSize + 2 + length_bytes + text_length + padding + data.size());
  out.push_back(static_cast<char>(length_bytes == 2 ? 1 : 2));
  out.push_back(0);
  PutLittle(&out, text_length + padding, static_cast<int>(length_bytes));
  out += dict;
  out.append(padding, ' ');
  out.push_back('\n');
  out.append(data.data(), data.size());
  return out;
}

std::string SerializeNpy(const Array& array) {
  return SerializeNpy(NpyTypeOf(array.dtype), array.shape, array.data);
}

}  // namespace gd::formats
