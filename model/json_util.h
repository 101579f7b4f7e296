// Parsing the JSON files model/ reads, with the errors it reports for them.
// For model/*.cpp only: nlohmann_json is a private dependency of chatradio_model.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <string>

namespace chatradio::model {

// Parses a JSON document that must be an object. Throws ModelError
// "<source>: invalid JSON: ..." or "<source>: not a JSON object".
nlohmann::json parse_json_object(const std::string& text, const std::string& source);

// Parses JSON text [begin, end) strictly: a NUL byte is an error (nlohmann
// would stop there as if the input ended, where reference parsers reject it),
// and the first object key that appears twice in one object is stored in
// *duplicate (nlohmann keeps the last one silently; the caller says what that
// means). Throws ModelError "<source>: invalid JSON: ...".
nlohmann::json parse_json_strict(const char* begin, const char* end, const std::string& source,
                                 std::string* duplicate);

}  // namespace chatradio::model
