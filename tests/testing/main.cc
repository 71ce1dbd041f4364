// main() of the test binaries that run the networks in process: the allocator settings gd-server
// runs with (core/engine/allocator.h), so that in-process sampling does not fault its activations
// in again at every step (what glibc's defaults do) and behaves as the server does.
#include <gtest/gtest.h>

#include "core/engine/allocator.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  gd::ConfigureAllocator();
  return RUN_ALL_TESTS();
}
