// The models a server holds: one sampling engine per model, looked up by name. Models are
// published as they finish loading, so the gRPC port can be open (health NOT_SERVING) while the
// weights are still being read.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/engine/engine.h"

namespace gd::server {

class ModelRegistry {
 public:
  void Add(std::shared_ptr<Engine> engine, bool make_default);
  // "" = the default model. NOT_FOUND names the model and lists the known ones; UNAVAILABLE
  // while nothing is loaded yet or the server drains.
  absl::StatusOr<std::shared_ptr<Engine>> Find(const std::string& name) const;
  std::vector<std::shared_ptr<Engine>> All() const;
  std::string default_model() const;
  // New requests are refused with UNAVAILABLE from now on.
  void StopAccepting();
  bool accepting() const;

 private:
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<Engine>> engines_;
  std::string default_;
  bool accepting_ = true;
};

}  // namespace gd::server
