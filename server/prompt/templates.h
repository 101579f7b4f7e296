// Prompt templates: the expert-written instruction that turns a report's findings
// into a prompt for the impression model (ChatRadio-Valuer: system description +
// expert instruction + input findings). Loaded once at start-up from a JSON file
// (deploy/templates.json, format in docs/prompts.md), validated completely so a
// bad file stops the server instead of failing requests later.
//
// Immutable once loaded: const members may be called from many threads.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer.h"

namespace chatradio::prompt {

// A template file that cannot be used. The message names the file, the template
// id (or its position when it has no id) and the field.
class ConfigError : public std::runtime_error {
 public:
  explicit ConfigError(const std::string& what) : std::runtime_error(what) {}
};

enum class Language : uint8_t { kZh, kEn };
enum class Format : uint8_t { kLlama2Chat, kPlain };
enum class Modality : uint8_t { kCT, kMR, kXR, kUS, kPETCT };
enum class BodySystem : uint8_t { kChest, kAbdomen, kMusculoskeletal, kHead, kMaxillofacialNeck };

inline constexpr int kNumLanguages = 2;

// Wire names: "zh"/"en"; "llama2-chat"/"plain"; "CT", "MR", "XR", "US", "PET-CT";
// "chest", "abdomen", "musculoskeletal", "head", "maxillofacial_neck".
std::string_view to_string(Language v);
std::string_view to_string(Format v);
std::string_view to_string(Modality v);
std::string_view to_string(BodySystem v);
// Exact wire names for language and format; modality and body system also
// accept any ASCII case ("ct", "Chest") because clients send them from forms.
std::optional<Language> parse_language(std::string_view s);
std::optional<Format> parse_format(std::string_view s);
std::optional<Modality> parse_modality(std::string_view s);
std::optional<BodySystem> parse_body_system(std::string_view s);
// "unknown modality 'x'; known: CT, MR, XR, US, PET-CT" (for INVALID_ARGUMENT).
std::string unknown_modality_message(std::string_view s);
std::string unknown_body_system_message(std::string_view s);

// How {modality} and {body_system} read inside a template of `lang` ("MRI",
// "磁共振"; "abdomen", "腹部"); an absent value reads "not specified" / "未注明".
std::string_view display_name(Language lang, std::optional<Modality> v);
std::string_view display_name(Language lang, std::optional<BodySystem> v);

// One template as written in the file. Text fields use {placeholder} syntax;
// "{{" and "}}" are literal braces. {modality} and {body_system} may appear in
// system, instruction and input; {findings} must appear in input exactly once.
struct Template {
  std::string id;
  int version = 1;
  Language language = Language::kEn;
  Format format = Format::kLlama2Chat;
  std::string description;  // for operators and docs; never sent to the model
  std::string system;       // may be empty: the format then omits the system block
  std::string instruction;  // non-empty
  std::string input;        // where the findings go; default: see default_input()
};

// The input block a template gets when the file does not set one:
// llama2-chat "{findings}"; plain "Findings: {findings}\nImpression:" (en) or
// "检查所见：{findings}\n诊断意见：" (zh), i.e. a completion cue for base models.
std::string_view default_input(Format format, Language lang);

struct RenderInput {
  std::string_view findings;  // checked with check_findings() (validate.h) first
  std::optional<Modality> modality;
  std::optional<BodySystem> body_system;
};

struct Rendered {
  std::string text;  // the prompt, without BOS (see add_bos)
  std::string template_id;
  int template_version = 0;
  // Llama models expect BOS as a token before the text (llama2-chat's "<s>" is
  // that token, never the characters "<s>").
  bool add_bos = true;
};

// The prompt for `in` under `t`. Substituted values are appended as they are and
// never scanned again, so findings that contain "{instruction}" or "[/INST]"
// reach the model literally (docs/prompts.md, "Prompt injection"). Findings are
// trimmed of leading and trailing whitespace only. Throws ConfigError for a
// template that validate_template() would refuse (never for a loaded one).
//
//   llama2-chat: "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{instruction}\n{input} [/INST]"
//                (no <<SYS>> block when system is empty, as Meta's reference does)
//   plain:       "{system}\n\n{instruction}\n\n{input}" (no "{system}\n\n" when empty)
Rendered render(const Template& t, const RenderInput& in);

// BOS (when asked and the tokenizer has one) followed by the ids of the text.
std::vector<int32_t> encode_prompt(const model::Tokenizer& tok, const Rendered& r);

// Checks one template on its own (ids, fields, placeholders, delimiters); returns
// "" when valid, else "field 'x': ..." (without the template prefix).
std::string validate_template(const Template& t);

enum class SelectError : uint8_t {
  kNone,
  kNotFound,          // unknown template id, or no template for the language (NOT_FOUND)
  kLanguageMismatch,  // an explicit template of another language (INVALID_ARGUMENT)
};

struct Selection {
  const Template* tmpl = nullptr;  // points into the TemplateSet; null on error
  SelectError error_kind = SelectError::kNone;
  std::string error;
  explicit operator bool() const { return tmpl != nullptr; }
};

struct LanguageDefaults {
  std::string template_id;  // the language's best template
  std::map<BodySystem, std::string> by_body_system;
};

class TemplateSet {
 public:
  // Both throw ConfigError naming `origin` (the path), the template and the
  // field: invalid JSON, unknown or missing fields, unknown language/format,
  // unknown or misplaced placeholders, missing {findings}, duplicate ids,
  // defaults that name unknown ids or templates of another language.
  static TemplateSet load(const std::string& path);
  static TemplateSet parse(std::string_view json_text, std::string_view origin);

  // An explicit id wins (and must match the language); otherwise the
  // (language, body system) entry, then the language's default.
  Selection select(std::optional<std::string_view> template_id, Language lang,
                   std::optional<BodySystem> body_system) const;

  const Template* find(std::string_view id) const;
  const std::vector<Template>& templates() const { return templates_; }
  const LanguageDefaults* defaults(Language lang) const;

 private:
  std::vector<Template> templates_;  // file order
  std::array<std::optional<LanguageDefaults>, kNumLanguages> defaults_;
};

}  // namespace chatradio::prompt
