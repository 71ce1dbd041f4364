// One sampling run of `gd view`: a StreamSample call that the gd process holds for a browser, and
// the server-sent events the browser gets from it. A thread reads the call's events and turns
// each into an SSE message whose data is the event's proto3 JSON (bytes, such as PNGs, in
// base64). Watchers (SSE connections) take messages through a Cursor: `accepted` once, then the
// newest `step` (steps a slow watcher has not taken yet are skipped: the page shows the latest
// frame, and memory stays bounded), then the final `result` or `failed` ({"code", "message"}).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "client/gd_client.h"

namespace gd::client {

class ViewRun {
 public:
  using Clock = std::chrono::steady_clock;

  // Called on the run's thread when the call has ended (the run is then finished()), with its
  // status and the seconds since the run started.
  using EndCallback = std::function<void(const ViewRun&, const absl::Status&, double seconds)>;

  // Starts the call at once, on a thread of its own. `client` must outlive the run.
  ViewRun(std::string id, SamplerClient& client, guided_diffusion::v1::SampleRequest request,
          EndCallback on_end = nullptr);
  // Cancels the call if it is still running and waits for its thread.
  ~ViewRun();
  ViewRun(const ViewRun&) = delete;
  ViewRun& operator=(const ViewRun&) = delete;

  const std::string& id() const { return id_; }
  const guided_diffusion::v1::SampleRequest& request() const { return request_; }

  // Asks the server to stop; the run then ends `failed` with CANCELLED and `reason` as its
  // message (unless it had already ended). Any thread, any time. False when the run had already
  // ended or was being cancelled.
  bool Cancel(absl::string_view reason);
  bool finished() const;
  // The final response, once the call has succeeded.
  std::optional<guided_diffusion::v1::SampleResponse> result() const;

  // What one watcher has had so far.
  struct Cursor {
    bool accepted_sent = false;
    uint64_t step_sent = 0;  // sequence number of the last step message sent (0: none)
    bool end_sent = false;
  };
  // Waits up to `timeout` for messages the cursor has not had (or for WakeWatchers) and returns
  // them as SSE text, in order; "" when there is nothing new. cursor->end_sent turns true with
  // the final message.
  std::string NextMessages(Cursor* cursor, std::chrono::milliseconds timeout);
  // Wakes every NextMessages at once (the viewer is shutting down).
  void WakeWatchers();

  // Watchers come and go; a run nobody watches is abandoned (see Abandoned).
  void AddWatcher();
  void RemoveWatcher();
  // True when the run is unfinished, not being cancelled, and nobody has watched it for `grace`:
  // since the last watcher left, or since it started if nobody came.
  bool Abandoned(std::chrono::milliseconds grace) const;

 private:
  void Read();

  const std::string id_;
  const guided_diffusion::v1::SampleRequest request_;
  SamplerClient& client_;
  const EndCallback on_end_;
  const Clock::time_point started_at_;

  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::unique_ptr<StreamReader> reader_;  // set by the reading thread, kept until destruction
  bool cancel_requested_ = false;
  std::string cancel_reason_;
  std::string accepted_message_;  // "" until Accepted
  std::string step_message_;      // the newest step
  uint64_t step_sequence_ = 0;    // steps received
  std::string end_message_;       // "" until the call has ended
  std::optional<guided_diffusion::v1::SampleResponse> result_;
  int watchers_ = 0;
  Clock::time_point unwatched_since_;
  uint64_t wake_generation_ = 0;

  std::thread thread_;  // last: starts after every member above exists
};

// `message` as proto3 JSON with the proto's field names (total_steps, pred_xstart_png), zeros and
// false included so that the page never guesses a default; bytes in base64.
std::string ToJson(const google::protobuf::Message& message);

// "event: NAME\ndata: DATA\n\n" (DATA must be one line, as JSON without whitespace is).
std::string SseMessage(absl::string_view event, absl::string_view data);

// {"code":"CANCELLED","code_number":1,"message":"..."} for a failed call.
std::string StatusJson(const absl::Status& status);

// `text` as a JSON string literal, quotes included.
std::string JsonQuote(absl::string_view text);

}  // namespace gd::client
