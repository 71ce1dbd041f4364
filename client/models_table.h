// What `gd models` prints: one row per model (name, image size, channels, classes, whether it is
// class-conditional and has a classifier, diffusion steps, samplers, the recommended classifier
// scale and the server's limits), in aligned columns, "-" where the server gives no value.
#pragma once

#include <string>
#include <vector>

#include "guided_diffusion/v1/sampler.pb.h"

namespace gd::client {

// The table with a header row, and a "* default model" note when `default_model` is one of them.
std::string ModelsTable(const std::vector<guided_diffusion::v1::ModelInfo>& models,
                        const std::string& default_model);

}  // namespace gd::client
