#include "client/view_run.h"

#include <google/protobuf/util/json_util.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;

}  // namespace

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) {
    return "{}";  // only for invalid UTF-8 in a string field, which the server never sends
  }
  return json;
}

std::string JsonQuote(absl::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppendFormat(&out, "\\u%04x", static_cast<int>(c));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string StatusJson(const absl::Status& status) {
  return absl::StrCat("{\"code\":", JsonQuote(absl::StatusCodeToString(status.code())),
                      ",\"code_number\":", static_cast<int>(status.code()),
                      ",\"message\":", JsonQuote(status.message()), "}");
}

std::string SseMessage(absl::string_view event, absl::string_view data) {
  return absl::StrCat("event: ", event, "\ndata: ", data, "\n\n");
}

ViewRun::ViewRun(std::string id, SamplerClient& client, v1::SampleRequest request,
                 EndCallback on_end)
    : id_(std::move(id)),
      request_(std::move(request)),
      client_(client),
      on_end_(std::move(on_end)),
      started_at_(Clock::now()),
      unwatched_since_(started_at_),
      thread_([this] { Read(); }) {}

ViewRun::~ViewRun() {
  Cancel("gd view is stopping");
  thread_.join();
}

bool ViewRun::Cancel(absl::string_view reason) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!end_message_.empty() || cancel_requested_) return false;
  cancel_requested_ = true;
  cancel_reason_ = std::string(reason);
  if (reader_ != nullptr) reader_->Cancel();
  return true;
}

bool ViewRun::finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !end_message_.empty();
}

std::optional<v1::SampleResponse> ViewRun::result() const {
  std::lock_guard<std::mutex> lock(mu_);
  return result_;
}

void ViewRun::Read() {
  // Opening the call may wait for a connection: it happens here, not in the constructor.
  std::unique_ptr<StreamReader> stream = client_.OpenStream(request_);
  StreamReader* reader = stream.get();
  {
    std::lock_guard<std::mutex> lock(mu_);
    reader_ = std::move(stream);
    if (cancel_requested_) reader_->Cancel();
  }
  v1::SampleEvent event;
  std::optional<v1::SampleResponse> result;
  while (reader->Next(&event)) {
    std::string message;
    if (event.has_accepted()) {
      message = SseMessage("accepted", ToJson(event.accepted()));
    } else if (event.has_step()) {
      // PNG steps may carry empty tensor messages: not worth their bytes on every step.
      v1::StepEvent* step = event.mutable_step();
      if (step->x_t().data().empty()) step->clear_x_t();
      if (step->pred_xstart().data().empty()) step->clear_pred_xstart();
      message = SseMessage("step", ToJson(*step));
    } else if (event.has_result()) {
      result = std::move(*event.mutable_result());
      continue;  // sent once the call's status is known to be OK
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (event.has_accepted()) {
      accepted_message_ = std::move(message);
    } else {
      step_message_ = std::move(message);
      ++step_sequence_;
    }
    changed_.notify_all();
  }
  absl::Status status = reader->Finish();
  if (status.ok() && !result.has_value()) {
    status = absl::InternalError("the stream ended without a result");
  }
  std::lock_guard<std::mutex> lock(mu_);
  // gRPC says only "CANCELLED" for a call cancelled here: say who cancelled it and why.
  if (status.code() == absl::StatusCode::kCancelled && cancel_requested_) {
    status = absl::CancelledError(cancel_reason_);
  }
  if (status.ok()) {
    end_message_ = SseMessage("result", ToJson(*result));
    result_ = std::move(result);
  } else {
    end_message_ = SseMessage("failed", StatusJson(status));
  }
  changed_.notify_all();
  if (on_end_) {
    on_end_(*this, status, std::chrono::duration<double>(Clock::now() - started_at_).count());
  }
}

std::string ViewRun::NextMessages(Cursor* cursor, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t generation = wake_generation_;
  const auto has_news = [&] {
    return (!cursor->accepted_sent && !accepted_message_.empty()) ||
           cursor->step_sent < step_sequence_ || (!cursor->end_sent && !end_message_.empty()) ||
           wake_generation_ != generation;
  };
  changed_.wait_for(lock, timeout, has_news);
  std::string text;
  if (!cursor->accepted_sent && !accepted_message_.empty()) {
    text += accepted_message_;
    cursor->accepted_sent = true;
  }
  if (cursor->step_sent < step_sequence_) {
    text += step_message_;
    cursor->step_sent = step_sequence_;
  }
  if (!cursor->end_sent && !end_message_.empty()) {
    text += end_message_;
    cursor->end_sent = true;
  }
  return text;
}

void ViewRun::WakeWatchers() {
  std::lock_guard<std::mutex> lock(mu_);
  ++wake_generation_;
  changed_.notify_all();
}

void ViewRun::AddWatcher() {
  std::lock_guard<std::mutex> lock(mu_);
  ++watchers_;
}

void ViewRun::RemoveWatcher() {
  std::lock_guard<std::mutex> lock(mu_);
  if (--watchers_ == 0) unwatched_since_ = Clock::now();
}

bool ViewRun::Abandoned(std::chrono::milliseconds grace) const {
  std::lock_guard<std::mutex> lock(mu_);
  return end_message_.empty() && !cancel_requested_ && watchers_ == 0 &&
         Clock::now() - unwatched_since_ >= grace;
}

}  // namespace gd::client
