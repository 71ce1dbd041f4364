// `gd view`'s listen address, under the names client/gd_main.cc uses. The HTTP server itself is
// gd_http (http/server.h); this header goes once gd_main.cc includes that one instead.
#pragma once

#include "http/server.h"

namespace gd::client {

using ::gd::http::ListenAddress;
using ::gd::http::ParseListenAddress;

}  // namespace gd::client
