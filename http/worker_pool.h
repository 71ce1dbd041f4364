// The threads of gd::http::Server: cpp-httplib hands each accepted connection to a TaskQueue,
// and this one serves them on a fixed number of threads with a bounded queue, so that neither a
// flood of connections nor a few slow ones can take more than their share. Internal to gd_http.
#pragma once

#include <httplib.h>

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace gd::http::internal {

class WorkerPool final : public httplib::TaskQueue {
 public:
  WorkerPool(int threads, size_t max_queued);
  ~WorkerPool() override;

  // Runs `serve_connection` on an idle thread, or queues it for the next one. When `max_queued`
  // connections wait already, it runs here and now with ConnectionIsShed() true, and must only
  // close its connection.
  void enqueue(std::function<void()> serve_connection) override;
  // Serves what is queued (a stopping server closes those connections at once), then joins.
  void shutdown() override;

 private:
  void Work();

  const size_t max_queued_;
  std::mutex mu_;
  std::condition_variable changed_;
  std::deque<std::function<void()>> queue_;  // guarded by mu_
  size_t idle_threads_ = 0;                  // waiting for a connection; guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::vector<std::thread> threads_;
};

// True while WorkerPool::enqueue runs a connection it has no room for (see enqueue).
bool ConnectionIsShed();

}  // namespace gd::http::internal
