// quantize_config.json fields: the wrong type or a number beyond the field's
// range is a ModelError naming the field, never a cast (fuzz_quantize_config
// found {"bits": 1111111111111111111149}: a float converted to int by a plain
// cast, undefined behaviour).
#include <gtest/gtest.h>

#include <string>

#include "model/errors.h"
#include "model/quantize_config.h"

namespace chatradio::model {
namespace {

std::string error_of(const std::string& json) {
  try {
    parse_quantize_config(json, "q.json");
  } catch (const ModelError& e) {
    return e.what();
  }
  return "";
}

TEST(QuantizeConfigFields, WrongTypeOrRangeNamesTheField) {
  EXPECT_NE(error_of(R"({"bits": 1111111111111111111149})").find("q.json: field 'bits' has the wrong type or range"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"bits": 4.5})").find("field 'bits'"), std::string::npos);
  EXPECT_NE(error_of(R"({"group_size": 4294967424})").find("field 'group_size'"), std::string::npos);
  EXPECT_NE(error_of(R"({"group_size": -9223372036854775808})").find("field 'group_size'"), std::string::npos);
  EXPECT_NE(error_of(R"({"sym": 1})").find("field 'sym'"), std::string::npos);
  EXPECT_NE(error_of(R"({"bits": "4"})").find("field 'bits'"), std::string::npos);
}

TEST(QuantizeConfigFields, ValidValuesStillParse) {
  const QuantizeConfig c = parse_quantize_config(R"({"bits": 4, "group_size": -1, "sym": true, "desc_act": false})", "q");
  EXPECT_EQ(c.bits, 4);
  EXPECT_EQ(c.group_size, -1);
  EXPECT_TRUE(c.sym);
  EXPECT_EQ(parse_quantize_config(R"({"group_size": 128, "bits": null})", "q").group_size, 128);
}

}  // namespace
}  // namespace chatradio::model
