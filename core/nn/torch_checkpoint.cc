// ReadTorchCheckpoint: torch.save zip archives read by a restricted unpickler that understands
// only what a state_dict needs (see checkpoint.h for why and for the contract).
#include "core/nn/checkpoint.h"

#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "core/nn/checkpoint_format.h"
#include "core/status_macros.h"

namespace gd {
namespace {

using checkpoint_internal::HostIsLittleEndian;
using checkpoint_internal::Quoted;
using checkpoint_internal::ShapeString;
using checkpoint_internal::WithPrefix;
using checkpoint_internal::kDtypes;
using checkpoint_internal::kStorageTypeList;
using checkpoint_internal::FindStorageDtype;
using checkpoint_internal::HasInvalidBools;
using checkpoint_internal::ReadPrefix;
using checkpoint_internal::IsLegacyTorchPickle;
using checkpoint_internal::kZipMagic;
using checkpoint_internal::kMaxDims;

// ---------------------------------------------------------------------------------------------
// The restricted unpickler for torch.save's data.pkl.

// Pickle opcodes (Python's Lib/pickle.py names), the ones we execute and, for messages, the ones
// we refuse.
namespace opcode {
constexpr uint8_t kMark = '(', kStop = '.', kPop = '0', kPopMark = '1', kDup = '2';
constexpr uint8_t kBinFloat = 'G', kBinInt = 'J', kBinInt1 = 'K', kBinInt2 = 'M', kNone = 'N';
constexpr uint8_t kBinPersId = 'Q', kReduce = 'R', kBinString = 'T', kShortBinString = 'U';
constexpr uint8_t kBinUnicode = 'X', kBinBytes = 'B', kShortBinBytes = 'C', kAppend = 'a';
constexpr uint8_t kBuild = 'b', kGlobal = 'c', kDict = 'd', kEmptyDict = '}', kAppends = 'e';
constexpr uint8_t kBinGet = 'h', kLongBinGet = 'j', kList = 'l', kEmptyList = ']';
constexpr uint8_t kBinPut = 'q', kLongBinPut = 'r', kSetItem = 's', kTuple = 't';
constexpr uint8_t kEmptyTuple = ')', kSetItems = 'u', kProto = 0x80, kTuple1 = 0x85;
constexpr uint8_t kTuple2 = 0x86, kTuple3 = 0x87, kNewTrue = 0x88, kNewFalse = 0x89;
constexpr uint8_t kLong1 = 0x8a, kLong4 = 0x8b, kShortBinUnicode = 0x8c, kBinUnicode8 = 0x8d;
constexpr uint8_t kBinBytes8 = 0x8e, kStackGlobal = 0x93, kMemoize = 0x94, kFrame = 0x95;
}  // namespace opcode

struct OpcodeName {
  uint8_t code;
  const char* name;
};
// clang-format off
constexpr OpcodeName kOpcodeNames[] = {
    {'(', "MARK"}, {'.', "STOP"}, {'0', "POP"}, {'1', "POP_MARK"}, {'2', "DUP"}, {'F', "FLOAT"},
    {'G', "BINFLOAT"}, {'I', "INT"}, {'J', "BININT"}, {'K', "BININT1"}, {'L', "LONG"},
    {'M', "BININT2"}, {'N', "NONE"}, {'P', "PERSID"}, {'Q', "BINPERSID"}, {'R', "REDUCE"},
    {'S', "STRING"}, {'T', "BINSTRING"}, {'U', "SHORT_BINSTRING"}, {'V', "UNICODE"},
    {'X', "BINUNICODE"}, {'B', "BINBYTES"}, {'C', "SHORT_BINBYTES"}, {'a', "APPEND"},
    {'b', "BUILD"}, {'c', "GLOBAL"}, {'d', "DICT"}, {'}', "EMPTY_DICT"}, {'e', "APPENDS"},
    {'g', "GET"}, {'h', "BINGET"}, {'i', "INST"}, {'j', "LONG_BINGET"}, {'l', "LIST"},
    {']', "EMPTY_LIST"}, {'o', "OBJ"}, {'p', "PUT"}, {'q', "BINPUT"}, {'r', "LONG_BINPUT"},
    {'s', "SETITEM"}, {'t', "TUPLE"}, {')', "EMPTY_TUPLE"}, {'u', "SETITEMS"}, {0x80, "PROTO"},
    {0x81, "NEWOBJ"}, {0x82, "EXT1"}, {0x83, "EXT2"}, {0x84, "EXT4"}, {0x85, "TUPLE1"},
    {0x86, "TUPLE2"}, {0x87, "TUPLE3"}, {0x88, "NEWTRUE"}, {0x89, "NEWFALSE"}, {0x8a, "LONG1"},
    {0x8b, "LONG4"}, {0x8c, "SHORT_BINUNICODE"}, {0x8d, "BINUNICODE8"}, {0x8e, "BINBYTES8"},
    {0x8f, "EMPTY_SET"}, {0x90, "ADDITEMS"}, {0x91, "FROZENSET"}, {0x92, "NEWOBJ_EX"},
    {0x93, "STACK_GLOBAL"}, {0x94, "MEMOIZE"}, {0x95, "FRAME"}, {0x96, "BYTEARRAY8"},
    {0x97, "NEXT_BUFFER"}, {0x98, "READONLY_BUFFER"}};
// clang-format on

const char* NameOfOpcode(uint8_t code) {
  for (const OpcodeName& entry : kOpcodeNames) {
    if (entry.code == code) return entry.name;
  }
  return "unknown";
}

// What a value built by a state_dict pickle can be.
enum class Kind {
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kTuple,
  kList,
  kDict,
  kGlobal,
  kStorage,
  kTensor
};

const char* KindName(Kind kind) {
  constexpr const char* kNames[] = {"None", "bool", "int",    "float",   "string", "tuple",
                                    "list", "dict", "global", "storage", "tensor"};
  return kNames[static_cast<int>(kind)];
}

// The only globals a state_dict pickle may name.
enum class Global {
  kOrderedDict,                // collections.OrderedDict
  kRebuildTensorV2,            // torch._utils._rebuild_tensor_v2
  kRebuildParameter,           // torch._utils._rebuild_parameter
  kRebuildParameterWithState,  // torch._utils._rebuild_parameter_with_state (PyTorch >= 2.0)
  kStorageType,                // torch.FloatStorage and the other typed storages of kDtypes
};

// Values live in one arena and refer to each other by index, so that containers can never own
// one another: no cycles to leak, no recursion to overflow when they are destroyed.
using ValueId = size_t;

struct Value {
  Kind kind = Kind::kNone;
  int64_t integer = 0;                               // kBool (0 or 1), kInt
  double real = 0;                                   // kFloat
  std::string text;                                  // kString; kGlobal: "module.name";
                                                     // kStorage, kTensor: the storage key
  std::vector<ValueId> items;                        // kTuple, kList
  std::vector<std::pair<ValueId, ValueId>> entries;  // kDict, in insertion order
  Global global = Global::kOrderedDict;              // kGlobal
  torch::ScalarType dtype = torch::kFloat32;         // kGlobal (kStorageType), kStorage
  torch::Tensor tensor;  // kStorage: the flat storage; kTensor: a view of one
};

// One data/<key> record, shared by every tensor that views it.
struct StorageRecord {
  torch::Tensor flat;  // [numel] of the storage's dtype
  int64_t views = 0;   // _rebuild_tensor_v2 calls on it
  bool handed_out = false;
};

class StateDictUnpickler {
 public:
  // Returns the flat [numel] tensor of storage `key` (the archive's data/<key> record).
  using StorageReader = std::function<absl::StatusOr<torch::Tensor>(
      const std::string& key, torch::ScalarType dtype, int64_t numel)>;

  StateDictUnpickler(absl::string_view pickle, StorageReader read_storage)
      : pickle_(pickle), read_storage_(std::move(read_storage)) {}

  absl::StatusOr<StateDict> Run() {
    while (true) {
      if (pos_ >= pickle_.size()) {
        return absl::DataLossError(
            absl::StrCat("data.pkl ends at byte ", pickle_.size(), " without STOP (truncated?)"));
      }
      opcode_offset_ = pos_;
      opcode_ = static_cast<uint8_t>(pickle_[pos_++]);
      if (opcode_ == opcode::kStop) break;
      absl::Status status = Execute();
      if (!status.ok()) {
        return WithPrefix(status, absl::StrCat("data.pkl byte ", opcode_offset_, " (",
                                               NameOfOpcode(opcode_), "): "));
      }
    }
    ValueId result = 0;
    if (!Pop(&result)) return Corrupt("STOP with an empty stack");
    return ToStateDict(result);
  }

 private:
  // Limits far above any real state_dict (a 554M-parameter model needs ~10^4 values) that keep a
  // hostile pickle from taking unbounded memory.
  static constexpr size_t kMaxValues = size_t{1} << 22;
  static constexpr size_t kMaxStack = size_t{1} << 22;
  // A view may hold more elements than its storage (stride 0, overlapping strides), but not
  // unboundedly more: a few bytes of pickle must not ask for petabytes.
  static constexpr uint64_t kMaxExtraViewElements = uint64_t{1} << 24;

  absl::Status Corrupt(absl::string_view message) const { return absl::DataLossError(message); }
  absl::Status Truncated(uint64_t wanted) const {
    return absl::DataLossError(absl::StrCat("needs ", wanted, " more bytes but only ",
                                            pickle_.size() - pos_, " remain (truncated?)"));
  }

  bool Take(uint64_t count, absl::string_view* bytes) {
    if (count > pickle_.size() - pos_) return false;
    *bytes = pickle_.substr(pos_, count);
    pos_ += count;
    return true;
  }

  // An unsigned little-endian integer of `width` bytes (1, 2, 4 or 8).
  absl::Status TakeUnsigned(size_t width, uint64_t* value) {
    absl::string_view bytes;
    if (!Take(width, &bytes)) return Truncated(width);
    *value = 0;
    for (size_t i = 0; i < width; ++i) {
      *value |= uint64_t{static_cast<uint8_t>(bytes[i])} << (8 * i);
    }
    return absl::OkStatus();
  }

  ValueId NewValue(Value value) {
    values_.push_back(std::move(value));
    return values_.size() - 1;
  }

  absl::Status Push(ValueId id) {
    if (stack_.size() >= kMaxStack) {
      return absl::ResourceExhaustedError(
          absl::StrCat("pickle stack exceeds ", kMaxStack, " values"));
    }
    stack_.push_back(id);
    return absl::OkStatus();
  }

  absl::Status PushNew(Value value) {
    if (values_.size() >= kMaxValues) {
      return absl::ResourceExhaustedError(
          absl::StrCat("pickle builds more than ", kMaxValues, " values"));
    }
    return Push(NewValue(std::move(value)));
  }

  absl::Status PushScalar(Kind kind, int64_t integer) {
    Value value;
    value.kind = kind;
    value.integer = integer;
    return PushNew(std::move(value));
  }

  size_t StackFloor() const { return marks_.empty() ? 0 : marks_.back(); }

  // Pops the top value; false when the stack (above the innermost MARK) is empty.
  bool Pop(ValueId* id) {
    if (stack_.size() <= StackFloor()) return false;
    *id = stack_.back();
    stack_.pop_back();
    return true;
  }

  absl::Status PopInto(ValueId* id) {
    if (!Pop(id)) return Corrupt("pops from an empty stack");
    return absl::OkStatus();
  }

  absl::Status Top(ValueId* id) const {
    if (stack_.size() <= StackFloor()) return Corrupt("reads the top of an empty stack");
    *id = stack_.back();
    return absl::OkStatus();
  }

  // Pops everything above the innermost MARK, and the MARK.
  absl::Status PopMark(std::vector<ValueId>* items) {
    if (marks_.empty()) return Corrupt("no MARK to pop to");
    items->assign(stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back()), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return absl::OkStatus();
  }

  absl::Status PushTuple(std::vector<ValueId> items) {
    Value tuple;
    tuple.kind = Kind::kTuple;
    tuple.items = std::move(items);
    return PushNew(std::move(tuple));
  }

  absl::Status PopTuple(size_t count) {
    std::vector<ValueId> items(count);
    for (size_t i = count; i > 0; --i) {
      RETURN_IF_ERROR(PopInto(&items[i - 1]));
    }
    return PushTuple(std::move(items));
  }

  absl::Status PushString(uint64_t length) {
    absl::string_view bytes;
    if (!Take(length, &bytes)) return Truncated(length);
    Value value;
    value.kind = Kind::kString;
    value.text = std::string(bytes);
    return PushNew(std::move(value));
  }

  // The container on top of the stack, which must be of `kind`.
  absl::Status TopContainer(Kind kind, Value** container) {
    ValueId id = 0;
    RETURN_IF_ERROR(Top(&id));
    if (values_[id].kind != kind) {
      return Corrupt(absl::StrCat("expects a ", KindName(kind), " on the stack, found a ",
                                  KindName(values_[id].kind)));
    }
    *container = &values_[id];
    return absl::OkStatus();
  }

  absl::Status AddDictItems(const std::vector<ValueId>& items) {
    if (items.size() % 2 != 0) return Corrupt("odd number of items for a dict");
    Value* dict = nullptr;
    RETURN_IF_ERROR(TopContainer(Kind::kDict, &dict));
    for (size_t i = 0; i < items.size(); i += 2) dict->entries.emplace_back(items[i], items[i + 1]);
    return absl::OkStatus();
  }

  absl::Status Memoize(uint64_t index) {
    ValueId id = 0;
    RETURN_IF_ERROR(Top(&id));
    memo_[index] = id;
    return absl::OkStatus();
  }

  absl::Status Recall(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) return Corrupt(absl::StrCat("memo index ", index, " was never set"));
    return Push(it->second);
  }

  absl::Status Execute() {
    namespace op = opcode;
    uint64_t number = 0;
    absl::Status status;
    std::vector<ValueId> items;
    switch (opcode_) {
      case op::kProto:
        if (status = TakeUnsigned(1, &number); !status.ok()) return status;
        if (number < 2 || number > 5) {
          return absl::InvalidArgumentError(
              absl::StrCat("pickle protocol ", number, " is not supported (2 to 5 are)"));
        }
        return absl::OkStatus();
      case op::kFrame:  // A length prefix for buffering; the opcodes inside are read as usual.
        if (status = TakeUnsigned(8, &number); !status.ok()) return status;
        if (number > pickle_.size() - pos_) return Truncated(number);
        return absl::OkStatus();
      case op::kMark:
        if (marks_.size() >= kMaxStack) return absl::ResourceExhaustedError("too many MARKs");
        marks_.push_back(stack_.size());
        return absl::OkStatus();
      case op::kPop:
        if (stack_.size() > StackFloor()) {
          stack_.pop_back();
        } else if (!marks_.empty()) {
          marks_.pop_back();  // Python's POP of an empty frame pops the MARK.
        } else {
          return Corrupt("pops from an empty stack");
        }
        return absl::OkStatus();
      case op::kPopMark:
        return PopMark(&items);
      case op::kDup: {
        ValueId id = 0;
        if (status = Top(&id); !status.ok()) return status;
        return Push(id);
      }
      case op::kNone:
        return PushNew(Value{});
      case op::kNewTrue:
        return PushScalar(Kind::kBool, 1);
      case op::kNewFalse:
        return PushScalar(Kind::kBool, 0);
      case op::kBinInt1:
      case op::kBinInt2:
        if (status = TakeUnsigned(opcode_ == op::kBinInt1 ? 1 : 2, &number); !status.ok()) {
          return status;
        }
        return PushScalar(Kind::kInt, static_cast<int64_t>(number));
      case op::kBinInt:
        if (status = TakeUnsigned(4, &number); !status.ok()) return status;
        return PushScalar(Kind::kInt, static_cast<int32_t>(static_cast<uint32_t>(number)));
      case op::kLong1:
      case op::kLong4:
        return ExecuteLong();
      case op::kBinFloat: {
        absl::string_view bytes;
        if (!Take(8, &bytes)) return Truncated(8);
        uint64_t bits = 0;
        for (char byte : bytes) bits = (bits << 8) | static_cast<uint8_t>(byte);  // big-endian
        Value value;
        value.kind = Kind::kFloat;
        std::memcpy(&value.real, &bits, sizeof(bits));
        return PushNew(std::move(value));
      }
      case op::kShortBinUnicode:
      case op::kShortBinString:
      case op::kShortBinBytes:
        if (status = TakeUnsigned(1, &number); !status.ok()) return status;
        return PushString(number);
      case op::kBinUnicode:
      case op::kBinBytes:
        if (status = TakeUnsigned(4, &number); !status.ok()) return status;
        return PushString(number);
      case op::kBinString:  // a signed 4-byte length
        if (status = TakeUnsigned(4, &number); !status.ok()) return status;
        if (number > uint64_t{std::numeric_limits<int32_t>::max()}) {
          return Corrupt("negative string length");
        }
        return PushString(number);
      case op::kBinUnicode8:
      case op::kBinBytes8:
        if (status = TakeUnsigned(8, &number); !status.ok()) return status;
        return PushString(number);
      case op::kEmptyTuple:
        return PushTuple({});
      case op::kTuple:
        if (status = PopMark(&items); !status.ok()) return status;
        return PushTuple(std::move(items));
      case op::kTuple1:
        return PopTuple(1);
      case op::kTuple2:
        return PopTuple(2);
      case op::kTuple3:
        return PopTuple(3);
      case op::kEmptyList:
      case op::kList: {
        Value list;
        list.kind = Kind::kList;
        if (opcode_ == op::kList) {
          if (status = PopMark(&list.items); !status.ok()) return status;
        }
        return PushNew(std::move(list));
      }
      case op::kAppend:
      case op::kAppends: {
        if (opcode_ == op::kAppend) {
          items.resize(1);
          if (status = PopInto(&items[0]); !status.ok()) return status;
        } else if (status = PopMark(&items); !status.ok()) {
          return status;
        }
        Value* list = nullptr;
        if (status = TopContainer(Kind::kList, &list); !status.ok()) return status;
        list->items.insert(list->items.end(), items.begin(), items.end());
        return absl::OkStatus();
      }
      case op::kEmptyDict:
      case op::kDict: {
        if (opcode_ == op::kDict) {
          if (status = PopMark(&items); !status.ok()) return status;
          if (items.size() % 2 != 0) return Corrupt("odd number of items for a dict");
        }
        Value dict;
        dict.kind = Kind::kDict;
        for (size_t i = 0; i + 1 < items.size(); i += 2) {
          dict.entries.emplace_back(items[i], items[i + 1]);
        }
        return PushNew(std::move(dict));
      }
      case op::kSetItem:
        items.resize(2);
        if (status = PopInto(&items[1]); !status.ok()) return status;
        if (status = PopInto(&items[0]); !status.ok()) return status;
        return AddDictItems(items);
      case op::kSetItems:
        if (status = PopMark(&items); !status.ok()) return status;
        return AddDictItems(items);
      case op::kBinPut:
      case op::kLongBinPut:
        if (status = TakeUnsigned(opcode_ == op::kBinPut ? 1 : 4, &number); !status.ok()) {
          return status;
        }
        return Memoize(number);
      case op::kMemoize:
        return Memoize(memo_.size());
      case op::kBinGet:
      case op::kLongBinGet:
        if (status = TakeUnsigned(opcode_ == op::kBinGet ? 1 : 4, &number); !status.ok()) {
          return status;
        }
        return Recall(number);
      case op::kGlobal:
        return ExecuteGlobal();
      case op::kStackGlobal: {
        ValueId module = 0;
        ValueId name = 0;
        if (status = PopInto(&name); !status.ok()) return status;
        if (status = PopInto(&module); !status.ok()) return status;
        if (values_[module].kind != Kind::kString || values_[name].kind != Kind::kString) {
          return Corrupt("STACK_GLOBAL needs two strings");
        }
        return PushGlobal(values_[module].text, values_[name].text);
      }
      case op::kBinPersId:
        return ExecutePersistentId();
      case op::kReduce:
        return ExecuteReduce();
      case op::kBuild: {
        // OrderedDict.__reduce__ ends with BUILD of its instance __dict__ ({"_metadata": ...},
        // per-module versions a loader does not need). Nothing else may be built.
        ValueId state = 0;
        if (status = PopInto(&state); !status.ok()) return status;
        ValueId target = 0;
        if (status = Top(&target); !status.ok()) return status;
        if (values_[target].kind != Kind::kDict) {
          return absl::InvalidArgumentError(
              absl::StrCat("BUILD on a ", KindName(values_[target].kind),
                           ": only an OrderedDict's attributes (_metadata) may be set"));
        }
        return absl::OkStatus();
      }
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("pickle opcode 0x", absl::Hex(opcode_, absl::kZeroPad2), " (",
                         NameOfOpcode(opcode_), ") is not allowed in a state_dict"));
    }
  }

  absl::Status ExecuteLong() {
    uint64_t length = 0;
    absl::Status status = TakeUnsigned(opcode_ == opcode::kLong1 ? 1 : 4, &length);
    if (!status.ok()) return status;
    absl::string_view bytes;
    if (!Take(length, &bytes)) return Truncated(length);
    if (length > 8) {
      return absl::InvalidArgumentError(
          absl::StrCat("an integer of ", length, " bytes does not fit in 64 bits"));
    }
    uint64_t value = 0;
    for (size_t i = 0; i < length; ++i)
      value |= uint64_t{static_cast<uint8_t>(bytes[i])} << (8 * i);
    if (length > 0 && length < 8 && (static_cast<uint8_t>(bytes[length - 1]) & 0x80) != 0) {
      value |= ~uint64_t{0} << (8 * length);  // sign extension of a negative number
    }
    return PushScalar(Kind::kInt, static_cast<int64_t>(value));
  }

  absl::Status ExecuteGlobal() {
    // GLOBAL's argument is two newline-terminated lines, module and name.
    std::string lines[2];
    for (std::string& line : lines) {
      const size_t end = pickle_.find('\n', pos_);
      if (end == absl::string_view::npos) return Corrupt("GLOBAL without a newline (truncated?)");
      line = std::string(pickle_.substr(pos_, end - pos_));
      pos_ = end + 1;
    }
    return PushGlobal(lines[0], lines[1]);
  }

  absl::Status PushGlobal(const std::string& module, const std::string& name) {
    Value value;
    value.kind = Kind::kGlobal;
    value.text = absl::StrCat(module, ".", name);
    if (module == "collections" && name == "OrderedDict") {
      value.global = Global::kOrderedDict;
    } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
      value.global = Global::kRebuildTensorV2;
    } else if (module == "torch._utils" && name == "_rebuild_parameter") {
      value.global = Global::kRebuildParameter;
    } else if (module == "torch._utils" && name == "_rebuild_parameter_with_state") {
      value.global = Global::kRebuildParameterWithState;
    } else if (module == "torch" && FindStorageDtype(name) != nullptr) {
      value.global = Global::kStorageType;
      value.dtype = FindStorageDtype(name)->type;
    } else if (module == "torch" && absl::EndsWith(name, "Storage")) {
      return absl::InvalidArgumentError(absl::StrCat("storage type torch.", Quoted(name),
                                                     " is not supported (torch.<T>Storage for T ",
                                                     "in ", kStorageTypeList, " is)"));
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "refusing pickle global ", Quoted(absl::StrCat(module, " ", name)),
          ": only collections.OrderedDict, torch._utils._rebuild_tensor_v2, "
          "torch._utils._rebuild_parameter(_with_state) and torch.*Storage are allowed"));
    }
    return PushNew(std::move(value));
  }

  // torch.save's persistent id: ("storage", storage_type, key, location, numel).
  absl::Status ExecutePersistentId() {
    ValueId pid_id = 0;
    RETURN_IF_ERROR(PopInto(&pid_id));
    const Value& pid = values_[pid_id];
    const bool well_formed =
        pid.kind == Kind::kTuple && pid.items.size() == 5 &&
        values_[pid.items[0]].kind == Kind::kString && values_[pid.items[0]].text == "storage" &&
        values_[pid.items[1]].kind == Kind::kGlobal &&
        values_[pid.items[1]].global == Global::kStorageType &&
        values_[pid.items[2]].kind == Kind::kString &&
        values_[pid.items[3]].kind == Kind::kString && values_[pid.items[4]].kind == Kind::kInt;
    if (!well_formed) {
      return absl::InvalidArgumentError(
          "persistent id is not ('storage', torch.<T>Storage, key, location, numel)");
    }
    const std::string key = values_[pid.items[2]].text;
    const torch::ScalarType dtype = values_[pid.items[1]].dtype;
    const int64_t numel = values_[pid.items[4]].integer;
    const int64_t max_numel =
        std::numeric_limits<int64_t>::max() / static_cast<int64_t>(c10::elementSize(dtype));
    if (numel < 0 || numel > max_numel) {
      return Corrupt(absl::StrCat("storage ", Quoted(key), " has ", numel, " elements"));
    }
    auto it = storages_.find(key);
    if (it == storages_.end()) {
      ASSIGN_OR_RETURN(auto flat, read_storage_(key, dtype, numel));
      it = storages_.emplace(key, StorageRecord{std::move(flat)}).first;
    } else if (it->second.flat.scalar_type() != dtype || it->second.flat.numel() != numel) {
      return absl::InvalidArgumentError(
          absl::StrCat("storage ", Quoted(key), " is read as ", it->second.flat.numel(),
                       " elements of ", c10::toString(it->second.flat.scalar_type()), " and as ",
                       numel, " of ", c10::toString(dtype)));
    }
    Value storage;
    storage.kind = Kind::kStorage;
    storage.text = key;
    storage.dtype = dtype;
    storage.tensor = it->second.flat;
    return PushNew(std::move(storage));
  }

  absl::Status ExecuteReduce() {
    ValueId args_id = 0;
    ValueId callable_id = 0;
    RETURN_IF_ERROR(PopInto(&args_id));
    RETURN_IF_ERROR(PopInto(&callable_id));
    const Value& callable = values_[callable_id];
    const Value& args = values_[args_id];
    if (callable.kind != Kind::kGlobal) {
      return absl::InvalidArgumentError(
          absl::StrCat("REDUCE calls a ", KindName(callable.kind), ", not an allowed global"));
    }
    if (args.kind != Kind::kTuple) {
      return Corrupt(absl::StrCat("REDUCE arguments are a ", KindName(args.kind)));
    }
    switch (callable.global) {
      case Global::kOrderedDict: {
        if (!args.items.empty()) {
          return absl::InvalidArgumentError(
              absl::StrCat("collections.OrderedDict called with ", args.items.size(),
                           " arguments; a state_dict's OrderedDict is built empty, then filled"));
        }
        Value dict;
        dict.kind = Kind::kDict;
        return PushNew(std::move(dict));
      }
      case Global::kRebuildTensorV2:
        return RebuildTensor(args.items);
      case Global::kRebuildParameter:
      case Global::kRebuildParameterWithState: {
        // (data, requires_grad, backward_hooks[, state]): the data is the tensor we keep.
        const size_t arity = callable.global == Global::kRebuildParameter ? 3 : 4;
        if (args.items.size() != arity || values_[args.items[0]].kind != Kind::kTensor) {
          return absl::InvalidArgumentError(absl::StrCat(callable.text, " takes ", arity,
                                                         " arguments, a tensor first; got ",
                                                         args.items.size()));
        }
        return Push(args.items[0]);
      }
      case Global::kStorageType:
        break;
    }
    return absl::InvalidArgumentError(
        absl::StrCat(callable.text, " cannot be called in a state_dict"));
  }

  absl::Status IntTuple(const Value& value, const char* what, std::vector<int64_t>* numbers) {
    if (value.kind != Kind::kTuple || value.items.size() > kMaxDims) {
      return Corrupt(absl::StrCat("_rebuild_tensor_v2's ", what, " is not a tuple of at most ",
                                  kMaxDims, " ints"));
    }
    numbers->clear();
    for (ValueId id : value.items) {
      if (values_[id].kind != Kind::kInt || values_[id].integer < 0) {
        return Corrupt(absl::StrCat("_rebuild_tensor_v2's ", what,
                                    " holds something other than a non-negative int"));
      }
      numbers->push_back(values_[id].integer);
    }
    return absl::OkStatus();
  }

  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks
  // [, metadata]): a view of `storage`, after checking that it stays within it.
  absl::Status RebuildTensor(const std::vector<ValueId>& args) {
    if (args.size() != 6 && args.size() != 7) {
      return Corrupt(absl::StrCat("_rebuild_tensor_v2 takes 6 or 7 arguments, got ", args.size()));
    }
    const Value& storage = values_[args[0]];
    const Value& offset = values_[args[1]];
    if (storage.kind != Kind::kStorage) {
      return Corrupt(absl::StrCat("_rebuild_tensor_v2's storage is a ", KindName(storage.kind)));
    }
    if (offset.kind != Kind::kInt || offset.integer < 0) {
      return Corrupt("_rebuild_tensor_v2's storage offset is not a non-negative int");
    }
    std::vector<int64_t> sizes;
    std::vector<int64_t> strides;
    if (absl::Status status = IntTuple(values_[args[2]], "size", &sizes); !status.ok()) {
      return status;
    }
    if (absl::Status status = IntTuple(values_[args[3]], "stride", &strides); !status.ok()) {
      return status;
    }
    if (sizes.size() != strides.size()) {
      return Corrupt(absl::StrCat("_rebuild_tensor_v2's size ", ShapeString(sizes), " and stride ",
                                  ShapeString(strides), " differ in length"));
    }
    // The view reaches elements [offset, offset + sum((size_i - 1) * stride_i)] of the storage,
    // or none when a size is 0; every step is checked for overflow.
    const auto storage_numel = static_cast<uint64_t>(storage.tensor.numel());
    uint64_t last = static_cast<uint64_t>(offset.integer);
    uint64_t view_numel = 1;
    bool overflow = false;
    for (size_t i = 0; i < sizes.size(); ++i) {
      const auto size = static_cast<uint64_t>(sizes[i]);
      overflow |= __builtin_mul_overflow(view_numel, size, &view_numel);
      if (size == 0) continue;
      uint64_t reach = 0;
      overflow |= __builtin_mul_overflow(size - 1, static_cast<uint64_t>(strides[i]), &reach);
      overflow |= __builtin_add_overflow(last, reach, &last);
    }
    const bool in_bounds = view_numel == 0 ? static_cast<uint64_t>(offset.integer) <= storage_numel
                                           : last < storage_numel;
    if (overflow || !in_bounds || view_numel > storage_numel + kMaxExtraViewElements) {
      return Corrupt(absl::StrCat("a tensor of size ", ShapeString(sizes), ", stride ",
                                  ShapeString(strides), " at offset ", offset.integer,
                                  " does not fit in storage ", Quoted(storage.text), " of ",
                                  storage_numel, " elements"));
    }
    Value tensor;
    tensor.kind = Kind::kTensor;
    tensor.text = storage.text;
    tensor.tensor = storage.tensor.as_strided(sizes, strides, offset.integer);
    ++storages_.at(storage.text).views;
    return PushNew(std::move(tensor));
  }

  absl::StatusOr<StateDict> ToStateDict(ValueId result_id) {
    const Value& result = values_[result_id];
    if (result.kind != Kind::kDict) {
      return absl::InvalidArgumentError(
          absl::StrCat("the pickled object is a ", KindName(result.kind),
                       ", not a state_dict (an OrderedDict of name -> tensor)"));
    }
    StateDict state;
    state.reserve(result.entries.size());
    std::unordered_set<std::string> names;
    for (const auto& [key_id, value_id] : result.entries) {
      const Value& key = values_[key_id];
      const Value& value = values_[value_id];
      if (key.kind != Kind::kString) {
        return absl::InvalidArgumentError(
            absl::StrCat("a state_dict key is a ", KindName(key.kind), ", not a string"));
      }
      if (value.kind != Kind::kTensor) {
        return absl::InvalidArgumentError(absl::StrCat(
            "entry ", Quoted(key.text), " is a ", KindName(value.kind),
            ", not a tensor: only flat state_dicts are supported, not wrappers such as "
            "{\"state_dict\": ...} or {\"model\": ...}"));
      }
      if (!names.insert(key.text).second) {
        return absl::InvalidArgumentError(absl::StrCat("key ", Quoted(key.text), " appears twice"));
      }
      state.emplace_back(key.text, Materialize(value));
    }
    return state;
  }

  // A tensor of its own: the storage itself when this is its only, whole, contiguous view;
  // otherwise a contiguous copy, so that loading into one tensor never changes another.
  torch::Tensor Materialize(const Value& view) {
    StorageRecord& record = storages_.at(view.text);
    const bool owns_storage = record.views == 1 && !record.handed_out &&
                              view.tensor.is_contiguous() &&
                              view.tensor.numel() == record.flat.numel();
    if (owns_storage) {
      record.handed_out = true;
      return view.tensor;
    }
    return view.tensor.clone(at::MemoryFormat::Contiguous);
  }

  absl::string_view pickle_;
  StorageReader read_storage_;
  size_t pos_ = 0;
  size_t opcode_offset_ = 0;
  uint8_t opcode_ = 0;
  std::deque<Value> values_;  // a deque: pointers into it stay valid as it grows
  std::vector<ValueId> stack_;
  std::vector<size_t> marks_;  // stack sizes at each open MARK
  std::unordered_map<uint64_t, ValueId> memo_;
  std::unordered_map<std::string, StorageRecord> storages_;
};

}  // namespace

absl::StatusOr<StateDict> ReadTorchCheckpoint(const std::string& path) {
  const std::string context = absl::StrCat("checkpoint \"", path, "\"");
  if (!HostIsLittleEndian()) {
    return absl::UnimplementedError(context + ": reading on a big-endian host is not supported");
  }
  ASSIGN_OR_RETURN(auto prefix, ReadPrefix(path, 64));
  if (IsLegacyTorchPickle(prefix)) {
    return absl::UnimplementedError(absl::StrCat(
        context,
        " is in the legacy torch.save format (PyTorch < 1.6 or _use_new_zipfile_serialization="
        "False), which is not supported: re-save it with PyTorch >= 1.6, e.g. "
        "torch.save(torch.load(path), path)"));
  }
  if (!absl::StartsWith(prefix, kZipMagic)) {
    return absl::InvalidArgumentError(absl::StrCat(
        context, " is not a torch.save zip archive (it does not start with \"PK\\x03\\x04\")"));
  }
  std::string record = "the zip directory";
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    if (reader.hasRecord("constants.pkl")) {
      return absl::InvalidArgumentError(absl::StrCat(
          context, " is a TorchScript archive (torch.jit.save), not a torch.save state_dict"));
    }
    if (!reader.hasRecord("data.pkl")) {
      return absl::InvalidArgumentError(
          absl::StrCat(context, " is a zip archive without data.pkl: not a torch.save file"));
    }
    // PyTorch >= 2.1 records the byte order of the storages; older files are little-endian.
    if (reader.hasRecord("byteorder")) {
      record = "byteorder";
      auto [order_data, order_size] = reader.getRecord("byteorder");
      const absl::string_view order(static_cast<const char*>(order_data.get()), order_size);
      if (order != "little") {
        return absl::UnimplementedError(
            absl::StrCat(context, " has byteorder ", Quoted(order),
                         ": only little-endian checkpoints are supported"));
      }
    }
    record = "data.pkl";
    auto [pickle_data, pickle_size] = reader.getRecord("data.pkl");
    auto read_storage = [&reader, &record](const std::string& key, torch::ScalarType dtype,
                                           int64_t numel) -> absl::StatusOr<torch::Tensor> {
      const std::string name = "data/" + key;
      if (!reader.hasRecord(name)) {
        return absl::DataLossError(absl::StrCat("record ", Quoted(name), " is missing"));
      }
      record = name;
      auto [data, size] = reader.getRecord(name);
      record = "data.pkl";
      const uint64_t expected = static_cast<uint64_t>(numel) * c10::elementSize(dtype);
      if (size != expected) {
        return absl::DataLossError(absl::StrCat(
            "record ", Quoted(name), " holds ", size, " bytes, but its storage declares ", numel,
            " elements of ", c10::toString(dtype), " (", expected, " bytes)"));
      }
      const auto options = torch::TensorOptions().dtype(dtype);
      if (numel == 0) return torch::empty({0}, options);
      // The tensor keeps the record's buffer alive instead of copying it.
      auto owner = std::make_shared<at::DataPtr>(std::move(data));
      torch::Tensor flat = torch::from_blob(
          owner->get(), {numel}, [owner](void* /*data*/) {}, options);
      if (dtype == torch::kBool && HasInvalidBools(flat)) {
        return absl::DataLossError(
            absl::StrCat("bool storage ", Quoted(name), " holds bytes other than 0 and 1"));
      }
      return flat;
    };
    StateDictUnpickler unpickler(
        absl::string_view(static_cast<const char*>(pickle_data.get()), pickle_size), read_storage);
    absl::StatusOr<StateDict> state = unpickler.Run();
    if (!state.ok()) return WithPrefix(state.status(), context + ": ");
    return state;
  } catch (const c10::Error& error) {
    return absl::DataLossError(
        absl::StrCat(context, ", reading ", record, ": ", error.what_without_backtrace()));
  } catch (const std::exception& error) {
    return absl::DataLossError(absl::StrCat(context, ", reading ", record, ": ", error.what()));
  }
}

}  // namespace gd
