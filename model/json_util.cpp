#include "model/json_util.h"

#include <nlohmann/json.hpp>

#include <cstring>
#include <set>
#include <vector>

#include "model/errors.h"

namespace chatradio::model {

using nlohmann::json;

json parse_json_object(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw ModelError(source + ": invalid JSON: " + e.what());
  }
  if (!j.is_object()) throw ModelError(source + ": not a JSON object");
  return j;
}

json parse_json_strict(const char* begin, const char* end, const std::string& source, std::string* duplicate) {
  if (const void* nul = std::memchr(begin, '\0', static_cast<size_t>(end - begin)))
    throw ModelError(source + ": invalid JSON: NUL byte at offset " +
                     std::to_string(static_cast<const char*>(nul) - begin));
  std::vector<std::set<std::string>> open_objects;
  json::parser_callback_t cb = [&](int, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (ev == json::parse_event_t::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (ev == json::parse_event_t::key && !open_objects.empty()) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(k).second && duplicate->empty()) *duplicate = k;
    }
    return true;
  };
  try {
    // e.what() carries line/column and the offending token. Not only
    // parse_error: a number beyond double's range is out_of_range (fuzz_llama_config).
    return json::parse(begin, end, cb);
  } catch (const json::exception& e) {
    throw ModelError(source + ": invalid JSON: " + e.what());
  }
}

}  // namespace chatradio::model
