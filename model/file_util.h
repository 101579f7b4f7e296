// Reading a whole (small) file for model/: configs, indexes, tokenizer models.
#pragma once

#include <string>

namespace chatradio::model {

// The whole contents of `path`. Throws ModelError "<path>: <cannot_open>"
// (followed by ": <strerror(errno)>" when `with_errno`) when the file cannot be
// opened, and "<path>: read error" when reading it fails.
std::string read_text_file(const std::string& path, const char* cannot_open = "cannot open", bool with_errno = false);

}  // namespace chatradio::model
