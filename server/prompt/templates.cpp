#include "server/prompt/templates.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <utility>

#include "server/prompt/validate.h"

namespace chatradio::prompt {
namespace {

using nlohmann::json;

constexpr std::array<std::string_view, 2> kLanguageNames = {"zh", "en"};
constexpr std::array<std::string_view, 2> kFormatNames = {"llama2-chat", "plain"};
constexpr std::array<std::string_view, 5> kModalityNames = {"CT", "MR", "XR", "US", "PET-CT"};
constexpr std::array<std::string_view, 5> kBodySystemNames = {"chest", "abdomen", "musculoskeletal", "head",
                                                              "maxillofacial_neck"};

// Display names inside templates, [language][value]; the last entry is "absent".
constexpr std::string_view kModalityDisplay[kNumLanguages][6] = {
    {"CT", "MR", "X线", "超声", "PET-CT", "未注明"},
    {"CT", "MRI", "X-ray", "ultrasound", "PET-CT", "not specified"},
};
constexpr std::string_view kBodySystemDisplay[kNumLanguages][6] = {
    {"胸部", "腹部", "肌肉骨骼系统", "头部", "颌面颈部", "未注明"},
    {"chest", "abdomen", "musculoskeletal", "head", "maxillofacial and neck", "not specified"},
};

// Delimiters the formats own: a template that contains them would change the
// prompt's structure, so they are refused at load time.
constexpr std::array<std::string_view, 2> kTokenTexts = {"<s>", "</s>"};
constexpr std::array<std::string_view, 4> kLlama2Delimiters = {"[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"};

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

template <typename E, size_t N>
std::optional<E> lookup(const std::array<std::string_view, N>& names, std::string_view s, bool any_case) {
  for (size_t i = 0; i < N; ++i) {
    if (any_case ? iequals(names[i], s) : names[i] == s) return static_cast<E>(i);
  }
  return std::nullopt;
}

template <size_t N>
std::string join(const std::array<std::string_view, N>& names) {
  std::string out;
  for (size_t i = 0; i < N; ++i) out += (i ? ", " : "") + std::string(names[i]);
  return out;
}

enum class Placeholder : uint8_t { kModality, kBodySystem, kFindings };
constexpr std::array<std::string_view, 3> kPlaceholderNames = {"modality", "body_system", "findings"};

// Walks `text`, calling literal(view) for text and placeholder(p) for each
// {name}; "{{" and "}}" are literal braces. Returns "" or the first error.
// Rendering and validation both use it, so a template renders exactly as it was
// validated, and substituted values are never scanned.
template <typename Literal, typename Hole>
std::string scan_template(std::string_view text, Literal&& literal, Hole&& placeholder) {
  size_t i = 0, run = 0;  // run: start of the pending literal text
  while (i < text.size()) {
    const char c = text[i];
    if (c != '{' && c != '}') {
      ++i;
      continue;
    }
    if (i + 1 < text.size() && text[i + 1] == c) {  // "{{" or "}}"
      literal(text.substr(run, i + 1 - run));
      i += 2;
      run = i;
      continue;
    }
    if (c == '}') {
      return "single '}' at byte " + std::to_string(i) + " (write '}}' for a literal brace)";
    }
    const size_t close = text.find_first_of("{}", i + 1);
    if (close == std::string_view::npos || text[close] != '}') {
      return "unclosed '{' at byte " + std::to_string(i) + " (write '{{' for a literal brace)";
    }
    const std::string_view name = text.substr(i + 1, close - i - 1);
    const auto p = lookup<Placeholder>(kPlaceholderNames, name, false);
    if (!p) {
      return "unknown placeholder '{" + std::string(name) + "}' at byte " + std::to_string(i) +
             " (known: {modality}, {body_system}, {findings})";
    }
    literal(text.substr(run, i - run));
    placeholder(*p);
    i = close + 1;
    run = i;
  }
  literal(text.substr(run));
  return {};
}

std::string check_field(std::string_view field, std::string_view text, const Template& t) {
  const auto fail = [&](const std::string& msg) { return "field '" + std::string(field) + "': " + msg; };
  if (auto err = check_text("text", text)) return fail(*err);
  for (std::string_view d : kTokenTexts) {
    if (text.find(d) != std::string_view::npos) {
      return fail("contains '" + std::string(d) + "' (BOS and EOS are tokens the server adds, not text)");
    }
  }
  if (t.format == Format::kLlama2Chat) {
    for (std::string_view d : kLlama2Delimiters) {
      if (text.find(d) != std::string_view::npos) {
        return fail("contains the llama2-chat delimiter '" + std::string(d) + "', which the format adds itself");
      }
    }
  }
  int findings = 0;
  std::string err = scan_template(text, [](std::string_view) {}, [&](Placeholder p) {
    if (p == Placeholder::kFindings) ++findings;
  });
  if (!err.empty()) return fail(err);
  if (field == "input") {
    if (findings == 0) return fail("'{findings}' is missing");
    if (findings > 1) return fail("'{findings}' appears " + std::to_string(findings) + " times (once only)");
  } else if (findings > 0) {
    return fail("'{findings}' may only appear in 'input'");
  }
  return {};
}

std::string known_ids(const std::vector<Template>& ts) {
  std::string out;
  for (const Template& t : ts) out += (out.empty() ? "" : ", ") + t.id;
  return out;
}

// --- JSON reading -----------------------------------------------------------

// Objects whose keys are checked against a list; "_"-prefixed keys are comments.
void check_keys(const json& obj, std::initializer_list<std::string_view> allowed, const std::string& where) {
  for (const auto& [key, value] : obj.items()) {
    if (key.starts_with('_')) continue;
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      std::string list;
      for (std::string_view a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
      throw ConfigError(where + ": unknown field '" + key + "' (known: " + list + ")");
    }
  }
}

std::string type_name(const json& v) { return v.type_name(); }

const json* member(const json& obj, std::string_view key) {
  const auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

std::string get_string(const json& obj, std::string_view key, const std::string& where, bool required,
                       std::string fallback = {}) {
  const json* v = member(obj, key);
  if (!v) {
    if (required) throw ConfigError(where + ": field '" + std::string(key) + "' is missing");
    return fallback;
  }
  if (!v->is_string()) {
    throw ConfigError(where + ": field '" + std::string(key) + "' must be a string (got " + type_name(*v) + ")");
  }
  return v->get<std::string>();
}

Template read_template(const json& j, size_t index, const std::string& origin) {
  std::string where = origin + ": template #" + std::to_string(index + 1);
  if (!j.is_object()) throw ConfigError(where + ": must be an object (got " + type_name(j) + ")");
  Template t;
  // The id first, so every later message can name it.
  t.id = get_string(j, "id", where, true);
  if (t.id.empty() || t.id.size() > 64 ||
      !std::all_of(t.id.begin(), t.id.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
               c == '_' || c == '.';
      })) {
    throw ConfigError(where + ": field 'id': '" + t.id + "' is not 1-64 characters of [A-Za-z0-9._-]");
  }
  where = origin + ": template '" + t.id + "'";
  check_keys(j, {"id", "version", "language", "format", "description", "system", "instruction", "input"}, where);

  const json* version = member(j, "version");
  if (!version) throw ConfigError(where + ": field 'version' is missing");
  if (!version->is_number_integer() || version->get<int64_t>() < 1 || version->get<int64_t>() > std::numeric_limits<int>::max()) {
    throw ConfigError(where + ": field 'version' must be a positive integer (got " + version->dump() + ")");
  }
  t.version = version->get<int>();

  const std::string lang = get_string(j, "language", where, true);
  const auto l = parse_language(lang);
  if (!l) {
    throw ConfigError(where + ": field 'language': unknown language '" + lang + "' (known: " +
                      join(kLanguageNames) + ")");
  }
  t.language = *l;
  const std::string fmt = get_string(j, "format", where, true);
  const auto f = parse_format(fmt);
  if (!f) {
    throw ConfigError(where + ": field 'format': unknown format '" + fmt + "' (known: " + join(kFormatNames) + ")");
  }
  t.format = *f;

  t.description = get_string(j, "description", where, false);
  t.system = get_string(j, "system", where, false);
  t.instruction = get_string(j, "instruction", where, true);
  t.input = get_string(j, "input", where, false, std::string(default_input(t.format, t.language)));
  if (std::string err = validate_template(t); !err.empty()) throw ConfigError(where + ": " + err);
  return t;
}

// nlohmann keeps the last of duplicate keys silently; a repeated "instruction"
// in a template is a mistake worth stopping for, so the parse callback looks.
json parse_json(std::string_view text, const std::string& origin) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string duplicate;
  const json::parser_callback_t cb = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      keys.pop_back();
    } else if (event == json::parse_event_t::key && !keys.empty()) {
      const std::string k = parsed.get<std::string>();
      if (!keys.back().insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text.begin(), text.end(), cb);
  } catch (const json::exception& e) {
    throw ConfigError(origin + ": invalid JSON: " + e.what());
  }
  if (!duplicate.empty()) throw ConfigError(origin + ": field '" + duplicate + "' appears twice in one object");
  return j;
}

}  // namespace

// --- names --------------------------------------------------------------------

std::string_view to_string(Language v) { return kLanguageNames[static_cast<size_t>(v)]; }
std::string_view to_string(Format v) { return kFormatNames[static_cast<size_t>(v)]; }
std::string_view to_string(Modality v) { return kModalityNames[static_cast<size_t>(v)]; }
std::string_view to_string(BodySystem v) { return kBodySystemNames[static_cast<size_t>(v)]; }

std::optional<Language> parse_language(std::string_view s) { return lookup<Language>(kLanguageNames, s, false); }
std::optional<Format> parse_format(std::string_view s) { return lookup<Format>(kFormatNames, s, false); }
std::optional<Modality> parse_modality(std::string_view s) { return lookup<Modality>(kModalityNames, s, true); }
std::optional<BodySystem> parse_body_system(std::string_view s) {
  return lookup<BodySystem>(kBodySystemNames, s, true);
}

std::string unknown_modality_message(std::string_view s) {
  return "unknown modality '" + std::string(s) + "'; known: " + join(kModalityNames);
}
std::string unknown_body_system_message(std::string_view s) {
  return "unknown body_system '" + std::string(s) + "'; known: " + join(kBodySystemNames);
}

std::string_view display_name(Language lang, std::optional<Modality> v) {
  return kModalityDisplay[static_cast<size_t>(lang)][v ? static_cast<size_t>(*v) : 5];
}
std::string_view display_name(Language lang, std::optional<BodySystem> v) {
  return kBodySystemDisplay[static_cast<size_t>(lang)][v ? static_cast<size_t>(*v) : 5];
}

std::string_view default_input(Format format, Language lang) {
  if (format == Format::kLlama2Chat) return "{findings}";
  return lang == Language::kZh ? "检查所见：{findings}\n诊断意见：" : "Findings: {findings}\nImpression:";
}

// --- one template ---------------------------------------------------------------

std::string validate_template(const Template& t) {
  if (t.version < 1) return "field 'version' must be a positive integer (got " + std::to_string(t.version) + ")";
  if (is_blank(t.instruction)) return "field 'instruction' is empty";
  if (is_blank(t.input)) return "field 'input' is empty";
  for (const auto& [name, text] : {std::pair<std::string_view, const std::string&>{"system", t.system},
                                   {"instruction", t.instruction},
                                   {"input", t.input}}) {
    if (std::string err = check_field(name, text, t); !err.empty()) return err;
  }
  return {};
}

Rendered render(const Template& t, const RenderInput& in) {
  if (std::string err = validate_template(t); !err.empty()) {
    throw ConfigError("template '" + t.id + "': " + err);
  }
  const std::string_view findings = trim_space(in.findings);
  const std::string_view modality = display_name(t.language, in.modality);
  const std::string_view body_system = display_name(t.language, in.body_system);

  Rendered r;
  r.template_id = t.id;
  r.template_version = t.version;
  std::string& out = r.text;
  out.reserve(t.system.size() + t.instruction.size() + t.input.size() + findings.size() + 64);
  const auto emit = [&](std::string_view field) {
    scan_template(field, [&](std::string_view lit) { out += lit; }, [&](Placeholder p) {
      switch (p) {
        case Placeholder::kModality: out += modality; break;
        case Placeholder::kBodySystem: out += body_system; break;
        case Placeholder::kFindings: out += findings; break;
      }
    });
  };
  switch (t.format) {
    case Format::kLlama2Chat:
      // Meta's reference chat format: B_INST + " " + B_SYS + system + E_SYS + user + " " + E_INST.
      out += "[INST] ";
      if (!t.system.empty()) {
        out += "<<SYS>>\n";
        emit(t.system);
        out += "\n<</SYS>>\n\n";
      }
      emit(t.instruction);
      out += "\n";
      emit(t.input);
      out += " [/INST]";
      break;
    case Format::kPlain:
      if (!t.system.empty()) {
        emit(t.system);
        out += "\n\n";
      }
      emit(t.instruction);
      out += "\n\n";
      emit(t.input);
      break;
  }
  return r;
}

std::vector<int32_t> encode_prompt(const model::Tokenizer& tok, const Rendered& r) {
  std::vector<int32_t> ids = tok.encode(r.text, r.add_bos && tok.bos_id() >= 0);
  return ids;
}

// --- the set --------------------------------------------------------------------

TemplateSet TemplateSet::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw ConfigError(path + ": cannot open template file");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw ConfigError(path + ": read error");
  return parse(ss.str(), path);
}

TemplateSet TemplateSet::parse(std::string_view json_text, std::string_view origin_view) {
  const std::string origin(origin_view);
  const json root = parse_json(json_text, origin);
  if (!root.is_object()) throw ConfigError(origin + ": the top level must be an object (got " + type_name(root) + ")");
  check_keys(root, {"templates", "defaults"}, origin);

  TemplateSet set;
  const json* templates = member(root, "templates");
  if (!templates) throw ConfigError(origin + ": field 'templates' is missing");
  if (!templates->is_array() || templates->empty()) {
    throw ConfigError(origin + ": field 'templates' must be a non-empty array");
  }
  for (size_t i = 0; i < templates->size(); ++i) {
    Template t = read_template((*templates)[i], i, origin);
    for (size_t k = 0; k < set.templates_.size(); ++k) {
      if (set.templates_[k].id == t.id) {
        throw ConfigError(origin + ": template '" + t.id + "': field 'id': duplicate id (template #" +
                          std::to_string(k + 1) + " and #" + std::to_string(i + 1) + ")");
      }
    }
    set.templates_.push_back(std::move(t));
  }

  const json* defaults = member(root, "defaults");
  if (!defaults) throw ConfigError(origin + ": field 'defaults' is missing");
  if (!defaults->is_object()) throw ConfigError(origin + ": field 'defaults' must be an object");
  // A default must exist and be of its language; called for every entry.
  const auto resolve = [&](const std::string& where, const std::string& id, Language lang) {
    const Template* t = set.find(id);
    if (!t) throw ConfigError(where + ": unknown template '" + id + "'; known: " + known_ids(set.templates_));
    if (t->language != lang) {
      throw ConfigError(where + ": template '" + id + "' is " + std::string(to_string(t->language)) +
                        ", not " + std::string(to_string(lang)));
    }
  };
  for (const auto& [key, entry] : defaults->items()) {
    if (key.starts_with('_')) continue;
    const std::string where = origin + ": defaults." + key;
    const auto lang = parse_language(key);
    if (!lang) throw ConfigError(where + ": unknown language '" + key + "' (known: " + join(kLanguageNames) + ")");
    if (!entry.is_object()) throw ConfigError(where + ": must be an object (got " + type_name(entry) + ")");
    check_keys(entry, {"template", "body_systems"}, where);
    LanguageDefaults d;
    d.template_id = get_string(entry, "template", where, true);
    resolve(where + ": field 'template'", d.template_id, *lang);
    if (const json* by = member(entry, "body_systems")) {
      if (!by->is_object()) throw ConfigError(where + ": field 'body_systems' must be an object");
      for (const auto& [bs_name, id] : by->items()) {
        if (bs_name.starts_with('_')) continue;
        const std::string bs_where = where + ".body_systems." + bs_name;
        // Exact names in the file (the case-insensitive parse is for requests).
        const auto bs = lookup<BodySystem>(kBodySystemNames, bs_name, false);
        if (!bs) {
          throw ConfigError(bs_where + ": unknown body system '" + bs_name + "' (known: " +
                            join(kBodySystemNames) + ")");
        }
        if (!id.is_string()) throw ConfigError(bs_where + ": must be a template id string");
        resolve(bs_where, id.get<std::string>(), *lang);
        d.by_body_system.emplace(*bs, id.get<std::string>());
      }
    }
    set.defaults_[static_cast<size_t>(*lang)] = std::move(d);
  }
  // Every language with templates needs a default, or its requests would fail
  // one by one instead of the server refusing to start.
  for (const Template& t : set.templates_) {
    if (!set.defaults_[static_cast<size_t>(t.language)]) {
      throw ConfigError(origin + ": defaults: language '" + std::string(to_string(t.language)) +
                        "' has templates (e.g. '" + t.id + "') but no defaults entry");
    }
  }
  return set;
}

const Template* TemplateSet::find(std::string_view id) const {
  for (const Template& t : templates_) {
    if (t.id == id) return &t;
  }
  return nullptr;
}

const LanguageDefaults* TemplateSet::defaults(Language lang) const {
  const auto& d = defaults_[static_cast<size_t>(lang)];
  return d ? &*d : nullptr;
}

Selection TemplateSet::select(std::optional<std::string_view> template_id, Language lang,
                              std::optional<BodySystem> body_system) const {
  Selection s;
  if (template_id) {
    const Template* t = find(*template_id);
    if (!t) {
      s.error_kind = SelectError::kNotFound;
      s.error = "unknown template '" + std::string(*template_id) + "'; known: " + known_ids(templates_);
    } else if (t->language != lang) {
      s.error_kind = SelectError::kLanguageMismatch;
      s.error = "template '" + t->id + "' is for " + std::string(to_string(t->language)) +
                "; the request language is " + std::string(to_string(lang));
    } else {
      s.tmpl = t;
    }
    return s;
  }
  const LanguageDefaults* d = defaults(lang);
  if (!d) {
    s.error_kind = SelectError::kNotFound;
    s.error = "no template for language '" + std::string(to_string(lang)) + "'";
    return s;
  }
  std::string_view id = d->template_id;
  if (body_system) {
    if (auto it = d->by_body_system.find(*body_system); it != d->by_body_system.end()) id = it->second;
  }
  s.tmpl = find(id);  // validated at load time
  return s;
}

}  // namespace chatradio::prompt
