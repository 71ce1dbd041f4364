// Status plumbing for gd-eval (STYLE.md: through macros, not by hand).
//   RETURN_IF_ERROR(WriteStats(path, stats));
//   ASSIGN_OR_RETURN(Evaluator evaluator, Evaluator::Load(json_path));
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define GD_STATUS_CONCAT_INNER(a, b) a##b
#define GD_STATUS_CONCAT(a, b) GD_STATUS_CONCAT_INNER(a, b)

#define RETURN_IF_ERROR(expr)                                 \
  do {                                                        \
    if (absl::Status gd_status_ = (expr); !gd_status_.ok()) { \
      return gd_status_;                                      \
    }                                                         \
  } while (0)

#define GD_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(*tmp)

#define ASSIGN_OR_RETURN(lhs, expr) \
  GD_ASSIGN_OR_RETURN_IMPL(GD_STATUS_CONCAT(gd_statusor_, __LINE__), lhs, expr)
