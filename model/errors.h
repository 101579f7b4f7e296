// The one exception type model/ throws for bad input (files, configs, text).
// Its message is meant for the user as is: it names the file, tensor or field.
#pragma once

#include <stdexcept>
#include <string>

namespace chatradio::model {

class ModelError : public std::runtime_error {
 public:
  explicit ModelError(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace chatradio::model
