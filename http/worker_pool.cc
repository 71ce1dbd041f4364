#include "http/worker_pool.h"

#include <utility>

namespace gd::http::internal {
namespace {

thread_local bool t_connection_is_shed = false;

}  // namespace

bool ConnectionIsShed() { return t_connection_is_shed; }

WorkerPool::WorkerPool(int threads, size_t max_queued) : max_queued_(max_queued) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
}

WorkerPool::~WorkerPool() { shutdown(); }

void WorkerPool::enqueue(std::function<void()> serve_connection) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (queue_.size() < idle_threads_ + max_queued_) {
      queue_.push_back(std::move(serve_connection));
      changed_.notify_one();
      return;
    }
  }
  t_connection_is_shed = true;
  serve_connection();
  t_connection_is_shed = false;
}

void WorkerPool::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  changed_.notify_all();
  for (std::thread& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
}

void WorkerPool::Work() {
  for (;;) {
    std::function<void()> serve_connection;
    {
      std::unique_lock<std::mutex> lock(mu_);
      ++idle_threads_;
      changed_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      --idle_threads_;
      if (queue_.empty()) return;  // stopping, and nothing left to close
      serve_connection = std::move(queue_.front());
      queue_.pop_front();
    }
    serve_connection();
  }
}

}  // namespace gd::http::internal
