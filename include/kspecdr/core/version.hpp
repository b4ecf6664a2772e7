#pragma once

namespace kspecdr {
/// Software version (CMake project version).
const char* version();
/// Git commit the library was built from ("unknown" outside a git checkout).
const char* git_sha();
}  // namespace kspecdr
