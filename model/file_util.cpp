#include "model/file_util.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "model/errors.h"

namespace chatradio::model {

std::string read_text_file(const std::string& path, const char* cannot_open, bool with_errno) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::string what = path + ": " + cannot_open;
    if (with_errno) what += std::string(": ") + std::strerror(errno);
    throw ModelError(what);
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw ModelError(path + ": read error");
  return ss.str();
}

}  // namespace chatradio::model
