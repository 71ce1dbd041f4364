#include "server/model_registry.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/codec.h"

namespace gd::server {

void ModelRegistry::Add(std::shared_ptr<Engine> engine, bool make_default) {
  std::lock_guard<std::mutex> lock(mu_);
  if (make_default || default_.empty()) default_ = engine->bundle().name;
  engines_.push_back(std::move(engine));
}

absl::StatusOr<std::shared_ptr<Engine>> ModelRegistry::Find(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!accepting_) return absl::UnavailableError("the server is shutting down");
  if (engines_.empty()) return absl::UnavailableError("no model is loaded yet; retry shortly");
  if (name.size() > kMaxModelNameBytes) {
    return absl::InvalidArgumentError(absl::StrCat("model name ", Quote(name), " is longer than ",
                                                   kMaxModelNameBytes, " bytes"));
  }
  const std::string& wanted = name.empty() ? default_ : name;
  std::vector<std::string> names;
  for (const auto& e : engines_) {
    if (e->bundle().name == wanted) return e;
    names.push_back(absl::StrCat("\"", e->bundle().name, "\""));
  }
  return absl::NotFoundError(absl::StrCat("model ", Quote(wanted), " is not served here (models: ",
                                          absl::StrJoin(names, ", "), ")"));
}

std::vector<std::shared_ptr<Engine>> ModelRegistry::All() const {
  std::lock_guard<std::mutex> lock(mu_);
  return engines_;
}

std::string ModelRegistry::default_model() const {
  std::lock_guard<std::mutex> lock(mu_);
  return default_;
}

void ModelRegistry::StopAccepting() {
  std::lock_guard<std::mutex> lock(mu_);
  accepting_ = false;
}

bool ModelRegistry::accepting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return accepting_;
}

}  // namespace gd::server
