// nemotron-deploy C++ runtime: the one exception type. Messages name the file, tensor or field and
// what was expected, as the Python runtime's do.
#pragma once

#include <stdexcept>
#include <string>

namespace nemotron_deploy {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace nemotron_deploy
