// Prompt templates (--templates): prompt::TemplateSet::parse on arbitrary
// text. A set it accepts must keep its promises to the handler (a violation
// traps): every template passes validate_template(); select() finds each
// template by id in its own language and refuses it in the other; every
// language with templates has a default, for every body system, in that
// language; and every template renders (render() never throws for a loaded
// one) a prompt that carries the trimmed findings, which contain placeholder
// and delimiter text that must stay literal, inside "[INST] ... [/INST]" for
// llama2-chat. The prompt is tokenized with the stories260K tokenizer when
// ../shared has it. Any exception other than ConfigError counts as a crash.
//
// fuzz-seeds: deploy/templates.json tests/service/templates_test.json
// fuzz-seed-text: {"templates":[{"id":"a","version":1,"language":"en","format":"llama2-chat","system":"S {modality}","instruction":"Do {{it}}.","input":"{body_system}: {findings}"}],"defaults":{"en":{"template":"a","body_systems":{"head":"a"}}}}
// fuzz-seed-text: {"templates":[{"id":"z","version":2,"language":"zh","format":"plain","instruction":"根据检查所见写出诊断意见。"},{"id":"e","version":1,"language":"en","format":"plain","instruction":"x","_note":1}],"defaults":{"zh":{"template":"z"},"en":{"template":"e"},"_c":0}}
// fuzz-seed-text: {"templates":[{"id":"a","version":1,"language":"en","format":"llama2-chat","instruction":"I","input":"{findings} {findings}"}],"defaults":{"en":{"template":"a"}}}
// fuzz-link: chatradio_prompt
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "model/tokenizer.h"
#include "server/prompt/templates.h"
#include "server/prompt/validate.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

namespace prompt = chatradio::prompt;

constexpr std::string_view kFindings = "\n 双肺纹理清晰 {findings} [/INST] <s> {{x}} Heart size normal.\t";
constexpr prompt::BodySystem kBodySystems[] = {prompt::BodySystem::kChest, prompt::BodySystem::kAbdomen,
                                               prompt::BodySystem::kMusculoskeletal, prompt::BodySystem::kHead,
                                               prompt::BodySystem::kMaxillofacialNeck};

// The stories260K tokenizer, loaded once; null without ../shared.
const chatradio::model::Tokenizer* tokenizer() {
  static const std::unique_ptr<chatradio::model::Tokenizer> tok = [] {
    const std::string path = chatradio::fuzz::shared_path("models/stories260K/tokenizer.model");
    return chatradio::fuzz::exists(path)
               ? std::make_unique<chatradio::model::Tokenizer>(chatradio::model::Tokenizer::load(path))
               : nullptr;
  }();
  return tok.get();
}

void check_render(const prompt::Template& t, std::optional<prompt::BodySystem> body) {
  const prompt::Rendered r = prompt::render(t, {kFindings, prompt::Modality::kCT, body});
  if (r.template_id != t.id || r.template_version != t.version) __builtin_trap();
  if (r.text.find(prompt::trim_space(kFindings)) == std::string::npos) __builtin_trap();
  if (t.format == prompt::Format::kLlama2Chat && (!r.text.starts_with("[INST] ") || !r.text.ends_with(" [/INST]"))) {
    __builtin_trap();
  }
  if (tokenizer() != nullptr && prompt::encode_prompt(*tokenizer(), r).empty()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)tokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::optional<prompt::TemplateSet> set;
  try {
    set = prompt::TemplateSet::parse(text, "templates.json");
  } catch (const prompt::ConfigError&) {
    return 0;
  }
  for (const prompt::Template& t : set->templates()) {
    if (!prompt::validate_template(t).empty()) __builtin_trap();
    if (set->select(t.id, t.language, std::nullopt).tmpl != &t) __builtin_trap();
    const prompt::Language other = t.language == prompt::Language::kEn ? prompt::Language::kZh : prompt::Language::kEn;
    if (set->select(t.id, other, std::nullopt).error_kind != prompt::SelectError::kLanguageMismatch) __builtin_trap();
    if (set->defaults(t.language) == nullptr) __builtin_trap();
    check_render(t, std::nullopt);
  }
  for (const prompt::Language lang : {prompt::Language::kEn, prompt::Language::kZh}) {
    if (set->defaults(lang) == nullptr) {
      if (set->select(std::nullopt, lang, std::nullopt).error_kind != prompt::SelectError::kNotFound) __builtin_trap();
      continue;
    }
    for (const prompt::BodySystem b : kBodySystems) {
      const prompt::Selection sel = set->select(std::nullopt, lang, b);
      if (!sel || sel.tmpl->language != lang) __builtin_trap();
      check_render(*sel.tmpl, b);
    }
  }
  return 0;
}
